"""Reading a partition: downloading its files through the transport, inflating, checking and typing them into
Arrow with DuckDB."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from dlt.common.normalizers.naming.snake_case import NamingConvention
from zlib_ng import zlib_ng

from loaders import contract, runtime
from loaders.asapp_sftp import settings
from loaders.asapp_sftp.decrypt import Decryptor
from loaders.asapp_sftp.listing import DataFile, Partition
from loaders.asapp_sftp.transports.base import Target, Transport, TransportError

log = logging.getLogger(__name__)


class PartitionError(RuntimeError):
    """One partition cannot be loaded (a corrupt file): it is skipped, reported, and retried by the next run."""


class Scan:
    """What one pass over a file's bytes (at C speed, in the download thread) tells about its lines: how many
    there are, whether one is longer than max_line_bytes (its CR included), and how many `{` and `[` the file
    holds, which bounds how deep any line can nest (see PartitionReader._too_deep)."""

    def __init__(self, max_line_bytes: int = settings.DEFAULT_MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.restart()

    def restart(self) -> None:
        self.lines = 0  # newlines, plus one for a last line without one
        self.long_line = False
        self.openers = 0
        self._run = 0  # bytes since the last newline

    def feed(self, chunk: bytes) -> None:
        # counted by numpy, which releases the GIL (a download thread holding it slows paramiko's packet thread)
        # and counts each byte value at several times bytes.count's speed
        octets = np.frombuffer(chunk, np.uint8)
        # `{` (0x7b) and `[` (0x5b) differ in the 0x20 bit alone, so one comparison finds both
        self.openers += int(np.count_nonzero((octets | 0x20) == 0x7B))
        first = chunk.find(b"\n")
        if first < 0:
            self._run += len(chunk)
        else:
            self.lines += int(np.count_nonzero(octets == 0x0A))
            last = chunk.rfind(b"\n")
            self.long_line |= self._run + first > self.max_line_bytes
            if last - first - 1 > self.max_line_bytes:  # only then can a line between them be too long
                self.long_line |= max(map(len, chunk[first + 1 : last].split(b"\n"))) > self.max_line_bytes
            self._run = len(chunk) - last - 1
        self.long_line |= self._run > self.max_line_bytes

    def done(self) -> Scan:
        self.lines += self._run > 0
        self._run = 0
        return self


def scan(path: Path, max_line_bytes: int = settings.DEFAULT_MAX_LINE_BYTES) -> Scan:
    """The Scan of a file on disk (a plain download; gzip files are scanned while they are inflated)."""
    result = Scan(max_line_bytes)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            result.feed(chunk)
    return result.done()


class Inflated(NamedTuple):
    path: Path
    problem: str | None  # why the file is not complete and valid gzip, or too large
    scan: Scan | None


_INFLATE_STEP = 1 << 20  # bytes of output per inflate call: a 1 MB gzip block may hold a GB


def gunzip(
    path: Path,
    max_bytes: int = settings.DEFAULT_MAX_INFLATED_BYTES,
    max_line_bytes: int = settings.DEFAULT_MAX_LINE_BYTES,
) -> Inflated:
    """The gzip file inflated beside it (all members), checked to its end-of-stream marker: (plain file, None,
    its Scan), or (the file, why it is not complete and valid gzip or inflates to more than max_bytes, None).
    DuckDB reads a file cut right after its header (or at a block boundary) as shorter without complaint, so the
    check cannot be left to it; and once inflated here, in the download thread, the checks and the read that
    follow parse a plain file instead of inflating it twice more. zlib-ng inflates with a fraction of zlib's CPU.
    Output is taken _INFLATE_STEP bytes at a time, so memory stays bounded whatever the ratio, and max_bytes
    bounds the disk."""
    if path.stat().st_size == 0:
        return Inflated(path, None, Scan(max_line_bytes))  # an empty file is an empty file (and is skipped as one)
    plain = path.with_name(path.name.removesuffix(".gz") + ".plain")
    d = zlib_ng.decompressobj(wbits=31)
    found = Scan(max_line_bytes)
    size = 0
    try:
        with path.open("rb") as src, plain.open("wb") as dst:
            while chunk := src.read(1 << 20):
                while True:
                    if d.eof:  # a further gzip member
                        d = zlib_ng.decompressobj(wbits=31)
                    out = d.decompress(chunk, _INFLATE_STEP)
                    size += len(out)
                    if size > max_bytes:
                        plain.unlink(missing_ok=True)
                        return Inflated(
                            path,
                            f"inflates to more than {max_bytes} bytes (SOURCES__ASAPP_SFTP__MAX_INFLATED_BYTES)",
                            None,
                        )
                    found.feed(out)
                    dst.write(out)
                    chunk = d.unused_data if d.eof else d.unconsumed_tail
                    if not chunk and (d.eof or len(out) < _INFLATE_STEP):
                        break
            rest = d.flush()
            found.feed(rest)
            dst.write(rest)
    except zlib_ng.error as e:  # type: ignore[misc]  # its stub declares an instance, not the class
        plain.unlink(missing_ok=True)
        return Inflated(path, f"corrupt gzip ({e})", None)
    if not d.eof:
        plain.unlink(missing_ok=True)
        return Inflated(path, "truncated gzip (the stream has no end)", None)
    path.unlink()
    return Inflated(plain, None, found.done())


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


# A key holding one of these (C0, DEL, C1) cannot name a column on every destination: its line is rejected.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# JSON strings (their brackets are not structure), and the structural brackets left once they are removed.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


def _control_in(keys: list[str]) -> str | None:
    """The first key holding a control character, if any."""
    return next((k for k in keys if _CONTROL.search(k)), None)


def _depth(line: bytes) -> int:
    """How deep a JSON text nests (an object is 1), counted without recursion: the line may nest a million deep."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_JSON_STRING.sub(b"", line)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _openers(line: bytes) -> int:
    return len(line) - len(line.translate(None, b"{["))


