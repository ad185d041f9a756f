"""The SFTP partition reader's two fast paths, watched through real parts: DuckDB's own query log shows how many
passes a file took to read, and a real sshd serves the partitions whose downloads overlap their reading."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from loaders.asapp_sftp.connection import RetryPolicy, SftpConnection, connect_sftp
from loaders.asapp_sftp.decrypt import Decryptor
from loaders.asapp_sftp.listing import DataFile, Partition
from loaders.asapp_sftp.reader import PartitionReader, Scan, reading_database
from loaders.asapp_sftp.transports.base import Target
from loaders.asapp_sftp.transports.sftp import SftpTransport
from loaders.sandbox.openssh import Sshd

TYPES = {"id": "bigint", "score": "double"}


@pytest.fixture
def database() -> Iterator[duckdb.DuckDBPyConnection]:
    con = reading_database()  # as a load has it
    con.execute("call enable_logging('QueryLog')")  # every query of every cursor on this database
    yield con
    con.close()


@pytest.fixture
def make_reader(sshd: Sshd, database: duckdb.DuckDBPyConnection) -> Iterator[Callable[[], PartitionReader]]:
    readers: list[PartitionReader] = []

    def make() -> PartitionReader:
        connection = SftpConnection(
            lambda: connect_sftp("127.0.0.1", sshd.port, sshd.username, str(sshd.client_key), str(sshd.known_hosts)),
            f"127.0.0.1:{sshd.port}",
            RetryPolicy(attempts=2, wait=0.1),
            10.0,
        )
        readers.append(PartitionReader(SftpTransport(connection), database=database))
        return readers[-1]

    yield make
    for reader in readers:
        reader.close()


def partition(path: Path, feed: str = "feed", mi: str = "00") -> Partition:
    return Partition(feed, "1", "jsonl", "2026-11-01", "00", mi, str(path))


def write(path: Path, rows: list[dict[str, Any]]) -> DataFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return DataFile(path.name, None, False, False, path.stat().st_size)


def rows_of(reader: PartitionReader, prepared: Any) -> list[dict[str, Any]]:
    table = pa.Table.from_batches(list(reader.read(prepared)))
    return table.select(
        [c for c in table.column_names if not c.startswith("_asapp_") or c == "_asapp_line"]
    ).to_pylist()


def reads(database: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """(key-finding passes, row-reading passes) in DuckDB's query log so far."""
    logged = [m for (m,) in database.execute("select message from duckdb_logs where type = 'QueryLog'").fetchall()]
    return sum("read_ndjson_objects(" in m for m in logged), sum("read_json(" in m for m in logged)


def test_a_uniform_file_is_parsed_once_and_a_varied_one_in_two_passes(
    tmp_path: Path, make_reader: Callable[[], PartitionReader], database: duckdb.DuckDBPyConnection
) -> None:
    reader = make_reader()
    rows = [{"id": i, "name": f"n{i}", "score": i / 2} for i in range(3000)]
    uniform = write(tmp_path / "a" / "feed.jsonl", rows)
    prepared = reader.prepare(
        partition(tmp_path / "a"), [uniform], [tmp_path / "a" / uniform.name], datetime.now(UTC), TYPES
    )
    # one serializer's export: each line read once, as a map checked against the first line's keys
    assert reads(database) == (0, 1)
    assert rows_of(reader, prepared) == [{**r, "_asapp_line": n} for n, r in enumerate(rows, 1)]

    varied = [dict(r) for r in rows]
    varied[5] = {"score": 2.5, "name": "n5", "id": 5}  # the same keys in another order
    varied[7] = {"id": 7, "name": "n7"}  # one missing
    varied[2999] = {**rows[2999], "note": "late"}  # one more, on the last line (after the first batch)
    other = write(tmp_path / "b" / "feed.jsonl", varied)
    prepared = reader.prepare(
        partition(tmp_path / "b"), [other], [tmp_path / "b" / other.name], datetime.now(UTC), TYPES
    )
    # the one-pass read stops at the first line of another shape, and the file is read again with every key
    key_passes, row_passes = reads(database)
    assert key_passes >= 1 and row_passes == 3
    got = rows_of(reader, prepared)
    assert len(got) == 3000 and [r["_asapp_line"] for r in got] == list(range(1, 3001))
    assert got[5] == {"id": 5, "name": "n5", "score": 2.5, "note": None, "_asapp_line": 6}
    assert got[7] == {"id": 7, "name": "n7", "score": None, "note": None, "_asapp_line": 8}
    assert got[2999]["note"] == "late" and got[2998]["note"] is None


