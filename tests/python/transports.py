"""The export tree served by each transport, for the tests parametrized over them: SFTP (the real sshd), the
File Exporter API (its emulator on 127.0.0.1) and a mirror (a local folder). Each serves the same folder as it is
at each request, so a test writes partitions and loads, whatever the transport."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loaders.sandbox.file_exporter_emulator import FileExporterEmulator

TRANSPORTS = ("sftp", "file-exporter", "mirror")


@dataclass
class Served:
    root: Path
    transport: str
    emulator: FileExporterEmulator | None = None


def serve(
    request: pytest.FixtureRequest, root: Path, transport: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Served]:
    root.mkdir(exist_ok=True)
    emulator = None
    if transport == "sftp":
        env = request.getfixturevalue("sshd").env(root)
    elif transport == "file-exporter":
        emulator = FileExporterEmulator(root)
        emulator.start()
        env = emulator.env()
    else:
        env = {"SOURCES__ASAPP_MIRROR__URL": str(root)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        yield Served(root, transport, emulator)
    finally:
        if emulator is not None:
            emulator.stop()
            assert not emulator.state.invalid_requests, (
                emulator.state.invalid_requests
            )  # every request followed the spec
