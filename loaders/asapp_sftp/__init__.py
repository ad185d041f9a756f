"""dlt source for ASAPP Messaging exports: one walker over the transports that deliver them (transports/: SFTP,
the File Exporter API, a mirror in a local folder or S3).

Layout: ROOT/FEED/version=V/format=F/dt=YYYY-MM-DD/hr=HH/mi=MM/FEED.jsonl[.NN][.gz][.enc] plus an empty
_SUCCESS flag once the partition is complete. One resource (and raw table) per feed; a partition is read only
when it is complete (listing.py), and is remembered in dlt state in the same load package as its rows, so it is
loaded exactly once, whichever transport delivered it (the partition keys are the same for all). Only dt folders
from (last loaded dt - lookback) on are listed, so a run with nothing new costs the same after a week or after a
year of history. The source keeps its first name, asapp_sftp, for every transport: existing state stays valid.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import dlt
import pyarrow as pa
from dlt.common.schema.typing import TColumnSchema
from dlt.common.typing import TSecretStrValue
from dlt.sources import DltResource

from loaders import contract
from loaders.asapp_sftp import settings
from loaders.asapp_sftp.configuration import AsappSourceConfiguration
from loaders.asapp_sftp.connection import SftpError, SftpUnreachable
from loaders.asapp_sftp.decrypt import Decryptor
from loaders.asapp_sftp.listing import (
    Listing,
    ListingScope,
    Partition,
    ReadyPartition,
    fetch_export_docs,
    list_partitions,
)
from loaders.asapp_sftp.reader import (
    PartitionError,
    PartitionReader,
    PreparedPartition,
    TypeDrift,
    add_drift,
    reading_database,
)
from loaders.asapp_sftp.transports import Transport, TransportError, choose, open_transport
from loaders.export_docs import untrusted

__all__ = ["FeedStats", "LoadStats", "SftpError", "SftpUnreachable", "TransportError", "asapp_sftp"]

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

LINEAGE_HINTS: dict[str, TColumnSchema] = {c.name: c.hint for c in contract.RAW_LINEAGE}


# One row per partition load (asapp_raw._partitions), in the same package as the partition's rows: what the load
# read (its fingerprint), so a rescan finds the partitions re-exported since.
PARTITION_HINTS: dict[str, TColumnSchema] = {
    "feed": {"data_type": "text"},
    "partition": {"data_type": "text"},
    "version": {"data_type": "text"},
    "partition_at": {"data_type": "timestamp", "timezone": False},
    "fingerprint": {"data_type": "text"},
    "files": {"data_type": "bigint"},
    "bytes": {"data_type": "bigint"},
    "rows": {"data_type": "bigint"},
    "restated": {"data_type": "bool"},
    "adopted": {"data_type": "bool"},  # loaded by an older version: its fingerprint recorded when first rescanned
    "source": {"data_type": "text"},  # the transport that listed it (null: an SFTP load of an older version)
    "loaded_at": {"data_type": "timestamp", "timezone": False},
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
    keys_set_aside: dict[str, int] = field(default_factory=dict)  # JSON key -> values kept in _asapp_extra
    rescanned: bool = False  # this run listed every dt of the feed (--rescan, or the last rescan was too old)
    held: list[str] = field(default_factory=list)  # partitions dated too far ahead of now: not loaded
    restated: list[str] = field(default_factory=list)  # partitions loaded again: re-exported since their load
    other_versions: set[str] = field(default_factory=set)  # versions loaded that export_docs.yaml does not document
    undocumented: bool = False  # a feed export_docs.yaml does not document: loaded to raw, no staging model


@dataclass
class LoadStats:
    """Filled while the source runs; the CLI prints it as the run summary."""

    feeds: dict[str, FeedStats] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    export_docs: Path | None = None  # the export_docs.yaml found on the server, downloaded
    export_docs_problem: str | None = None  # why the server's export_docs.yaml was not read
    schema_changes: list[Any] = field(default_factory=list)  # its differences from the project's
    reconnects: int = 0  # times a dropped SFTP connection was opened again
    source: str = ""  # the transport the files came through (sftp, file-exporter, mirror)
    on_progress: Any = None  # called with (feed, FeedStats) after each partition

    def feed(self, name: str) -> FeedStats:
        return self.feeds.setdefault(name, FeedStats())


class _Session:
    """One transport (for SFTP: one SSH connection) shared by the feed resources, closed when the last of them
    finishes."""

    def __init__(self, transport: Transport, stats: LoadStats) -> None:
        self.transport = transport
        self.listing = transport.files()  # lists the root folder, then the feeds' partitions
        self.duckdb = reading_database()  # reads and checks the downloaded files, for every feed
        self.stats = stats
        self.users = 0

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self.close()

    def close(self) -> None:
        self.listing.close()
        self.transport.close()
        self.duckdb.close()
        self.stats.reconnects += self.transport.reconnects


@dataclass(frozen=True)
class FeedRun:
    """How this run walks each feed (the source's arguments, resolved)."""

    base_path: str
    since: date | None
    lookback_days: int
    rescan: bool  # list every dt of the feed, whenever it was last rescanned
    rescan_hours: float
    max_bad_lines: int
    max_partitions: int
    max_line_bytes: int
    max_depth: int
    max_inflated_bytes: int
    decryptor: Decryptor | None
    column_types: Any
    history: Any
    stats: LoadStats
    source: str = "sftp"  # the transport's name
    daily_refresh: time | None = None  # the transport's: see ListingScope.complete_through
    flag_times: bool = True  # the transport's: see ListingScope.flag_times


_KEY_DT = re.compile(r"(?:^|/)dt=([0-9]{4}-[0-9]{2}-[0-9]{2})(?:/|$)", re.ASCII)


def _key_date(partition_key: str) -> date | None:
    """The dt of a partition key, or None for a key that is not one (a state left by an older version, which
    let invalid dates through)."""
    m = _KEY_DT.search(partition_key)
    try:
        return date.fromisoformat(m.group(1)) if m else None
    except ValueError:
        return None


def _feed_state(feed: str) -> dict[str, Any]:
    """The feed's state: loaded (partition key -> fingerprint of its load, within the listing window), waiting
    (key -> first seen), max_dt (the last loaded dt), rescanned_at, rescan_from (a rescan left unfinished) and
    last_rescan (what the last full listing found not loaded, and what it reloaded)."""
    state = dlt.current.source_state().setdefault("feeds", {})
    feed_state: dict[str, Any] = state.setdefault(feed, {"loaded": {}, "waiting": {}, "max_dt": None})
    # an entry no valid partition has (an older version's state) would stop every later run: dropped
    for name in ("loaded", "waiting"):
        feed_state[name] = {k: v for k, v in feed_state.get(name, {}).items() if _key_date(k) is not None}
    if feed_state.get("max_dt") and _key_date(f"dt={feed_state['max_dt']}") is None:
        feed_state["max_dt"] = None
    return feed_state


def _listing_start(feed_state: dict[str, Any], since: date | None, lookback_days: int) -> date | None:
    """The first dt folder worth listing: the last loaded dt minus the lookback, or an older waiting one."""
    if not feed_state.get("max_dt"):
        return since
    start = min(
        [
            date.fromisoformat(feed_state["max_dt"]) - timedelta(days=lookback_days),
            *(d for d in map(_key_date, feed_state.get("waiting", {})) if d is not None),
        ]
    )
    return max(start, since) if since else start


def _rescan_due(feed_state: dict[str, Any], run: FeedRun, now: datetime) -> bool:
    if run.rescan or not feed_state.get("max_dt") or feed_state.get("rescan_from"):
        return True  # asked for, nothing loaded yet (the listing is whole anyway), or a rescan left unfinished
    try:
        last = datetime.fromisoformat(feed_state["rescanned_at"])
    except (KeyError, TypeError, ValueError):
        return True
    return now - last >= timedelta(hours=run.rescan_hours)


def complete_through(daily_refresh: time | None, now: datetime) -> date | None:
    """The last day whose partitions are complete without a _SUCCESS flag: the one whose next daily refresh (at
    daily_refresh UTC the day after) has passed. None for a transport whose partitions always have the flag."""
    if daily_refresh is None:
        return None
    refreshed = now.astimezone(UTC) - timedelta(hours=daily_refresh.hour, minutes=daily_refresh.minute)
    return refreshed.date() - timedelta(days=1)


def _scope(feed: str, feed_state: dict[str, Any], run: FeedRun, rescan: bool, now: datetime) -> ListingScope:
    hold_after = now + timedelta(hours=settings.FUTURE_TOLERANCE_HOURS)
    through = complete_through(run.daily_refresh, now)
    if not rescan:
        return ListingScope(
            since=_listing_start(feed_state, run.since, run.lookback_days),
            loaded=frozenset(feed_state["loaded"]),
            landed=frozenset(run.history.landed(feed, whole=False) if run.history else ()),
            hold_after=hold_after,
            complete_through=through,
            source=run.source,
            flag_times=run.flag_times,
        )
    since = run.since
    if feed_state.get("rescan_from"):  # the rest of a rescan that had more to load than one chunk
        resume = date.fromisoformat(feed_state["rescan_from"])
        since = max(since, resume) if since else resume
    known = dict(run.history.fingerprints(feed) if run.history else {})
    known.update({k: v for k, v in feed_state["loaded"].items() if _is_fingerprint(v)})
    return ListingScope(
        since=since,
        loaded=frozenset(feed_state["loaded"]),
        landed=frozenset(run.history.landed(feed, whole=True) if run.history else ()),
        fingerprints=known,
        hold_after=hold_after,
        complete_through=through,
        source=run.source,
        flag_times=run.flag_times,
    )


_FINGERPRINT = re.compile(r"(?:[a-z-]+:)?[0-9a-f]{16}", re.ASCII)


def _is_fingerprint(value: Any) -> bool:
    """A loaded partition's state value is its fingerprint, prefixed by its transport's name unless SFTP (older
    versions stored the load time instead)."""
    return isinstance(value, str) and _FINGERPRINT.fullmatch(value) is not None


def _partition_row(
    ready: ReadyPartition, loaded_at: datetime, rows: int, source: str, adopted: bool = False
) -> dict[str, Any]:
    p = ready.partition
    return {
        "feed": p.feed,
        "partition": p.key,
        "version": p.version,
        "partition_at": p.at_naive,
        "fingerprint": ready.fingerprint,
        "files": len(ready.files),
        "bytes": sum(f.size or 0 for f in ready.files),
        "rows": rows,
        "restated": ready.restated,
        "adopted": adopted,
        "source": source,
        "loaded_at": loaded_at.replace(tzinfo=None),
    }


def _partition_rows(rows: list[dict[str, Any]]) -> Any:
    """The partition loads of a feed's run, as one item: dlt computes a table variant per item, which per
    partition cost as much as reading a small partition."""
    return dlt.mark.with_hints(
        rows,
        # a variant: the table hint stays with these rows instead of becoming the resource's for the rows after
        dlt.mark.make_hints(table_name=settings.PARTITIONS_TABLE, columns=PARTITION_HINTS),
        create_table_variant=True,
    )


def _feed_partitions(session: _Session, feed: str, run: FeedRun) -> Iterator[Any]:
    stats = run.stats
    try:
        state = _feed_state(feed)
        now_at = datetime.now(UTC)
        now = now_at.isoformat(timespec="seconds")
        rescan = _rescan_due(state, run, now_at)
        scope = _scope(feed, state, run, rescan, now_at)
        listing = list_partitions(session.listing, run.base_path, feed, scope)
        fstats = stats.feed(feed)
        fstats.rescanned = rescan
        stats.ignored += listing.ignored
        for name in listing.ignored:
            log.warning("ignored %s: not part of ASAPP's export layout", name)
        first_seen = state.get("waiting", {})
        state["waiting"] = {p.key: first_seen.get(p.key, now) for p in listing.waiting}
        fstats.partitions_waiting = len(listing.waiting)
        fstats.waiting = [p.key for p in listing.waiting]
        for p in listing.waiting:
            log.info("%s %s: no _SUCCESS yet, will be loaded by a later run", feed, p.key)
        fstats.held = [p.key for p in listing.held]
        for p in listing.held:
            log.warning(
                "%s %s: dated more than %d h ahead of now: held back, not loaded (ask ASAPP about it)",
                feed,
                p.key,
                settings.FUTURE_TOLERANCE_HOURS,
            )
        loads: list[dict[str, Any]] = []  # asapp_raw._partitions rows, yielded once the feed's partitions are read
        for adopted in listing.adopted:  # loaded by an older version: its fingerprint recorded, not read again
            state["loaded"][adopted.partition.key] = adopted.fingerprint
            loads.append(_partition_row(adopted, now_at, 0, run.source, adopted=True))
        reader = PartitionReader(
            session.transport,
            run.decryptor,
            run.max_bad_lines,
            database=session.duckdb,
            max_line_bytes=run.max_line_bytes,
            max_depth=run.max_depth,
            max_inflated_bytes=run.max_inflated_bytes,
        )
        try:
            readable: list[ReadyPartition] = []
            for ready in listing.ready:
                encrypted = [f.name for f in ready.files if f.encrypted]
                if encrypted and run.decryptor is None:
                    # never loaded as garbage; kept waiting (not recorded) until a decryptor is configured
                    fstats.encrypted.append(ready.partition.key)
                    state["waiting"][ready.partition.key] = state["waiting"].get(ready.partition.key, now)
                    log.warning(
                        "%s %s: encrypted files %s need a decryptor (SOURCES__ASAPP_SFTP__GNUPG_HOME or "
                        "__DECRYPT_COMMAND), which is not configured: skipped",
                        feed,
                        ready.partition.key,
                        encrypted,
                    )
                else:
                    readable.append(ready)
            readable.sort(key=lambda r: (r.partition.at, r.partition.version))
            fstats.more = len(readable) > run.max_partitions
            left = readable[run.max_partitions :]
            readable = readable[: run.max_partitions]  # oldest first: the rest in the next run of this load
            retry: list[ReadyPartition] = []
            types_ready: Future[dict[str, str] | None] = Future()
            downloads = reader.downloaded([(r.partition, r.files) for r in readable], types_ready)
            types = documented_version = None
            try:
                # looked up only when something is read (a run with nothing new does not parse
                # export_docs.yaml), while the first download runs; its read waits for them
                if run.column_types is not None and readable:
                    types = run.column_types.get(feed)
                    if hasattr(run.column_types, "version"):  # a plain mapping of types has none
                        documented_version = run.column_types.version(feed)
                        fstats.undocumented = documented_version is None
                        if fstats.undocumented:
                            log.warning(
                                "feed %s is not in export_docs.yaml: loaded to asapp_raw.%s as text, no staging model",
                                feed,
                                feed,
                            )
            except BaseException as e:
                types_ready.set_exception(e)
                raise
            types_ready.set_result(types)
            # dlt takes a timestamp's zone from hints, not from Arrow: without one a typed (naive, UTC) timestamp
            # column would be created WITH TIME ZONE. Given with the first rows that have the column (a hint for
            # an absent column would create it, and dlt would then rewrite every file to add it).
            timestamps = {c for c, t in (types or {}).items() if t == "timestamp"}
            for ready, (partition, files, prepared, problem) in zip(readable, downloads, strict=True):
                rows_before = fstats.rows
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
                    if ready.restated:  # still loaded as before, so a plain listing passes it by: rescan again
                        retry.append(ready)
                    log.error("%s %s: %s; skipped, will be retried by the next run", feed, partition.key, e)
                    continue
                # Recorded in the same load package as the rows: both are committed, or neither.
                loads.append(_partition_row(ready, prepared.loaded_at or now_at, fstats.rows - rows_before, run.source))
                state["loaded"][partition.key] = ready.fingerprint
                state["waiting"].pop(partition.key, None)
                if state["max_dt"] is None or partition.dt > state["max_dt"]:
                    state["max_dt"] = partition.dt
                if ready.restated:
                    fstats.restated.append(partition.key)
                    log.warning(
                        "%s %s: re-exported since it was loaded (its files or _SUCCESS changed): loaded again; "
                        "its new rows supersede the earlier ones in staging",
                        feed,
                        partition.key,
                    )
                if documented_version is not None and partition.version != documented_version:
                    fstats.other_versions.add(partition.version)
                fstats.partitions_loaded += 1
                if stats.on_progress:
                    stats.on_progress(feed, fstats)
        finally:
            reader.close()
        if loads:  # in the package of the rows they describe: committed with them, or not at all
            yield _partition_rows(loads)
        if rescan:
            _record_rescan(state, listing, fstats, [*left, *retry], now)
        _prune(state, run.lookback_days)
    finally:
        session.release()


def _record_rescan(
    state: dict[str, Any], listing: Listing, fstats: FeedStats, left: list[ReadyPartition], now: str
) -> None:
    """What this full listing found and did, for `elt status`. A rescan that leaves partitions to read (more than
    one chunk, or a restated one that failed) continues from the oldest of them (the next chunk, or the next run)."""
    if left:
        state["rescan_from"] = min(r.partition.dt for r in left)
        return
    state.pop("rescan_from", None)
    state["rescanned_at"] = now
    not_loaded = [
        *fstats.waiting,
        *fstats.held,
        *(f.split(": ", 1)[0] for f in fstats.failed),
        *fstats.encrypted,
    ]
    state["last_rescan"] = {
        "at": now,
        "complete": listing.complete,
        "not_loaded": not_loaded[:20],
        "not_loaded_count": len(not_loaded),
        "restated": fstats.restated[:20],
        "restated_count": len(fstats.restated),
    }


def _read_partition(
    partition: Partition, files: list[Any], prepared: PreparedPartition, fstats: FeedStats
) -> Iterator[Any]:
    for batch in PartitionReader.read(prepared):
        fstats.rows += batch.num_rows
        yield batch
    add_drift(fstats.drift, prepared.drift)
    for key, values in prepared.set_aside.items():
        fstats.keys_set_aside[key] = fstats.keys_set_aside.get(key, 0) + values
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
            create_table_variant=True,  # the rows after these stay in the feed's table
        )
    fstats.files += len(files)
    fstats.bytes += sum(f.size or 0 for f in files)
    log.info("%s %s: %d file(s) read", partition.feed, partition.key, len(files))


