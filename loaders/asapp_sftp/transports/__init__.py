"""The transports the walker reads ASAPP's export tree through, and which one a run uses.

A transport is configured when a setting of its own section is set: SOURCES__ASAPP_SFTP__HOST,
SOURCES__ASAPP_FILE_EXPORTER__API_ID or __BASE_URL, SOURCES__ASAPP_MIRROR__URL. A run uses the one configured
(`--from` picks one when several are); with none, SFTP's missing settings are named."""

from __future__ import annotations

from loaders import runtime
from loaders.asapp_sftp.transports.base import (
    Entry,
    FileChanged,
    Files,
    Transport,
    TransportError,
    TransportUnreachable,
)

__all__ = [
    "NAMES",
    "Entry",
    "FileChanged",
    "Files",
    "Transport",
    "TransportChoiceError",
    "TransportError",
    "TransportUnreachable",
    "choose",
    "configured_names",
    "open_transport",
]

NAMES = ("sftp", "file-exporter", "mirror")
# The settings whose presence makes a transport configured.
_MARKS = {
    "sftp": ("sources.asapp_sftp.host",),
    "file-exporter": ("sources.asapp_file_exporter.api_id", "sources.asapp_file_exporter.base_url"),
    "mirror": ("sources.asapp_mirror.url",),
}


class TransportChoiceError(TransportError):
    """No transport, or several, for a run without --from, or an unknown --from."""


def configured_names() -> list[str]:
    return [name for name in NAMES if any(runtime.is_configured(key) for key in _MARKS[name])]


def choose(name: str | None = None) -> str:
    """The transport a run uses: `name` (--from), else the one configured (SFTP when none is: its missing
    settings are then named)."""
    if name is not None:
        if name not in NAMES:
            raise TransportChoiceError(f"--from {name!r} is not a transport: use one of {', '.join(NAMES)}")
        return name
    found = configured_names()
    if len(found) > 1:
        raise TransportChoiceError(
            f"several ASAPP transports are configured ({', '.join(found)}): choose one with --from {'|'.join(found)}"
        )
    return found[0] if found else "sftp"


def open_transport(name: str) -> Transport:
    """The transport `name`, from its settings (a missing one is named by dlt's error, or ours)."""
    if name == "sftp":
        from loaders.asapp_sftp.transports import sftp

        return sftp.SftpTransport.configure(sftp.configured())
    if name == "file-exporter":
        from loaders.asapp_sftp.transports import file_exporter

        return file_exporter.FileExporterTransport.configure(file_exporter.configured())
    if name == "mirror":
        from loaders.asapp_sftp.transports import mirror

        return mirror.MirrorTransport.configure(mirror.configured())
    raise TransportChoiceError(f"--from {name!r} is not a transport: use one of {', '.join(NAMES)}")
