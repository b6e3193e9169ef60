"""Patient matching (MPI) on a labelled set: precision, recall, F1, blocking and review figures.

    python bench/mpi.py [--persons 2000] [--seed 1] [--data DIR] [--out FILE]

Builds the labelled set of :mod:`healthhub.ingest.matching_eval` from the shared Synthea corpus
(``../shared/data/synthea``: 40 Patients + the Practitioner/Organization names, places and phones
they are recombined with), blocks with ``blocking_keys``, scores every candidate pair and counts
pairs against the person labels at ``AUTO_LINK``. Pure CPU, no database. Targets: precision
≥ 0.99 and recall ≥ 0.95 (the process exits 1 when either is missed).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.corpus import SYNTHEA_DIR  # noqa: E402
from healthhub.ingest import matching, matching_eval  # noqa: E402

PRECISION_TARGET = 0.99
RECALL_TARGET = 0.95


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation once, print the figures and write them as JSON when asked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=2000, help="distinct persons (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the set (weights were tuned on seed 1)")
    parser.add_argument("--data", type=Path, default=SYNTHEA_DIR, help="folder of Synthea Bundles")
    parser.add_argument("--out", type=Path, help="write the figures as JSON to this file")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"Synthea corpus not found at {args.data}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    people, records = matching_eval.labelled_set(args.data, args.persons, args.seed)
    built = time.perf_counter() - started
    report = matching_eval.evaluate(records, people=people)
    kinds: dict[str, int] = {}
    for person in people:
        kinds[person.kind] = kinds.get(person.kind, 0) + 1

    print(f"MPI matching — {report.persons} persons ({_fmt(kinds)}), {report.records} records, seed {args.seed}")
    print(f"  AUTO_LINK {matching.AUTO_LINK}  PROBABLE {matching.PROBABLE}  REVIEW {matching.REVIEW}; "
          "pairwise counts")
    print(f"  precision {report.precision:.4f}  recall {report.recall:.4f}  F1 {report.f1:.4f}   "
          f"(TP {report.true_pos}, FP {report.false_pos}, FN {report.false_neg} of {report.true_pairs} true pairs)")
    print(f"  recall on pairs without a shared national id: {report.scored_recall:.4f} "
          f"of {report.scored_true_pairs}")
    print(f"  transitive closure: precision {report.closure_precision:.4f}  recall {report.closure_recall:.4f}")
    print(f"  review band [REVIEW, AUTO_LINK): {report.review_pairs} pairs, {report.review_true} of them true")
    print(f"  blocking: {report.candidate_pairs} pairs compared, pair completeness {report.pair_completeness:.4f}; "
          f"candidates per record mean {report.mean_candidates:.2f}, p99 {report.p99_candidates}, "
          f"max {report.max_candidates}; records per key mean {report.mean_block:.2f}, max {report.max_block}")
    print(f"  time: build {built:.2f} s, block + score {report.seconds:.2f} s")
    print(f"  false links by relation: {_fmt(report.false_links) or 'none'}")
    print(f"  tags on missed pairs: {_fmt(dict(list(report.missed.items())[:12]))}")

    if args.out:
        doc = {"benchmark": "mpi", "persons": args.persons, "seed": args.seed, "data": str(args.data),
               "thresholds": {"auto_link": matching.AUTO_LINK, "probable": matching.PROBABLE,
                              "review": matching.REVIEW},
               "person_kinds": kinds, "build_seconds": built, "report": asdict(report),
               "machine": {"python": platform.python_version(), "platform": platform.platform()},
               "date": time.strftime("%Y-%m-%d")}
        args.out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    met = report.precision >= PRECISION_TARGET and report.recall >= RECALL_TARGET
    print(f"  targets (precision ≥ {PRECISION_TARGET}, recall ≥ {RECALL_TARGET}): {'met' if met else 'MISSED'}")
    return 0 if met else 1


def _fmt(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


if __name__ == "__main__":
    raise SystemExit(main())
