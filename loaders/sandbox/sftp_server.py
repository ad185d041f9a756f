"""A local SFTP server (asyncssh, no root needed) serving a folder, with generated host and client keys."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh


@dataclass(frozen=True)
class SftpEndpoint:
    host: str
    port: int
    username: str
    private_key_path: Path
    known_hosts_path: Path
    base_path: str = "/"

    def env(self) -> dict[str, str]:
        """The dlt configuration of the asapp_sftp source for this endpoint."""
        return {
            "SOURCES__ASAPP_SFTP__HOST": self.host,
            "SOURCES__ASAPP_SFTP__PORT": str(self.port),
            "SOURCES__ASAPP_SFTP__USERNAME": self.username,
            "SOURCES__ASAPP_SFTP__PRIVATE_KEY_PATH": str(self.private_key_path),
            "SOURCES__ASAPP_SFTP__KNOWN_HOSTS_PATH": str(self.known_hosts_path),
            "SOURCES__ASAPP_SFTP__BASE_PATH": self.base_path,
        }


class SandboxSftpServer:
    """Serves `root` read-only over SFTP on 127.0.0.1 (chrooted: the tree's root is '/')."""

    def __init__(self, root: Path, keys_dir: Path, username: str = "sftpdemo") -> None:
        self.root = root
        self.keys_dir = keys_dir
        self.username = username
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: Any = None

    def _keys(self) -> tuple[asyncssh.SSHKey, asyncssh.SSHKey, Path]:
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        client_path = self.keys_dir / "id_ed25519"
        client_key.write_private_key(str(client_path))
        client_path.chmod(0o600)
        client_key.write_public_key(str(client_path) + ".pub")
        return host_key, client_key, client_path

    def start(self) -> SftpEndpoint:
        host_key, client_key, client_path = self._keys()
        root = str(self.root).encode()

        def sftp_factory(chan: asyncssh.SSHServerChannel) -> asyncssh.SFTPServer:
            return asyncssh.SFTPServer(chan, chroot=root)

        async def listen() -> Any:
            return await asyncssh.listen(
                "127.0.0.1",
                0,
                server_host_keys=[host_key],
                authorized_client_keys=asyncssh.import_authorized_keys(client_key.export_public_key().decode()),
                sftp_factory=sftp_factory,
                allow_scp=False,
            )

        self._thread = threading.Thread(target=self._loop.run_forever, name="sandbox-sftp", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(listen(), self._loop).result(timeout=30)
        port = self._server.sockets[0].getsockname()[1]
        known_hosts = self.keys_dir / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.export_public_key().decode().strip()}\n")
        return SftpEndpoint("127.0.0.1", port, self.username, client_path, known_hosts, "/")

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            asyncio.run_coroutine_threadsafe(self._server.wait_closed(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> SftpEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
