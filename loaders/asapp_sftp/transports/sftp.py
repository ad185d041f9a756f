"""SFTP (ASAPP's own delivery): paramiko with host keys verified, prefetched downloads, and a dropped connection
re-opened with back-off (connection.py)."""

from __future__ import annotations

import stat
from datetime import time
from functools import partial
from typing import Any

from dlt.common.configuration import configspec, resolve_configuration
from dlt.common.configuration.specs import BaseConfiguration
from dlt.common.typing import TSecretStrValue

from loaders.asapp_sftp import settings
from loaders.asapp_sftp.connection import RetryPolicy, SftpChannel, SftpConnection, connect_sftp, download
from loaders.asapp_sftp.transports.base import Entry, Target

SECTION = "asapp_sftp"


@configspec
class SftpConfiguration(BaseConfiguration):
    """SOURCES__ASAPP_SFTP__*: the SFTP server (ASAPP: prod-data-sftp.asapp.com, 22, sftp<company>) and how its
    connection is kept."""

    host: str = None  # type: ignore[assignment]  # required: dlt names it when missing
    username: str = None  # type: ignore[assignment]
    private_key_path: str = None  # type: ignore[assignment]
    known_hosts_path: str | None = None  # known_hosts with the server's host key; unknown or changed keys are refused
    private_key_passphrase: TSecretStrValue | None = None
    port: int = 22
    base_path: str = "/"  # the folder holding the feed folders
    accept_unknown_host: bool = False  # trust an unknown host key (never by default)
    # a dropped connection is re-opened and the interrupted listing or download retried, this many times, waiting
    # retry_wait_seconds, then twice as long each time
    retry_attempts: int = settings.DEFAULT_RETRY_ATTEMPTS
    retry_wait_seconds: float = settings.DEFAULT_RETRY_WAIT_SECONDS
    timeout_seconds: float = settings.DEFAULT_TIMEOUT_SECONDS  # a server silent this long counts as dropped
    # bytes per SFTP read request (32768 for a server that answers less per request)
    read_request_bytes: int = settings.DEFAULT_READ_REQUEST_BYTES


def configured() -> SftpConfiguration:
    """The SFTP settings (dlt's error names each missing one: SOURCES__ASAPP_SFTP__HOST...)."""
    return resolve_configuration(SftpConfiguration(), sections=("sources", SECTION))


class SftpFiles:
    """The files over one SFTP channel of the shared connection; each operation survives a dropped connection."""

    def __init__(self, connection: SftpConnection, read_request_bytes: int) -> None:
        self.channel = SftpChannel(connection)
        self.read_request_bytes = read_request_bytes

    def listdir(self, path: str) -> list[Entry]:
        def entries(sftp: Any) -> list[Entry]:
            return [
                Entry(
                    a.filename,
                    is_dir=stat.S_ISDIR(a.st_mode or 0),
                    is_file=stat.S_ISREG(a.st_mode or 0),
                    size=a.st_size or 0,
                    mtime=a.st_mtime or 0,
                )
                for a in sftp.listdir_attr(path)
            ]

        return self.channel.run(f"listing {path}", entries)

    def fetch(self, path: str, target: Target, size: int | None) -> None:
        self.channel.run(
            f"downloading {path}",
            partial(download, remote=path, target=target, request_bytes=self.read_request_bytes, listed=size),
        )

    def read(self, path: str, max_bytes: int) -> bytes:
        def head(sftp: Any) -> bytes:
            with sftp.open(path, "rb") as source:
                data: bytes = source.read(max_bytes)
                return data

        return self.channel.run(f"reading {path}", head)

    def abort(self) -> None:
        self.channel.abort()

    def close(self) -> None:
        self.channel.close()


class SftpTransport:
    name = "sftp"
    daily_refresh: time | None = None  # ASAPP writes _SUCCESS
    flag_times = True

    def __init__(self, connection: SftpConnection, root: str = "/", read_request_bytes: int = 0) -> None:
        self.connection = connection
        self.where = connection.where
        self.root = root
        self.read_request_bytes = read_request_bytes or settings.DEFAULT_READ_REQUEST_BYTES

    @classmethod
    def configure(cls, config: SftpConfiguration) -> SftpTransport:
        c = config
        connection = SftpConnection(
            lambda: connect_sftp(
                c.host,
                int(c.port),
                c.username,
                c.private_key_path,
                c.known_hosts_path,
                private_key_passphrase=c.private_key_passphrase,
                accept_unknown_host=c.accept_unknown_host,
                timeout=float(c.timeout_seconds),
            ),
            f"{c.host}:{c.port}",
            RetryPolicy(int(c.retry_attempts), float(c.retry_wait_seconds)),
            float(c.timeout_seconds),
        )
        return cls(connection, c.base_path, int(c.read_request_bytes))

    @property
    def reconnects(self) -> int:
        return self.connection.reconnects

    def files(self) -> SftpFiles:
        return SftpFiles(self.connection, self.read_request_bytes)

    def close(self) -> None:
        self.connection.close()