class LineTooLong(ValueError):
    """A line longer than the reader's max_line_bytes (rejected, never held whole)."""


class TooDeep(ValueError):
    """A line nested deeper than the reader's max_depth (rejected before a recursive parser sees it)."""


class ControlCharacterInKey(ValueError):
    """A line with a key no destination can name a column after (rejected)."""


# Lineage and dlt's own columns: a JSON key that names one of them (in any case, or once dlt's naming has made
# it snake_case) is set aside, never read into the column.
RESERVED_PREFIXES = ("_asapp_", "_dlt_")
_NAMING = NamingConvention()  # dlt's snake_case: how the destination will name each column


def _forms(key: str) -> set[str] | None:
    """The names a key is known by where columns meet: DuckDB matches names in any case, and dlt names the raw
    table's columns in snake_case. None when dlt cannot name a column after it (an empty key)."""
    try:
        return {key.lower(), _NAMING.normalize_identifier(key)}
    except ValueError:
        return None


def plan_keys(keys: list[str], documented: dict[str, str] | None) -> tuple[list[str], list[str]]:
    """(keys read into their own columns, keys set aside into _asapp_extra), each in file order. Set aside: a key
    naming a lineage or dlt column (RESERVED_PREFIXES), a key dlt cannot name a column after, and each key that
    would land in the same column as another key of the file: the one that wins is a documented column's exact
    name, else the one already in dlt's snake_case, else the first in sort order. Decided once per file, on its
    key set, not per row."""
    documented = documented or {}

    def rank(key: str) -> tuple[int, str]:
        if key in documented:
            return 0, key
        in_snake_case = _forms(key) is not None and key == _NAMING.normalize_identifier(key)
        return (1 if in_snake_case else 2), key

    taken: set[str] = set()
    aside: set[str] = set()
    for key in sorted(keys, key=rank):
        forms = _forms(key)
        if forms is None or any(f.startswith(RESERVED_PREFIXES) for f in forms) or forms & taken:
            aside.add(key)
        else:
            taken |= forms
    return [k for k in keys if k not in aside], [k for k in keys if k in aside]


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


# Marker row standing in for a rejected (1) or blank (0) line in a file read line by line. Its key holds a control
# character, so no row can have it: a line whose key holds one is itself rejected.
REJECT_MARK = "\x01asapp_rejected"
# Values that did not cast to their column's type, as a JSON object {column: the value as sent}; null on the rows
# (nearly all) whose every value cast. Nothing is lost, and the typed column holds null for them.
UNTYPED = contract.UNTYPED.name
# Keys set aside (plan_keys: a lineage name, or a second key for one column), as a JSON object {key: the value as
# sent}; null on the rows (nearly all) that have none.
EXTRA = contract.EXTRA.name
LINE = contract.LINE.name
_RAW = "_asapp_text__"  # prefix of the text of a typed column, inside the read query
_ASIDE = "_asapp_aside__"  # prefix of a set-aside key's value, inside the read query
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
    set_aside: dict[str, int] = field(default_factory=dict)  # key -> values kept in _asapp_extra (plan_keys)


