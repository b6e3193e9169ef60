"""Render a results.json written by bench/run.py as Markdown tables (for bench/RESULTS.md).

    .venv/bin/python bench/report.py [bench/results.json]

Only numbers present in the file are printed, so a report cannot drift from its run.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(head: list[str], rows: list[list[Any]], align: str) -> list[str]:
    return [_row(head), "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|", *map(_row, rows)]


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    pg = m.get("postgres") or {}
    out = ["### Machine and run", ""]
    out += _table(["", ""], [
        ["date (UTC, start)", m["date_utc"]],
        ["command", f"`{doc['command']}`"],
        ["CPU", f"{m['nproc']} × {m['cpu_model']}"],
        ["memory", f"{m['memory_gib']} GiB"],
        ["kernel", m["kernel"]],
        ["Python", m["python"]],
        ["SQLite (library)", m["sqlite"]],
        ["PostgreSQL", ", ".join(f"{k} {v}" for k, v in pg.items()) if pg else "not used"],
        ["HealthHub commit", f"{m['git_commit'][:12]}" + (" (uncommitted changes under healthhub/)"
                                                          if m["git_dirty_hub"] else "")],
        ["requests per query", f"{doc['requests_per_query']} sequential (latency) + {doc['requests_per_query']} "
                               f"with {doc['clients']} concurrent clients (throughput)"],
        ["server", f"`healthhub serve --workers {doc['gunicorn_workers']}` (gunicorn, sync workers)"],
        ["total run time", f"{doc['seconds']:,.0f} s"],
    ], "ll")
    out += ["", "### (a) Ingest: hub vs minimal path", ""]
    rows = []
    for kind, run in doc["runs"].items():
        for group, g in run["ingest"]["groups"].items():
            rows.append([kind, group, g["bundles"], f"{g['resources']:,}", f"{g['hub_resources_per_s']:,.0f}",
                         f"{g['minimal_resources_per_s']:,.0f}", f"{g['ratio_hub_over_minimal']:.2f}"])
    out += _table(["db", "Bundles", "n", "resources", "hub res/s", "minimal res/s", "hub / minimal"], rows,
                  "lllrrrr")
    out += ["", "### (b) HTTP: latency (1 client) and throughput"]
    for kind, run in doc["runs"].items():
        for sc in run["scales"]:
            size = f"; {sc['size_bytes'] / 2**20:,.0f} MiB on disk" if "size_bytes" in sc else ""
            grown = (f"; grown by {sc['grow']['resources']:,} at {sc['grow']['resources_per_s']:,.0f} resources/s "
                     f"({doc['grow_parallel']} copies at once over HTTP)") if sc["grow"]["bundles"] else ""
            out += ["", f"**{kind}, {sc['resources']:,} resources** (scale {sc['target']:,}{size}{grown})", ""]
            rows = []
            for q in sc["queries"].values():
                total = "" if q["mean_total"] is None else f"{q['mean_total']:,.0f}"
                rows.append([q["label"], f"{q['p50_ms']:.1f}", f"{q['p90_ms']:.1f}", f"{q['p99_ms']:.1f}",
                             f"{q['rps_1_client']:.0f}", f"{q['rps_concurrent']:.0f}", f"{q['mean_matches']:.1f}",
                             total, q["errors"]])
            out += _table(["query", "p50 ms", "p90 ms", "p99 ms", "req/s (1 client)",
                           f"req/s ({doc['clients']} clients)", "matches/page", "total", "errors"], rows,
                          "lrrrrrrrr")
    out += ["", "### (c) EXPLAIN of the generated SQL", ""]
    rows = []
    for kind, run in doc["runs"].items():
        for sc in run["scales"]:
            for e in sc["explain"]:
                ms = [p["execution_ms"] for p in e["plans"] if p["execution_ms"] is not None]
                rows.append([kind, f"{sc['resources']:,}", e["name"], "yes" if e["uses_index"] else "**no**",
                             ", ".join(e["full_scans"]) or "–",
                             " + ".join(f"{x:.1f}" for x in ms) if ms else "–"])
    out += _table(["db", "resources", "search", "index in every statement", "full scans",
                   "execution ms (count + page + includes)"], rows, "lrllll")
    audits = [(kind, run["scales"][0]) for kind, run in doc["runs"].items()
              if run["scales"] and run["scales"][0].get("audit")]
    if audits:
        out += ["", "### Audit trail: read-by-id with it on and off", "",
                "Two servers on the same database, the audit trail on and off, measured alternately (on, off, "
                "on, off); req/s with the concurrent clients, p50 the better of the two runs.", ""]
        out += _table(["db", "resources", "req/s on", "req/s off", "overhead", "p50 ms on", "p50 ms off"],
                      [[kind, f"{sc['resources']:,}", f"{sc['audit']['rps_on']:,.0f}", f"{sc['audit']['rps_off']:,.0f}",
                        f"{sc['audit']['overhead']:.1%}", f"{sc['audit']['p50_ms_on']:.1f}",
                        f"{sc['audit']['p50_ms_off']:.1f}"] for kind, sc in audits], "lrrrrrr")
    if doc.get("targets"):
        out += ["", "### Targets", ""]
        out += _table(["db", "target", "measured", "result"],
                      [[t["db"], t["target"], t["value"], "pass" if t["pass"] else "**FAIL**"] for t in doc["targets"]],
                      "llrl")
    return "\n".join(out) + "\n"


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results.json"
    sys.stdout.write(render(orjson.loads(path.read_bytes())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
