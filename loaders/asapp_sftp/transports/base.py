"""What the walker asks of a transport: list a folder, download or read a file. A transport knows nothing of
partitions, _SUCCESS, state or dlt; the walker (loaders/asapp_sftp) owns all of that, for every transport."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import IO, Protocol, TypeVar

import tenacity

log = logging.getLogger(__name__)
T = TypeVar("T")


class TransportError(RuntimeError):
    """A problem the user can fix (configuration, credentials, server): the message says how. It stops the run."""


class TransportUnreachable(TransportError):
    """The server cannot be reached, or stayed away through every retry: the run stops, and the next resumes."""


class FileChanged(OSError):
    """A file's downloaded size is not the size the server lists (or listed when the partition was planned): it
    changed since, or is being rewritten. Not a dropped connection: its partition fails and is retried by the next
    run, which lists it again."""


class Retry(Exception):
    """An operation failed in a way worth trying again (the server, the store, the network); after: the wait the
    server asked for (Retry-After, in seconds), when it named one."""

    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


def retried(what: str, operation: Callable[[], T], *, attempts: int, wait: float, where: str, max_after: float) -> T:
    """operation(), tried again while it raises Retry: after the wait the server asked for (at most max_after), else
    after a back-off from `wait` seconds, doubling, with jitter; each retry logged. TransportUnreachable once every
    attempt failed (raised outside tenacity's handler: the error the user sees is this one, not the internal Retry)."""
    backoff = tenacity.wait_exponential_jitter(multiplier=wait, max=60.0, jitter=wait / 2)

    def pause(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, Retry) and error.after is not None:
            return min(error.after, max_after)
        return float(backoff(state))

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=pause,
        retry=tenacity.retry_if_exception_type(Retry),
        before_sleep=lambda state: log.warning(
            "%s: %s; retrying in %.1f s",
            what,
            state.outcome.exception() if state.outcome else "?",
            state.upcoming_sleep,
        ),
        reraise=True,
    )
    try:
        return retrying(operation)
    except Retry as e:
        failure = e
    raise TransportUnreachable(
        f"{what}: {failure} ({attempts} attempts on {where}). The run stops here: nothing of the partitions being "
        "read was committed, and the next run resumes where this one stopped."
    ) from failure.__cause__


@dataclass(frozen=True)
class Entry:
    """One name in a folder: a folder, a regular file, or neither (a link, a device: reported, never read). size
    and mtime are None where the transport does not know them (the File Exporter API lists names only)."""

    name: str
    is_dir: bool
    is_file: bool
    size: int | None = None
    mtime: float | None = None


class Watcher(Protocol):
    """Sees a download's bytes as they are written (the walker's Scan)."""

    def restart(self) -> None:
        """Forget what was seen: the download starts over."""

    def feed(self, chunk: bytes) -> None: ...


class Target:
    """The local file a download writes, and its watcher. Each attempt writes through open(), which empties the
    file and restarts the watcher (a retried download starts over): the walker scans a file's bytes while they
    are at hand instead of reading the file back from disk."""

    def __init__(self, path: Path, watcher: Watcher | None = None) -> None:
        self.path = path
        self.watcher = watcher

    def open(self) -> TargetFile:
        if self.watcher is not None:
            self.watcher.restart()
        return TargetFile(self.path.open("wb"), self.watcher)

    def size(self) -> int:
        return self.path.stat().st_size


class TargetFile:
    """A Target opened for one attempt: what shutil.copyfileobj and `with` use of a file."""

    def __init__(self, file: IO[bytes], watcher: Watcher | None) -> None:
        self._file = file
        self._watcher = watcher

    def write(self, chunk: bytes) -> int:
        if self._watcher is not None:
            self._watcher.feed(chunk)
        return self._file.write(chunk)

    def __enter__(self) -> TargetFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


class Files(Protocol):
    """One transport's files, used from one thread at a time (the walker lists on one, each reader downloads on
    its own). Errors: FileNotFoundError or PermissionError for one path (the walker reports it and goes on),
    FileChanged for a download whose size is not the listed one, TransportError to stop the run."""

    def listdir(self, path: str) -> list[Entry]: ...

    def fetch(self, path: str, target: Target, size: int | None) -> None:
        """The whole file into target, written through target.open() (each attempt anew); size: the size listed
        for it (checked when known)."""

    def read(self, path: str, max_bytes: int) -> bytes:
        """The file's first max_bytes bytes at most (the caller asks one more than it accepts)."""

    def abort(self) -> None:
        """Stop waiting for a server that stays away (the run is ending)."""

    def close(self) -> None: ...


class Transport(Protocol):
    """Where ASAPP's export tree lives: the FEED/version=/format=/dt=/hr=/mi= layout under `root`."""

    name: str  # the raw rows' _asapp_source and the `--from` name: sftp, file-exporter, mirror
    where: str  # for messages: the host or URL, never a credential
    root: str  # the folder holding the feed folders, in the transport's own paths
    # For a transport whose partitions may have no _SUCCESS flag (the File Exporter API documents none): the time
    # of day (UTC) of the daily refresh after which a day's partitions are complete. None: _SUCCESS only.
    daily_refresh: time | None
    # Whether a _SUCCESS flag's time is the exporter's own (SFTP), so a new time means a re-export. A mirror's times
    # are its sync's (a copy that rewrites every file would restate every partition), the API lists none.
    flag_times: bool

    @property
    def reconnects(self) -> int:
        """Times a dropped connection was opened again."""

    def files(self) -> Files: ...

    def close(self) -> None: ...
