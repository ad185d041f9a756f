"""Run a command and measure it: wall time and peak RSS (process tree, sampled every 50 ms: listing the tree
reads every process of the machine, so sampling more often takes CPU from the command measured)."""

from __future__ import annotations

import gc
import multiprocessing
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss: int
    stdout: str


def run(args: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    # what the previous measurement wrote is flushed first, so its writeback does not take from this one's time
    os.sync()
    started = time.monotonic()
    proc = subprocess.Popen(
        list(args),
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                total = root.memory_info().rss + sum(c.memory_info().rss for c in root.children(recursive=True))
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {err[-2000:]}")
    return Run(elapsed, peak, out)


def _serve_api(conn: Connection) -> None:
    from loaders.sandbox.asapp_api_emulator import AsappApiEmulator

    with AsappApiEmulator() as api:
        # out of the collector: each full collection walked the modules' objects again, a 85-115 ms pause in the
        # middle of the 20 requests measured (the client freezes its own heap too: runtime.frozen_heap)
        gc.freeze()
        conn.send(api.env())
        conn.recv()
        conn.send(sorted(t for t, _, _ in api.state.received))


@contextmanager
def api_emulator_process() -> Iterator[tuple[dict[str, str], list[float]]]:
    """The ASAPP API emulator in a process of its own, so the RSS sampler above does not take its GIL (listing
    the process tree every 50 ms took ~10% of the emulator's time when they shared a process). Yields the
    emulator's environment and a list that holds, on exit, the times the requests arrived."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_serve_api, args=(theirs,), daemon=True)
    proc.start()
    arrivals: list[float] = []
    try:
        yield ours.recv(), arrivals
        ours.send("stop")
        arrivals += ours.recv()
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
