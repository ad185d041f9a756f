"""Reading a downloaded partition: inflating, checking and typing its files into Arrow with DuckDB."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from zlib_ng import zlib_ng

from loaders import runtime
from loaders.asapp_sftp import settings
from loaders.asapp_sftp.connection import SftpChannel, SftpConnection, download
from loaders.asapp_sftp.decrypt import Decryptor
from loaders.asapp_sftp.listing import DataFile, Partition

log = logging.getLogger(__name__)


class PartitionError(RuntimeError):
    """One partition cannot be loaded (a corrupt file): it is skipped, reported, and retried by the next run."""


def gunzip(path: Path) -> tuple[Path, str | None]:
    """The gzip file inflated beside it (all members), checked to its end-of-stream marker: (plain file, None), or
    (the file, why it is not complete and valid). DuckDB reads a file cut right after its header (or at a block
    boundary) as shorter without complaint, so the check cannot be left to it; and once inflated here, in the
    download thread, the checks and the read that follow parse a plain file instead of inflating it twice more.
    zlib-ng inflates ~4x faster than zlib (504 MB here: 0.17 s of CPU instead of 0.75 s)."""
    if path.stat().st_size == 0:
        return path, None  # an empty file is an empty file (and is skipped as one)
    plain = path.with_name(path.name.removesuffix(".gz") + ".plain")
    d = zlib_ng.decompressobj(wbits=31)
    try:
        with path.open("rb") as src, plain.open("wb") as dst:
            while chunk := src.read(1 << 20):
                while chunk:
                    if d.eof:  # a further gzip member
                        d = zlib_ng.decompressobj(wbits=31)
                    dst.write(d.decompress(chunk))
                    chunk = d.unused_data if d.eof else b""
            dst.write(d.flush())
    except zlib_ng.error as e:  # type: ignore[misc]  # its stub declares an instance, not the class
        plain.unlink(missing_ok=True)
        return path, f"corrupt gzip ({e})"
    if not d.eof:
        plain.unlink(missing_ok=True)
        return path, "truncated gzip (the stream has no end)"
    path.unlink()
    return plain, None


def _first_line_keys(path: Path, limit: int = 1 << 20) -> list[str] | None:
    """The keys of the file's first line when it is a JSON object of at most `limit` bytes, else None (only a
    hint: whatever it returns, the check still groups every row exactly)."""
    try:
        with path.open("rb") as f:
            line = f.readline(limit)
        value = json.loads(line)
    except (OSError, ValueError, RecursionError):  # ValueError: a line cut at the limit, or bytes that are not UTF-8
        return None
    return list(value) if isinstance(value, dict) else None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass
class TypeDrift:
    """Values of a column that do not cast to its documented type, in this run."""

    documented: str
    values: int = 0


def add_drift(into: dict[str, TypeDrift], counts: dict[str, TypeDrift]) -> None:
    """Add the counts of one read (a file, a partition) to a running total, column by column."""
    for column, drift in counts.items():
        into.setdefault(column, TypeDrift(drift.documented)).values += drift.values


def _duckdb_type(canonical: str) -> str:
    """The DuckDB type of a canonical type (loaders/export_docs/model.py: canonical_type)."""
    return "decimal" + canonical[len("numeric") :] if canonical.startswith("numeric") else canonical


def _cast(v: str, canonical: str) -> str:
    """DuckDB expression casting the text expression v to its canonical type, null when it does not cast: the
    rule of the duckdb asapp_cast macro (macros/asapp_cast.sql)."""
    if canonical == "timestamp":
        return (
            rf"coalesce(case when regexp_matches({v}, '\d:\d\d(\.\d+)?\s*([zZ]|[+-]\d\d(:?\d\d)?)$') "
            f"then timezone('UTC', try_cast({v} as timestamptz)) end, try_cast({v} as timestamp), "
            f"try_strptime(left({v}, 19), '%Y-%m-%d %H:%M:%S'), try_strptime(left({v}, 19), '%Y-%m-%dT%H:%M:%S'))"
        )
    if canonical == "date":
        return f"try_cast(left({v}, 10) as date)"
    return f"try_cast({v} as {_duckdb_type(canonical)})"


REJECT_MARK = "_asapp_rejected"  # marker row standing in for a rejected (1) or blank (0) line
# Values that did not cast to their column's type, as a JSON object {column: the value as sent}; null on the rows
# (nearly all) whose every value cast. Nothing is lost, and the typed column holds null for them.
UNTYPED = "_asapp_untyped"
_RAW = "_asapp_text__"  # prefix of the text of a typed column, inside the read query
_MAP = "_asapp_map"  # a line read as a map, inside the one-pass read query
_SAME = "_asapp_same_keys"  # whether a line has exactly the expected keys, in the one-pass read query


@dataclass(frozen=True)
class Reject:
    file: str
    line: int
    error: str
    raw: str  # the line, up to settings.REJECT_RAW_LIMIT bytes


@dataclass
class PreparedPartition:
    rejects: list[Reject] = field(default_factory=list)
    directory: Path | None = None  # where its files were downloaded (deleted once it has been read)
    spools: list[Path] = field(default_factory=list)  # its rows, typed, as Arrow IPC files (read, in file order)
    drift: dict[str, TypeDrift] = field(default_factory=dict)  # column -> values not of its type, in these rows
    loaded_at: datetime | None = None  # when its rows were read (each row's _asapp_loaded_at)


def reading_database() -> duckdb.DuckDBPyConnection:
    """The in-memory DuckDB that reads and checks downloaded files, shared by every feed's reader. Each query runs
    on its caller's thread alone (threads=1): a file's read is ordered (its line numbers), so a second DuckDB
    thread added no speed, only ~1.1 s of CPU per GB read, which the downloads and dlt's writes running beside
    it need. Feeds are read side by side, each on its reader's own thread."""
    return duckdb.connect(config={"threads": 1})


