"""Render a results.json written by bench/run.py (or bench/hospital.py) as Markdown tables
(for bench/RESULTS.md).

    .venv/bin/python bench/report.py [bench/results.json | bench/results-hospital-postgres.json]

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


def _machine(doc: dict[str, Any], full: bool, extra: list[list[Any]]) -> list[str]:
    """The "Machine and run" table (``full``: with kernel and SQLite, as bench/run.py records them)."""
    m = doc["machine"]
    pg = m.get("postgres") or {}
    rows = [["date (UTC, start)", m["date_utc"]],
            ["command", f"`{doc['command']}`"],
            ["CPU", f"{m['nproc']} × {m['cpu_model']}"],
            ["memory", f"{m['memory_gib']} GiB"],
            *([["kernel", m["kernel"]]] if full else []),
            ["Python", m["python"]],
            *([["SQLite (library)", m["sqlite"]]] if full else []),
            ["PostgreSQL", ", ".join(f"{k} {v}" for k, v in pg.items()) if pg else "not used"],
            ["HealthHub commit", f"{m['git_commit'][:12]}" + (" (uncommitted changes under healthhub/)"
                                                              if m["git_dirty_hub"] else "")],
            *extra,
            ["total run time", f"{doc['seconds']:,.0f} s" if "seconds" in doc else "not recorded"]]
    return ["### Machine and run", "", *_table(["", ""], rows, "ll")]


def render(doc: dict[str, Any]) -> str:
    out = _machine(doc, True, [
        ["requests per query", f"{doc['requests_per_query']} sequential (latency) + {doc['requests_per_query']} "
                               f"with {doc['clients']} concurrent clients (throughput)"],
        ["server", f"`healthhub serve --workers {doc['gunicorn_workers']}` (gunicorn, sync workers)"]])
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


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def render_hospital(doc: dict[str, Any]) -> str:
    """The tables of a results file written by bench/hospital.py."""
    out = _machine(doc, False, [])
    hl7 = doc.get("hl7")
    if hl7:
        out += ["", f"### HL7 v2 ORU^R01 over MLLP, ACK received ({doc['db']})", "",
                f"`healthhub mllp` as a subprocess; lab reports of {hl7['message_bytes_mean']} bytes on average "
                "(a CBC: 5–10 OBX, 1 patient per 10 messages); CPU per message from /proc "
                "(PostgreSQL: the backends serving the listener).", ""]
        rows = [[name, p["messages"], f"{p['seconds']:.1f}", f"{p['messages_per_s']:.1f}",
                 f"{p['observations_per_s']:.0f}", f"{p['ack_p50_ms']:.1f}", f"{p['ack_p99_ms']:.1f}",
                 f"{p['listener_cpu_ms_per_message']:.1f}", _ms(p.get("postgres_cpu_ms_per_message")),
                 f"{p['machine_busy']:.0%}", ", ".join(f"{k} {v}" for k, v in p["acks"].items())]
                for name, p in hl7["phases"].items()]
        out += _table(["connections", "messages", "s", "messages/s", "OBX/s", "ACK p50 ms", "ACK p99 ms",
                       "listener CPU ms/msg", "PostgreSQL CPU ms/msg", "2 cores busy", "ACKs"], rows,
                      "lrrrrrrrrrl")
        out += ["", "Stored after the run (warm-up included): " + ", ".join(
            f"{k} {c['stored']:,} of {c['sent']:,} sent" for k, c in hl7["checks"].items()) + "."]
    csv = doc.get("csv")
    if csv:
        out += ["", f"### CSV case reports ({doc['db']})", ""]
        out += _table(["rows", "file", "s", "rows/s", "peak RSS", "accepted", "rejected",
                       "CPU ms/row (ingest)", "CPU ms/row (PostgreSQL)"],
                      [[f"{csv['rows']:,}", f"{csv['file_bytes'] / 2**20:,.1f} MiB", f"{csv['seconds']:,.0f}",
                        f"{csv['rows_per_s']:,.1f}", f"{csv['peak_rss_bytes'] / 2**20:,.0f} MiB",
                        f"{csv['accepted']:,}", f"{csv['rejected']:,} (of {csv['bad_rows_written']:,} bad)",
                        _ms(csv.get("cpu_ms_per_row")), _ms(csv.get("postgres_cpu_ms_per_row"))]],
                      "rrrrrrrrr")
    mpi = doc.get("mpi")
    if mpi:
        out += ["", "### Patient matching (bench/mpi.py)", ""]
        out += _table(["persons", "records", "precision", "recall", "F1", "TP", "FP", "FN"],
                      [[mpi["persons"], mpi["records"], f"{mpi['precision']:.4f}", f"{mpi['recall']:.4f}",
                        f"{mpi['f1']:.4f}", mpi["true_pos"], mpi["false_pos"], mpi["false_neg"]]], "rrrrrrrr")
    if doc.get("targets"):
        out += ["", "### Targets", ""]
        out += _table(["target", "measured", "result"],
                      [[t["target"], t["value"], "pass" if t["pass"] else "**FAIL**"] for t in doc["targets"]], "lrl")
    return "\n".join(out) + "\n"


def render_stats(doc: dict[str, Any]) -> str:
    """The tables of a results file written by bench/stats.py."""
    out = _machine(doc, False, [["data", f"{doc['patients']:,} Patients; Observations generated (seed {doc['seed']}), "
                                         "written with the hub's indexer and bulk writer"]])
    out += ["", f"### Grouped counts through the app in process ({doc['db']}): median and max of the timed runs", ""]
    rows = []
    for scale in doc["scales"]:
        for q in scale["queries"]:
            rows.append([f"{scale['observations']:,}", q["label"], f"{q['median_s'] * 1000:,.0f}",
                         f"{q['max_s'] * 1000:,.0f}", f"{q['groups']:,}", q["suppressed"],
                         "null" if q["total"] is None else f"{q['total']:,}", f"{q['python_peak_kib']:,}"])
    out += _table(["Observations", "query", "median ms", "max ms", "groups", "suppressed", "total",
                   "Python peak KiB"], rows, "rlrrrrrr")
    target = doc.get("target")
    if target:
        out += ["", f"Target: two-dimension grouping over {target['observations']:,} Observations ≤ "
                    f"{target['limit_s']:.0f} s — worst median {target['worst_two_dimension_median_s']:.3f} s: "
                    f"{'pass' if target['pass'] else '**FAIL**'}."]
    return "\n".join(out) + "\n"


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results.json"
    doc = orjson.loads(path.read_bytes())
    renderers = {"hospital": render_hospital, "stats": render_stats}
    sys.stdout.write(renderers.get(doc.get("benchmark", ""), render)(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
