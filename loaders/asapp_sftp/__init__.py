"""dlt source for ASAPP Messaging exports on SFTP.

Layout: BASE_PATH/FEED/version=V/format=F/dt=YYYY-MM-DD/hr=HH/mi=MM/FEED.jsonl[.NN][.gz][.enc] plus an empty
_SUCCESS flag once the partition is complete. One resource (and raw table) per feed; a partition is read only
when its _SUCCESS exists, and is remembered in dlt state in the same load package as its rows, so it is loaded
exactly once. Only dt folders from (last loaded dt - lookback) on are listed, so a run with nothing new costs
the same after a week or after a year of history.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dlt
import pyarrow as pa
from dlt.common.schema.typing import TColumnSchema
from dlt.common.typing import TSecretStrValue
from dlt.sources import DltResource

from loaders.asapp_sftp import settings
from loaders.asapp_sftp.connection import (
    RetryPolicy,
    SftpChannel,
    SftpConnection,
    SftpError,
    SftpUnreachable,
    connect_sftp,
)
from loaders.asapp_sftp.decrypt import Decryptor
from loaders.asapp_sftp.listing import Partition, fetch_export_docs, list_partitions
from loaders.asapp_sftp.reader import (
    PartitionError,
    PartitionReader,
    PreparedPartition,
    TypeDrift,
    add_drift,
    reading_database,
)

__all__ = ["FeedStats", "LoadStats", "SftpError", "SftpUnreachable", "asapp_sftp"]

log = logging.getLogger(__name__)

REJECT_HINTS: dict[str, TColumnSchema] = {
    "feed": {"data_type": "text"},
    "partition": {"data_type": "text"},
    "file": {"data_type": "text"},
    "line": {"data_type": "bigint"},
    "error": {"data_type": "text"},
    "raw_text": {"data_type": "text"},
    "rejected_at": {"data_type": "timestamp", "timezone": False},
}

# Lineage timestamps are UTC without a zone, like the export's own timestamps once staged.
LINEAGE_HINTS: dict[str, TColumnSchema] = {
    "_asapp_feed": {"data_type": "text"},
    "_asapp_version": {"data_type": "text"},
    "_asapp_partition_at": {"data_type": "timestamp", "timezone": False},
    "_asapp_file": {"data_type": "text"},
    "_asapp_split": {"data_type": "bigint"},
    "_asapp_line": {"data_type": "bigint"},
    "_asapp_loaded_at": {"data_type": "timestamp", "timezone": False},
    "_asapp_untyped": {"data_type": "text"},  # values that did not cast to their column's type, as JSON
}


@dataclass
class FeedStats:
    partitions_loaded: int = 0
    partitions_waiting: int = 0
    files: int = 0
    bytes: int = 0
    rows: int = 0
    waiting: list[str] = field(default_factory=list)
    rejected: int = 0  # bad lines sent to asapp_raw._rejects (lines read = rows + rejected)
    more: bool = False  # more ready partitions than max_partitions: another run continues
    failed: list[str] = field(default_factory=list)  # partitions skipped for a corrupt file (retried next run)
    encrypted: list[str] = field(default_factory=list)  # partitions skipped: .enc and no decryptor
    drift: dict[str, TypeDrift] = field(default_factory=dict)  # column -> values not of its documented type


@dataclass
class LoadStats:
    """Filled while the source runs; the CLI prints it as the run summary."""

    feeds: dict[str, FeedStats] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    export_docs: Path | None = None  # the export_docs.yaml found on the server, downloaded
    schema_changes: list[Any] = field(default_factory=list)  # its differences from the project's
    reconnects: int = 0  # times a dropped SFTP connection was opened again
    on_progress: Any = None  # called with (feed, FeedStats) after each partition

    def feed(self, name: str) -> FeedStats:
        return self.feeds.setdefault(name, FeedStats())


class _Session:
    """One SSH connection shared by the feed resources, closed when the last of them finishes."""

    def __init__(self, connection: SftpConnection, stats: LoadStats) -> None:
        self.connection = connection
        self.listing = SftpChannel(connection)  # lists the base folder, then the feeds' partitions
        self.duckdb = reading_database()  # reads and checks the downloaded files, for every feed
        self.stats = stats
        self.users = 0

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self.close()

    def close(self) -> None:
        self.listing.close()
        self.connection.close()
        self.duckdb.close()
        self.stats.reconnects += self.connection.reconnects


def _feed_state(feed: str) -> dict[str, Any]:
    state = dlt.current.source_state().setdefault("feeds", {})
    return state.setdefault(feed, {"loaded": {}, "waiting": {}, "max_dt": None})


def _dt(partition_key: str) -> date:
    return date.fromisoformat(partition_key.split("dt=")[1][:10])


def _listing_start(feed_state: dict[str, Any], since: date | None, lookback_days: int) -> date | None:
    """The first dt folder worth listing: the last loaded dt minus the lookback, or an older waiting one."""
    if not feed_state.get("max_dt"):
        return since
    start = min(
        [
            date.fromisoformat(feed_state["max_dt"]) - timedelta(days=lookback_days),
            *(_dt(k) for k in feed_state.get("waiting", {})),
        ]
    )
    return max(start, since) if since else start


def _feed_partitions(
    session: _Session,
    base_path: str,
    feed: str,
    since: date | None,
    lookback_days: int,
    max_bad_lines: int,
    read_request_bytes: int,
    max_partitions: int,
    landed: dict[str, set[tuple[str, datetime]]],
    decryptor: Decryptor | None,
    column_types: Any,
    stats: LoadStats,
) -> Iterator[Any]:
    try:
        state = _feed_state(feed)
        start = _listing_start(state, since, lookback_days)
        listing = session.listing.run(
            f"listing {feed}",
            lambda sftp: list_partitions(
                sftp, base_path, feed, start, skip=set(state["loaded"]), landed=landed.get(feed)
            ),
        )
        fstats = stats.feed(feed)
        stats.ignored += listing.ignored
        for name in listing.ignored:
            log.warning("ignored %s: not part of ASAPP's export layout", name)
        first_seen = state.get("waiting", {})
        now = datetime.now(UTC).isoformat(timespec="seconds")
        state["waiting"] = {p.key: first_seen.get(p.key, now) for p in listing.waiting}
        fstats.partitions_waiting = len(listing.waiting)
        fstats.waiting = [p.key for p in listing.waiting]
        for p in listing.waiting:
            log.info("%s %s: no _SUCCESS yet, will be loaded by a later run", feed, p.key)
        reader = PartitionReader(
            session.connection, decryptor, max_bad_lines, read_request_bytes=read_request_bytes, database=session.duckdb
        )
        try:
            readable = []
            for partition, files in listing.ready:
                encrypted = [f.name for f in files if f.encrypted]
                if encrypted and decryptor is None:
                    # never loaded as garbage; kept waiting (not recorded) until a decryptor is configured
                    fstats.encrypted.append(partition.key)
                    state["waiting"][partition.key] = state["waiting"].get(partition.key, now)
                    log.warning(
                        "%s %s: encrypted files %s need a decryptor (SOURCES__ASAPP_SFTP__GNUPG_HOME or "
                        "__DECRYPT_COMMAND), which is not configured: skipped",
                        feed,
                        partition.key,
                        encrypted,
                    )
                else:
                    readable.append((partition, files))
            fstats.more = len(readable) > max_partitions
            readable = readable[:max_partitions]  # oldest first: the rest in the next run of this load
            types_ready: Future[dict[str, str] | None] = Future()
            downloads = reader.downloaded(readable, types_ready)  # the first download starts now
            try:
                # looked up only when something is read (a run with nothing new does not parse
                # export_docs.yaml), while the first download runs; its read waits for them
                types = column_types.get(feed) if column_types is not None and readable else None
            except BaseException as e:
                types_ready.set_exception(e)
                raise
            types_ready.set_result(types)
            # dlt takes a timestamp's zone from hints, not from Arrow: without one a typed (naive, UTC) timestamp
            # column would be created WITH TIME ZONE. Given with the first rows that have the column (a hint for
            # an absent column would create it, and dlt would then rewrite every file to add it).
            timestamps = {c for c, t in (types or {}).items() if t == "timestamp"}
            for partition, files, prepared, problem in downloads:
                try:
                    if problem:  # nothing of it is yielded: a partition loads whole or not at all
                        raise PartitionError(problem)
                    for item in _read_partition(partition, files, prepared, fstats):
                        if timestamps and isinstance(item, pa.RecordBatch):
                            present = timestamps.intersection(item.schema.names)
                            if present:
                                hints: dict[str, TColumnSchema] = {
                                    c: {"data_type": "timestamp", "timezone": False} for c in present
                                }
                                timestamps -= present
                                # merged into the resource's hints: given once per column
                                item = dlt.mark.with_hints(item, dlt.mark.make_hints(columns=hints))
                        yield item
                except PartitionError as e:
                    # nothing of it was yielded: not recorded as loaded but kept waiting, so the next run lists
                    # it again however far the other partitions have moved on
                    if f"{partition.key}: {e}" not in fstats.failed:  # once, however many chunks retried it
                        fstats.failed.append(f"{partition.key}: {e}")
                    state["waiting"][partition.key] = state["waiting"].get(partition.key, now)
                    log.error("%s %s: %s; skipped, will be retried by the next run", feed, partition.key, e)
                    continue
                # Recorded in the same load package as the rows: both are committed, or neither.
                state["loaded"][partition.key] = datetime.now(UTC).isoformat(timespec="seconds")
                if state["max_dt"] is None or partition.dt > state["max_dt"]:
                    state["max_dt"] = partition.dt
                fstats.partitions_loaded += 1
                if stats.on_progress:
                    stats.on_progress(feed, fstats)
        finally:
            reader.close()
        _prune(state, lookback_days)
    finally:
        session.release()


def _read_partition(
    partition: Partition, files: list[Any], prepared: PreparedPartition, fstats: FeedStats
) -> Iterator[Any]:
    for batch in PartitionReader.read(prepared):
        fstats.rows += batch.num_rows
        yield batch
    add_drift(fstats.drift, prepared.drift)
    if prepared.rejects:
        fstats.rejected += len(prepared.rejects)
        for r in prepared.rejects:
            log.warning("%s %s: %s line %d rejected: %s", partition.feed, partition.key, r.file, r.line, r.error)
        yield dlt.mark.with_hints(
            [
                {
                    "feed": partition.feed,
                    "partition": partition.key,
                    "file": r.file,
                    "line": r.line,
                    "error": r.error,
                    "raw_text": r.raw,
                    "rejected_at": prepared.loaded_at,
                }
                for r in prepared.rejects
            ],
            dlt.mark.make_hints(table_name=settings.REJECTS_TABLE, columns=REJECT_HINTS),
        )
    fstats.files += len(files)
    fstats.bytes += sum(f.size for f in files)
    log.info("%s %s: %d file(s) read", partition.feed, partition.key, len(files))


def _prune(state: dict[str, Any], lookback_days: int) -> None:
    """Forget loaded partitions that will never be listed again: older than the listing window. The window
    reaches back to the oldest partition still waiting, so what was loaded since then stays remembered."""
    horizon = _listing_start(state, None, lookback_days)
    if horizon is not None:
        state["loaded"] = {k: v for k, v in state["loaded"].items() if _dt(k) >= horizon}


@dlt.source(name="asapp_sftp", section="asapp_sftp", max_table_nesting=0)
def asapp_sftp(
    host: str = dlt.config.value,
    username: str = dlt.config.value,
    private_key_path: str = dlt.config.value,
    known_hosts_path: str | None = dlt.config.value,
    private_key_passphrase: TSecretStrValue | None = dlt.secrets.value,
    port: int = 22,
    base_path: str = "/",
    feeds: Sequence[str] | None = None,
    since: str | None = None,
    lookback_days: int = settings.DEFAULT_LOOKBACK_DAYS,
    accept_unknown_host: bool = False,
    max_bad_lines: int = settings.DEFAULT_MAX_BAD_LINES,
    max_partitions: int = settings.DEFAULT_MAX_PARTITIONS_PER_RUN,
    retry_attempts: int = settings.DEFAULT_RETRY_ATTEMPTS,
    retry_wait_seconds: float = settings.DEFAULT_RETRY_WAIT_SECONDS,
    timeout_seconds: float = settings.DEFAULT_TIMEOUT_SECONDS,
    read_request_bytes: int = settings.DEFAULT_READ_REQUEST_BYTES,
    decrypt_command: str | None = None,
    gnupg_home: str | None = None,
    gnupg_passphrase: TSecretStrValue | None = dlt.secrets.value,
    column_types: Any = None,
    landed: Any = None,
    stats: Any = None,
) -> list[DltResource]:
    """ASAPP Messaging feeds on SFTP, one append-only raw table per feed.

    Args:
        host, port, username: the SFTP server (ASAPP: prod-data-sftp.asapp.com, 22, sftp<company>).
        private_key_path, private_key_passphrase: the key whose public half ASAPP holds.
        known_hosts_path: known_hosts with the server's host key; unknown or changed keys are refused.
        base_path: folder holding the feed folders.
        feeds: feeds to load (default: every feed folder found).
        since: ignore partitions with dt before this date (YYYY-MM-DD).
        lookback_days: how many days before the last loaded dt are listed again for late partitions.
        accept_unknown_host: trust an unknown host key (never by default).
        max_bad_lines: bad lines a partition may have (they go to asapp_raw._rejects); more fail the partition.
        max_partitions: partitions per feed in this run (oldest first); `load_asapp` runs again for the rest.
        retry_attempts, retry_wait_seconds: a dropped connection is re-opened and the interrupted listing or
            download retried, this many times, waiting retry_wait_seconds, then twice as long each time.
        timeout_seconds: a server silent for this long counts as a dropped connection.
        read_request_bytes: bytes per SFTP read request (128 KiB; 32768 for a server that answers less per request).
        decrypt_command, gnupg_home, gnupg_passphrase: how `.enc` files are decrypted: GnuPG (`gpg --batch
            --decrypt`) with the keyring in gnupg_home (or decrypt_command "gpg": the default keyring) and the key's
            passphrase; or any other command reading the encrypted file on stdin and writing the plain file to
            stdout. Without either, partitions with `.enc` files are skipped and listed, never loaded as garbage.
        column_types: feed -> {column: canonical type} the values are cast to (anything with .get(feed), asked
            only when the feed has partitions to read; other columns land as text): a value that does not cast
            lands in the row's _asapp_untyped as sent, and is counted (FeedStats.drift).
        landed: feed -> {(version, partition time)} whose rows are already in the destination: never read again,
            even if dlt's local state lost them (a process killed between committing a package and its state).
        stats: a LoadStats to fill with the run's counts.
    """
    since_date = date.fromisoformat(since) if since else None
    run_stats: LoadStats = stats if stats is not None else LoadStats()
    decryptor = Decryptor.configure(decrypt_command, gnupg_home, gnupg_passphrase)  # DecryptorError says what to fix
    connection = SftpConnection(
        lambda: connect_sftp(
            host,
            int(port),
            username,
            private_key_path,
            known_hosts_path,
            private_key_passphrase=private_key_passphrase,
            accept_unknown_host=accept_unknown_host,
            timeout=float(timeout_seconds),
        ),
        f"{host}:{port}",
        RetryPolicy(int(retry_attempts), float(retry_wait_seconds)),
        float(timeout_seconds),
    )
    session = _Session(connection, run_stats)
    try:

        def top_level(sftp: Any) -> tuple[list[str], Path | None]:
            try:
                names = [e.filename for e in sftp.listdir_attr(base_path)]
            except FileNotFoundError as e:
                raise SftpError(f"base path {base_path!r} does not exist on {host}") from e
            docs = fetch_export_docs(sftp, base_path) if settings.EXPORT_DOCS_NAME in names else None
            return names, docs

        names, run_stats.export_docs = session.listing.run(f"listing {base_path}", top_level)
        available = sorted(n for n in names if settings.FEED_NAME.match(n))
    except BaseException:
        session.close()
        raise
    selected = available if not feeds else [f for f in available if f in set(feeds)]
    for missing in sorted(set(feeds or []) - set(available)):
        log.warning("feed %s has no folder under %s on %s: nothing to load for it yet", missing, base_path, host)
    session.users = len(selected)
    if not selected:
        session.release()
    return [
        dlt.resource(
            _feed_partitions(
                session,
                base_path,
                feed,
                since_date,
                lookback_days,
                max_bad_lines,
                int(read_request_bytes),
                max_partitions,
                landed or {},
                decryptor,
                column_types,
                run_stats,
            ),
            name=feed,
            table_name=feed,
            write_disposition="append",
            columns=LINEAGE_HINTS,
        )
        for feed in selected
    ]
