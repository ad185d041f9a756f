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
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dlt
import duckdb
import orjson
import pyarrow as pa

from loaders import runtime
from loaders.asapp_metadata import columnar, settings
from loaders.asapp_metadata.helpers import Batch, ItemOutcome, MetadataClient, PushError, build_item, validate_item

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
        ("event_id", pa.string()),
        ("external_conversation_id", pa.string()),
        ("external_customer_id", pa.string()),
        ("content_hash", pa.string()),
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
    """Push log rows not yet handed to dlt, held by column: a list slot per value, not a dict per row."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.columns: dict[str, list[Any]] = {name: [] for name in LOG_SCHEMA.names}

    def add(
        self,
        keys: Sequence[_Key],
        batch_id: str | None,
        http_status: Sequence[int | None],
        status: Sequence[str],
        error: Sequence[str | None],
        pushed_at: datetime,
    ) -> None:
        """Rows for `keys`, with the outcome columns given per row (or one batch_id and time for all)."""
        columns = self.columns
        for name, position in (("event_id", 0), ("external_conversation_id", 1), ("external_customer_id", 2)):
            columns[name] += [key[position] for key in keys]
        columns["content_hash"] += [key[3] for key in keys]
        columns["run_id"] += [self.run_id] * len(keys)
        columns["batch_id"] += [batch_id] * len(keys)
        columns["http_status"] += http_status
        columns["status"] += status
        columns["error"] += error
        # as microseconds since the epoch: pyarrow converts a list of aware datetimes at ~2 µs each (a third of the
        # time to hand a log part to dlt), ints at a few ns
        columns["pushed_at"] += [(pushed_at - _EPOCH) // _MICROSECOND] * len(keys)

    def __len__(self) -> int:
        return len(self.columns["event_id"])

    def drain(self) -> pa.Table:
        """The rows held, as an Arrow table; they are no longer held."""
        pushed_at = LOG_SCHEMA.field("pushed_at").type
        arrays = [
            pa.array(values, pa.int64()).cast(pushed_at) if name == "pushed_at" else pa.array(values, field.type)
            for (name, values), field in zip(self.columns.items(), LOG_SCHEMA, strict=True)
        ]
        table = pa.Table.from_arrays(arrays, schema=LOG_SCHEMA)
        for values in self.columns.values():
            values.clear()
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
        parts = _outcomes(run, failure)
        first = next(parts, None)
        if first is not None:  # nothing to log (nothing new, changed or invalid): no dlt run
            pipeline.run(
                itertools.chain([first], parts),
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


def _entries(run: _Run) -> Generator[_Entry | None, None, None]:
    """The rows to send: unchanged rows are counted, invalid ones logged in run.log. None when an invalid row fills
    run.log to LOG_PART_ROWS, so the caller hands it on even when no row is to be sent. The mart stays open (a
    cursor) while they are sent.

    Each chunk of the mart is built in bulk (columnar.build); the rows it leaves (attributes, characters it cannot
    be sure to encode as build_item does, refused items) are built one by one, a key's rows together: the rows of
    a chunk's last key wait for the next chunk, which may hold more of them."""
    stats = run.stats
    checked = 0
    held: list[tuple[Any, ...]] = []

    def count(rows: int) -> None:  # progress is reported each time another BATCH_SIZE rows are checked
        nonlocal checked
        before, checked = checked, checked + rows
        if run.on_progress and checked // settings.BATCH_SIZE > before // settings.BATCH_SIZE:
            run.on_progress(checked, stats.rows)

    def one_by_one(rows: list[tuple[Any, ...]]) -> Iterator[_Entry | None]:
        width = len(settings.FIELDS)
        for _, group in itertools.groupby(rows, key=operator.itemgetter(0, 1)):
            first = next(group)
            attributes = [(r[width + 2], r[width + 3]) for r in (first, *group) if r[width + 2] is not None]
            entry = _check(run, first[:width], attributes, first[width], first[width + 1])
            count(1)
            if entry is not None:
                yield entry
            elif len(run.log) >= settings.LOG_PART_ROWS:
                yield None

    with run.pipeline.sql_client() as client, duckdb.connect() as builder:
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
                stats.to_send += len(built.send)
                count(built.unchanged + built.settled_invalid)
                for entry in built.send:
                    if run.dry_run and len(stats.dry_run_items) < settings.DRY_RUN_SAMPLE:
                        stats.dry_run_items.append(orjson.loads(entry[0]))
                    yield entry
                    count(1)
                rows, held = held + built.build, []
                last = (chunk[0][-1].as_py(), chunk[1][-1].as_py()) if chunk.num_rows else None
                while rows and rows[-1][:2] == last:  # the chunk's last key, which the next chunk may continue
                    held.insert(0, rows.pop())
                yield from one_by_one(rows)
        yield from one_by_one(held)
    if run.on_progress and checked % settings.BATCH_SIZE:
        run.on_progress(checked, stats.rows)


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
        run.log.add([key], None, [None], ["invalid"], ["; ".join(errors)], run.started)
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
    waiting: list[_Entry] = []
    read_all = False

    def batches() -> Iterator[tuple[Batch, list[_Key]]]:
        nonlocal waiting, read_all
        for entry in entries:
            if stop.is_set():  # Ctrl-C: raised by post_batches once the batches in flight are answered
                raise KeyboardInterrupt
            if entry is not None:
                waiting.append(entry)
            if len(waiting) == size:
                batch, waiting = waiting, []
                yield _split(batch)
            if len(run.log) >= settings.LOG_PART_ROWS:
                return
        read_all = True
        if waiting:
            batch, waiting = waiting, []
            yield _split(batch)

    client: MetadataClient | None = None  # made on the first send: a push with nothing to send needs no API settings
    try:
        while not read_all:
            built = batches()
            first = next(built, None)
            if first is not None:
                client = client or MetadataClient(*_api_config())
                for keys, outcomes in client.post_batches(itertools.chain([first], built)):
                    _record(run, keys, outcomes)
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


def _split(entries: list[_Entry]) -> tuple[Batch, list[_Key]]:
    keys = [key for _, key in entries]
    return Batch([item for item, _ in entries], [key[0] for key in keys]), keys


def _record(run: _Run, keys: list[_Key], outcomes: list[ItemOutcome]) -> None:
    """A batch's outcomes (batches are answered in order): in run.log and the counts."""
    stats = run.stats
    stats.batches += 1
    statuses = [outcome.status for outcome in outcomes]
    run.log.add(
        keys,
        f"{run.log.run_id}-{stats.batches}",
        [outcome.http_status for outcome in outcomes],
        statuses,
        [outcome.error for outcome in outcomes],
        datetime.now(UTC),
    )
    done = sum(status in DONE for status in statuses)
    stats.accepted += done
    stats.failed += len(outcomes) - done
    if done < len(outcomes):
        for key, outcome in zip(keys, outcomes, strict=True):
            if outcome.status not in DONE and outcome.error and len(stats.errors) < 10:
                stats.errors.append(f"{key[1]}/{key[2]}: {outcome.error}")
    stats.sent += len(keys)
