"""The SFTP source against a real OpenSSH sshd: gating by _SUCCESS, splits and gzip, lineage, exactly once,
schema evolution, and host/user key verification."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import dlt
import pyarrow as pa
import pytest

from loaders import runtime
from loaders.asapp_sftp import settings
from loaders.asapp_sftp.connection import WINDOW_BYTES, connect_sftp, download
from loaders.asapp_sftp.transports.base import Target
from loaders.loads import ASAPP_DATASET, ASAPP_PIPELINE, load_asapp
from loaders.sandbox.exports import partition_dir, write_partition
from loaders.sandbox.openssh import Sshd
from tests.python.helpers import Warehouse, elt, query, scalar

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def rows(start: int, n: int, **extra: object) -> list[dict[str, object]]:
    return [
        {"issue_id": i, "final_intent_code": f"I{i}", "instance_ts": "2026-11-01 10:00:00", **extra}
        for i in range(start, start + n)
    ]


def test_partition_waits_for_success_and_loads_once(exports: Path, warehouse: Warehouse) -> None:
    write_partition(exports, "convos_intents", T0, rows(1, 5))
    late = write_partition(exports, "convos_intents", T0.replace(hour=11), rows(100, 3), success=False)

    stats = load_asapp()
    assert stats.feeds["convos_intents"].partitions_loaded == 1
    assert stats.feeds["convos_intents"].waiting == ["version=1/format=jsonl/dt=2026-11-01/hr=11/mi=00"]
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 5

    stats = load_asapp()  # nothing new: nothing loaded
    assert stats.feeds["convos_intents"].partitions_loaded == 0
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 5

    (late / "_SUCCESS").write_bytes(b"")  # the export finished
    stats = load_asapp()
    assert stats.feeds["convos_intents"].partitions_loaded == 1
    assert stats.feeds["convos_intents"].partitions_waiting == 0
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 8
    assert scalar(warehouse, "select count(distinct issue_id) from asapp_raw.convos_intents") == 8

    load_asapp()
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 8
    # no copy of the rows stays behind in dlt's working folder once they are loaded
    loaded = runtime.pipelines_dir() / ASAPP_PIPELINE / "load" / "loaded"
    assert len(list(loaded.iterdir())) == 2  # the packages of the two runs that loaded rows
    assert not [p for p in loaded.rglob("*") if p.is_file() and p.parent.name == "completed_jobs"]


def test_split_gzip_files_and_lineage(exports: Path, warehouse: Warehouse) -> None:
    write_partition(exports, "utterances", T0, rows(1, 30), splits=3, gz=True)
    write_partition(exports, "utterances", T0.replace(minute=15), rows(50, 4))
    load_asapp()
    got = query(
        warehouse,
        "select _asapp_file, _asapp_split, count(*), min(_asapp_line), max(_asapp_line), "
        "any_value(_asapp_feed), any_value(_asapp_version), any_value(_asapp_partition_at), "
        "count(distinct _dlt_load_id), count(_asapp_loaded_at) "
        "from asapp_raw.utterances group by all order by 1",
    )
    at = datetime(2026, 11, 1, 10, 0)
    assert [g[:5] for g in got] == [
        ("utterances.jsonl", None, 4, 1, 4),
        ("utterances.jsonl.00.gz", 0, 10, 1, 10),
        ("utterances.jsonl.01.gz", 1, 10, 1, 10),
        ("utterances.jsonl.02.gz", 2, 10, 1, 10),
    ]
    assert {g[5:8] for g in got[1:]} == {("utterances", "1", at)}
    assert got[0][7] == at.replace(minute=15)
    assert all(g[8] == 1 and g[9] == g[2] for g in got)  # a load id and a load time on every row
    # line numbers follow the file: row k of the file is line k
    assert query(
        warehouse,
        "select issue_id, _asapp_line from asapp_raw.utterances where _asapp_file = 'utterances.jsonl.01.gz' "
        "order by _asapp_line limit 2",
    ) == [(2, 1), (5, 2)]


def test_documented_columns_land_typed_and_the_others_as_exported_text(exports: Path, warehouse: Warehouse) -> None:
    write_partition(
        exports,
        "convos_metrics",
        T0,
        [
            {
                "issue_id": 1,
                "assisted": True,
                "total_handle_time": 12.5,
                "platform": "web",
                "first_utterance_ts": "2019-09-22T13:12:26.073000+00:00",
                "nested": {"a": [1, 2]},
                "missing": None,
            },
        ],
    )
    load_asapp()
    got = query(
        warehouse,
        "select issue_id, assisted, total_handle_time, platform, first_utterance_ts, nested, _asapp_untyped "
        "from asapp_raw.convos_metrics",
    )
    # typed by export_docs.yaml (the timestamp's offset converted to UTC, as staging does); "nested" is not
    # documented: its JSON text as sent; every value cast, so nothing is kept aside in _asapp_untyped
    assert got == [(1, True, 12.5, "web", datetime(2019, 9, 22, 13, 12, 26, 73000), '{"a":[1,2]}', None)]


def test_a_feed_not_in_export_docs_lands_as_text(exports: Path, warehouse: Warehouse) -> None:
    write_partition(exports, "brand_new_feed", T0, [{"issue_id": 1, "score": 0.5, "seen_at": "2026-11-01 10:00:00"}])
    write_partition(exports, "convos_intents", T0, [{"issue_id": 1}])
    stats = load_asapp()
    assert stats.feeds["brand_new_feed"].rows == 1 and not stats.feeds["brand_new_feed"].drift
    # reported: it lands in raw, and gets no staging model
    assert stats.feeds["brand_new_feed"].undocumented and not stats.feeds["convos_intents"].undocumented
    got = query(warehouse, "select issue_id, score, seen_at, _asapp_untyped, _asapp_line from asapp_raw.brand_new_feed")
    assert got == [("1", "0.5", "2026-11-01 10:00:00", None, 1)]


def test_a_raw_column_created_as_text_stays_text(exports: Path, warehouse: Warehouse) -> None:
    # a raw table an earlier version loaded holds documented columns as text: later loads keep them text (a raw
    # column never changes type), and staging casts them
    earlier = dlt.resource(
        pa.table(
            {"issue_id": ["1"], "instance_ts": ["2026-10-31 09:00:00"], "_asapp_version": ["1"], "_asapp_line": [1]}
        ),
        name="convos_intents",
    )
    runtime.pipeline(ASAPP_PIPELINE, ASAPP_DATASET).run(earlier, loader_file_format="parquet")
    write_partition(
        exports,
        "convos_intents",
        T0,
        [
            {"issue_id": 2, "instance_ts": "2026-11-01T10:00:00+00:00", "disambig_count": "7"},
            {"issue_id": 3, "instance_ts": "soon", "disambig_count": "8"},
        ],
    )
    load_asapp()
    got = query(warehouse, "select issue_id, instance_ts from asapp_raw.convos_intents order by _asapp_line, issue_id")
    # as sent, as before: not re-typed (which would rewrite the first timestamp and null the second)
    assert got == [("1", "2026-10-31 09:00:00"), ("2", "2026-11-01T10:00:00+00:00"), ("3", "soon")]
    # a documented column the table did not have yet lands typed
    assert query(warehouse, "select distinct disambig_count from asapp_raw.convos_intents where issue_id = '2'") == [
        (7,)
    ]
    assert runtime.run_dbt(["build", "--select", "stg_asapp__convos_intents"])
    assert query(warehouse, "select issue_id, instance_ts from staging.stg_asapp__convos_intents order by 1") == [
        (1, datetime(2026, 10, 31, 9, 0)),
        (2, datetime(2026, 11, 1, 10, 0)),
        (3, None),
    ]


def test_empty_partition_and_new_columns(exports: Path, warehouse: Warehouse) -> None:
    write_partition(exports, "convos_intents", T0, [])
    write_partition(exports, "convos_intents", T0.replace(hour=11), rows(1, 2))
    stats = load_asapp()
    assert stats.feeds["convos_intents"].partitions_loaded == 2
    # ASAPP extends a feed with a new column: it lands in the raw table, older rows have null
    write_partition(exports, "convos_intents", T0.replace(hour=12), rows(10, 2, brand_new_column="x"))
    load_asapp()
    got = query(warehouse, "select issue_id, brand_new_column from asapp_raw.convos_intents order by issue_id")
    assert got == [(1, None), (2, None), (10, "x"), (11, "x")]


def test_rows_of_other_shapes_than_the_first_line_keep_every_column(exports: Path, warehouse: Warehouse) -> None:
    # the check groups the rows of the first line's shape apart: a first line of a rare shape, and keys that only
    # later lines have, must still all land, the most common shape's columns first
    lines = [{"issue_id": 1, "only_first": "a"}, *rows(2, 4), {"issue_id": 9, "only_last": "z"}]
    write_partition(exports, "convos_intents", T0, lines)
    load_asapp()
    got = query(
        warehouse,
        "select issue_id, only_first, final_intent_code, only_last from asapp_raw.convos_intents order by issue_id",
    )
    assert got == [(1, "a", None, None), *[(i, None, f"I{i}", None) for i in range(2, 6)], (9, None, None, "z")]
    columns = [
        c
        for (c,) in query(
            warehouse,
            "select column_name from information_schema.columns where table_schema = 'asapp_raw' "
            "and table_name = 'convos_intents' order by ordinal_position",
        )
    ]
    assert columns[:3] == ["issue_id", "final_intent_code", "instance_ts"]  # the shape of four of the six rows
    assert columns.index("only_first") < columns.index("only_last")  # then the rarer shapes, in file order


def test_feeds_and_since_filters(exports: Path, warehouse: Warehouse) -> None:
    write_partition(exports, "convos_intents", T0, rows(1, 2))
    write_partition(exports, "convos_intents", T0.replace(day=3), rows(3, 2))
    write_partition(exports, "utterances", T0, rows(1, 2))
    stats = load_asapp(feeds=["convos_intents"], since="2026-11-02")
    assert set(stats.feeds) == {"convos_intents"}
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 2
    tables = {
        t
        for (t,) in query(
            warehouse, "select table_name from information_schema.tables where table_schema = 'asapp_raw'"
        )
    }
    assert "utterances" not in tables


def test_names_outside_the_layout_are_ignored(exports: Path, warehouse: Warehouse) -> None:
    p = write_partition(exports, "convos_intents", T0, rows(1, 2))
    (p / "notes.txt").write_text("not an export")
    (p.parent.parent / "hr=xx").mkdir()
    stats = load_asapp()
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 2
    assert any(name.endswith("/notes.txt") for name in stats.ignored)
    assert any(name.endswith("/hr=xx") for name in stats.ignored)


def test_listing_skips_old_days_after_history(exports: Path, warehouse: Warehouse) -> None:
    for day in (1, 2, 3, 4, 5):
        write_partition(exports, "convos_intents", T0.replace(day=day), rows(day * 10, 1))
    load_asapp()
    # A partition appearing far behind the lookback window is not listed again (the cost of a run does not
    # grow with history); one within the window is.
    write_partition(exports, "convos_intents", T0.replace(day=1, hour=12), rows(900, 1))
    write_partition(exports, "convos_intents", T0.replace(day=4, hour=12), rows(901, 1))
    stats = load_asapp()
    assert stats.feeds["convos_intents"].partitions_loaded == 1
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents where issue_id = 901") == 1


def test_cli_load_prints_summary(exports: Path, warehouse: Warehouse) -> None:
    write_partition(exports, "convos_intents", T0, rows(1, 3))
    write_partition(exports, "convos_intents", T0.replace(hour=11), rows(5, 1), success=False)
    result = elt("load", "asapp")
    assert result.returncode == 0, result.stderr
    assert "convos_intents" in result.stdout and "waiting for _SUCCESS" in result.stdout
    assert "Warning" not in result.stderr, result.stderr  # no third-party noise on a clean run
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 3


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("empty_known_hosts", "is not in"),
        ("wrong_known_hosts", "does not match"),
        ("other_client_key", "authentication failed"),
    ],
)
def test_untrusted_host_or_key_is_refused(
    exports: Path,
    warehouse: Warehouse,
    sshd: object,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    message: str,
) -> None:
    write_partition(exports, "convos_intents", T0, rows(1, 3))
    path = getattr(sshd, setting)
    var = "PRIVATE_KEY_PATH" if setting == "other_client_key" else "KNOWN_HOSTS_PATH"
    monkeypatch.setenv(f"SOURCES__ASAPP_SFTP__{var}", str(path))
    result = elt("load", "asapp")
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if setting == "empty_known_hosts":
        assert "ssh-keyscan" in result.stderr  # says how to add the key
    assert not warehouse.exists() or not query(
        warehouse, "select 1 from information_schema.tables where table_name = 'convos_intents'"
    )


def test_downloads_use_aes_gcm_and_a_wide_window(sshd: Sshd) -> None:
    client = connect_sftp("127.0.0.1", sshd.port, sshd.username, str(sshd.client_key), str(sshd.known_hosts))
    try:
        transport = client.get_transport()
        assert transport is not None
        # OpenSSH offers AES-GCM; paramiko alone would pick aes128-ctr with a separate HMAC
        assert transport.remote_cipher.endswith("-gcm@openssh.com")
        sftp = client.open_sftp()
        channel = sftp.get_channel()
        assert channel is not None and channel.in_window_size == WINDOW_BYTES > 2 * 2**20
        sftp.close()
    finally:
        client.close()


def test_downloads_read_in_large_requests_and_arrive_whole(sshd: Sshd, tmp_path: Path) -> None:
    data = os.urandom(4 << 20)
    (tmp_path / "remote.bin").write_bytes(data)
    client = connect_sftp("127.0.0.1", sshd.port, sshd.username, str(sshd.client_key), str(sshd.known_hosts))
    try:
        sftp = client.open_sftp()
        before = sftp.request_number
        download(sftp, str(tmp_path / "remote.bin"), Target(tmp_path / "local.bin"))
        requests = sftp.request_number - before
        sftp.close()
    finally:
        client.close()
    assert (tmp_path / "local.bin").read_bytes() == data
    # open, stat, close and one read per 128 KiB: paramiko's own 32 KiB requests would take 128 reads
    assert requests <= (4 << 20) // settings.DEFAULT_READ_REQUEST_BYTES + 4 < 128


def test_partition_dir_layout(tmp_path: Path) -> None:
    assert partition_dir(tmp_path, "utterances", T0).relative_to(tmp_path).as_posix() == (
        "utterances/version=1/format=jsonl/dt=2026-11-01/hr=10/mi=00"
    )


def test_status_shows_what_is_loaded(exports: Path, warehouse: Warehouse) -> None:
    write_partition(exports, "convos_intents", T0, rows(1, 3))
    write_partition(exports, "convos_intents", T0.replace(hour=11), rows(5, 1), success=False)
    load_asapp()
    result = elt("status")
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if "convos_intents" in x)
    cells = [c.strip() for c in line.split("│")][1:-1]
    feed, n_rows, latest, _, waiting, sync, _, fresh, _, not_loaded, restated = cells
    assert (feed, n_rows, latest, waiting, sync) == ("convos_intents", "3", "2026-11-01 10:00", "1", "1h (hourly)")
    assert (not_loaded, restated) == ("1", "0")  # the first listing is whole: it found the partition waiting
    assert fresh == "no"  # the latest partition is weeks older than an hourly feed's 3 h
    assert "never loaded" in result.stdout


def test_every_command_has_help() -> None:
    for command in (
        ["--help"],
        ["load", "asapp", "--help"],
        ["load", "apsis", "--help"],
        ["generate", "--help"],
        ["schema-diff", "--help"],
        ["build", "--help"],
        ["push", "--help"],
        ["run", "--help"],
        ["status", "--help"],
        ["docs", "--help"],
        ["demo", "--help"],
    ):
        result = elt(*command)
        assert result.returncode == 0, (command, result.stderr)
        assert "Usage" in result.stdout


def test_old_partition_getting_success_late_loads_once_and_nothing_else_twice(
    exports: Path, warehouse: Warehouse
) -> None:
    late = write_partition(exports, "convos_intents", T0, rows(1, 2), success=False)
    for day in (5, 9, 13):  # days beyond the 2-day lookback load meanwhile
        write_partition(exports, "convos_intents", T0.replace(day=day), rows(day * 100, 1))
    load_asapp()
    load_asapp()
    (late / "_SUCCESS").write_bytes(b"")
    stats = load_asapp()
    assert stats.feeds["convos_intents"].partitions_loaded == 1
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 5
    assert scalar(warehouse, "select count(distinct issue_id) from asapp_raw.convos_intents") == 5
    assert load_asapp().feeds["convos_intents"].partitions_loaded == 0


def test_backfill_runs_in_chunks_each_partition_once(
    exports: Path, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__ASAPP_SFTP__MAX_PARTITIONS", "2")
    for h in range(5):
        write_partition(exports, "convos_intents", T0.replace(hour=h), rows(h * 10, 2))
    stats = load_asapp()  # three dlt runs of at most 2 partitions each
    assert stats.feeds["convos_intents"].partitions_loaded == 5
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 10
    assert scalar(warehouse, "select count(distinct _dlt_load_id) from asapp_raw.convos_intents") == 3
    assert load_asapp().feeds["convos_intents"].partitions_loaded == 0
