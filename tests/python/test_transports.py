"""The walker's guarantees through every transport: SFTP, the File Exporter API (emulator) and a mirror (local
folder) serve the same tree, and each scenario must load the same rows, once: gating by _SUCCESS, a late
_SUCCESS, splits and gzip, re-exports, schema evolution, rejects, a killed run re-run; and staging must keep the
same newest versions (ties, restatements). And which transport a run uses: the one configured, --from, or one
line asking for --from."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from loaders import runtime
from loaders.loads import load_asapp
from loaders.sandbox.exports import partition_dir, write_partition
from tests.python.helpers import ELT, PROJECT, Warehouse, elt, query, scalar
from tests.python.transports import TRANSPORTS, Served, serve

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
FEED = "convos_intents"
KEY = "version=1/format=jsonl/dt=2026-11-01/hr=10/mi=00"


@pytest.fixture(params=TRANSPORTS)
def served(
    request: pytest.FixtureRequest, tmp_path: Path, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Served]:
    yield from serve(request, tmp_path / "exports", request.param, monkeypatch)


def rows(start: int, n: int, **extra: object) -> list[dict[str, object]]:
    return [{"issue_id": i, "final_intent_code": f"I{i}", **extra} for i in range(start, start + n)]


def test_a_partition_waits_for_its_success_and_loads_once(served: Served, warehouse: Warehouse) -> None:
    write_partition(served.root, FEED, T0, rows(1, 3))
    # today's: the File Exporter's daily refresh after it (tomorrow 02:00 UTC) has not passed either
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    late = write_partition(served.root, FEED, today, rows(10, 2), success=False)
    stats = load_asapp()
    assert stats.source == served.transport
    assert stats.feeds[FEED].partitions_loaded == 1
    assert stats.feeds[FEED].waiting == [f"version=1/format=jsonl/dt={today:%Y-%m-%d}/hr=00/mi=00"]
    (late / "_SUCCESS").write_bytes(b"")  # the export finished, late
    assert load_asapp().feeds[FEED].partitions_loaded == 1
    assert load_asapp().feeds[FEED].partitions_loaded == 0
    assert query(warehouse, f"select count(*), count(distinct issue_id) from asapp_raw.{FEED}") == [(5, 5)]
    assert query(warehouse, f"select distinct _asapp_source from asapp_raw.{FEED}") == [(served.transport,)]
    assert query(warehouse, "select distinct source from asapp_raw._partitions") == [(served.transport,)]


def test_splits_gzip_and_lineage(served: Served, warehouse: Warehouse) -> None:
    write_partition(served.root, FEED, T0, rows(1, 9), splits=3, gz=True)
    load_asapp()
    got = query(
        warehouse,
        f"select _asapp_file, _asapp_split, count(*), min(_asapp_line), max(_asapp_line) from asapp_raw.{FEED} "
        "group by all order by 1",
    )
    assert got == [(f"{FEED}.jsonl.0{i}.gz", i, 3, 1, 3) for i in range(3)]


def test_a_re_export_is_loaded_again_by_a_rescan_and_a_new_column_lands(served: Served, warehouse: Warehouse) -> None:
    first = write_partition(served.root, FEED, T0, rows(1, 2))
    load_asapp()
    for f in first.iterdir():
        f.unlink()
    # re-exported in two splits, with a column the first export did not have
    write_partition(served.root, FEED, T0, rows(1, 2, brand_new="x"), splits=2)
    assert load_asapp().feeds[FEED].partitions_loaded == 0  # a plain run passes a loaded partition by
    stats = load_asapp(rescan=True)
    assert stats.feeds[FEED].restated == [KEY]
    got = query(warehouse, f"select issue_id, brand_new from asapp_raw.{FEED} order by _asapp_loaded_at, issue_id")
    assert got == [(1, None), (2, None), (1, "x"), (2, "x")]  # raw keeps both exports; the later one is loaded later
    assert load_asapp(rescan=True).feeds[FEED].partitions_loaded == 0


def intent(issue: int, code: str, hour: int) -> dict[str, object]:
    return {"issue_id": issue, "final_intent_code": code, "instance_ts": f"2026-11-01 {hour:02d}:00:00"}


def test_staging_keeps_the_newest_version_and_a_restatement_wins(served: Served, warehouse: Warehouse) -> None:
    """Through dbt: the ordering key decides, then the partition time, then the split; a partition re-exported
    (other file names) supersedes its first load, incrementally as in a full refresh."""
    model = f"stg_asapp__{FEED}"
    staged = f"select issue_id, final_intent_code from staging.{model} order by 1"
    # issue 1 ties within a partition (split 1 wins), 2 ties across partitions (the later one wins), 3 is decided
    # by its ordering key (the earlier partition's later instance_ts wins)
    first = write_partition(
        served.root,
        FEED,
        T0,
        [intent(1, "A", 10), intent(1, "B", 10), intent(2, "OLD", 10), intent(3, "X", 11)],
        splits=2,
    )
    write_partition(served.root, FEED, T0 + timedelta(hours=1), [intent(2, "NEW", 10), intent(3, "Y", 9)])
    load_asapp()
    assert runtime.run_dbt(["build", "--select", model])
    assert query(warehouse, staged) == [(1, "B"), (2, "NEW"), (3, "X")]
    for f in first.iterdir():
        f.unlink()
    write_partition(served.root, FEED, T0, [intent(1, "B", 10), intent(3, "RESTATED", 11)], splits=3)
    assert load_asapp(rescan=True).feeds[FEED].restated == [KEY]
    assert runtime.run_dbt(["build", "--select", model])  # incremental
    assert query(warehouse, staged) == [(1, "B"), (2, "NEW"), (3, "RESTATED")]
    assert runtime.run_dbt(["build", "--select", model, "--full-refresh"])
    assert query(warehouse, staged) == [(1, "B"), (2, "NEW"), (3, "RESTATED")]


def test_bad_lines_go_to_rejects_and_the_rest_loads(served: Served, warehouse: Warehouse) -> None:
    d = partition_dir(served.root, FEED, T0)
    d.mkdir(parents=True)
    (d / f"{FEED}.jsonl").write_bytes(b'{"issue_id": 1}\n{"issue_id": \n[2]\n{"issue_id": 3}\n')
    (d / "_SUCCESS").write_bytes(b"")
    stats = load_asapp()
    assert stats.feeds[FEED].rows == 2 and stats.feeds[FEED].rejected == 2
    assert query(warehouse, "select line from asapp_raw._rejects order by line") == [(2,), (3,)]


def test_a_corrupt_file_fails_its_partition_alone_and_is_retried(served: Served, warehouse: Warehouse) -> None:
    write_partition(served.root, FEED, T0, rows(1, 2))
    bad = write_partition(served.root, FEED, T0.replace(hour=11), rows(10, 4), gz=True)
    good = (bad / f"{FEED}.jsonl.gz").read_bytes()
    (bad / f"{FEED}.jsonl.gz").write_bytes(good[: len(good) // 2])
    stats = load_asapp()
    assert len(stats.feeds[FEED].failed) == 1 and stats.feeds[FEED].partitions_loaded == 1
    (bad / f"{FEED}.jsonl.gz").write_bytes(good)
    assert load_asapp().feeds[FEED].partitions_loaded == 1
    assert scalar(warehouse, f"select count(*) from asapp_raw.{FEED}") == 6


def _tree(root: Path) -> int:
    """Enough partitions that a load takes a couple of seconds."""
    total = 0
    for h in range(24):
        at = T0 + timedelta(hours=h)
        batch = [{"issue_id": h * 10_000 + i, "text": "x" * 200} for i in range(2_000)]
        write_partition(root, "utterances", at, batch, splits=2 if h % 3 == 0 else 1, gz=h % 2 == 1)
        total += len(batch)
    return total


@pytest.mark.parametrize("transport", ["file-exporter", "mirror"])  # SFTP: test_kill.py
def test_a_killed_load_re_run_loads_every_row_once(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    warehouse: Warehouse,
    monkeypatch: pytest.MonkeyPatch,
    transport: str,
) -> None:
    for served in serve(request, tmp_path / "exports", transport, monkeypatch):
        expected = _tree(served.root)
        kills = 0
        for delay in (1.0, 2.0, 3.0):
            proc = subprocess.Popen(
                [ELT, "load", "asapp"],
                cwd=PROJECT,
                env=dict(os.environ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        assert kills >= 1, "the load finished too fast to be interrupted"
        final = elt("load", "asapp")
        assert final.returncode == 0, final.stderr
        ((n, distinct),) = query(
            warehouse,
            "select count(*), count(distinct _asapp_file || ':' || _asapp_partition_at || ':' || _asapp_line) "
            "from asapp_raw.utterances",
        )
        assert n == distinct == expected


def test_switching_transport_reloads_nothing(
    tmp_path: Path, sshd: object, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "exports"
    write_partition(root, FEED, T0, rows(1, 2))
    write_partition(root, FEED, T0.replace(hour=11), rows(5, 2))
    for key, value in sshd.env(root).items():  # type: ignore[attr-defined]
        monkeypatch.setenv(key, value)
    assert load_asapp().feeds[FEED].partitions_loaded == 2
    monkeypatch.setenv("SOURCES__ASAPP_MIRROR__URL", str(root))  # the same tree, synced to a mirror
    write_partition(root, FEED, T0.replace(hour=12), rows(9, 1))
    stats = load_asapp(transport="mirror", rescan=True)
    # the partitions SFTP loaded are recognised (same keys), their fingerprints recorded as the mirror lists them
    assert stats.feeds[FEED].partitions_loaded == 1 and not stats.feeds[FEED].restated
    assert load_asapp(transport="mirror", rescan=True).feeds[FEED].partitions_loaded == 0
    assert query(warehouse, f"select _asapp_source, count(*) from asapp_raw.{FEED} group by 1 order by 1") == [
        ("mirror", 1),
        ("sftp", 4),
    ]


def test_several_transports_configured_ask_for_from(
    tmp_path: Path, sshd: object, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "exports"
    write_partition(root, FEED, T0, rows(1, 2))
    for key, value in sshd.env(root).items():  # type: ignore[attr-defined]
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SOURCES__ASAPP_MIRROR__URL", str(root))
    for command in (("load", "asapp"), ("run",), ("status",)):
        result = elt(*command)
        assert result.returncode == 1, (command, result.stdout)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "--from sftp|mirror" in lines[0], (command, result.stderr)
    assert not warehouse.exists() or not query(
        warehouse, "select 1 from information_schema.tables where table_name = 'convos_intents'"
    )
    unknown = elt("load", "asapp", "--from", "ftp")
    assert unknown.returncode != 0 and "ftp" in unknown.stderr
    loaded = elt("load", "asapp", "--from", "mirror")
    assert loaded.returncode == 0, loaded.stderr
    assert query(warehouse, f"select distinct _asapp_source from asapp_raw.{FEED}") == [("mirror",)]
