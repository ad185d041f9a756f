"""Reverse ETL: push the curated customer_metadata mart to ASAPP's many-customer-metadata API.

Only new or changed rows are sent (their content hash differs from the last accepted one, or the last
attempt did not succeed). Items are validated against ASAPP's OpenAPI schema first; invalid ones are not
sent. Every outcome lands in asapp_metadata.asapp_metadata_push_log, so what was sent, accepted, rejected or
will be retried is a query away.

Why not dlt's @dlt.destination: it retries a failed batch about once a second with no back-off, leaves a
package pending after a terminal error (re-sending it next run) and leaves idempotency to the caller; this
small loader gives the documented back-off, per-item outcomes and change detection directly.
"""

from __future__ import annotations

import itertools
import logging
import operator
import queue
import signal
import threading
import uuid
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dlt
import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from loaders import runtime
from loaders.asapp_metadata import columnar, settings
from loaders.asapp_metadata.helpers import Batch, MetadataClient, Outcomes, PushError, build_item, validate_item
from loaders.run_lock import locked

log = logging.getLogger(__name__)

PIPELINE = "asapp_metadata"
DONE = ("accepted", "already_persisted")
SETTLED = (*DONE, "invalid")  # a row's last outcome that needs no new attempt while its content is the same


@dataclass
class PushStats:
    rows: int = 0
    unchanged: int = 0
    invalid: int = 0
    sent: int = 0
    accepted: int = 0
    failed: int = 0
    batches: int = 0
    to_send: int = 0  # valid new or changed rows (in a dry run, what would be sent)
    dry_run_items: list[dict[str, Any]] = field(default_factory=list)  # the first few
    errors: list[str] = field(default_factory=list)  # a sample of reasons, for the summary


