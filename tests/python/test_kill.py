"""A load killed at any point (SIGKILL during download, extract, normalize or load) and re-run: every row lands
exactly once and no partition is skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from loaders.sandbox.exports import write_partition
from tests.python.helpers import ELT, PROJECT, Warehouse, query


def _tree(root: Path) -> int:
    """Enough partitions and rows that a load takes a few seconds."""
    total = 0
    for feed in ("utterances", "convos_metrics"):
        for h in range(36):
            at = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(hours=h)
            rows = [{"issue_id": h * 10_000 + i, "text": "x" * 200, "n": i} for i in range(3_000)]
            write_partition(root, feed, at, rows, splits=2 if h % 3 == 0 else 1, gz=h % 2 == 1)
            total += len(rows)
    return total


@pytest.mark.slow
def test_sigkill_at_any_point_then_rerun_loads_everything_exactly_once(exports: Path, warehouse: Warehouse) -> None:
    expected = _tree(exports)
    env = dict(os.environ)
    # kill the load at staggered moments: while listing and downloading, extracting, normalizing and loading
    kills = 0
    for delay in (0.8, 1.6, 2.4, 3.2, 4.5, 6.0):
        proc = subprocess.Popen(
            [ELT, "load", "asapp"], cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3, "the load finished too fast to be interrupted: make the tree bigger"
    final = subprocess.run([ELT, "load", "asapp"], cwd=PROJECT, env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    for feed in ("utterances", "convos_metrics"):
        ((rows, distinct),) = query(
            warehouse,
            f"select count(*), count(distinct _asapp_file || ':' || _asapp_partition_at || ':' || "
            f"_asapp_line) from asapp_raw.{feed}",
        )
        assert rows == distinct, f"{feed}: duplicated rows after kills"
        assert rows == expected // 2, f"{feed}: {rows} rows, expected {expected // 2}"
