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
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dlt
import pyarrow as pa

from loaders import runtime
from loaders.asapp_metadata import settings
from loaders.asapp_metadata.helpers import MetadataClient, PushError, build_item, validate_item

log = logging.getLogger(__name__)

PIPELINE = "asapp_metadata"
DONE = ("accepted", "already_persisted")


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


class _Log:
    """Push log rows not yet handed to dlt, held by column: a list slot per value, not a dict per row."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in LOG_SCHEMA.names}

    def append(self, row: dict[str, Any]) -> None:
        for name, values in self.columns.items():
            values.append(row[name])

    def __len__(self) -> int:
        return len(self.columns["event_id"])

    def drain(self) -> pa.Table:
        """The rows held, as an Arrow table; they are no longer held."""
        table = pa.table(self.columns, schema=LOG_SCHEMA)
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
def _streamed(client: Any, sql: str) -> Iterator[Iterator[tuple[Any, ...]]]:
    """The query's rows, fetched READ_ROWS at a time. psycopg2's default cursor holds the whole result in the
    client, so on Postgres a named (server-side) cursor in a transaction is used; DuckDB's and the other
    drivers' cursors fetch as they go."""

    def rows(cursor: Any) -> Iterator[tuple[Any, ...]]:
        while chunk := cursor.fetchmany(settings.READ_ROWS):
            yield from chunk

    native = client.native_connection
    if type(native).__module__.startswith("psycopg2"):
        with client.begin_transaction(), native.cursor(name=f"asapp_push_{uuid.uuid4().hex}") as cursor:
            cursor.execute(sql)
            yield rows(cursor)
    else:
        with client.execute_query(sql) as cursor:
            yield rows(cursor)


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

    The mart is read as a stream in key order and sent CHUNK_ITEMS items at a time, and the log is handed to dlt
    in parts as it grows, so memory does not grow with the mart. on_progress(rows checked, mart rows)."""
    pipeline = runtime.pipeline(PIPELINE, settings.LOG_DATASET)
    rows, has_log = _probe(pipeline)
    run = _Run(
        pipeline, has_log, PushStats(rows=rows), uuid.uuid4().hex, datetime.now(UTC), _Log(), on_progress, dry_run
    )
    if dry_run:
        for _ in _chunks(run):
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
    run_id: str
    started: datetime
    log: _Log
    on_progress: Callable[[int, int], None] | None
    dry_run: bool


def _chunks(run: _Run) -> Iterator[list[tuple[dict[str, Any], dict[str, Any]]]]:
    """The (item, log fields) to send, in key order, in chunks of CHUNK_ITEMS (shorter when as many invalid rows
    wait in run.log): unchanged rows are counted, invalid ones logged in run.log. The mart stays open (a cursor)
    while each chunk is sent."""
    columns = list(settings.FIELDS)
    width = len(columns)
    chunk: list[tuple[dict[str, Any], dict[str, Any]]] = []
    checked = 0
    with run.pipeline.sql_client() as client:
        log_table = client.make_qualified_table_name(settings.LOG_TABLE) if run.has_log else None
        with _streamed(client, _mart_sql(log_table)) as records:
            for _, group in itertools.groupby(records, key=operator.itemgetter(0, 1)):
                first = next(group)
                attributes = [(r[width + 2], r[width + 3]) for r in (first, *group) if r[width + 2] is not None]
                entry = _check(
                    run, dict(zip(columns, first[:width], strict=True)), attributes, first[width], first[width + 1]
                )
                if entry is not None:
                    chunk.append(entry)
                checked += 1
                if run.on_progress and checked % settings.BATCH_SIZE == 0:
                    run.on_progress(checked, run.stats.rows)
                if len(chunk) >= settings.CHUNK_ITEMS or len(run.log) >= settings.CHUNK_ITEMS:
                    yield chunk
                    chunk = []
    if run.on_progress:
        run.on_progress(checked, run.stats.rows)
    if chunk:
        yield chunk


def _check(
    run: _Run, row: dict[str, Any], attributes: list[tuple[str, str]], last_hash: str | None, last_status: str | None
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The row's (item, log fields) when it is to be sent; None when it is unchanged or invalid (logged)."""
    stats = run.stats
    item, digest = build_item(row, attributes)
    if last_hash == digest and last_status in (*DONE, "invalid"):
        stats.unchanged += last_status != "invalid"
        stats.invalid += last_status == "invalid"
        return None
    key = (row["external_conversation_id"], row["external_customer_id"])
    base = {
        "event_id": item["eventId"],
        "external_conversation_id": key[0],
        "external_customer_id": key[1],
        "content_hash": digest,
        "run_id": run.run_id,
    }
    errors = validate_item(item)
    if errors:
        stats.invalid += 1
        if len(stats.errors) < 10:  # a sample: the log has them all
            stats.errors += [f"{key[0]}/{key[1]}: {e}" for e in errors][:3]
        run.log.append(
            {
                **base,
                "batch_id": None,
                "http_status": None,
                "status": "invalid",
                "error": "; ".join(errors),
                "pushed_at": run.started,
            }
        )
        return None
    stats.to_send += 1
    if run.dry_run and len(stats.dry_run_items) < settings.DRY_RUN_SAMPLE:
        stats.dry_run_items.append(item)
    return item, base


def _outcomes(run: _Run, failure: list[BaseException]) -> Iterator[pa.Table]:
    """Send the chunks in full batches (what is left of a short chunk waits for the next one), and yield the log
    rows (invalid items, outcomes) as Arrow tables of CHUNK_ITEMS rows or more. Whatever stops the push (a refused
    batch, an error reading the mart, Ctrl-C), what was logged is still yielded, so it is written; the error is
    put in `failure`, for the caller to raise after the write."""
    size = settings.BATCH_SIZE
    client: MetadataClient | None = None  # made on the first send: a push with nothing to send needs no API settings

    def send(items: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        nonlocal client
        client = client or MetadataClient(*_api_config())
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        for batch, outcomes in client.post_batches(([item for item, _ in b], b) for b in batches):
            _record(run, batch, outcomes)

    try:
        waiting: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for chunk in _chunks(run):
            waiting += chunk
            if ready := len(waiting) // size * size:
                send(waiting[:ready])
                del waiting[:ready]
            if len(run.log) >= settings.CHUNK_ITEMS:
                yield run.log.drain()
        if waiting:
            send(waiting)
    except GeneratorExit:
        raise
    except BaseException as e:  # raised by push() once the log is written
        failure.append(e)
    if len(run.log):
        yield run.log.drain()


def _record(run: _Run, batch: list[tuple[dict[str, Any], dict[str, Any]]], outcomes: list[Any]) -> None:
    """A batch's outcomes (batches are answered in order): in run.log and the counts."""
    stats = run.stats
    batch_id = f"{run.run_id}-{stats.batches + 1}"
    answered_at = datetime.now(UTC)
    for (_, base), outcome in zip(batch, outcomes, strict=True):
        run.log.append(
            {
                **base,
                "batch_id": batch_id,
                "http_status": outcome.http_status,
                "status": outcome.status,
                "error": outcome.error,
                "pushed_at": answered_at,
            }
        )
        if outcome.status in DONE:
            stats.accepted += 1
        else:
            stats.failed += 1
            if outcome.error and len(stats.errors) < 10:
                key = f"{base['external_conversation_id']}/{base['external_customer_id']}"
                stats.errors.append(f"{key}: {outcome.error}")
    stats.sent += len(batch)
    stats.batches += 1
