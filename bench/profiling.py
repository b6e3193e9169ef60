"""The stage table of the cProfile harnesses (bench/profile_ingest.py, bench/profile_hl7.py)."""
from __future__ import annotations

import pstats
from collections.abc import Sequence

#: (label, file suffix, function names separated by ``|``); an empty suffix means the DB-API
#: cursor's calls, wherever the driver lives.
Stage = tuple[str, str, str]


def inclusive(stats: pstats.Stats, suffix: str, names: str) -> float:
    """Seconds spent in (and under) the named functions of files ending with ``suffix``."""
    wanted = set(names.split("|"))
    raw = stats.stats  # type: ignore[attr-defined]
    if suffix:
        return float(sum(ct for (f, _, n), (_, _, _, ct, _) in raw.items() if f.endswith(suffix) and n in wanted))
    return float(sum(ct for (f, _, n), (_, _, _, ct, _) in raw.items()
                     if (n in wanted and f.endswith("psycopg/cursor.py"))
                     or (f == "~" and "sqlite3.Cursor" in n and "execute" in n)))


def print_stages(stats: pstats.Stats, stages: Sequence[Stage], whole: float, unit: str, per: float = 1.0) -> None:
    """One line per stage: its inclusive time divided by ``per`` (in ``unit``) and its share of
    ``whole`` seconds. Stages overlap: a stage's time includes what it calls."""
    print(f"\n{'stage (inclusive; stages overlap)':<52}{unit:>12}   share")
    for label, suffix, names in stages:
        secs = inclusive(stats, suffix, names)
        print(f"{label:<52}{secs / per:12.2f}   {secs / whole:6.1%}")
    print()