@dataclass
class _Spooled:
    """One file read into its spool, not yet part of the partition."""

    target: Path
    rows: int
    drift: dict[str, TypeDrift]
    set_aside: dict[str, int]


def reading_database() -> duckdb.DuckDBPyConnection:
    """The in-memory DuckDB that reads and checks downloaded files, shared by every feed's reader. Each query runs
    on its caller's thread alone (threads=1): a file's read is ordered (its line numbers), so a second DuckDB
    thread adds no speed, only CPU, which the downloads and dlt's writes running beside it need. Feeds are read
    side by side, each on its reader's own thread."""
    return duckdb.connect(config={"threads": 1})


def _describe(e: BaseException) -> str:
    """An error as one line for the run summary."""
    text = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class PartitionReader:
    """Downloads a partition's files through the transport (SFTP: paramiko prefetch) and reads them with DuckDB
    into Arrow batches.

    A column with a type (documented in export_docs.yaml, or the raw table's) lands typed, cast by the rule staging
    applies to text (macros/asapp_cast.sql); every other value lands as text: scalars as their JSON text (strings
    unquoted), objects and arrays as JSON. A value that does not cast to its column's type is kept as sent in the
    row's _asapp_untyped (type drift: never lost, never rejected). A key that would overwrite a documented or
    lineage column is kept as sent in the row's _asapp_extra (plan_keys). A line longer than max_line_bytes,
    nested deeper than max_depth or with a control character in a key is rejected like a malformed one.
    """

    AHEAD = 2  # partitions made ready ahead of the one the caller reads

    def __init__(
        self,
        transport: Transport,
        decryptor: Decryptor | None = None,
        max_bad_lines: int = settings.DEFAULT_MAX_BAD_LINES,
        workdir: Path | None = None,
        database: duckdb.DuckDBPyConnection | None = None,
        max_line_bytes: int = settings.DEFAULT_MAX_LINE_BYTES,
        max_depth: int = settings.DEFAULT_MAX_DEPTH,
        max_inflated_bytes: int = settings.DEFAULT_MAX_INFLATED_BYTES,
    ) -> None:
        # Downloads run on their own files of the transport (SFTP: their own channel) in a background thread,
        # AHEAD partitions ahead of the caller (gzip files inflated and checked to their end there); a file whose
        # download the connection dropped is downloaded again on a new connection. A second thread reads each
        # downloaded partition (prepare: every line parsed, typed, bad lines set aside) into Arrow IPC files on
        # local disk while the next one downloads, so the network overlaps the CPU, and the caller's thread only
        # hands finished batches to dlt.
        self.files = transport.files()
        self.source = transport.name  # each row's _asapp_source
        self.decryptor = decryptor  # for .enc files, in the download thread too
        self.max_bad_lines = max_bad_lines
        self.max_line_bytes = max_line_bytes
        self.max_depth = max_depth
        self.max_inflated_bytes = max_inflated_bytes
        self.workdir = Path(tempfile.mkdtemp(prefix=runtime.scratch_prefix("asapp-sftp", workdir), dir=workdir))
        # Connections to one in-memory DuckDB (the caller's, shared by every feed's reader, or its own).
        self._own = database is None
        self.database = reading_database() if database is None else database
        self.con = self.database.cursor()  # the checks and reads, in the prepare thread (one query at a time)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sftp-download")
        self._prepare_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sftp-prepare")

    def close(self) -> None:
        self.files.abort()  # a download still waiting for the server gives up: the run is ending
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._prepare_pool.shutdown(wait=True, cancel_futures=True)  # one waiting for a cancelled download ends
        self.files.close()
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
            prepared = PreparedPartition()
            try:
                paths, scans, problem = downloaded.result()
                if problem is None:
                    prepared = self.prepare(partition, files, paths, datetime.now(UTC), types.result(), scans)
            except PartitionError as e:
                problem = str(e)
            except TransportError:
                raise  # the server stayed away, or is refused: the run stops (nothing of this partition lands)
            except Exception as e:  # anything else is this partition's alone: it fails, the others load
                log.debug("%s: %r", partition.key, e, exc_info=True)
                problem = _describe(e)
            prepared.directory = local_dir
            return prepared, problem

        return self._prepare_pool.submit(prepare)

    def _download(
        self, partition: Partition, files: list[DataFile], local_dir: Path
    ) -> tuple[list[Path], list[Scan], str | None]:
        """The partition's files in local_dir (decrypted, inflated) with their Scans, and what is wrong with them
        (None when nothing is: the first problem stops the download of the partition)."""
        local_dir.mkdir()
        paths: list[Path] = []
        scans: list[Scan] = []
        for i, f in enumerate(files):
            # Named by position: FEED.jsonl.enc decrypts to the name of a FEED.jsonl beside it. Remote names
            # matched the documented pattern, so they are safe in local names.
            local = local_dir / f"{i:04d}.{f.name}"
            remote = f"{partition.path}/{f.name}"
            # a plain file is scanned as it arrives, downloaded or decrypted (a gzip file while it is inflated)
            scanned = Scan(self.max_line_bytes)
            watcher = None if f.gzip else scanned
            try:
                try:
                    self.files.fetch(remote, Target(local, None if f.encrypted else watcher), f.size)
                except FileNotFoundError as e:
                    return paths, scans, f"{f.name}: not found on the server (removed since it was listed?): {e}"
                if f.encrypted:
                    if self.decryptor is None:  # listed as encrypted before download: not reached
                        return paths, scans, f"{f.name}: encrypted, and no decryptor is configured"
                    plain = local.with_name(local.name.removesuffix(".enc"))
                    why = self.decryptor.decrypt(local, Target(plain, watcher), self.max_inflated_bytes)
                    local.unlink()
                    local = plain
                    if why:
                        return paths, scans, f"{f.name}: {why}"
                if f.gzip:
                    local, why, found = gunzip(local, self.max_inflated_bytes, self.max_line_bytes)
                    if why or found is None:
                        return paths, scans, f"{f.name}: {why}"
                else:
                    found = scanned.done()
            except TransportError:
                raise  # the server stayed away, or is refused: the run stops
            except Exception as e:  # this file's alone (gone, changed, local disk full): its partition fails
                return paths, scans, f"{f.name}: {_describe(e)}"
            paths.append(local)
            scans.append(found)
        return paths, scans, None

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

    def _source(self, path: Path) -> str:
        # DuckDB's buffers are about twice this; a longer line never reaches DuckDB (the Scan sends its file to
        # _clean), the 2 bytes are a CRLF's
        return f"{_sql_str(str(path))}, compression='uncompressed', maximum_object_size={self.max_line_bytes + 2}"

    def _keys(self, path: Path, first: list[str] | None) -> list[str] | None:
        """The file's keys (those of its most common row shape first, in file order), or None when DuckDB cannot
        read every line as a JSON object or a key holds a control character (the file is then read line by line).
        Parsing the whole file here is what lets a partition be checked before any row is yielded. One parse per
        line: the rows are grouped by their key lists (a handful of shapes), and only a file with an empty list
        (`{}`, or a line that is not an object) is looked at again."""
        source = f"read_ndjson_objects({self._source(path)})"
        try:
            # the rows of the first line's shape (nearly all) are grouped without hashing their keys: less work
            # than grouping every row by its key list; any other shape (every shape, when the first line
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
        keys = [k for k in dict.fromkeys(k for shape, _ in shapes for k in shape) if k != REJECT_MARK]
        return None if _control_in(keys) is not None else keys

    def _reject(self, line: bytes) -> str | None:
        """Why a line (a JSON text within max_line_bytes, without its line end) is rejected, or None."""
        if _openers(line) > self.max_depth and _depth(line) > self.max_depth:  # before json.loads can recurse
            raise TooDeep(f"nested deeper than {self.max_depth} levels (SOURCES__ASAPP_SFTP__MAX_DEPTH)")
        value = json.loads(line.decode("utf-8"))
        if not isinstance(value, dict):
            raise ValueError(f"a JSON {type(value).__name__}, not an object")
        if (key := _control_in(list(value))) is not None:
            raise ControlCharacterInKey(f"the key {key!r} holds a control character")
        return None

    def _clean(self, f: DataFile, path: Path) -> tuple[Path, list[Reject]]:
        """Line by line, for a file DuckDB refused (or whose lines the Scan or _keys found too long, too deep or
        with a control character in a key): each bad line is recorded and replaced by a marker row, so every other
        row keeps its line number. A line is read max_line_bytes at a time at most: a longer one is skipped to its
        end, never held whole."""
        clean = path.with_name(path.name + ".clean.jsonl")
        rejects: list[Reject] = []
        limit = self.max_line_bytes + 2  # and its CRLF

        def reject(n: int, line: bytes, error: str) -> None:
            text = line[: settings.REJECT_RAW_LIMIT].decode("utf-8", errors="replace")
            rejects.append(Reject(f.name, n, error, text))
            dst.write(json.dumps({REJECT_MARK: 1}).encode() + b"\n")

        try:
            with path.open("rb") as src, clean.open("wb") as dst:
                n = 0
                while raw := src.readline(limit):
                    n += 1
                    line = raw.rstrip(b"\r\n")
                    if len(line) > self.max_line_bytes:
                        while raw and not raw.endswith(b"\n"):  # to the line's end, a piece at a time
                            raw = src.readline(1 << 20)
                            if len(line) < settings.REJECT_RAW_LIMIT:  # what _rejects keeps of it
                                line = (line + raw[: settings.REJECT_RAW_LIMIT]).rstrip(b"\r\n")
                        error = f"longer than {self.max_line_bytes} bytes (SOURCES__ASAPP_SFTP__MAX_LINE_BYTES)"
                        reject(n, line, f"{LineTooLong.__name__}: {error}")
                        continue
                    if not line.strip():
                        dst.write(json.dumps({REJECT_MARK: 0}).encode() + b"\n")  # blank: not a row, not a reject
                        continue
                    try:
                        self._reject(line)
                    except (UnicodeDecodeError, ValueError, RecursionError) as e:
                        reject(n, line, f"{type(e).__name__}: {str(e)[:300]}")
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
        scans: list[Scan] | None = None,
    ) -> PreparedPartition:
        """Read every file of the partition into spools (Arrow IPC files beside them; the plain files are deleted
        once read) before anything is yielded: a partition loads whole or not at all. Rows get the lineage
        columns; types: column -> canonical type (the others land as text); values that will not cast to theirs
        are kept in _asapp_untyped and counted into prepared.drift. Bad lines go to rejects; more than the
        reader's max_bad_lines of them fail the partition (PartitionError), as does a file DuckDB cannot read.
        scans: each file's Scan, made by the download (else here).

        A file whose every line is an object with its first line's keys, in that order (an export written by
        one serializer), is parsed once: each line read as a map of its values, checked against those keys
        while it is read. Any other file (a line with other keys, a bad line, a duplicate key) is read in two
        passes: one to find every key and set bad lines aside (_keys, _clean), one to read the rows."""
        prepared = PreparedPartition(loaded_at=loaded_at)
        for i, (f, path) in enumerate(zip(files, paths, strict=True)):
            if path.stat().st_size == 0:
                continue
            try:
                found = scans[i] if scans is not None else scan(path, self.max_line_bytes)
                spooled, rejects = self._read_file(partition, prepared, f, path, types, found)
            except PartitionError:
                raise
            except Exception as e:  # a parser's limit (RecursionError, MemoryError...): this partition fails alone
                raise PartitionError(f"{f.name}: cannot be read ({_describe(e)})") from e
            prepared.rejects += rejects
            if spooled is not None:
                add_drift(prepared.drift, spooled.drift)
                for k, v in spooled.set_aside.items():
                    prepared.set_aside[k] = prepared.set_aside.get(k, 0) + v
                prepared.spools.append(spooled.target)
        if len(prepared.rejects) > self.max_bad_lines:
            first_reject = prepared.rejects[0]
            raise PartitionError(
                f"{len(prepared.rejects)} bad lines, more than --max-bad-lines {self.max_bad_lines} "
                f"(first: {first_reject.file} line {first_reject.line}: {first_reject.error})"
            )
        return prepared

    def _read_file(
        self,
        partition: Partition,
        prepared: PreparedPartition,
        f: DataFile,
        path: Path,
        types: dict[str, str] | None,
        found: Scan,
    ) -> tuple[_Spooled | None, list[Reject]]:
        """One file into its spool (None: no rows), and its rejected lines. Fast paths first; a file they cannot
        take whole (see prepare) is read line by line (_clean), which decides each line alone."""
        args = (partition, prepared.loaded_at or datetime.now(UTC), f)
        if not found.long_line:
            first = _first_line_keys(path)  # a gzip file was inflated by the download
            spooled = None
            if first and _control_in(first) is None:
                spooled = self._spool(*args, path, first, types, one_pass=True)
            if spooled is None and (keys := self._keys(path, first)) is not None:
                spooled = self._spool(*args, path, keys, types, one_pass=False) if keys else None
                if spooled is None:
                    return None, []  # only `{}` lines: no column to read
            if spooled is not None:
                # every line was an object: a blank line (not counted as a row) or one too deep is sorted out
                # line by line, so every row keeps its true line number
                if spooled.rows == found.lines and not self._too_deep(path, spooled.rows, found):
                    path.unlink()
                    return spooled, []
                spooled.target.unlink(missing_ok=True)
        clean, rejects = self._clean(f, path)
        path.unlink()
        keys = self._keys(clean, _first_line_keys(clean))
        if keys is None:
            raise PartitionError(f"{f.name}: cannot be read as JSON lines")
        spooled = self._spool(*args, clean, keys, types, one_pass=False) if keys else None
        clean.unlink()
        return spooled, rejects

    def _too_deep(self, path: Path, rows: int, found: Scan) -> bool:
        """Whether a line of the file (rows lines, each a JSON object) nests deeper than max_depth. Each line holds
        a `{` at least, so a line with more than max_depth of `{` and `[` makes the file hold rows + max_depth at
        least: a file with fewer (nearly every file) is known shallow from its Scan alone. Otherwise the lines
        holding that many are found by DuckDB and measured exactly."""
        if found.openers < rows + self.max_depth:
            return False
        text = "json::varchar"
        many = f"strlen({text}) - strlen(replace(replace({text}, '{{', ''), '[', '')) > {self.max_depth}"
        reader = self.con.execute(f"select {text} from read_ndjson_objects({self._source(path)}) where {many}")
        while candidates := reader.fetchmany(100):
            if any(_depth(line.encode()) > self.max_depth for (line,) in candidates):
                return True
        return False

    def _spool(
        self,
        partition: Partition,
        loaded_at: datetime,
        f: DataFile,
        path: Path,
        keys: list[str],
        types: dict[str, str] | None,
        one_pass: bool,
    ) -> _Spooled | None:
        """Read one file into its spool (see prepare). In one pass, None when a line does not have exactly the
        given keys or DuckDB refuses a line (nothing is kept: the file is then read in two passes)."""
        columns, aside = plan_keys(keys, types)
        # a key dlt will name like a typed column is cast as that column (Issue_ID alone lands in issue_id)
        typed = {}
        for k in columns:
            canonical = (types or {}).get(k) or (types or {}).get(_NAMING.normalize_identifier(k))
            if canonical and canonical != "varchar":
                typed[k] = canonical
        target = path.with_name(path.name + ".arrow")
        query = self._query(partition, f, path, keys, columns, aside, typed, loaded_at, one_pass)
        drift: dict[str, TypeDrift] = {}
        set_aside: dict[str, int] = {}
        rows = 0
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
                    untyped, extra = batch.column(UNTYPED), batch.column(EXTRA)
                    if untyped.null_count < len(untyped):  # rare: counted in Python
                        for text in untyped.drop_null().to_pylist():
                            for k in json.loads(text):
                                drift.setdefault(k, TypeDrift(typed[k])).values += 1
                    if extra.null_count < len(extra):  # rarer still
                        for text in extra.drop_null().to_pylist():
                            for k in json.loads(text):
                                set_aside[k] = set_aside.get(k, 0) + 1
                    rows += batch.num_rows
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
            return None
        if set_aside:
            log.warning(
                "%s %s: %s: key(s) %s set aside into %s: each would overwrite a documented or lineage column, "
                "or land in the same column as another key",
                partition.feed,
                partition.key,
                f.name,
                sorted(set_aside),
                EXTRA,
            )
        return _Spooled(target, rows, drift, set_aside)

    def _query(
        self,
        partition: Partition,
        f: DataFile,
        path: Path,
        keys: list[str],
        columns: list[str],
        aside: list[str],
        typed: dict[str, str],
        loaded_at: datetime,
        one_pass: bool,
    ) -> str:
        """The DuckDB query reading one file: its rows in file order, typed, with lineage. In one pass, each line
        is read as a map (a line that is not an object fails the query) and its values taken by position, with
        whether its keys are exactly `keys` in column _SAME. A file with keys set aside (plan_keys) is read as
        a map in two passes too: DuckDB reads no two columns whose names differ only in case."""
        source = f"read_json({self._source(path)}, format='newline_delimited', "
        same = ""
        marked = path.name.endswith(".clean.jsonl")
        inner = [*columns, *(f"{_ASIDE}{i}" for i in range(len(aside)))]
        if one_pass or aside:
            if one_pass:
                position = {k: i for i, k in enumerate(keys, 1)}
                values = [f"{_MAP}_values[{position[k]}]" for k in (*columns, *aside)]
                read = f"{_MAP}, map_values({_MAP}) as {_MAP}_values"
            else:
                values = [f"{_MAP}[{_sql_str(k)}]" for k in (*columns, *aside)]
                read = _MAP
            picked = ", ".join(f"{v} as {_quote(k)}" for v, k in zip(values, inner, strict=True))
            if one_pass:
                expected = "[" + ", ".join(_sql_str(k) for k in keys) + "]::varchar[]"
                picked += f", coalesce(map_keys({_MAP}) = {expected}, false) as {_SAME}"
                same = f", {_SAME}"
            elif marked:
                picked += f", {_MAP}[{_sql_str(REJECT_MARK)}] as {_quote(REJECT_MARK)}"
            rows = (
                f"select {picked}, row_number() over () as {LINE} from (select {read} from {source}"
                f"records=false, columns={{{_sql_str(_MAP)}: 'MAP(VARCHAR, VARCHAR)'}}))"
            )
        else:
            read_keys = [*keys, REJECT_MARK] if marked else keys
            struct = "{" + ", ".join(f"{_sql_str(k)}: 'VARCHAR'" for k in read_keys) + "}"
            rows = f"select *, row_number() over () as {LINE} from {source}columns={struct})"
        if marked:
            rows = f"select * from ({rows}) where {_quote(REJECT_MARK)} is null"
        lineage_values = {
            contract.FEED: _sql_str(partition.feed),
            contract.VERSION: _sql_str(partition.version),
            contract.PARTITION_AT: _sql_str(partition.at.strftime("%Y-%m-%d %H:%M:%S")),
            contract.FILE: _sql_str(f.name),
            contract.SPLIT: "null" if f.split is None else str(f.split),
            contract.LINE: LINE,
            contract.LOADED_AT: _sql_str(loaded_at.strftime("%Y-%m-%d %H:%M:%S.%f")),
            contract.SOURCE: _sql_str(self.source),
        }
        lineage_columns = ", ".join(f"{v}::{c.sql_type} as {c.name}" for c, v in lineage_values.items())
        extra = "null::varchar"
        if aside:
            values = [_quote(f"{_ASIDE}{i}") for i in range(len(aside))]
            entries = ", ".join(
                f"case when {v} is not null then {_sql_str(json.dumps(k))} || ':' || to_json({v}) end"
                for k, v in zip(aside, values, strict=True)
            )
            present = " or ".join(f"{v} is not null" for v in values)
            extra = f"case when {present} then '{{' || concat_ws(',', {entries}) || '}}' end"
        query = f"select {', '.join(_quote(k) for k in columns)}{', ' if columns else ''}{lineage_columns}"
        if not typed:
            # every batch has the same lineage columns
            return query + f", null::varchar as {UNTYPED}, {extra} as {EXTRA}{same} from ({rows})"
        # cast once, keeping the text beside it until the drifted values have been picked out
        cast = ", ".join(
            f"{_cast(_quote(k), typed[k])} as {_quote(k)}, {_quote(k)} as {_quote(_RAW + k)}"
            if k in typed
            else _quote(k)
            for k in inner
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
            f"as {UNTYPED}, {extra} as {EXTRA}{same} from (select {cast}, {LINE}{same} from ({rows}))"
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
