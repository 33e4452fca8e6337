"""pipeline.prep.synthetic.writers: the test-set writers render in the project's one process pool
(pipeline.prep.pool), so a killed `prep synthetic` leaves no worker behind."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support import procs

REPO = Path(__file__).resolve().parents[4]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_kill_9_of_the_driver_takes_the_tree_writers_workers_with_it():
    # map_items as write_is3 and write_ade20k call it, with items that keep each worker busy
    script = (
        "import time\n"
        "from pipeline.prep.synthetic.writers import map_items\n"
        "for _ in map_items(time.sleep, [120.0] * 4, 2, 'is3', False):\n"
        "    pass\n"
    )
    workers, left = procs.survivors_of_kill_9([sys.executable, "-c", script], 2, REPO)
    assert len(workers) >= 2, "the pool never started"
    assert left == [], f"render workers outlived their driver: {left}"
