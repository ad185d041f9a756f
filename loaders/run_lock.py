"""One run of a pipeline at a time: an hourly schedule can fire while the last run still loads, and two runs in one
dlt working folder break each other (the second finishes or wipes the first's packages under it).

The lock is an OS lock (flock) on `<pipelines_dir>/<name>.lock`: it dies with its process, so a run killed with
SIGKILL blocks nothing. The file's content (pid, start time, command) is only for the message that names the
running one; whether a run holds the lock is the flock's to say, never the content's."""

from __future__ import annotations

import fcntl
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar

from loaders import runtime

P = ParamSpec("P")
R = TypeVar("R")


class RunLockedError(RuntimeError):
    """Another run of the same pipeline is in progress (it names it)."""


@dataclass
class _Holding:
    command: str  # what this process is: the command of its outermost lock (`elt run` while it loads)
    started: str
    depth: dict[str, int]  # lock name -> how many holds of this process are open on it


# The locks this process holds: a lock taken again by the same process (`elt run` -> load) is re-entered, not
# waited for; a second flock of the same file from one process would refuse the process itself.
_holding: _Holding | None = None


@contextmanager
def run_lock(name: str, command: str) -> Iterator[None]:
    """Hold the lock `name` (a pipeline, or `run` for the whole of `elt run`) while the block runs.

    Raises RunLockedError at once, naming the holder, when another process holds it; that process and its dlt
    folder are left untouched. command (e.g. "elt load asapp") is what other runs are told this process is, unless
    it already holds a lock: then it is that outer lock's command."""
    global _holding
    if _holding is not None and name in _holding.depth:
        _holding.depth[name] += 1
        try:
            yield
        finally:
            _holding.depth[name] -= 1
        return
    folder = runtime.pipelines_dir()
    folder.mkdir(parents=True, exist_ok=True)
    # not truncated on open: until this process holds the lock, the content is the holder's, for the message
    fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(_refusal(fd, name)) from None
        outer = _holding is None
        if _holding is None:
            started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            _holding = _Holding(command, started, {})
        holder = {"pid": os.getpid(), "started": _holding.started, "command": _holding.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        _holding.depth[name] = 1
        try:
            yield
        finally:
            del _holding.depth[name]
            if outer:
                _holding = None
    finally:
        # Closing releases the flock. The file stays: deleting it would let a run lock a new file while another
        # still holds the old one's.
        os.close(fd)


def _refusal(fd: int, name: str) -> str:
    holder: dict[str, object] = {}
    # the holder writes its details just after it took the lock: read again briefly if they are not there yet
    for _ in range(10):
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            holder = {}
        if holder:
            break
        time.sleep(0.05)
    what = holder.get("command") or f"run of pipeline {name}"
    details = f"pid {holder.get('pid', '?')}, started {holder.get('started', '?')}"
    return f"another {what} is running ({details}); it was left untouched. Wait for it, or run again later."


def locked(name: str, command: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: the function runs holding run_lock(name, command)."""

    def wrap(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with run_lock(name, command):
                return function(*args, **kwargs)

        return run

    return wrap
