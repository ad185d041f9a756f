"""Listing the export layout on SFTP: partitions (ready once their _SUCCESS exists, or waiting) and their files."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath

import paramiko

from loaders import runtime
from loaders.asapp_sftp import settings


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
    size: int


@dataclass
class Listing:
    ready: list[tuple[Partition, list[DataFile]]] = field(default_factory=list)
    waiting: list[Partition] = field(default_factory=list)  # no _SUCCESS yet
    ignored: list[str] = field(default_factory=list)  # names that do not follow the documented layout


def _dirs(
    sftp: paramiko.SFTPClient, path: str, pattern: settings.re.Pattern[str], listing: Listing
) -> list[tuple[str, str]]:
    """(value, name) of the sub-folders of path whose name matches pattern, sorted by value."""
    found = []
    for entry in sftp.listdir_attr(path):
        m = pattern.match(entry.filename)
        if m:
            found.append((m.group("value"), entry.filename))
        elif not entry.filename.startswith("."):
            listing.ignored.append(f"{path}/{entry.filename}")
    return sorted(found)


def list_partitions(
    sftp: paramiko.SFTPClient,
    base_path: str,
    feed: str,
    since: date | None,
    skip: set[str],
    landed: set[tuple[str, datetime]] | None = None,
) -> Listing:
    """Partitions of a feed with dt >= since, not in skip, split into ready (_SUCCESS present) and waiting."""
    listing = Listing()
    feed_path = str(PurePosixPath(base_path) / feed)
    file_re = settings.data_file_pattern(feed)
    for version, vname in _dirs(sftp, feed_path, settings.VERSION_DIR, listing):
        for fmt, fname in _dirs(sftp, f"{feed_path}/{vname}", settings.FORMAT_DIR, listing):
            if fmt not in settings.SUPPORTED_FORMATS:
                listing.ignored.append(f"{feed_path}/{vname}/{fname} (format {fmt} is not supported)")
                continue
            fmt_path = f"{feed_path}/{vname}/{fname}"
            for dt, dname in _dirs(sftp, fmt_path, settings.DT_DIR, listing):
                if since is not None and dt < since.isoformat():
                    continue
                for hr, hname in _dirs(sftp, f"{fmt_path}/{dname}", settings.HR_DIR, listing):
                    for mi, mname in _dirs(sftp, f"{fmt_path}/{dname}/{hname}", settings.MI_DIR, listing):
                        path = f"{fmt_path}/{dname}/{hname}/{mname}"
                        partition = Partition(feed, version, fmt, dt, hr, mi, path)
                        if partition.key in skip or (landed and (version, partition.at_naive) in landed):
                            continue
                        entries = sftp.listdir_attr(path)
                        names = {e.filename for e in entries}
                        if settings.SUCCESS_FLAG not in names:
                            listing.waiting.append(partition)
                            continue
                        files = []
                        for e in entries:
                            m = file_re.match(e.filename)
                            if m:
                                split = m.group("split")
                                files.append(
                                    DataFile(
                                        e.filename,
                                        int(split) if split is not None else None,
                                        bool(m.group("gz")),
                                        bool(m.group("enc")),
                                        e.st_size or 0,
                                    )
                                )
                            elif e.filename != settings.SUCCESS_FLAG:
                                listing.ignored.append(f"{path}/{e.filename}")
                        files.sort(key=lambda f: (f.split if f.split is not None else -1, f.name))
                        listing.ready.append((partition, files))
    return listing


def fetch_export_docs(sftp: paramiko.SFTPClient, base_path: str) -> Path:
    """Download the server's export_docs.yaml to a temporary file."""
    fd, name = tempfile.mkstemp(prefix=runtime.scratch_prefix("export-docs"), suffix=".yaml")
    os.close(fd)
    sftp.get(str(PurePosixPath(base_path) / settings.EXPORT_DOCS_NAME), name)
    return Path(name)
