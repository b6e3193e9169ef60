"""Profile the HL7 v2 path (cProfile) that ``bench/hospital.py`` measures over MLLP.

    .venv/bin/python bench/profile_hl7.py [--db postgres|sqlite] [--messages 300] [--out FILE.prof]

On a fresh benchmark database: registers the bench sender, sends 50 lab reports through the
ingest pipeline (not profiled: imports, caches), then profiles ``Pipeline.receive_hl7v2`` of
``--messages`` more, in process (no socket: the MLLP framing is not what costs). Prints the
wall time per message without the profiler, the inclusive time of the main stages and the top
functions. cProfile slows Python code down, so shares matter, not rates.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.database import DEFAULT_POSTGRES_URL, bench_database  # noqa: E402
from bench.hospital import HL7_SENDER, WARMUP_MESSAGES, lab_report, register_senders  # noqa: E402
from bench.profiling import inclusive, print_stages  # noqa: E402
from healthhub import gctune, ingest_pipeline  # noqa: E402
from healthhub.config import Config  # noqa: E402
from healthhub.db import Database  # noqa: E402
from healthhub.ingest.pipeline import Caller  # noqa: E402

#: (label, file suffix, function name) of the stages reported, inclusive of what they call.
STAGES = (
    ("whole message (Pipeline.receive_hl7v2)", "healthhub/ingest/pipeline.py", "receive_hl7v2"),
    ("parse (hl7v2.parse)", "healthhub/ingest/hl7v2.py", "parse"),
    ("map to FHIR (hl7v2.to_fhir)", "healthhub/ingest/hl7v2.py", "to_fhir"),
    ("store the Bundle (Pipeline._store)", "healthhub/ingest/pipeline.py", "_store"),
    ("validation (resources.validate)", "healthhub/resources.py", "validate"),
    ("index extraction (store.index_rows)", "healthhub/search/store.py", "index_rows"),
    ("Provenance (Pipeline._provenance)", "healthhub/ingest/pipeline.py", "_provenance"),
    ("patient matching (Pipeline._after)", "healthhub/ingest/pipeline.py", "_after"),
    ("archive (archive.add, archive.finish)", "healthhub/ingest/archive.py", "add|finish"),
    ("audit (Pipeline._audit)", "healthhub/ingest/pipeline.py", "_audit"),
    ("commit (Session.commit)", "sqlalchemy/orm/session.py", "commit"),
    ("SQL execution, all (psycopg/sqlite cursor)", "", "execute|executemany|copy"),
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    p.add_argument("--messages", type=int, default=300)
    p.add_argument("--out", type=Path, default=None, help="also write the raw profile (pstats format)")
    args = p.parse_args()
    seed = "profile:hl7"
    with bench_database(args.db, os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)) as db:
        register_senders(db.url, [(HL7_SENDER, "Bench Laboratory (synthetic)")])
        database = Database(Config(database_url=db.url))
        pipeline = ingest_pipeline(database, database.config)
        caller = Caller("mllp", peer="127.0.0.1:0")
        gctune.settle()  # as healthhub mllp does
        try:
            for i in range(WARMUP_MESSAGES):
                _expect_aa(pipeline.receive_hl7v2(lab_report(i, seed), caller))
            first = WARMUP_MESSAGES
            messages = [lab_report(first + i, seed) for i in range(args.messages)]
            started = time.perf_counter()
            for message in messages:
                _expect_aa(pipeline.receive_hl7v2(message, caller))
            plain = (time.perf_counter() - started) / len(messages)
            first += args.messages
            messages = [lab_report(first + i, seed) for i in range(args.messages)]
            profile = cProfile.Profile()
            profile.enable()
            for message in messages:
                _expect_aa(pipeline.receive_hl7v2(message, caller))
            profile.disable()
        finally:
            database.dispose()
    print(f"{args.messages} messages without the profiler: {plain * 1000:.1f} ms/message "
          f"({1 / plain:.0f} messages/s, one thread, in process)")
    stats = pstats.Stats(profile)
    if args.out:
        stats.dump_stats(str(args.out))
    _report(stats, args.messages)
    return 0


def _expect_aa(ack: bytes) -> None:
    if b"MSA|AA|" not in ack:
        raise SystemExit(f"not stored: {ack!r}")


def _report(stats: pstats.Stats, messages: int) -> None:
    whole = inclusive(stats, *STAGES[0][1:]) or 1.0
    print_stages(stats, STAGES, whole, "ms/message", per=messages / 1000)
    stats.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    raise SystemExit(main())
