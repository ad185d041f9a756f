"""Overlapping runs, as when an hourly schedule fires while the last run still loads: a second run of the same
pipeline exits at once naming the first, and leaves it and its dlt folder alone; the lock of a killed run blocks
nothing. Every holder and every refused run here is a real process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from loaders import runtime
from loaders.loads import ASAPP_PIPELINE, load_asapp
from loaders.run_lock import run_lock
from loaders.sandbox.exports import write_partition
from tests.python.helpers import ELT, PROJECT, Warehouse, elt, scalar

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)

# A process that holds a lock until it is killed.
HOLD = """
import sys, time
from loaders.run_lock import run_lock
with run_lock(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""

# A process that tries to take a lock once and says what happened.
TRY = """
import sys
from loaders.run_lock import RunLockedError, run_lock
try:
    with run_lock(sys.argv[1], "elt probe"):
        print("taken")
except RunLockedError as e:
    print(e)
"""


@contextmanager
def held_by_child(name: str, command: str) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the lock `name`; SIGKILLed on exit (as a killed run: no chance to let go)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, name, command],
        cwd=PROJECT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def try_lock(name: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", TRY, name], cwd=PROJECT, env=dict(os.environ), capture_output=True, text=True, check=True
    ).stdout.strip()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below folder, with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def lock_file(name: str) -> Path:
    return runtime.pipelines_dir() / f"{name}.lock"


def wait_for_lock_of(proc: subprocess.Popen[bytes], name: str, timeout: float = 60) -> None:
    """Until the process has taken the lock `name` (its pid is in the lock file)."""
    deadline = time.monotonic() + timeout
    while f'"pid": {proc.pid},' not in (lock_file(name).read_text() if lock_file(name).exists() else ""):
        assert proc.poll() is None, "the run ended before it took its lock"
        assert time.monotonic() < deadline, "the run did not take its lock"
        time.sleep(0.02)


def _rows(start: int, n: int) -> list[dict[str, object]]:
    return [{"issue_id": i, "text": "x" * 200} for i in range(start, start + n)]


def test_a_second_load_exits_at_once_naming_the_first_and_a_killed_holder_blocks_nothing(
    exports: Path, warehouse: Warehouse
) -> None:
    write_partition(exports, "convos_intents", T0, _rows(0, 5))
    load_asapp()
    write_partition(exports, "convos_intents", T0.replace(hour=11), _rows(5, 3))  # new: a run that went on loads it
    folder = runtime.pipelines_dir() / ASAPP_PIPELINE
    before = snapshot(folder)

    with held_by_child(ASAPP_PIPELINE, "elt load asapp") as holder:
        refused = elt("load", "asapp", timeout=120)
        assert refused.returncode == 1, refused.stderr
        line = " ".join(refused.stderr.split())  # the console wraps long lines on narrow terminals
        assert re.search(
            rf"error: another elt load asapp is running \(pid {holder.pid}, started "
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); it was left untouched\. Wait for it, or run again later\.",
            line,
        ), line
        assert "--debug" not in line and "Traceback" not in refused.stderr
        assert holder.poll() is None, "the running holder was disturbed"
        assert snapshot(folder) == before, "the refused run touched the running run's dlt folder"
        assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 5

    # SIGKILLed: the lock file still names the dead holder, but the OS released its lock with it
    assert f'"pid": {holder.pid},' in lock_file(ASAPP_PIPELINE).read_text()
    after = elt("load", "asapp", timeout=300)
    assert after.returncode == 0, after.stderr
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 8


COMMANDS = [
    pytest.param("asapp_sftp", "elt load asapp", ["load", "asapp"], id="load asapp"),
    pytest.param("apsis", "elt load apsis", ["load", "apsis"], id="load apsis"),
    pytest.param("asapp_metadata", "elt push", ["push"], id="push"),
    pytest.param("asapp_metadata", "elt push", ["push", "--dry-run"], id="push --dry-run"),
    pytest.param("run", "elt run", ["run"], id="run while a run builds"),
    pytest.param("asapp_sftp", "elt load asapp", ["run"], id="run while a load runs"),
]


@pytest.mark.parametrize(("name", "command", "args"), COMMANDS)
def test_each_pipeline_refuses_a_second_run_until_its_holder_is_killed(
    warehouse: Warehouse, name: str, command: str, args: list[str]
) -> None:
    with held_by_child(name, command) as holder:
        refused = elt(*args, timeout=120)  # a run that waited for the lock would time out here
        line = " ".join(refused.stderr.split())
        assert refused.returncode == 1, refused.stderr
        assert f"error: another {command} is running (pid {holder.pid}, started " in line, line
        assert holder.poll() is None
    # nothing is configured here: the next run gets past the lock and stops at what it lacks
    after = elt(*args, timeout=300)
    assert "is running (pid" not in after.stderr, after.stderr


def test_the_locks_of_one_process_nest_and_name_its_outer_command(warehouse: Warehouse) -> None:
    with run_lock("run", "elt run"):
        with run_lock(ASAPP_PIPELINE, "elt load asapp"), run_lock(ASAPP_PIPELINE, "elt load asapp"):
            # re-entered by name, not deadlocked; another process is told what this process is: `elt run`
            assert try_lock(ASAPP_PIPELINE).startswith(f"another elt run is running (pid {os.getpid()}, started ")
        assert try_lock(ASAPP_PIPELINE) == "taken"  # released once the outer of its two holds ended
        assert try_lock("run").startswith("another elt run is running")
    assert try_lock("run") == "taken"


def _tree(root: Path) -> int:
    """Enough partitions and rows that a load takes several seconds."""
    total = 0
    for feed in ("utterances", "convos_metrics"):
        for h in range(36):
            rows = [{"issue_id": h * 10_000 + i, "text": "x" * 200, "n": i} for i in range(3_000)]
            write_partition(root, feed, T0 + timedelta(hours=h), rows, gz=h % 2 == 1)
            total += len(rows)
    return total


@pytest.mark.slow
def test_two_overlapping_loads_the_first_finishes_everything_once(exports: Path, warehouse: Warehouse) -> None:
    expected = _tree(exports)
    first = subprocess.Popen([ELT, "load", "asapp"], cwd=PROJECT, env=dict(os.environ), stderr=subprocess.PIPE)
    try:
        wait_for_lock_of(first, ASAPP_PIPELINE)
        second = elt("load", "asapp", timeout=120)
        assert first.poll() is None, "the first load finished before the second started: make the tree bigger"
        assert second.returncode == 1, second.stderr
        assert f"(pid {first.pid}, started " in " ".join(second.stderr.split())
        _, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0, stderr.decode()
    for feed in ("utterances", "convos_metrics"):
        rows, distinct = warehouse.query(
            f"select count(*), count(distinct _asapp_partition_at || ':' || _asapp_line) from asapp_raw.{feed}"
        )[0]
        assert rows == distinct == expected // 2, feed


def test_a_load_killed_while_holding_its_lock_blocks_nothing(exports: Path, warehouse: Warehouse) -> None:
    write_partition(exports, "convos_intents", T0, _rows(0, 5))
    killed = subprocess.Popen([ELT, "load", "asapp"], cwd=PROJECT, env=dict(os.environ))
    try:
        wait_for_lock_of(killed, ASAPP_PIPELINE)
    finally:
        killed.kill()
        killed.wait()
    assert killed.returncode == -9
    after = elt("load", "asapp", timeout=300)
    assert after.returncode == 0, after.stderr
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 5
