"""Listing the export layout through a transport: partitions (ready once complete, waiting, or held back), their
files and a fingerprint of what they hold. Every name is checked against the layout; any other is reported.

A partition is complete once its _SUCCESS flag is listed. A transport that may list none (the File Exporter API
documents no flag) also names the time of day of its daily refresh: a partition without _SUCCESS is complete once
the refresh after its day has passed (scope.complete_through), and a later change is caught by the rescan."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath

from loaders import runtime
from loaders.asapp_sftp import settings
from loaders.asapp_sftp.transports.base import Entry, Files


@dataclass(frozen=True)
class Partition:
    feed: str
    version: str
    format: str
    dt: str
    hr: str
    mi: str
    path: str  # remote directory

    @property
    def key(self) -> str:
        return f"version={self.version}/format={self.format}/dt={self.dt}/hr={self.hr}/mi={self.mi}"

    @property
    def at_naive(self) -> datetime:
        """The partition time as the raw tables hold it (_asapp_partition_at: UTC without a zone)."""
        return self.at.replace(tzinfo=None)

    @property
    def at(self) -> datetime:
        return datetime.strptime(f"{self.dt} {self.hr}:{self.mi}", "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


@dataclass(frozen=True)
class DataFile:
    name: str
    split: int | None
    gzip: bool
    encrypted: bool
    size: int | None  # None where the transport lists no sizes (the File Exporter API)


@dataclass(frozen=True)
class ReadyPartition:
    """A complete partition (its _SUCCESS exists) to read, with what it holds now."""

    partition: Partition
    files: list[DataFile]
    fingerprint: str
    restated: bool = False  # loaded before with other content: this load supersedes that one in staging


@dataclass(frozen=True)
class ListingScope:
    """What one listing of a feed looks at.

    A plain listing starts at `since` and does not open the folders of partitions already loaded (`loaded`, from
    dlt's state, or `landed` in the raw tables), so its cost stays bounded by the window. A rescan (`fingerprints`
    given: partition key -> fingerprint of its last load) opens every partition folder from `since` on and finds
    the partitions never loaded and those whose content changed since their load.
    """

    since: date | None
    loaded: frozenset[str] = frozenset()
    landed: frozenset[tuple[str, datetime]] = frozenset()
    fingerprints: dict[str, str] | None = None
    hold_after: datetime | None = None  # partitions later than this are held back
    # a partition without _SUCCESS dated this day or before is complete (None: only _SUCCESS makes one complete)
    complete_through: date | None = None
    source: str = "sftp"  # the transport listing: a fingerprint another one recorded is not compared (adopted)
    flag_times: bool = True  # a _SUCCESS flag's time is part of the fingerprint (Transport.flag_times)

    @property
    def rescan(self) -> bool:
        return self.fingerprints is not None


@dataclass
class Listing:
    ready: list[ReadyPartition] = field(default_factory=list)
    waiting: list[Partition] = field(default_factory=list)  # no _SUCCESS yet
    held: list[Partition] = field(default_factory=list)  # dated too far ahead of now: not loaded, reported
    # in a rescan: loaded before fingerprints were recorded; their fingerprint is recorded, they are not read again
    adopted: list[ReadyPartition] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # names that do not follow the documented layout
    complete: int = 0  # partitions with their _SUCCESS listed (loaded or not)


def shown(name: str) -> str:
    """A remote name as it can be printed: as it is when plain, else Python's escaped form (a newline, a control
    character or a look-alike digit then shows)."""
    return name if name.isascii() and name.isprintable() else repr(name)


def _valid(pattern: re.Pattern[str], name: str) -> str | None:
    """The value of a folder name of the layout (version=, dt=, ...), or None when it is not one: the whole name
    matches, and dt, hr and mi are real calendar values."""
    m = pattern.fullmatch(name)
    if m is None:
        return None
    value = m.group("value")
    try:
        if pattern is settings.DT_DIR:
            date.fromisoformat(value)
        elif pattern is settings.HR_DIR:
            return value if int(value) <= 23 else None
        elif pattern is settings.MI_DIR:
            return value if int(value) <= 59 else None
    except ValueError:
        return None
    return value


def _entries(files: Files, path: str, listing: Listing) -> list[Entry]:
    """The entries of a folder; none, reported, when it vanished or cannot be read since it was listed."""
    try:
        return files.listdir(path)
    except (FileNotFoundError, PermissionError) as e:
        listing.ignored.append(f"{shown(path)} (cannot be listed: {e.strerror or type(e).__name__})")
        return []


def _dirs(files: Files, path: str, pattern: re.Pattern[str], listing: Listing) -> list[tuple[str, str]]:
    """(value, name) of the sub-folders of path whose name is of the pattern's form, sorted by value; any other
    name is reported as ignored."""
    found = []
    for entry in _entries(files, path, listing):
        value = _valid(pattern, entry.name) if entry.is_dir else None
        if value is not None:
            found.append((value, entry.name))
        elif not entry.name.startswith("."):
            listing.ignored.append(f"{shown(path)}/{shown(entry.name)}")
    return sorted(found)


def fingerprint(files: list[DataFile], success: Entry | None, source: str = "sftp", flag_times: bool = True) -> str:
    """What a partition holds, in short: its data files' names and sizes and its _SUCCESS flag's time (None: a
    partition complete by the daily refresh rule; flag_times False: only that the flag is there). ASAPP re-exporting
    a partition changes one of them. A transport other than SFTP (whose fingerprints were recorded before there
    were others) prefixes its name: fingerprints of two transports are never compared (they list sizes and times
    differently)."""
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.name):
        digest.update(f"{f.name}\0{'' if f.size is None else f.size}\n".encode())
    flag = "refresh" if success is None else (success.mtime or 0) if flag_times else "listed"
    digest.update(f"{settings.SUCCESS_FLAG}\0{flag}".encode())
    short = digest.hexdigest()[:16]
    return short if source == "sftp" else f"{source}:{short}"


def fingerprint_source(value: str) -> str:
    """The transport that recorded a fingerprint."""
    return value.split(":", 1)[0] if ":" in value else "sftp"


def _data_files(feed: str, path: str, entries: list[Entry], listing: Listing) -> list[DataFile]:
    file_re = settings.data_file_pattern(feed)
    files = []
    for e in entries:
        m = file_re.fullmatch(e.name) if e.is_file else None
        if m:
            split = m.group("split")
            files.append(
                DataFile(
                    e.name,
                    int(split) if split is not None else None,
                    bool(m.group("gz")),
                    bool(m.group("enc")),
                    e.size,
                )
            )
        elif e.name != settings.SUCCESS_FLAG:
            listing.ignored.append(f"{shown(path)}/{shown(e.name)}")
    files.sort(key=lambda f: (f.split if f.split is not None else -1, f.name))
    return files


def list_partitions(files: Files, base_path: str, feed: str, scope: ListingScope) -> Listing:
    """The partitions of a feed in scope, as ready (_SUCCESS present: to read), waiting, held back or adopted."""
    listing = Listing()
    feed_path = str(PurePosixPath(base_path) / feed)
    for version, vname in _dirs(files, feed_path, settings.VERSION_DIR, listing):
        for fmt, fname in _dirs(files, f"{feed_path}/{vname}", settings.FORMAT_DIR, listing):
            if fmt not in settings.SUPPORTED_FORMATS:
                listing.ignored.append(f"{feed_path}/{vname}/{fname} (format {fmt} is not supported)")
                continue
            fmt_path = f"{feed_path}/{vname}/{fname}"
            for dt, dname in _dirs(files, fmt_path, settings.DT_DIR, listing):
                if scope.since is not None and dt < scope.since.isoformat():
                    continue
                for hr, hname in _dirs(files, f"{fmt_path}/{dname}", settings.HR_DIR, listing):
                    for mi, mname in _dirs(files, f"{fmt_path}/{dname}/{hname}", settings.MI_DIR, listing):
                        partition = Partition(feed, version, fmt, dt, hr, mi, f"{fmt_path}/{dname}/{hname}/{mname}")
                        _list_partition(files, partition, scope, listing)
    return listing


def _list_partition(files: Files, partition: Partition, scope: ListingScope, listing: Listing) -> None:
    if scope.hold_after is not None and partition.at > scope.hold_after:
        listing.held.append(partition)
        return
    loaded = partition.key in scope.loaded or (partition.version, partition.at_naive) in scope.landed
    if loaded and not scope.rescan:
        return
    entries = _entries(files, partition.path, listing)
    success = next((e for e in entries if e.name == settings.SUCCESS_FLAG and e.is_file), None)
    refreshed = scope.complete_through is not None and partition.dt <= scope.complete_through.isoformat()
    if success is None and not refreshed:
        listing.waiting.append(partition)
        return
    listing.complete += 1
    data = _data_files(partition.feed, partition.path, entries, listing)
    now = fingerprint(data, success, scope.source, scope.flag_times)
    if not scope.rescan:
        listing.ready.append(ReadyPartition(partition, data, now))
        return
    before = (scope.fingerprints or {}).get(partition.key)
    if (before is None and loaded) or (before is not None and fingerprint_source(before) != scope.source):
        # loaded by an older version, or through another transport: recorded as this transport sees it, not read
        listing.adopted.append(ReadyPartition(partition, data, now))
    elif before is None:
        listing.ready.append(ReadyPartition(partition, data, now))
    elif before != now:
        listing.ready.append(ReadyPartition(partition, data, now, restated=True))


def fetch_export_docs(files: Files, base_path: str, max_bytes: int) -> tuple[Path | None, str | None]:
    """The server's export_docs.yaml downloaded to a temporary file, or why it was not (larger than max_bytes)."""
    remote = str(PurePosixPath(base_path) / settings.EXPORT_DOCS_NAME)
    # read to the cap, whatever size the server lists: a file may grow while it is read
    data = files.read(remote, max_bytes + 1)
    if len(data) > max_bytes:
        return None, f"{settings.EXPORT_DOCS_NAME} is larger than {max_bytes} bytes: not read"
    fd, name = tempfile.mkstemp(prefix=runtime.scratch_prefix("export-docs"), suffix=".yaml")
    with os.fdopen(fd, "wb") as target:
        target.write(data)
    return Path(name), None
