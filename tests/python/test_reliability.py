"""Bad input and unsafe settings against the real sshd: a bad partition fails alone and whole, is reported and
retried; encrypted files are never loaded as garbage; key permissions are checked; secrets are not printed."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from loaders.asapp_sftp import settings
from loaders.loads import load_asapp
from loaders.sandbox.exports import partition_dir, write_partition
from loaders.sandbox.openssh import Sshd
from tests.python.helpers import Warehouse, elt, key_copy, query, scalar

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def rows(start: int, n: int) -> list[dict[str, object]]:
    return [{"issue_id": i, "final_intent_code": f"I{i}"} for i in range(start, start + n)]


@pytest.mark.parametrize("damage", ["truncated gzip", "corrupt gzip", "too many bad lines"])
def test_bad_file_fails_its_partition_whole_and_is_retried(
    exports: Path, warehouse: Warehouse, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_partition(exports, "convos_intents", T0, rows(1, 3))
    bad = write_partition(exports, "convos_intents", T0.replace(hour=11), rows(10, 40), splits=2, gz=True)
    second = bad / "convos_intents.jsonl.01.gz"
    good_bytes = second.read_bytes()
    if damage == "truncated gzip":
        second.write_bytes(good_bytes[: len(good_bytes) // 2])
    elif damage == "corrupt gzip":
        second.write_bytes(good_bytes[:20] + b"\x00" * 40 + good_bytes[60:])
    else:  # more bad lines than SOURCES__ASAPP_SFTP__MAX_BAD_LINES allows
        monkeypatch.setenv("SOURCES__ASAPP_SFTP__MAX_BAD_LINES", "2")
        second.write_bytes(gzip.compress(b'{"issue_id": 99}\n{"issue_id": \n[1]\nnot json\n'))
    write_partition(exports, "utterances", T0, rows(1, 2))  # another feed is not held up

    stats = load_asapp()
    failed = stats.feeds["convos_intents"].failed
    assert len(failed) == 1 and "convos_intents.jsonl.01.gz" in failed[0]
    # the first file of the bad partition was fine, yet none of its rows landed: the partition is atomic
    assert sorted(int(i) for (i,) in query(warehouse, "select issue_id from asapp_raw.convos_intents")) == [1, 2, 3]
    assert scalar(warehouse, "select count(*) from asapp_raw.utterances") == 2

    if damage == "too many bad lines":
        assert "3 bad lines, more than --max-bad-lines 2" in failed[0]
    second.write_bytes(good_bytes)  # ASAPP re-exports the file: the next run loads the partition
    stats = load_asapp()
    assert stats.feeds["convos_intents"].partitions_loaded == 1 and not stats.feeds["convos_intents"].failed
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 43


def test_cli_reports_failed_partition_and_exits_nonzero(exports: Path, warehouse: Warehouse) -> None:
    write_partition(exports, "convos_intents", T0, rows(1, 3))
    bad = write_partition(exports, "convos_intents", T0.replace(hour=11), rows(10, 4), gz=True)
    (bad / "convos_intents.jsonl.gz").write_bytes(b"\x1f\x8b not really gzip")
    result = elt("load", "asapp")
    assert result.returncode == 1
    assert "failed convos_intents version=1/format=jsonl/dt=2026-11-01/hr=11/mi=00" in result.stdout
    assert "convos_intents.jsonl.gz" in result.stdout
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 3  # the rest loaded


def test_encrypted_partition_is_skipped_not_loaded(exports: Path, warehouse: Warehouse) -> None:
    write_partition(exports, "convos_intents", T0, rows(1, 3))
    directory = partition_dir(exports, "convos_intents", T0.replace(hour=11))
    directory.mkdir(parents=True)
    (directory / "convos_intents.jsonl.gz.enc").write_bytes(b"\x85\x02 pgp-ish binary")
    (directory / "_SUCCESS").write_bytes(b"")
    stats = load_asapp()
    assert stats.feeds["convos_intents"].encrypted == ["version=1/format=jsonl/dt=2026-11-01/hr=11/mi=00"]
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 3
    stats = load_asapp()  # still listed (never recorded as loaded) until a decryptor exists
    assert len(stats.feeds["convos_intents"].encrypted) == 1


def test_world_readable_private_key_is_warned_about(
    exports: Path, warehouse: Warehouse, sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = key_copy(sshd.client_key, tmp_path / "loose_key", mode=0o644)
    monkeypatch.setenv("SOURCES__ASAPP_SFTP__PRIVATE_KEY_PATH", str(key))
    write_partition(exports, "convos_intents", T0, rows(1, 1))
    result = elt("load", "asapp")
    assert result.returncode == 0, result.stderr
    assert "can be read by other users" in result.stderr and "chmod 600" in result.stderr


def test_passphrase_is_required_and_never_printed(
    exports: Path, warehouse: Warehouse, sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = key_copy(sshd.client_key, tmp_path / "protected_key", passphrase="right-horse-battery")
    monkeypatch.setenv("SOURCES__ASAPP_SFTP__PRIVATE_KEY_PATH", str(key))
    write_partition(exports, "convos_intents", T0, rows(1, 1))

    result = elt("load", "asapp")
    assert result.returncode == 1 and "PRIVATE_KEY_PASSPHRASE" in result.stderr

    monkeypatch.setenv("SOURCES__ASAPP_SFTP__PRIVATE_KEY_PASSPHRASE", "wrong-staple-secret")
    result = elt("--debug", "load", "asapp")
    assert result.returncode != 0
    assert "wrong-staple-secret" not in result.stdout + result.stderr

    monkeypatch.setenv("SOURCES__ASAPP_SFTP__PRIVATE_KEY_PASSPHRASE", "right-horse-battery")
    result = elt("-v", "load", "asapp")
    assert result.returncode == 0, result.stderr
    assert "right-horse-battery" not in result.stdout + result.stderr
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 1


def test_bad_lines_go_to_rejects_and_the_rest_loads(exports: Path, warehouse: Warehouse) -> None:
    d = partition_dir(exports, "convos_intents", T0)
    d.mkdir(parents=True)
    lines = [
        b'{"issue_id": 1, "note": "ok"}',
        b'{"issue_id": 2, "note": "caf\xc3\xa9 \\u0007 bell"}\r',  # CRLF and an escaped control character
        b"",  # a blank line is not a row
        b'{"issue_id": 3, "note": "truncated',  # malformed JSON
        b'{"issue_id": 4, "note": "latin-1 \xe9"}',  # invalid UTF-8
        b"[5, 6]",  # a JSON value that is not an object
        b'{"issue_id": 7, "note": "' + b"y" * 3000 + b'"}',
        b'{"issue_id": 8, "note": "last line, no newline"}',
    ]
    (d / "convos_intents.jsonl").write_bytes(b"\n".join(lines))
    (d / "_SUCCESS").write_bytes(b"")
    stats = load_asapp()
    assert stats.feeds["convos_intents"].rows == 4 and stats.feeds["convos_intents"].rejected == 3
    got = query(
        warehouse, "select issue_id, _asapp_line, length(note) from asapp_raw.convos_intents order by _asapp_line"
    )
    # every good row keeps its real line number in the file; the 3000-character value is whole
    assert [(int(i), n) for i, n, _ in got] == [(1, 1), (2, 2), (7, 7), (8, 8)]
    assert got[2][2] == 3000
    rejects = query(warehouse, "select file, line, error, raw_text, partition from asapp_raw._rejects order by line")
    assert [(f, n) for f, n, _, _, _ in rejects] == [
        ("convos_intents.jsonl", 4),
        ("convos_intents.jsonl", 5),
        ("convos_intents.jsonl", 6),
    ]
    assert "JSONDecodeError" in rejects[0][2] and "UnicodeDecodeError" in rejects[1][2]
    assert "not an object" in rejects[2][2] and rejects[2][3] == "[5, 6]"
    assert rejects[0][4] == "version=1/format=jsonl/dt=2026-11-01/hr=10/mi=00"
    # accounting: the 7 non-blank lines read = rows loaded + lines rejected
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") + len(rejects) == 7
    assert load_asapp().feeds["convos_intents"].partitions_loaded == 0  # loaded once, rejects included
    assert scalar(warehouse, "select count(*) from asapp_raw._rejects") == 3


def test_valid_json_that_is_not_an_object_is_rejected_and_an_empty_object_is_a_row(
    exports: Path, warehouse: Warehouse
) -> None:
    # every line is valid JSON, so only the key pass can tell the non-objects apart (gzip: inflated once first)
    d = partition_dir(exports, "convos_intents", T0)
    d.mkdir(parents=True)
    lines = [b'{"issue_id": 1}', b"{}", b"[2, 3]", b'"four"', b'{"issue_id": 5}']
    (d / "convos_intents.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    (d / "_SUCCESS").write_bytes(b"")
    stats = load_asapp()
    assert stats.feeds["convos_intents"].rows == 3 and stats.feeds["convos_intents"].rejected == 2
    got = query(warehouse, "select issue_id, _asapp_line from asapp_raw.convos_intents order by _asapp_line")
    assert got == [(1, 1), (None, 2), (5, 5)]
    rejects = query(warehouse, "select line, raw_text from asapp_raw._rejects order by line")
    assert rejects == [(3, "[2, 3]"), (4, '"four"')]


def test_failed_partition_is_retried_even_after_later_days_load(exports: Path, warehouse: Warehouse) -> None:
    bad = write_partition(exports, "convos_intents", T0, rows(1, 3), gz=True)
    good = (bad / "convos_intents.jsonl.gz").read_bytes()
    (bad / "convos_intents.jsonl.gz").write_bytes(good[:10])
    for day in (5, 9, 13):  # far beyond the 2-day lookback
        write_partition(exports, "convos_intents", T0.replace(day=day), rows(day * 100, 1))
    assert len(load_asapp().feeds["convos_intents"].failed) == 1
    (bad / "convos_intents.jsonl.gz").write_bytes(good)
    stats = load_asapp()
    assert stats.feeds["convos_intents"].partitions_loaded == 1 and not stats.feeds["convos_intents"].failed
    assert scalar(warehouse, "select count(*) from asapp_raw.convos_intents") == 6


def test_very_long_line_loads_whole(exports: Path, warehouse: Warehouse) -> None:
    big = "z" * 11_000_000  # over 10 MB in one line (and over DuckDB's 16 MB default once with the others)
    write_partition(exports, "convos_intents", T0, [{"issue_id": 1, "blob": big}, {"issue_id": 2, "blob": big + big}])
    stats = load_asapp()
    assert stats.feeds["convos_intents"].rows == 2 and not stats.feeds["convos_intents"].failed
    assert query(warehouse, "select issue_id, length(blob) from asapp_raw.convos_intents order by 1") == [
        (1, 11_000_000),
        (2, 22_000_000),
    ]


def test_type_drift_loads_every_value_and_the_summary_says_so(exports: Path, warehouse: Warehouse) -> None:
    write_partition(
        exports,
        "convos_intents",
        T0,
        [
            {"issue_id": 1, "disambig_count": 2, "ftd_visit": True, "instance_ts": "2026-11-01 10:00:00"},
            {"issue_id": 2, "disambig_count": "3", "ftd_visit": "false", "instance_ts": "2026-11-01T10:00:01+00:00"},
            {"issue_id": 3, "disambig_count": "three", "ftd_visit": "maybe", "instance_ts": 1762000000},
            {"issue_id": 4, "disambig_count": {"n": 4}, "ftd_visit": None, "instance_ts": "yesterday"},
        ],
    )
    result = elt("load", "asapp")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = " ".join(result.stdout.split())
    # a number sent as a JSON string still casts: not drift; values that cannot cast are, and are counted
    assert "type drift convos_intents.disambig_count: 2 value(s) are not bigint" in summary
    assert "type drift convos_intents.ftd_visit: 1 value(s) are not boolean" in summary
    assert "type drift convos_intents.instance_ts: 2 value(s) are not timestamp" in summary
    assert "convos_intents.issue_id" not in summary
    landed = query(
        warehouse,
        "select issue_id, disambig_count, ftd_visit, instance_ts, _asapp_untyped "
        "from asapp_raw.convos_intents order by issue_id",
    )
    assert [row[:4] for row in landed] == [
        (1, 2, True, datetime(2026, 11, 1, 10, 0, 0)),
        (2, 3, False, datetime(2026, 11, 1, 10, 0, 1)),
        (3, None, None, None),
        (4, None, None, None),
    ]
    # nothing lost: what did not cast is kept as sent, beside the row
    assert [json.loads(row[4]) if row[4] else None for row in landed] == [
        None,
        None,
        {"disambig_count": "three", "ftd_visit": "maybe", "instance_ts": "1762000000"},
        {"disambig_count": '{"n":4}', "instance_ts": "yesterday"},
    ]


def test_a_file_of_many_arrow_batches_lands_whole_and_each_batch_is_checked_for_drift(
    exports: Path, warehouse: Warehouse
) -> None:
    n = 2 * settings.BATCH_ROWS + 10  # three Arrow batches
    directory = partition_dir(exports, "convos_intents", T0)
    directory.mkdir(parents=True)
    with (directory / "convos_intents.jsonl").open("w") as f:
        for i in range(n):
            count = "-1" if i < n - 1 else '"many"'
            f.write(f'{{"issue_id":{i},"disambig_count":{count}}}\n')
    (directory / "_SUCCESS").write_bytes(b"")
    stats = load_asapp()
    assert stats.feeds["convos_intents"].rows == n
    assert query(warehouse, "select count(*), count(distinct issue_id) from asapp_raw.convos_intents") == [(n, n)]
    drift = stats.feeds["convos_intents"].drift
    assert set(drift) == {"disambig_count"} and drift["disambig_count"].values == 1  # found in the last batch


@pytest.mark.parametrize(
    "last_line",
    [
        '{"issue_id": 249, "final_intent_code": "I249", "late_column": "x"}',  # a key no line before had
        '{"issue_id": 249}',  # a key fewer
        '{"final_intent_code": "I249", "issue_id": 249}',  # the same keys in another order
    ],
)
def test_a_line_of_another_shape_after_many_batches_lands_with_every_row_once(
    exports: Path, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, last_line: str
) -> None:
    # A file whose lines all have the first line's keys is read in one pass; a line that does not, found after
    # batches of the file were already read, makes it read again in two passes: no row may land twice or be lost
    monkeypatch.setattr(settings, "BATCH_ROWS", 100)
    directory = partition_dir(exports, "convos_intents", T0)
    directory.mkdir(parents=True)
    lines = [json.dumps(r) for r in rows(0, 249)] + [last_line]
    (directory / "convos_intents.jsonl").write_text("\n".join(lines) + "\n")
    (directory / "_SUCCESS").write_bytes(b"")
    stats = load_asapp()
    assert stats.feeds["convos_intents"].rows == 250
    got = query(
        warehouse,
        "select count(*), count(distinct issue_id), min(_asapp_line), max(_asapp_line), "
        "count(final_intent_code) from asapp_raw.convos_intents",
    )
    assert got == [(250, 250, 1, 250, 249 if last_line == '{"issue_id": 249}' else 250)]
    assert query(warehouse, "select _asapp_line from asapp_raw.convos_intents where issue_id = 249") == [(250,)]
    if "late_column" in last_line:
        assert query(warehouse, "select issue_id from asapp_raw.convos_intents where late_column = 'x'") == [(249,)]


def test_an_object_with_a_key_twice_fails_its_partition_alone(exports: Path, warehouse: Warehouse) -> None:
    write_partition(exports, "convos_intents", T0, rows(1, 3))
    bad = partition_dir(exports, "convos_intents", T0.replace(hour=11))
    bad.mkdir(parents=True)
    (bad / "convos_intents.jsonl").write_text('{"issue_id": 10}\n{"issue_id": 11, "issue_id": 12}\n')
    (bad / "_SUCCESS").write_bytes(b"")
    stats = load_asapp()
    failed = stats.feeds["convos_intents"].failed
    assert len(failed) == 1 and "convos_intents.jsonl: cannot be read" in failed[0] and "duplicate" in failed[0]
    assert sorted(int(i) for (i,) in query(warehouse, "select issue_id from asapp_raw.convos_intents")) == [1, 2, 3]
