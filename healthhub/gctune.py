"""The garbage collector of a long-running hub process (web worker, MLLP listener, CLI ingest).

After start-up a worker holds ~390,000 objects (the R4B models, the search registry, SQLAlchemy's
tables and compiled statements) that live as long as it does, and CPython's cyclic collector
walks all of them in every full collection: ~170 ms each on the 2-core benchmark machine, and
ingesting a Synthea Bundle (hundreds of thousands of new dicts and lists) set off one every few
Bundles. ``gc.freeze()`` moves what exists at start-up out of the collector's sight (it is never
freed anyway), and a larger first-generation threshold makes the collector run less often during
those bursts of allocation; reference counting still frees everything that is not in a cycle at
once. Measured: hub ingest of the Synthea patient transactions 895 → 1,031–1,049 resources/s
(PostgreSQL, bench/RESULTS.md, ninth session). Instagram's account of the same idea:
https://instagram-engineering.com/dismissing-python-garbage-collection-at-instagram-4dca40b29172
https://docs.python.org/3/library/gc.html#gc.freeze
"""
from __future__ import annotations

import gc

#: Allocations (net of deallocations) between two collections of the youngest generation
#: (CPython's default is 700). The older generations keep their defaults.
GEN0_THRESHOLD = 10_000


_settled = False


def settle() -> None:
    """Call once a process has loaded what it keeps for its whole life (after the app or pipeline
    is built, before it serves): collect the start-up garbage, freeze the survivors, raise the
    first threshold. What is frozen is never collected, cycles included, so a process settles
    once: later calls (a test suite running the CLI in process, app after app) do nothing."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
