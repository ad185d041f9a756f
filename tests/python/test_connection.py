"""A dropped SFTP connection, against a private OpenSSH sshd killed mid-download: the download is retried on a
new connection with back-off and every row lands exactly once; when the server stays away the run fails with a
clear error, commits nothing of the partition it was reading, and the next run loads everything once."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from loaders.loads import load_asapp
from loaders.sandbox.exports import partition_dir, write_partition
from loaders.sandbox.openssh import OpenSshServer, SshdError
from tests.python.helpers import Warehouse, elt, query, scalar

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
BIG_ROWS = 250_000  # ~60 MB: long enough to download that the fault lands mid-file
PAD = "x" * 200


@pytest.fixture
def server(tmp_path: Path, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenSshServer]:
    """A private sshd (this test kills it) serving an export tree: one big partition, then two small ones."""
    sshd = OpenSshServer(tmp_path / "sshd")
    try:
        endpoint = sshd.start()
    except SshdError as e:
        pytest.fail(str(e))
    root = tmp_path / "exports"
    big = partition_dir(root, "convos_intents", T0)
    big.mkdir(parents=True)
    with (big / "convos_intents.jsonl").open("w") as f:
        f.writelines(f'{{"issue_id":{i},"final_intent_code":"{PAD}"}}\n' for i in range(BIG_ROWS))
    (big / "_SUCCESS").write_bytes(b"")
    for hour in (11, 12):
        write_partition(root, "convos_intents", T0.replace(hour=hour), [{"issue_id": -hour, "final_intent_code": "x"}])
    for key, value in endpoint.env(root).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SOURCES__ASAPP_SFTP__RETRY_ATTEMPTS", "4")
    monkeypatch.setenv("SOURCES__ASAPP_SFTP__RETRY_WAIT_SECONDS", "0.5")  # waits of about 0.5, 1 and 2 s
    try:
        yield sshd
    finally:
        sshd.stop(connections=True)


class MidDownload:
    """Runs `fault` once the big file is partly downloaded into `downloads`; records how much had arrived."""

    def __init__(self, downloads: Path, fault: Callable[[], object]) -> None:
        self.seen = 0
        self._downloads, self._fault = downloads, fault
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for f in self._downloads.glob("asapp-sftp-*/p0/*.convos_intents.jsonl"):
                size = f.stat().st_size if f.exists() else 0
                if size > 1 << 20:
                    self._fault()
                    self.seen = size
                    return
            time.sleep(0.002)

    def join(self) -> int:
        self._thread.join(timeout=60)
        return self.seen


def downloads_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the loader (in this process or a child) puts its downloads, so the fault can be timed."""
    d = tmp_path / "downloads"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    monkeypatch.setenv("TMPDIR", str(d))
    return d


def assert_loaded_once(warehouse: Warehouse) -> None:
    total, distinct = query(warehouse, "select count(*), count(distinct issue_id) from asapp_raw.convos_intents")[0]
    assert (total, distinct) == (BIG_ROWS + 2, BIG_ROWS + 2)


def full_size(tmp_path: Path) -> int:
    return (partition_dir(tmp_path / "exports", "convos_intents", T0) / "convos_intents.jsonl").stat().st_size


def test_connection_reset_mid_file_is_retried_and_loads_once(
    server: OpenSshServer,
    warehouse: Warehouse,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    watcher = MidDownload(downloads_dir(tmp_path, monkeypatch), server.drop_connections)
    with caplog.at_level(logging.WARNING):
        stats = load_asapp()
    assert 0 < watcher.join() < full_size(tmp_path), "the connection was not dropped mid-file"
    assert stats.reconnects >= 1
    assert any("retrying in" in r.getMessage() for r in caplog.records)
    assert stats.feeds["convos_intents"].partitions_loaded == 3 and not stats.feeds["convos_intents"].failed
    assert_loaded_once(warehouse)


def test_short_outage_is_waited_out(
    server: OpenSshServer, warehouse: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def outage() -> None:
        server.stop(connections=True)
        threading.Timer(1.0, server.restart).start()  # back within the ~3.5 s of back-off

    watcher = MidDownload(downloads_dir(tmp_path, monkeypatch), outage)
    stats = load_asapp()
    assert watcher.join() > 0
    assert stats.reconnects >= 1 and stats.feeds["convos_intents"].partitions_loaded == 3
    assert_loaded_once(warehouse)


def test_server_that_stays_down_fails_the_run_clearly_and_commits_nothing_half_read(
    server: OpenSshServer, warehouse: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = MidDownload(downloads_dir(tmp_path, monkeypatch), lambda: server.stop(connections=True))
    result = elt("load", "asapp")
    assert 0 < watcher.join() < full_size(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert "could not be restored (4 attempts)" in out and "the next run resumes" in out
    assert "retrying in" in out  # the back-off was visible while it happened
    tables = query(
        warehouse,
        "select table_name from information_schema.tables where table_schema = 'asapp_raw' "
        "and table_name = 'convos_intents'",
    )
    assert not tables or scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 0

    server.restart()
    stats = load_asapp()
    assert stats.feeds["convos_intents"].partitions_loaded == 3
    assert_loaded_once(warehouse)
