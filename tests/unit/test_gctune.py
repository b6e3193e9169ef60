"""The collector settings of a served process (healthhub/gctune.py)."""
from __future__ import annotations

import gc

from healthhub import gctune


def test_settle_freezes_the_start_up_objects_once_and_raises_the_first_threshold() -> None:
    gctune.settle()
    frozen = gc.get_freeze_count()
    assert frozen > 10_000  # the modules, models and tables loaded so far
    assert gc.get_threshold()[0] == gctune.GEN0_THRESHOLD
    kept = [[i] for i in range(1000)]  # tracked by the collector: a second freeze would take them
    gctune.settle()  # a second call (another app in the same process) freezes nothing more
    assert gc.get_freeze_count() == frozen
    assert kept