def test_the_next_partitions_download_while_one_is_read_and_the_caller_holds_another(
    tmp_path: Path, make_reader: Callable[[], PartitionReader]
) -> None:
    reader = make_reader()
    parts = []
    for n in range(3):
        directory = tmp_path / f"mi={n:02d}"
        rows = [{"id": n * 100_000 + i, "name": "x" * 40, "score": float(i)} for i in range(40_000)]
        parts.append((partition(directory, mi=f"{n:02d}"), [write(directory / "feed.jsonl", rows)]))
    # instrumentation, not a stand-in: each step runs as it does in a load, and its span is recorded
    spans: dict[tuple[str, str], tuple[float, float]] = {}

    def timed(step: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def run(part: Partition, *args: Any, **kwargs: Any) -> Any:
            start = time.monotonic()
            try:
                return method(part, *args, **kwargs)
            finally:
                spans[(step, part.mi)] = (start, time.monotonic())

        return run

    reader._download = timed("download", reader._download)  # type: ignore[method-assign]
    reader.prepare = timed("prepare", reader.prepare)  # type: ignore[method-assign]
    types: Future[dict[str, str] | None] = Future()
    types.set_result(TYPES)
    held: dict[str, tuple[float, float]] = {}
    ids = []
    for part, _, prepared, problem in reader.downloaded(parts, types):
        assert problem is None
        start = time.monotonic()
        ids.append([r["id"] for r in rows_of(reader, prepared)])
        time.sleep(0.5)  # the caller hands the rows to dlt
        held[part.mi] = (start, time.monotonic())
    assert ids == [[n * 100_000 + i for i in range(40_000)] for n in range(3)]
    # the second download runs while the first partition is read (the network overlaps the CPU) ...
    assert spans[("download", "01")][0] < spans[("prepare", "00")][1]
    # ... and the partitions after it are made ready while the caller holds the one before
    assert spans[("prepare", "01")][0] < held["00"][1]
    assert spans[("download", "02")][0] < held["00"][1]


def test_a_gzip_file_of_several_members_is_read_whole_with_its_lines_numbered_across_them(
    tmp_path: Path, make_reader: Callable[[], PartitionReader]
) -> None:
    # gzip writers that append (or split their output) leave several members in one file; DuckDB and `zcat` read
    # them all, and so must the download's inflate
    directory = tmp_path / "mi=00"
    directory.mkdir()
    members = [[{"id": m * 1000 + i, "name": f"m{m}", "score": float(i)} for i in range(700)] for m in range(3)]
    data = b"".join(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()) for rows in members)
    (directory / "feed.jsonl.gz").write_bytes(data)
    types: Future[dict[str, str] | None] = Future()
    types.set_result(TYPES)
    files = [DataFile("feed.jsonl.gz", None, True, False, len(data))]
    reader = make_reader()
    got = []
    for _, _, prepared, problem in reader.downloaded([(partition(directory), files)], types):
        assert problem is None
        got += rows_of(reader, prepared)  # while the caller holds it: its files go once it moves on
    assert [r["id"] for r in got] == [r["id"] for rows in members for r in rows]
    assert [r["_asapp_line"] for r in got] == list(range(1, 2101))


def test_a_blank_line_in_a_uniform_file_leaves_every_row_its_true_line_number(
    tmp_path: Path, make_reader: Callable[[], PartitionReader]
) -> None:
    # DuckDB skips a blank line without counting it: the one-pass read's row numbers would shift after it
    directory = tmp_path / "mi=00"
    directory.mkdir()
    lines = [json.dumps({"id": i, "name": f"n{i}", "score": 0.5}) for i in range(1, 5)]
    (directory / "feed.jsonl").write_text(lines[0] + "\n" + lines[1] + "\n\n" + "\n".join(lines[2:]) + "\n")
    f = DataFile("feed.jsonl", None, False, False, (directory / "feed.jsonl").stat().st_size)
    reader = make_reader()
    prepared = reader.prepare(partition(directory), [f], [directory / f.name], datetime.now(UTC), TYPES)
    assert [(r["id"], r["_asapp_line"]) for r in rows_of(reader, prepared)] == [(1, 1), (2, 2), (3, 4), (4, 5)]
    assert not prepared.rejects