class PartitionReader:
    """Downloads a partition's files (paramiko prefetch) and reads them with DuckDB into Arrow batches.

    A column with a type (documented in export_docs.yaml, or the raw table's) lands typed, cast by the rule staging
    applies to text (macros/asapp_cast.sql); every other value lands as text: scalars as their JSON text (strings
    unquoted), objects and arrays as JSON. A value that does not cast to its column's type is kept as sent in the
    row's _asapp_untyped (type drift: never lost, never rejected).
    """

    AHEAD = 2  # partitions made ready ahead of the one the caller reads

    def __init__(
        self,
        connection: SftpConnection,
        decryptor: Decryptor | None = None,
        max_bad_lines: int = settings.DEFAULT_MAX_BAD_LINES,
        workdir: Path | None = None,
        read_request_bytes: int = settings.DEFAULT_READ_REQUEST_BYTES,
        database: duckdb.DuckDBPyConnection | None = None,
    ) -> None:
        # Downloads run on their own SFTP channel in a background thread, AHEAD partitions ahead of the caller
        # (gzip files inflated and checked to their end there); a file whose download the connection dropped is
        # downloaded again on a new connection. A second thread reads each downloaded partition (prepare: every
        # line parsed, typed, bad lines set aside) into Arrow IPC files on local disk while the next one
        # downloads, so the network overlaps the CPU, and the caller's thread only hands finished batches to dlt.
        self.channel = SftpChannel(connection)
        self.decryptor = decryptor  # for .enc files, in the download thread too
        self.max_bad_lines = max_bad_lines
        self.read_request_bytes = read_request_bytes
        self.workdir = Path(tempfile.mkdtemp(prefix=runtime.scratch_prefix("asapp-sftp", workdir), dir=workdir))
        # Connections to one in-memory DuckDB (the caller's, shared by every feed's reader, or its own).
        self._own = database is None
        self.database = reading_database() if database is None else database
        self.con = self.database.cursor()  # the checks and reads, in the prepare thread (one query at a time)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sftp-download")
        self._prepare_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sftp-prepare")

    def close(self) -> None:
        self.channel.abort()  # a download still waiting for the server gives up: the run is ending
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._prepare_pool.shutdown(wait=True, cancel_futures=True)  # one waiting for a cancelled download ends
        self.channel.close()
        self.con.close()
        if self._own:
            self.database.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _fetch(
        self, n: int, partition: Partition, files: list[DataFile], types: Future[dict[str, str] | None]
    ) -> Future[tuple[PreparedPartition, str | None]]:
        """The partition downloaded, checked and read into spools, or what is wrong with it (when done)."""
        local_dir = self.workdir / f"p{n}"
        downloaded = self._pool.submit(self._download, partition, files, local_dir)

        def prepare() -> tuple[PreparedPartition, str | None]:
            paths, problem = downloaded.result()
            prepared = PreparedPartition()
            if problem is None:
                try:
                    prepared = self.prepare(partition, files, paths, datetime.now(UTC), types.result())
                except PartitionError as e:
                    problem = str(e)
            prepared.directory = local_dir
            return prepared, problem

        return self._prepare_pool.submit(prepare)

    def _download(self, partition: Partition, files: list[DataFile], local_dir: Path) -> tuple[list[Path], str | None]:
        """The partition's files in local_dir (decrypted, inflated), and what is wrong with them (None when nothing
        is)."""
        local_dir.mkdir()
        paths = []
        problem = None
        for f in files:
            # Remote names matched the documented pattern, so they are safe as local names.
            local = local_dir / f.name
            remote = f"{partition.path}/{f.name}"
            self.channel.run(
                f"downloading {remote}",
                partial(download, remote=remote, local=local, request_bytes=self.read_request_bytes),
            )
            if f.encrypted and problem is None:
                if self.decryptor is None:  # listed as encrypted before download: not reached
                    raise PartitionError(f"{f.name}: encrypted, and no decryptor is configured")
                plain = local.with_name(f.name.removesuffix(".enc"))
                why = self.decryptor.decrypt(local, plain)
                local.unlink()
                local = plain
                if why:
                    problem = f"{f.name}: {why}"
            if f.gzip and problem is None:
                local, why = gunzip(local)
                if why:
                    problem = f"{f.name}: {why}"
            paths.append(local)
        return paths, problem

    def downloaded(
        self, partitions: list[tuple[Partition, list[DataFile]]], types: Future[dict[str, str] | None]
    ) -> Iterator[tuple[Partition, list[DataFile], PreparedPartition, str | None]]:
        """Each partition downloaded, checked and read into spools (prepare), or what is wrong with it; the next
        ones are made ready while the caller reads this one (AHEAD of them: one checked and read while the other
        downloads). The first download starts at once, before the iteration does; its read waits for types
        (column -> canonical type, see prepare), which the caller may set meanwhile. A partition's files are
        deleted once the caller moves on."""
        pending: deque[tuple[Partition, list[DataFile], Future[tuple[PreparedPartition, str | None]]]] = deque()
        queue = iter(enumerate(partitions))

        def submit() -> None:
            item = next(queue, None)
            if item is not None:
                n, (partition, files) = item
                pending.append((partition, files, self._fetch(n, partition, files, types)))

        def results() -> Iterator[tuple[Partition, list[DataFile], PreparedPartition, str | None]]:
            while pending:
                partition, files, future = pending.popleft()
                submit()
                prepared, problem = future.result()
                try:
                    yield partition, files, prepared, problem
                finally:
                    if prepared.directory is not None:
                        shutil.rmtree(prepared.directory, ignore_errors=True)

        for _ in range(self.AHEAD):
            submit()
        return results()

    def _keys(self, path: Path, first: list[str] | None) -> list[str] | None:
        """The file's keys (those of its most common row shape first, in file order), or None when DuckDB cannot
        read every line as a JSON object. Parsing the whole file here is what lets a partition be checked before
        any row is yielded. One parse per line: the rows are grouped by their key lists (a handful of shapes),
        and only a file with an empty list (`{}`, or a line that is not an object) is looked at again."""
        source = (
            f"read_ndjson_objects({_sql_str(str(path))}, compression='uncompressed', "
            f"maximum_object_size={settings.MAX_LINE_BYTES})"
        )
        try:
            # the rows of the first line's shape (nearly all) are grouped without hashing their keys: ~20% less
            # work than grouping every row by its key list; any other shape (every shape, when the first line
            # gives none) is grouped exactly
            first = first or None
            grouped = self.con.execute(
                f"select case when json_keys(json) = ?::varchar[] then null else coalesce(json_keys(json), []) end "
                f"as k, count(*) as n from {source} group by k",
                [first],
            ).fetchall()
            shapes = sorted(((k if k is not None else first or [], n) for k, n in grouped), key=lambda s: (-s[1], s[0]))
            if any(not k for k, _ in shapes):
                (not_objects,) = self.con.execute(
                    f"select count(*) from {source} where json_type(json) <> 'OBJECT'"
                ).fetchone() or (0,)
                if not_objects:
                    return None
        except duckdb.Error:
            return None
        keys = list(dict.fromkeys(k for shape, _ in shapes for k in shape))
        return [k for k in keys if k != REJECT_MARK]

    def _clean(self, f: DataFile, path: Path) -> tuple[Path, list[Reject]]:
        """Line by line, for a file DuckDB refused: each bad line (malformed JSON, invalid UTF-8, not an object)
        is recorded and replaced by a marker row, so every other row keeps its line number."""
        clean = path.with_name(path.name + ".clean.jsonl")
        rejects: list[Reject] = []
        try:
            with path.open("rb") as src, clean.open("wb") as dst:
                for n, raw in enumerate(src, 1):
                    line = raw.rstrip(b"\r\n")
                    if not line.strip():
                        dst.write(b'{"%s":0}\n' % REJECT_MARK.encode())  # blank: not a row, not a reject
                        continue
                    try:
                        value = json.loads(line.decode("utf-8"))
                        if not isinstance(value, dict):
                            raise ValueError(f"a JSON {type(value).__name__}, not an object")
                    except (UnicodeDecodeError, ValueError) as e:
                        text = line[: settings.REJECT_RAW_LIMIT].decode("utf-8", errors="replace")
                        rejects.append(Reject(f.name, n, f"{type(e).__name__}: {str(e)[:300]}", text))
                        dst.write(b'{"%s":1}\n' % REJECT_MARK.encode())
                        continue
                    dst.write(line + b"\n")
        except OSError as e:
            raise PartitionError(f"{f.name}: cannot be read ({e})") from e
        return clean, rejects

    def prepare(
        self,
        partition: Partition,
        files: list[DataFile],
        paths: list[Path],
        loaded_at: datetime,
        types: dict[str, str] | None = None,
    ) -> PreparedPartition:
        """Read every file of the partition into spools (Arrow IPC files beside them; the plain files are deleted
        once read) before anything is yielded: a partition loads whole or not at all. Rows get the lineage
        columns; types: column -> canonical type (the others land as text); values that will not cast to theirs
        are kept in _asapp_untyped and counted into prepared.drift. Bad lines go to rejects; more than the
        reader's max_bad_lines of them fail the partition (PartitionError), as does a file DuckDB cannot read.

        A file whose every line is an object with its first line's keys, in that order (an export written by
        one serializer), is parsed once: each line read as a map of its values, checked against those keys
        while it is read. Any other file (a line with other keys, a bad line, a duplicate key) is read in two
        passes: one to find every key and set bad lines aside (_keys, _clean), one to read the rows."""
        prepared = PreparedPartition(loaded_at=loaded_at)
        for f, path in zip(files, paths, strict=True):
            if path.stat().st_size == 0:
                continue
            first = _first_line_keys(path)  # a gzip file was inflated by the download
            if first and self._spool(partition, prepared, f, path, first, types, one_pass=True):
                continue
            keys = self._keys(path, first)
            if keys is None:
                path, rejects = self._clean(f, path)
                keys = self._keys(path, _first_line_keys(path))
                if keys is None:
                    raise PartitionError(f"{f.name}: cannot be read as JSON lines")
                prepared.rejects += rejects
            if keys:
                self._spool(partition, prepared, f, path, keys, types, one_pass=False)
        if len(prepared.rejects) > self.max_bad_lines:
            first_reject = prepared.rejects[0]
            raise PartitionError(
                f"{len(prepared.rejects)} bad lines, more than --max-bad-lines {self.max_bad_lines} "
                f"(first: {first_reject.file} line {first_reject.line}: {first_reject.error})"
            )
        return prepared

    def _spool(
        self,
        partition: Partition,
        prepared: PreparedPartition,
        f: DataFile,
        path: Path,
        keys: list[str],
        types: dict[str, str] | None,
        one_pass: bool,
    ) -> bool:
        """Read one file into its spool (see prepare). In one pass, False when a line does not have exactly the
        given keys or DuckDB refuses a line (nothing is kept: the file is then read in two passes)."""
        typed = {k: types[k] for k in keys if types and types.get(k, "varchar") != "varchar"}
        target = path.with_name(path.name + ".arrow")
        query = self._query(partition, f, path, keys, typed, prepared.loaded_at or datetime.now(UTC), one_pass)
        drift: dict[str, TypeDrift] = {}
        spooled = False
        try:
            reader = self.con.execute(query).to_arrow_reader(settings.BATCH_ROWS)
            schema = reader.schema.remove(reader.schema.get_field_index(_SAME)) if one_pass else reader.schema
            with pa.ipc.new_file(str(target), schema) as spool:
                for batch in reader:
                    if one_pass:
                        if not pc.all(batch.column(_SAME)).as_py():
                            break
                        batch = batch.drop_columns([_SAME])
                    untyped = batch.column(UNTYPED)
                    if untyped.null_count < len(untyped):  # rare: counted in Python
                        for text in untyped.drop_null().to_pylist():
                            for k in json.loads(text):
                                drift.setdefault(k, TypeDrift(typed[k])).values += 1
                    spool.write_batch(batch)
                else:
                    spooled = True
        except duckdb.Error as e:
            if not one_pass:
                target.unlink(missing_ok=True)
                raise PartitionError(f"{f.name}: cannot be read ({' '.join(str(e).split())[:300]})") from e
            log.debug("%s: read in two passes (%s)", f.name, e)
        if not spooled:
            target.unlink(missing_ok=True)
            return False
        add_drift(prepared.drift, drift)
        path.unlink()
        prepared.spools.append(target)
        return True

    def _query(
        self,
        partition: Partition,
        f: DataFile,
        path: Path,
        keys: list[str],
        typed: dict[str, str],
        loaded_at: datetime,
        one_pass: bool,
    ) -> str:
        """The DuckDB query reading one file: its rows in file order, typed, with lineage. In one pass, each line
        is read as a map (a line that is not an object fails the query) and its values taken by position, with
        whether its keys are exactly `keys` in column _SAME."""
        source = (
            f"read_json({_sql_str(str(path))}, format='newline_delimited', compression='uncompressed', "
            f"maximum_object_size={settings.MAX_LINE_BYTES}, "
        )
        same = ""
        if one_pass:
            values = ", ".join(f"{_MAP}_values[{i}] as {_quote(k)}" for i, k in enumerate(keys, 1))
            expected = "[" + ", ".join(_sql_str(k) for k in keys) + "]::varchar[]"
            rows = (
                f"select {values}, row_number() over () as _asapp_line, "
                f"coalesce(map_keys({_MAP}) = {expected}, false) as {_SAME} from (select {_MAP}, "
                f"map_values({_MAP}) as {_MAP}_values from {source}records=false, "
                f"columns={{{_sql_str(_MAP)}: 'MAP(VARCHAR, VARCHAR)'}}))"
            )
            same = f", {_SAME}"
        else:
            marked = path.name.endswith(".clean.jsonl")
            read_keys = [*keys, REJECT_MARK] if marked else keys
            columns = "{" + ", ".join(f"{_sql_str(k)}: 'VARCHAR'" for k in read_keys) + "}"
            rows = f"select *, row_number() over () as _asapp_line from {source}columns={columns})"
            if marked:
                rows = f"select * from ({rows}) where {_quote(REJECT_MARK)} is null"
        lineage = (
            f"{_sql_str(partition.feed)} as _asapp_feed, {_sql_str(partition.version)} as _asapp_version, "
            f"timestamp {_sql_str(partition.at.strftime('%Y-%m-%d %H:%M:%S'))} as _asapp_partition_at, "
            f"{_sql_str(f.name)} as _asapp_file, "
            f"{'null' if f.split is None else f.split}::bigint as _asapp_split, "
            f"_asapp_line, "
            f"timestamp {_sql_str(loaded_at.strftime('%Y-%m-%d %H:%M:%S.%f'))} as _asapp_loaded_at"
        )
        query = f"select {', '.join(_quote(k) for k in keys)}, {lineage}"
        if not typed:
            # every batch has the same lineage columns
            return query + f", null::varchar as {UNTYPED}{same} from ({rows})"
        # cast once, keeping the text beside it until the drifted values have been picked out
        cast = ", ".join(
            f"{_cast(_quote(k), typed[k])} as {_quote(k)}, {_quote(k)} as {_quote(_RAW + k)}"
            if k in typed
            else _quote(k)
            for k in keys
        )
        failed = {
            k: f"({_quote(k)} is null and trim({_quote(_RAW + k)}) <> '')"  # a blank value is no value
            for k in typed
        }
        entries = ", ".join(
            f"case when {cond} then {_sql_str(json.dumps(k))} || ':' || to_json({_quote(_RAW + k)}) end"
            for k, cond in failed.items()
        )
        return query + (
            f", case when {' or '.join(failed.values())} then '{{' || concat_ws(',', {entries}) || '}}' end "
            f"as {UNTYPED}{same} from (select {cast}, _asapp_line{same} from ({rows}))"
        )

    @staticmethod
    def read(prepared: PreparedPartition) -> Iterator[pa.RecordBatch]:
        """The spooled rows of a partition, in Arrow batches, in file order. Each batch is read into memory of
        its own (not memory-mapped: a mapped spool would stay mapped, and counted, until its last batch is
        freed)."""
        for target in prepared.spools:
            with pa.OSFile(str(target)) as source:
                spool = pa.ipc.open_file(source)
                for i in range(spool.num_record_batches):
                    yield spool.get_batch(i)