# The push log's columns, in order (the table dlt created from these rows as dicts, before they went as Arrow).
LOG_SCHEMA = pa.schema(
    [
        *columnar.KEY,
        ("run_id", pa.string()),
        ("batch_id", pa.string()),
        ("http_status", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("pushed_at", pa.timestamp("us", tz="UTC")),
    ]
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_Key = tuple[str, str, str, str]  # a row's event_id, external_conversation_id, external_customer_id, content_hash
_Entry = tuple[bytes, _Key]  # an item to send (its JSON) and its row's key


class _Log:
    """Push log rows not yet handed to dlt: a batch's rows as an Arrow table, rows added one at a time (invalid items)
    by column, a list slot per value, not a dict per row."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.columns: dict[str, list[Any]] = {name: [] for name in LOG_SCHEMA.names}
        self.parts: list[pa.Table] = []
        self.rows = 0

    def add(self, key: _Key, status: str, error: str, pushed_at: datetime) -> None:
        """A row with no batch (an invalid item)."""
        # pushed_at as microseconds since the epoch: pyarrow converts aware datetimes at ~2 µs each, ints at a few ns
        values = (*key, self.run_id, None, None, status, error, (pushed_at - _EPOCH) // _MICROSECOND)
        for column, value in zip(self.columns.values(), values, strict=True):
            column.append(value)
        self.rows += 1

    def add_batch(self, rows: pa.Table, batch_id: str, outcomes: Outcomes, pushed_at: datetime) -> None:
        """A batch's rows (columnar.SEND_SCHEMA) with their outcomes."""
        items = rows.num_rows
        columns = {
            **{key.name: rows[key.name] for key in columnar.KEY},
            "run_id": pa.repeat(pa.scalar(self.run_id), items),
            "batch_id": pa.repeat(pa.scalar(batch_id), items),
            "http_status": outcomes.http_status,
            "status": outcomes.status,
            "error": outcomes.error,
            "pushed_at": pa.repeat(pa.scalar(pushed_at, LOG_SCHEMA.field("pushed_at").type), items),
        }
        self.parts.append(pa.Table.from_arrays([columns[name] for name in LOG_SCHEMA.names], schema=LOG_SCHEMA))
        self.rows += items

    def __len__(self) -> int:
        return self.rows

    def drain(self) -> pa.Table:
        """The rows held, as an Arrow table; they are no longer held."""
        pushed_at = LOG_SCHEMA.field("pushed_at").type
        arrays = [
            pa.array(values, pa.int64()).cast(pushed_at) if name == "pushed_at" else pa.array(values, field.type)
            for (name, values), field in zip(self.columns.items(), LOG_SCHEMA, strict=True)
        ]
        table = pa.concat_tables([pa.Table.from_arrays(arrays, schema=LOG_SCHEMA), *self.parts])
        for values in self.columns.values():
            values.clear()
        self.parts.clear()
        self.rows = 0
        return table


def _probe(pipeline: Any) -> tuple[int, bool]:
    """The mart's row count, and whether the push log exists yet (it does not before the first push)."""
    with pipeline.sql_client() as client:
        try:
            [(count,)] = client.execute_sql(f"select count(*) from marts.{settings.MART}")
            client.execute_sql(f"select 1 from marts.{settings.MART_ATTRIBUTES} where 1 = 0")
        except Exception as e:
            raise PushError(f"cannot read marts.{settings.MART}: run `elt build` first ({type(e).__name__})") from e
        try:
            client.execute_sql(f"select 1 from {client.make_qualified_table_name(settings.LOG_TABLE)} where 1 = 0")
        except Exception:
            return int(count), False
    return int(count), True


def _mart_sql(log_table: str | None) -> str:
    """Every mart row with its last push outcome (hash, status) and its attributes: a row per attribute (or one
    with nulls), in key order, so a key's rows are adjacent and the mart can be read as a stream."""
    keys = ("external_conversation_id", "external_customer_id")
    last = (
        "null as last_hash, null as last_status"
        if log_table is None
        else "last.content_hash as last_hash, last.status as last_status"
    )
    sql = (
        f"select {', '.join(f'm.{c}' for c in settings.FIELDS)}, {last}, a.attribute_name, a.attribute_value "
        f"from marts.{settings.MART} as m "
    )
    if log_table is not None:
        sql += (
            "left join (select external_conversation_id, external_customer_id, content_hash, status, row_number() "
            "over (partition by external_conversation_id, external_customer_id order by pushed_at desc) as rn "
            f"from {log_table}) as last on {' and '.join(f'last.{k} = m.{k}' for k in keys)} and last.rn = 1 "
        )
    return (
        sql + f"left join marts.{settings.MART_ATTRIBUTES} as a on {' and '.join(f'a.{k} = m.{k}' for k in keys)} "
        f"order by {', '.join(f'm.{k}' for k in keys)}, a.attribute_rank"
    )


@contextmanager
def _streamed(client: Any, sql: str) -> Iterator[Iterator[pa.Table]]:
    """The query's rows as Arrow tables of READ_ROWS rows. psycopg2's default cursor holds the whole result in the
    client, so on Postgres a named (server-side) cursor in a transaction is used; DuckDB's and the other drivers'
    cursors fetch as they go."""
    native = client.native_connection
    if type(native).__module__.startswith("psycopg2"):
        with client.begin_transaction(), native.cursor(name=f"asapp_push_{uuid.uuid4().hex}") as cursor:
            cursor.execute(sql)
            with closing(columnar.chunks(cursor, settings.READ_ROWS)) as chunks:
                yield chunks
    else:
        with client.execute_query(sql) as cursor, closing(columnar.chunks(cursor, settings.READ_ROWS)) as chunks:
            yield chunks


def _api_config() -> tuple[str, str, str]:
    base_url: str | None = dlt.config.get("asapp_api.base_url")
    api_id: str | None = dlt.secrets.get("asapp_api.api_id") or dlt.config.get("asapp_api.api_id")
    api_secret: str | None = dlt.secrets.get("asapp_api.api_secret")
    missing = [
        name
        for name, value in (
            ("ASAPP_API__BASE_URL", base_url),
            ("ASAPP_API__API_ID", api_id),
            ("ASAPP_API__API_SECRET", api_secret),
        )
        if not value
    ]
    if missing:
        raise PushError(f"set {', '.join(missing)} (environment or .dlt/secrets.toml) to push to ASAPP")
    return str(base_url), str(api_id), str(api_secret)


@locked(PIPELINE, "elt push")
def push(dry_run: bool = False, on_progress: Callable[[int, int], None] | None = None) -> PushStats:
    """Push new and changed customer_metadata rows; log every outcome. Returns the counts.

    The mart is read as a stream in key order; each batch is built while the ones before it are in flight, and the
    log is handed to dlt in parts as it grows, so memory does not grow with the mart. on_progress(rows checked,
    mart rows)."""
    pipeline = runtime.pipeline(PIPELINE, settings.LOG_DATASET)
    rows, has_log = _probe(pipeline)
    run_id = uuid.uuid4().hex
    run = _Run(pipeline, has_log, PushStats(rows=rows), datetime.now(UTC), _Log(run_id), on_progress, dry_run)
    if dry_run:
        for _ in _entries(run):
            if len(run.log) >= settings.LOG_PART_ROWS:
                run.log.drain()  # the invalid rows: counted and reported, not logged
        return run.stats
    failure: list[BaseException] = []
    with runtime.frozen_heap():
        # dlt takes the log parts as they come; its own setup (configuration, the destination's state: ~0.3 s of
        # Python) runs before the first batch is sent, since _outcomes begins sending when dlt first asks for a part.
        # Begun when the first part came instead, it held the GIL in the middle of the sending (50,000 rows went out
        # at ~60 requests/s instead of ~90). With nothing to log, dlt loads nothing.
        pipeline.run(
            _outcomes(run, failure),
            table_name=settings.LOG_TABLE,
            write_disposition="append",
            loader_file_format="parquet",  # as dicts, the normalizer and INSERT ... VALUES took ~4.5 s/20,000
        )
    if failure:
        raise failure[0]
    return run.stats


@dataclass
class _Run:
    pipeline: Any
    has_log: bool
    stats: PushStats
    started: datetime
    log: _Log
    on_progress: Callable[[int, int], None] | None
    dry_run: bool


def _entries(run: _Run) -> Generator[pa.Table | None, None, None]:
    """The rows to send, as Arrow tables (columnar.SEND_SCHEMA) of up to BATCH_SIZE rows: unchanged rows are counted,
    invalid ones logged in run.log. None when an invalid row fills run.log to LOG_PART_ROWS, so the caller hands it
    on even when no row is to be sent. The mart stays open (a cursor) while they are sent.

    Each chunk of the mart is built in bulk (columnar.build); the rows it leaves (attributes, characters it cannot
    be sure to encode as build_item does, refused items) are built one by one, a key's rows together: the rows of
    a chunk's last key wait for the next chunk, which may hold more of them."""
    stats = run.stats
    size = settings.BATCH_SIZE
    checked = 0
    held: list[tuple[Any, ...]] = []

    def count(rows: int) -> None:  # progress is reported each time another BATCH_SIZE rows are checked
        nonlocal checked
        before, checked = checked, checked + rows
        if run.on_progress and checked // size > before // size:
            run.on_progress(checked, stats.rows)

    def one_by_one(rows: list[tuple[Any, ...]]) -> Iterator[pa.Table | None]:
        width = len(settings.FIELDS)
        entries: list[_Entry] = []
        for _, group in itertools.groupby(rows, key=operator.itemgetter(0, 1)):
            first = next(group)
            attributes = [(r[width + 2], r[width + 3]) for r in (first, *group) if r[width + 2] is not None]
            entry = _check(run, first[:width], attributes, first[width], first[width + 1])
            count(1)
            if entry is not None:
                entries.append(entry)
                if len(entries) == size:
                    yield _table(entries)
                    entries = []
            elif len(run.log) >= settings.LOG_PART_ROWS:  # the rows built so far go first, then the log is handed on
                if entries:
                    yield _table(entries)
                    entries = []
                yield None
        if entries:
            yield _table(entries)

    # the builder on one core: on all of them, each chunk's build (~50 ms of CPU) starved the sending and held back
    # every tenth batch by 40-70 ms
    with run.pipeline.sql_client() as client, duckdb.connect(config={"threads": 1}) as builder:
        log_table = client.make_qualified_table_name(settings.LOG_TABLE) if run.has_log else None
        with _streamed(client, _mart_sql(log_table)) as chunks, ThreadPoolExecutor(1, "asapp-build") as pool:

            def read_and_build() -> tuple[pa.Table, columnar.Built] | None:
                chunk = next(chunks, None)
                return None if chunk is None else (chunk, columnar.build(builder, chunk, SETTLED))

            # the next chunk is read and built (mostly in DuckDB, which lets go of the GIL) while this one's rows are
            # sent; one after the other, the sending paused for every chunk's read and build
            ahead = pool.submit(read_and_build)
            while (done := ahead.result()) is not None:
                chunk, built = done
                ahead = pool.submit(read_and_build)
                stats.unchanged += built.unchanged
                stats.invalid += built.settled_invalid
                stats.to_send += built.send.num_rows
                count(built.unchanged + built.settled_invalid)
                if run.dry_run and len(stats.dry_run_items) < settings.DRY_RUN_SAMPLE:
                    wires = built.send["wire"][: settings.DRY_RUN_SAMPLE - len(stats.dry_run_items)].to_pylist()
                    stats.dry_run_items += [orjson.loads(wire[:-1]) for wire in wires]  # without its comma
                for start in range(0, built.send.num_rows, size):
                    piece = built.send.slice(start, size)
                    yield piece
                    count(piece.num_rows)
                rows, held = held + built.build, []
                last = (chunk[0][-1].as_py(), chunk[1][-1].as_py()) if chunk.num_rows else None
                while rows and rows[-1][:2] == last:  # the chunk's last key, which the next chunk may continue
                    held.insert(0, rows.pop())
                yield from one_by_one(rows)
        yield from one_by_one(held)
    if run.on_progress and checked % size:
        run.on_progress(checked, stats.rows)


def _table(entries: list[_Entry]) -> pa.Table:
    """Items built one by one as rows to send (columnar.SEND_SCHEMA)."""
    wires, keys = zip(*entries, strict=True)
    columns = [[wire + b"," for wire in wires], *zip(*keys, strict=True)]
    return pa.Table.from_arrays(
        [pa.array(values, field.type) for values, field in zip(columns, columnar.SEND_SCHEMA, strict=True)],
        schema=columnar.SEND_SCHEMA,
    )


def _check(
    run: _Run,
    values: tuple[Any, ...],
    attributes: list[tuple[str, str]],
    last_hash: str | None,
    last_status: str | None,
) -> _Entry | None:
    """The row's (item as JSON, key) when it is to be sent (values: the mart row, in settings.FIELDS order, the keys
    first); None when it is unchanged or invalid (logged)."""
    stats = run.stats
    item, digest = build_item(values, attributes)
    if last_hash == digest and last_status in SETTLED:
        stats.unchanged += last_status != "invalid"
        stats.invalid += last_status == "invalid"
        return None
    key = (item["eventId"], values[0], values[1], digest)
    errors = validate_item(item)
    if errors:
        stats.invalid += 1
        if len(stats.errors) < 10:  # a sample: the log has them all
            stats.errors += [f"{key[1]}/{key[2]}: {e}" for e in errors][:3]
        run.log.add(key, "invalid", "; ".join(errors), run.started)
        return None
    stats.to_send += 1
    if run.dry_run and len(stats.dry_run_items) < settings.DRY_RUN_SAMPLE:
        stats.dry_run_items.append(item)
    return orjson.dumps(item), key


def _outcomes(run: _Run, failure: list[BaseException]) -> Iterator[pa.Table]:
    """The log rows (invalid items, outcomes) as Arrow tables of LOG_PART_ROWS rows or more, for dlt, while the rows
    are sent in a thread of their own (_send): dlt's writing of one part does not pause the sending.

    The first Ctrl-C sends no further batch: the answers to those in flight are awaited and logged, the log is
    written, and push() raises KeyboardInterrupt. A second one raises at once."""
    stop = threading.Event()
    parts: queue.Queue[pa.Table | None] = queue.Queue(maxsize=2)  # the parts dlt has not taken yet

    def send() -> None:
        try:
            for part in _send(run, failure, stop):
                parts.put(part)
        finally:
            parts.put(None)

    sender = threading.Thread(target=send, name="asapp-send", daemon=True)  # a second Ctrl-C leaves it
    with _ctrl_c_stops(stop):
        sender.start()
        try:
            while (part := parts.get()) is not None:
                yield part
        except GeneratorExit:  # dlt stopped taking parts (its own error): send no more, let the thread end
            stop.set()
            while parts.get() is not None:
                pass
            raise
    sender.join()
    if stop.is_set() and not failure:  # Ctrl-C after the last batch was built: the push still ends interrupted
        failure.append(KeyboardInterrupt())


@contextmanager
def _ctrl_c_stops(stop: threading.Event) -> Iterator[None]:
    """While in the block, a first Ctrl-C sets `stop`, a second raises KeyboardInterrupt. Outside the main thread
    (where Python cannot take signals), Ctrl-C is left as it is."""

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning(
            "interrupted: no further batch is sent; waiting for the answers to those in flight, to log them "
            "(Ctrl-C again to stop now)"
        )

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _send(run: _Run, failure: list[BaseException], stop: threading.Event) -> Iterator[pa.Table]:
    """Send the rows in full batches (only the last may be short), and yield the log rows (invalid items,
    outcomes) as Arrow tables of LOG_PART_ROWS rows or more.

    A batch is built when a request slot is free (post_batches asks for it), so building overlaps the requests in
    flight. When invalid rows pile up in the log, building pauses (the batch begun waits) until the log is handed
    on. Whatever stops the push (a refused batch, an error reading the mart, `stop`), what was logged is still
    yielded, so it is written; the error is put in `failure`, for the caller to raise after the write."""
    size = settings.BATCH_SIZE
    entries = _entries(run)
    waiting: list[pa.Table] = []  # rows not yet in a batch
    read_all = False

    def cut(rows: int) -> Batch:
        nonlocal waiting
        table = pa.concat_tables(waiting)
        waiting = [table.slice(rows)] if rows < table.num_rows else []
        return Batch(table.slice(0, rows))

    def batches() -> Iterator[Batch]:
        nonlocal read_all
        for piece in entries:
            if stop.is_set():  # Ctrl-C: raised by post_batches once the batches in flight are answered
                raise KeyboardInterrupt
            if piece is not None:
                waiting.append(piece)
                while sum(table.num_rows for table in waiting) >= size:
                    yield cut(size)
            if len(run.log) >= settings.LOG_PART_ROWS:
                return
        read_all = True
        if waiting:
            yield cut(sum(table.num_rows for table in waiting))

    client: MetadataClient | None = None  # made on the first send: a push with nothing to send needs no API settings
    try:
        while not read_all:
            built = batches()
            first = next(built, None)
            if first is not None:
                client = client or MetadataClient(*_api_config())
                for batch, outcomes in client.post_batches(itertools.chain([first], built)):
                    _record(run, batch, outcomes)
                    if len(run.log) >= settings.LOG_PART_ROWS:
                        yield run.log.drain()
            if len(run.log) >= settings.LOG_PART_ROWS:
                yield run.log.drain()
    except GeneratorExit:
        raise
    except BaseException as e:  # raised by push() once the log is written
        failure.append(e)
    finally:
        entries.close()  # the mart's cursor (on Postgres, its transaction) ends now, not when collected
    if len(run.log):
        yield run.log.drain()


def _record(run: _Run, batch: Batch, outcomes: Outcomes) -> None:
    """A batch's outcomes (batches are answered in order): in run.log and the counts."""
    stats = run.stats
    stats.batches += 1
    items = batch.rows.num_rows
    run.log.add_batch(batch.rows, f"{run.log.run_id}-{stats.batches}", outcomes, datetime.now(UTC))
    done = int(pc.sum(pc.is_in(outcomes.status, pa.array(DONE))).as_py() or 0)
    stats.accepted += done
    stats.failed += items - done
    if done < items:
        rows = batch.rows.select(["external_conversation_id", "external_customer_id"]).to_pylist()
        for row, status, error in zip(rows, outcomes.status.to_pylist(), outcomes.error.to_pylist(), strict=True):
            if status not in DONE and error and len(stats.errors) < 10:
                stats.errors.append(f"{row['external_conversation_id']}/{row['external_customer_id']}: {error}")
    stats.sent += items