def test_limits_are_the_readers_own_and_a_long_line_is_found_between_short_ones(
    tmp_path: Path, sshd: Sshd, database: duckdb.DuckDBPyConnection
) -> None:
    # a line over max_line_bytes in the middle of a read chunk, and one over max_depth, with small limits
    directory = tmp_path / "mi=00"
    directory.mkdir()
    lines = [b'{"id": 1}', b'{"id": 2, "name": "' + b"x" * 200 + b'"}', b'{"id": 3, "n": [[[1]]]}', b'{"id": 4}']
    (directory / "feed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    f = DataFile("feed.jsonl", None, False, False, (directory / "feed.jsonl").stat().st_size)
    connection = SftpConnection(lambda: None, "nowhere", RetryPolicy(attempts=1, wait=0.1), 1.0)  # type: ignore[arg-type, return-value]
    reader = PartitionReader(SftpTransport(connection), database=database, max_line_bytes=100, max_depth=3)
    try:
        prepared = reader.prepare(partition(directory), [f], [directory / f.name], datetime.now(UTC), TYPES)
        assert [(r["id"], r["_asapp_line"]) for r in rows_of(reader, prepared)] == [(1, 1), (4, 4)]
        assert [(r.line, r.error.split(":")[0]) for r in prepared.rejects] == [(2, "LineTooLong"), (3, "TooDeep")]
        assert prepared.rejects[0].raw == lines[1].decode()  # whole: shorter than what _rejects keeps
    finally:
        reader.close()


def test_a_line_too_deep_among_nested_ones_of_a_uniform_file_is_found_and_rejected(
    tmp_path: Path, database: duckdb.DuckDBPyConnection
) -> None:
    # every line has the first line's keys (the one-pass read takes them all) and nests: the count of brackets
    # cannot clear the file, so the lines with many are measured, and the one too deep is rejected
    connection = SftpConnection(lambda: None, "nowhere", RetryPolicy(attempts=1, wait=0.1), 1.0)  # type: ignore[arg-type, return-value]
    reader = PartitionReader(SftpTransport(connection), database=database, max_depth=3)
    try:
        for name, deep in (("shallow", None), ("deep", 50)):
            directory = tmp_path / name
            directory.mkdir()
            lines = [b'{"id": %d, "n": [{"a": "[[[[ in a string"}]}' % i for i in range(1, 101)]
            if deep:
                lines[deep - 1] = b'{"id": %d, "n": [[[1]]]}' % deep
            (directory / "feed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
            f = DataFile("feed.jsonl", None, False, False, (directory / "feed.jsonl").stat().st_size)
            prepared = reader.prepare(partition(directory), [f], [directory / f.name], datetime.now(UTC), TYPES)
            got = [(r["id"], r["_asapp_line"]) for r in rows_of(reader, prepared)]
            assert got == [(i, i) for i in range(1, 101) if i != deep]
            assert [(r.line, r.error.split(":")[0]) for r in prepared.rejects] == ([(deep, "TooDeep")] if deep else [])
    finally:
        reader.close()


def _counted(data: bytes, max_line_bytes: int) -> tuple[int, bool, int]:
    """What a Scan must find, counted the plain way: lines, whether one is too long, `{` and `[`."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return len(lines), any(len(x) > max_line_bytes for x in lines), data.count(b"{") + data.count(b"[")


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_a_scan_counts_the_same_however_the_bytes_are_cut(chunk: int) -> None:
    data = b'{"a":[1,{"b":2}]}\n\n{"c":"' + b"x" * 90 + b'"}\n[]\n{"d":1}'  # the last line has no newline
    for limit in (10, 100, 1000):
        found = Scan(limit)
        for i in range(0, len(data), chunk):
            found.feed(data[i : i + chunk])
        found.done()
        assert (found.lines, found.long_line, found.openers) == _counted(data, limit), (chunk, limit)


def test_a_download_is_scanned_as_it_is_written_and_anew_on_each_attempt(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # bytes of every value: newlines, brackets, and long runs between them
    found = Scan(1000)
    target = Target(tmp_path / "file", found)
    with target.open() as local:  # an attempt the connection dropped halfway
        local.write(data[: 1 << 20])
    with target.open() as local:  # the retry, from the start
        shutil.copyfileobj(io.BytesIO(data), local, 1 << 20)
    assert target.size() == len(data) and (tmp_path / "file").read_bytes() == data
    found.done()
    assert (found.lines, found.long_line, found.openers) == _counted(data, 1000)


def test_a_decrypted_file_is_scanned_as_it_is_decrypted(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "file.enc").write_bytes(data)
    found = Scan(1000)
    # cat: a streaming command whose plain bytes are the ones sent, as the hostile-records tests decrypt
    assert Decryptor(("cat",)).decrypt(tmp_path / "file.enc", Target(tmp_path / "file", found)) is None
    assert (tmp_path / "file").read_bytes() == data
    found.done()
    assert (found.lines, found.long_line, found.openers) == _counted(data, 1000)
