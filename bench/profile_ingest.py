"""Profile the hub's transaction ingest (cProfile), where (a) measures it.

    .venv/bin/python bench/profile_ingest.py [--db postgres|sqlite] [--copies 12]
                                             [--style conditional|plain] [--out FILE.prof]

Loads the corpus into a fresh benchmark database (not profiled), runs VACUUM ANALYZE, then
profiles ``POST /fhir`` of ``--copies`` re-identified patient Bundles of one style (``conditional``:
the fhir-data-pipes Bundles, with conditional references; ``plain``: the smart-on-fhir ones)
through a new in-process app (new connections: the pass-2 conditions of run.py). Prints the inclusive time of the main
stages and the top functions. cProfile slows Python code down, so shares matter, not rates.
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

from bench import corpus as corpus_mod  # noqa: E402
from bench.access import KEY_FILE  # noqa: E402
from bench.database import DEFAULT_POSTGRES_URL, bench_database  # noqa: E402
from bench.ingest import BASE_URL, FHIR_JSON, authorized, ingest_corpus, warm_up  # noqa: E402
from bench.profiling import inclusive, print_stages  # noqa: E402
from healthhub import create_app, gctune  # noqa: E402
from healthhub.config import Config  # noqa: E402

#: (label, file suffix, function name) of the stages reported, inclusive of what they call.
STAGES = (
    ("whole request (POST /fhir)", "healthhub/api/fhir.py", "bundle"),
    ("conditional references (Repository.match)", "healthhub/storage/repository.py", "match"),
    ("validation (resources.validate)", "healthhub/resources.py", "validate"),
    ("index extraction (store.index_rows)", "healthhub/search/store.py", "index_rows"),
    ("writes of new rows (bulk.append, bulk._insert)", "healthhub/storage/bulk.py", "append|_insert"),
    ("SQL execution, all (psycopg/sqlite cursor)", "", "execute|executemany"),
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    p.add_argument("--copies", type=int, default=12)
    p.add_argument("--style", choices=("conditional", "plain"), default="conditional")
    p.add_argument("--out", type=Path, default=None, help="also write the raw profile (pstats format)")
    args = p.parse_args()
    corpus = corpus_mod.load_corpus()
    with bench_database(args.db, os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)) as db:
        _, loaded = ingest_corpus(db, corpus, print)
        style = [b for b in corpus.patients if b.conditional == (args.style == "conditional")]
        factory = corpus_mod.CopyFactory(style, corpus_mod.pinned_references(loaded))
        copies = [next(factory) for _ in range(args.copies)]
        db.analyze()
        app = create_app(Config(database_url=db.url, base_url=BASE_URL, signing_key=str(KEY_FILE)))
        client = authorized(app)
        try:
            warm_up(corpus, client)
            gctune.settle()  # as a served process does
            profile = cProfile.Profile()
            t0 = time.perf_counter()
            profile.enable()
            for c in copies:
                resp = client.post("/fhir", data=c.body, headers={"Content-Type": FHIR_JSON,
                                                                  "Prefer": "return=minimal"})
                if resp.status_code != 200:
                    raise RuntimeError(f"copy of {c.source}: {resp.status_code} {resp.get_data(as_text=True)[:300]}")
            profile.disable()
            elapsed = time.perf_counter() - t0
        finally:
            app.extensions["healthhub.db"].dispose()
    resources = sum(c.entries for c in copies)
    print(f"\n{args.db}: {len(copies)} {args.style} copies, {resources:,} resources in {elapsed:.1f} s under cProfile "
          f"({resources / elapsed:,.0f} resources/s, profiler overhead included)")
    stats = pstats.Stats(profile)
    if args.out:
        stats.dump_stats(str(args.out))
    total = inclusive(stats, "healthhub/api/fhir.py", "bundle") or elapsed
    print_stages(stats, STAGES, total, "seconds")
    stats.sort_stats("tottime").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