def _prune(state: dict[str, Any], lookback_days: int) -> None:
    """Forget loaded partitions that will never be listed again: older than the listing window. The window
    reaches back to the oldest partition still waiting, so what was loaded since then stays remembered."""
    horizon = _listing_start(state, None, lookback_days)
    if horizon is not None:
        state["loaded"] = {k: v for k, v in state["loaded"].items() if (_key_date(k) or horizon) >= horizon}


@dlt.source(name="asapp_sftp", section="asapp_sftp", max_table_nesting=0, spec=AsappSourceConfiguration)
def asapp_sftp(
    feeds: Sequence[str] | None = None,
    since: str | None = None,
    lookback_days: int = settings.DEFAULT_LOOKBACK_DAYS,
    rescan: bool = False,
    rescan_hours: float = settings.DEFAULT_RESCAN_HOURS,
    max_bad_lines: int = settings.DEFAULT_MAX_BAD_LINES,
    max_partitions: int = settings.DEFAULT_MAX_PARTITIONS_PER_RUN,
    max_line_bytes: int = settings.DEFAULT_MAX_LINE_BYTES,
    max_depth: int = settings.DEFAULT_MAX_DEPTH,
    max_inflated_bytes: int = settings.DEFAULT_MAX_INFLATED_BYTES,
    decrypt_command: str | None = None,
    gnupg_home: str | None = None,
    gnupg_passphrase: TSecretStrValue | None = dlt.secrets.value,
    transport: Any = None,
    column_types: Any = None,
    history: Any = None,
    stats: Any = None,
) -> list[DltResource]:
    """ASAPP Messaging feeds, one append-only raw table per feed, through one transport.

    Args:
        feeds: feeds to load (default: every feed folder found).
        since: ignore partitions with dt before this date (YYYY-MM-DD).
        lookback_days: how many days before the last loaded dt are listed again for late partitions.
        rescan: list every dt of the feeds (a rescan): load the partitions never loaded, and again those whose
            files (names, sizes) or _SUCCESS changed since their load.
        rescan_hours: a run rescans a feed by itself when its last rescan is older than this.
        max_bad_lines: bad lines a partition may have (they go to asapp_raw._rejects); more fail the partition.
        max_partitions: partitions per feed in this run (oldest first); `load_asapp` runs again for the rest.
        max_line_bytes, max_depth: a line longer than this, or nested deeper, is a rejected line (asapp_raw._rejects).
        max_inflated_bytes: a gzip or .enc file that inflates to more than this fails its partition (retried).
        decrypt_command, gnupg_home, gnupg_passphrase: how `.enc` files are decrypted: GnuPG (`gpg --batch
            --decrypt`) with the keyring in gnupg_home (or decrypt_command "gpg": the default keyring) and the key's
            passphrase; or any other command reading the encrypted file on stdin and writing the plain file to
            stdout. Without either, partitions with `.enc` files are skipped and listed, never loaded as garbage.
        transport: where the export tree is (transports/: SFTP, the File Exporter API, a mirror); default: the
            one configured (transports.choose). The source closes it when its feeds are read.
        column_types: feed -> {column: canonical type} the values are cast to (anything with .get(feed), asked
            only when the feed has partitions to read; other columns land as text): a value that does not cast
            lands in the row's _asapp_untyped as sent, and is counted (FeedStats.drift). With .version(feed)
            too, the feed's documented version: partitions of another version are counted (FeedStats.other_versions).
        history: what the destination holds, the truth where dlt's local state lags it (a process killed between
            committing a package and its state): .landed(feed, whole) -> {(version, partition time)} in the raw
            table (whole: every dt, else the listing window), .fingerprints(feed) -> {partition key: fingerprint
            of its last load}.
        stats: a LoadStats to fill with the run's counts.
    """
    since_date = date.fromisoformat(since) if since else None
    run_stats: LoadStats = stats if stats is not None else LoadStats()
    decryptor = Decryptor.configure(decrypt_command, gnupg_home, gnupg_passphrase)  # DecryptorError says what to fix
    chosen: Transport = transport if transport is not None else open_transport(choose())
    run_stats.source = chosen.name
    session = _Session(chosen, run_stats)
    root = chosen.root
    try:
        try:
            entries = session.listing.listdir(root)
        except FileNotFoundError as e:
            raise TransportError(f"base path {root!r} does not exist on {chosen.where}") from e
        except PermissionError as e:
            raise TransportError(f"base path {root!r} cannot be listed on {chosen.where}: {e}") from e
        names = [e.name for e in entries if e.is_dir]
        if any(e.name == settings.EXPORT_DOCS_NAME and e.is_file for e in entries):
            run_stats.export_docs, problem = fetch_export_docs(session.listing, root, untrusted.MAX_BYTES)
            if problem:
                run_stats.export_docs_problem = problem
                log.warning("the server's %s", problem)
        available = sorted(n for n in names if settings.FEED_NAME.fullmatch(n))
    except BaseException:
        session.close()
        raise
    selected = available if not feeds else [f for f in available if f in set(feeds)]
    for missing in sorted(set(feeds or []) - set(available)):
        log.warning("feed %s has no folder under %s on %s: nothing to load for it yet", missing, root, chosen.where)
    session.users = len(selected)
    if not selected:
        session.release()
    run = FeedRun(
        base_path=root,
        since=since_date,
        lookback_days=int(lookback_days),
        rescan=bool(rescan),
        rescan_hours=float(rescan_hours),
        max_bad_lines=int(max_bad_lines),
        max_partitions=int(max_partitions),
        max_line_bytes=int(max_line_bytes),
        max_depth=int(max_depth),
        max_inflated_bytes=int(max_inflated_bytes),
        decryptor=decryptor,
        column_types=column_types,
        history=history,
        stats=run_stats,
        source=chosen.name,
        daily_refresh=chosen.daily_refresh,
        flag_times=chosen.flag_times,
    )
    return [
        dlt.resource(
            _feed_partitions(session, feed, run),
            name=feed,
            table_name=feed,
            write_disposition="append",
            columns=LINEAGE_HINTS,
        )
        for feed in selected
    ]
