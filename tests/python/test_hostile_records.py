"""Hostile records: every input has a defined outcome (loaded losslessly, or rejected and counted), never a crash
of the run nor a block on the next one. Loads run against the real sshd; reader-level cases read real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from loaders.asapp_sftp import settings
from loaders.asapp_sftp.connection import RetryPolicy, SftpConnection, connect_sftp
from loaders.asapp_sftp.decrypt import Decryptor
from loaders.asapp_sftp.listing import DataFile, Partition
from loaders.asapp_sftp.reader import PartitionReader
from loaders.asapp_sftp.transports.sftp import SftpTransport
from loaders.loads import load_asapp
from loaders.sandbox.exports import partition_dir, write_partition
from loaders.sandbox.openssh import Sshd
from tests.python.helpers import Warehouse, elt, query, scalar

PROJECT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
FEED = "convos_intents"


def rows(start: int, n: int) -> list[dict[str, object]]:
    return [{"issue_id": i, "final_intent_code": f"I{i}"} for i in range(start, start + n)]


def write_lines(root: Path, at: datetime, lines: list[bytes], name: str = f"{FEED}.jsonl") -> Path:
    directory = partition_dir(root, FEED, at)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(b"\n".join(lines) + b"\n")
    (directory / "_SUCCESS").write_bytes(b"")
    return directory


def the_next_good_partition_loads(exports: Path, warehouse: Warehouse, at: datetime) -> None:
    """A run after the bad input exits cleanly and loads a good partition that arrived since."""
    before = scalar(warehouse, f"select count(*) from asapp_raw.{FEED}")
    write_partition(exports, FEED, at, rows(5000, 2))
    stats = load_asapp()
    assert stats.feeds[FEED].partitions_loaded == 1 and not stats.feeds[FEED].failed
    assert scalar(warehouse, f"select count(*) from asapp_raw.{FEED}") == before + 2


# -- 1. a JSON key never overwrites a documented or a lineage column ------------------------------------------------

CLASHES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    # keys that differ only in case: the documented issue_id (bigint) keeps its value
    "case": ({"issue_id": 1, "Issue_ID": "x1"}, {"issue_id": 1}, {"Issue_ID": "x1"}),
    # keys that dlt's naming makes one (userId -> user_id): the one already in that form wins
    "normalized": (
        {"issue_id": 1, "userId": "u-camel", "user_id": "u-snake"},
        {"user_id": "u-snake"},
        {"userId": "u-camel"},
    ),
    # lineage names: the lineage value wins, whatever a line says
    "lineage": (
        {
            "issue_id": 1,
            "_asapp_feed": "forged",
            "_asapp_line": 999,
            "_asapp_untyped": "forged",
            "_asapp_extra": "forged",
            "_asapp_rejected": 1,
            "_dlt_load_id": "forged",
            "_dlt_id": "forged",
            "_ASAPP_File": "forged",
        },
        {"_asapp_feed": FEED, "_asapp_line": 1, "_asapp_untyped": None, "_asapp_file": f"{FEED}.jsonl"},
        {
            "_asapp_feed": "forged",
            "_asapp_line": "999",
            "_asapp_untyped": "forged",
            "_asapp_extra": "forged",
            "_asapp_rejected": "1",
            "_dlt_load_id": "forged",
            "_dlt_id": "forged",
            "_ASAPP_File": "forged",
        },
    ),
}


@pytest.mark.parametrize("shape", ["uniform", "varied", "with a bad line"])
@pytest.mark.parametrize("case", sorted(CLASHES))
def test_a_key_that_clashes_with_a_column_is_set_aside_and_counted(
    exports: Path, warehouse: Warehouse, case: str, shape: str
) -> None:
    line, wins, aside = CLASHES[case]
    second = {**line, "issue_id": 2}
    if shape == "varied":  # read in two passes: the second line lacks a key
        second.pop("final_intent_code", None)
        second["note"] = "two passes"
    lines = [json.dumps(line).encode(), json.dumps(second).encode()]
    if shape == "with a bad line":  # read line by line first, then in two passes
        lines.append(b'{"issue_id": 3,')
    write_lines(exports, T0, lines)
    stats = load_asapp()
    fstats = stats.feeds[FEED]
    assert fstats.partitions_loaded == 1 and not fstats.failed and fstats.rows == 2
    assert fstats.rejected == (shape == "with a bad line")
    assert fstats.keys_set_aside == {k: 2 for k in aside}
    columns = [c for c in wins if c != "_asapp_line"]
    got = query(
        warehouse,
        f"select {', '.join(columns)}, _asapp_line, _asapp_extra from asapp_raw.{FEED} order by _asapp_line",
    )
    assert [dict(zip(columns, r[: len(columns)], strict=True)) for r in got] == [
        {c: (2 if c == "issue_id" else v) if n else v for c, v in wins.items() if c != "_asapp_line"} for n in range(2)
    ]
    assert [r[len(columns)] for r in got] == [1, 2]  # the true line numbers
    # nothing lost: each set-aside key is kept as sent, in _asapp_extra
    assert [json.loads(r[-1]) for r in got] == [aside, aside]
    raw_columns = {
        c
        for (c,) in query(warehouse, f"select column_name from information_schema.columns where table_name = '{FEED}'")
    }
    assert not {"issue_id_1", "user_id_1"} & raw_columns
    the_next_good_partition_loads(exports, warehouse, T0.replace(hour=11))
    # ordinary rows carry no _asapp_extra
    assert scalar(warehouse, f"select count(_asapp_extra) from asapp_raw.{FEED} where issue_id >= 5000") == 0


def test_of_two_undocumented_keys_the_normalized_one_else_the_first_in_sort_order_wins(
    exports: Path, warehouse: Warehouse
) -> None:
    # neither is documented and neither is in dlt's form: "Foo_Bar" sorts before "fooBar"
    lines = [json.dumps({"issue_id": i, "fooBar": f"camel{i}", "Foo_Bar": f"upper{i}"}).encode() for i in (1, 2)]
    write_lines(exports, T0, lines)
    stats = load_asapp()
    assert stats.feeds[FEED].keys_set_aside == {"fooBar": 2}
    got = query(warehouse, f"select foo_bar, _asapp_extra from asapp_raw.{FEED} order by issue_id")
    assert [(v, json.loads(e)) for v, e in got] == [("upper1", {"fooBar": "camel1"}), ("upper2", {"fooBar": "camel2"})]
    the_next_good_partition_loads(exports, warehouse, T0.replace(hour=11))


def test_an_empty_key_is_set_aside_with_a_warning_naming_it(exports: Path, warehouse: Warehouse) -> None:
    # dlt cannot name a column "": the key is kept beside the row
    write_lines(exports, T0, [b'{"issue_id": 1, "": "nameless", "_dlt_id": "x"}'])
    result = elt("load", "asapp")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "key(s) ['', '_dlt_id'] set aside into _asapp_extra" in " ".join(result.stderr.split())
    assert json.loads(scalar(warehouse, f"select _asapp_extra from asapp_raw.{FEED}")) == {
        "": "nameless",
        "_dlt_id": "x",
    }
    the_next_good_partition_loads(exports, warehouse, T0.replace(hour=11))


# -- 2. control characters in keys, deep nesting, long lines: rejected, the rest loads ---------------------------


def nested(depth: int) -> bytes:
    """An object nested `depth` levels deep in all (the line's own object is level 1)."""
    return b'{"issue_id": 7, "n": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize("where", ["first line", "later line"])
def test_control_characters_in_keys_and_deep_nesting_are_rejected(
    exports: Path, warehouse: Warehouse, where: str
) -> None:
    bad = [
        b'{"issue_id": 3, "a\\u0000b": 1}',  # NUL
        b'{"issue_id": 4, "tab\\there": 1}',  # a tab
        b'{"issue_id": 5, "del\\u007f": 1}',  # DEL
        nested(settings.DEFAULT_MAX_DEPTH + 1),
    ]
    good = [b'{"issue_id": 1, "note": "a\\u0000 NUL in a value is fine"}', nested(settings.DEFAULT_MAX_DEPTH)]
    lines = bad + good if where == "first line" else good + bad
    write_lines(exports, T0, lines)
    stats = load_asapp()
    fstats = stats.feeds[FEED]
    assert not fstats.failed and fstats.rows == 2 and fstats.rejected == 4
    assert sorted(int(i) for (i,) in query(warehouse, f"select issue_id from asapp_raw.{FEED}")) == [1, 7]
    rejects = query(warehouse, "select line, error, raw_text from asapp_raw._rejects order by line")
    offset = 0 if where == "first line" else 2
    assert [n for n, _, _ in rejects] == [offset + 1, offset + 2, offset + 3, offset + 4]
    assert all("control character" in e for _, e, _ in rejects[:3])
    assert f"deeper than {settings.DEFAULT_MAX_DEPTH}" in rejects[3][1]
    assert rejects[0][2] == bad[0].decode()
    the_next_good_partition_loads(exports, warehouse, T0.replace(hour=11))


def test_a_line_nested_far_deeper_than_python_recurses_is_rejected_not_a_crash(
    exports: Path, warehouse: Warehouse
) -> None:
    # json.loads raises RecursionError on it; a malformed line beside it makes the file be read line by line
    write_lines(exports, T0, [nested(200_000), b'{"issue_id": 2', b'{"issue_id": 1}'])
    write_lines(exports, T0.replace(minute=15), [nested(200_000)])  # alone, on the first line
    stats = load_asapp()
    assert not stats.feeds[FEED].failed and stats.feeds[FEED].rejected == 3 and stats.feeds[FEED].rows == 1
    rejects = query(warehouse, "select line, error, length(raw_text) from asapp_raw._rejects order by partition, line")
    assert [(n, "deeper" in e) for n, e, _ in rejects] == [(1, True), (2, False), (1, True)]
    assert rejects[0][2] == settings.REJECT_RAW_LIMIT
    the_next_good_partition_loads(exports, warehouse, T0.replace(hour=11))


def test_a_line_longer_than_the_maximum_is_rejected_and_the_rest_loads(exports: Path, warehouse: Warehouse) -> None:
    limit = settings.DEFAULT_MAX_LINE_BYTES
    long_line = b'{"issue_id": 2, "blob": "' + b"y" * limit + b'"}'
    fits = b'{"issue_id": 3, "blob": "' + b"z" * (limit - 100) + b'"}'
    directory = partition_dir(exports, FEED, T0)
    directory.mkdir(parents=True)
    data = b"\n".join([b'{"issue_id": 1}', long_line, fits, b'{"issue_id": 4}']) + b"\n"
    (directory / f"{FEED}.jsonl.gz").write_bytes(zlib.compress(data, wbits=31))
    (directory / "_SUCCESS").write_bytes(b"")
    stats = load_asapp()
    assert not stats.feeds[FEED].failed and stats.feeds[FEED].rejected == 1 and stats.feeds[FEED].rows == 3
    got = query(warehouse, f"select issue_id, _asapp_line, length(blob) from asapp_raw.{FEED} order by issue_id")
    assert got == [(1, 1, None), (3, 3, limit - 100), (4, 4, None)]
    line, error, raw = query(warehouse, "select line, error, raw_text from asapp_raw._rejects")[0]
    assert (
        line == 2 and f"longer than {limit} bytes" in error and raw == long_line[: settings.REJECT_RAW_LIMIT].decode()
    )
    the_next_good_partition_loads(exports, warehouse, T0.replace(hour=11))


# -- 3. memory stays bounded whatever the input --------------------------------------------------------------------

GIANT_LINE = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from loaders.asapp_sftp.connection import RetryPolicy, SftpConnection
from loaders.asapp_sftp.listing import DataFile, Partition
from loaders.asapp_sftp.reader import PartitionReader, gunzip
from loaders.asapp_sftp.transports.sftp import SftpTransport
from zlib_ng import zlib_ng  # compresses a run of spaces ~15x faster than zlib

directory = Path(sys.argv[1])
gz = directory / "feed.jsonl.gz"
z = zlib_ng.compressobj(6, wbits=31)
with gz.open("wb") as f:  # ~1.2 MB of gzip: one line of 1.2 GB of spaces between two small ones
    f.write(z.compress(b'{"id": 1}\\n{"id": 2, "blob": "'))
    chunk = b" " * (1 << 24)
    for _ in range(72):
        f.write(z.compress(chunk))
    f.write(z.compress(b'"}\\n{"id": 3}\\n'))
    f.write(z.flush())
size = gz.stat().st_size
plain, problem, _ = gunzip(gz, 1 << 31)
assert problem is None, problem
reader = PartitionReader(
    SftpTransport(SftpConnection(lambda: None, "nowhere", RetryPolicy(1, 0.1), 1.0)), workdir=directory
)
part = Partition("feed", "1", "jsonl", "2026-11-01", "00", "00", str(directory))
prepared = reader.prepare(part, [DataFile("feed.jsonl.gz", None, True, False, size)], [plain], datetime.now(UTC))
ids = [i for b in reader.read(prepared) for i in b.column("id").to_pylist()]
reader.close()
print(ids, [(r.line, r.error[:60], len(r.raw)) for r in prepared.rejects])
# VmHWM is this process's own peak: ru_maxrss keeps, across fork and exec, the RSS of the process that started it
# (pytest's, over 1 GB late in the suite)
hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
print("peak", int(hwm.split()[1]) * 1024)
"""


def test_a_gzip_line_of_1_2_gb_is_rejected_in_bounded_memory(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", GIANT_LINE, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out, peak = done.stdout.strip().splitlines()
    ids, rejects = out.split("] [", 1)
    assert ids == "['1', '3'"  # the rows around the giant line load (untyped: text)
    assert "(2, 'LineTooLong" in rejects and f", {settings.REJECT_RAW_LIMIT})" in rejects
    assert int(peak.split()[1]) < 1 << 30


# -- 4. an error confined to one file fails its partition only -----------------------------------------------------


@pytest.fixture
def make_reader(sshd: Sshd) -> Iterator[Callable[..., PartitionReader]]:
    readers: list[PartitionReader] = []

    def make(**kwargs: Any) -> PartitionReader:
        connection = SftpConnection(
            lambda: connect_sftp("127.0.0.1", sshd.port, sshd.username, str(sshd.client_key), str(sshd.known_hosts)),
            f"127.0.0.1:{sshd.port}",
            RetryPolicy(attempts=3, wait=0.1),
            10.0,
        )
        readers.append(PartitionReader(SftpTransport(connection), **kwargs))
        return readers[-1]

    yield make
    for reader in readers:
        reader.close()


def local_partition(
    root: Path, mi: int, lines: list[bytes], name: str = "feed.jsonl"
) -> tuple[Partition, list[DataFile]]:
    directory = root / f"mi={mi:02d}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(b"\n".join(lines) + b"\n")
    files = [DataFile(name, None, name.endswith(".gz"), False, (directory / name).stat().st_size)]
    return Partition("feed", "1", "jsonl", "2026-11-01", "00", f"{mi:02d}", str(directory)), files


def read_all(
    reader: PartitionReader, partitions: list[tuple[Partition, list[DataFile]]], files: list[str] | None = None
) -> list[tuple[str, list[int] | None, str | None]]:
    """Per partition: (mi, ids read, problem); each row's _asapp_file added to files."""
    types: Future[dict[str, str] | None] = Future()
    types.set_result({"id": "bigint"})
    out = []
    for part, _, prepared, problem in reader.downloaded(partitions, types):
        ids = None
        if not problem:
            table = pa.Table.from_batches(list(reader.read(prepared)))
            ids = table.column("id").to_pylist()
            if files is not None:
                files += table.column("_asapp_file").to_pylist()
        out.append((part.mi, ids, problem))
    return out


def test_a_file_that_vanished_or_changed_size_since_the_listing_fails_its_partition_only(
    tmp_path: Path, make_reader: Callable[..., PartitionReader]
) -> None:
    vanished = local_partition(tmp_path, 0, [b'{"id": 1}'])
    (Path(vanished[0].path) / "feed.jsonl").unlink()  # deleted between the listing and the download
    shrunk = local_partition(tmp_path, 1, [b'{"id": 2}', b'{"id": 3}'])
    (Path(shrunk[0].path) / "feed.jsonl").write_bytes(b'{"id": 2}\n')  # rewritten shorter since the listing
    good = local_partition(tmp_path, 2, [b'{"id": 4}'])
    reader = make_reader()
    got = read_all(reader, [vanished, shrunk, good])
    assert [(mi, ids) for mi, ids, _ in got] == [("00", None), ("01", None), ("02", [4])]
    assert got[0][2] is not None and got[0][2].startswith("feed.jsonl: ") and "no such file" in got[0][2].lower()
    assert got[1][2] is not None and "feed.jsonl: " in got[1][2] and "listed 20 bytes" in got[1][2]
    assert reader.files.channel.connection.reconnects == 0  # neither was taken for a dropped connection


def test_an_error_in_a_file_is_its_partitions_problem_not_the_runs(
    tmp_path: Path, make_reader: Callable[..., PartitionReader]
) -> None:
    # a gzip file inflating past the configured maximum, a plain and an encrypted file whose decrypted name is the
    # plain one's, an encrypted file decrypting past the maximum: each a defined outcome, the partitions after read
    big = local_partition(tmp_path, 0, [])
    (Path(big[0].path) / "feed.jsonl").unlink()
    gz = Path(big[0].path) / "feed.jsonl.gz"
    gz.write_bytes(zlib.compress(b'{"id": 1, "pad": "' + b" " * 5_000_000 + b'"}\n', wbits=31))
    big = (big[0], [DataFile(gz.name, None, True, False, gz.stat().st_size)])
    pair = local_partition(tmp_path, 1, [b'{"id": 2}', b'{"id": 3}'])
    (Path(pair[0].path) / "feed.jsonl.enc").write_bytes(b'{"id": 4}\n')
    pair[1].append(DataFile("feed.jsonl.enc", None, False, True, 10))
    bomb = local_partition(tmp_path, 2, [b'{"id": 5, "pad": "' + b" " * 2_000_000 + b'"}'], name="feed.jsonl.enc")
    bomb = (bomb[0], [DataFile("feed.jsonl.enc", None, False, True, bomb[1][0].size)])
    good = local_partition(tmp_path, 3, [b'{"id": 6}'])
    reader = make_reader(decryptor=Decryptor(("cat",)), max_inflated_bytes=1_000_000)  # cat: the plain bytes as sent
    files: list[str] = []
    got = read_all(reader, [big, pair, bomb, good], files)
    assert got[0][1] is None and got[0][2] is not None
    assert "feed.jsonl.gz: inflates to more than 1000000 bytes" in got[0][2] and "MAX_INFLATED_BYTES" in got[0][2]
    assert got[1] == ("01", [2, 3, 4], None)  # both files, each read once
    assert got[2][:2] == ("02", None) and "feed.jsonl.enc: decrypts to more than 1000000 bytes" in str(got[2][2])
    assert got[3] == ("03", [6], None)
    assert files == ["feed.jsonl", "feed.jsonl", "feed.jsonl.enc", "feed.jsonl"]  # the remote names
