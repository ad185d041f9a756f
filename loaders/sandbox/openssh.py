"""A real OpenSSH sshd on 127.0.0.1 for tests and benchmarks: own host key, own authorized_keys, free port."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


class SshdError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def _public(key: Path) -> str:
    return " ".join(Path(f"{key}.pub").read_text().split()[:2])


@dataclass(frozen=True)
class Sshd:
    port: int
    username: str
    client_key: Path
    other_client_key: Path  # not authorized
    known_hosts: Path
    wrong_known_hosts: Path  # same host, another key
    empty_known_hosts: Path
    dir: Path

    def env(self, base_path: Path) -> dict[str, str]:
        """The dlt configuration of the asapp_sftp source for this server, serving base_path."""
        return {
            "SOURCES__ASAPP_SFTP__HOST": "127.0.0.1",
            "SOURCES__ASAPP_SFTP__PORT": str(self.port),
            "SOURCES__ASAPP_SFTP__USERNAME": self.username,
            "SOURCES__ASAPP_SFTP__PRIVATE_KEY_PATH": str(self.client_key),
            "SOURCES__ASAPP_SFTP__KNOWN_HOSTS_PATH": str(self.known_hosts),
            "SOURCES__ASAPP_SFTP__BASE_PATH": str(base_path),
        }


def _descendants(pid: int) -> list[int]:
    """Processes below pid (sshd's per-connection processes), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class OpenSshServer:
    """Starts /usr/sbin/sshd -D on a free port with keys generated in `directory`; stop() ends it.

    For fault tests: drop_connections() kills the processes serving the open connections (the client sees its
    connection reset, the server still accepts new ones); stop(connections=True) then restart() is an outage."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint: Sshd | None = None

    def start(self) -> Sshd:
        if not Path(SSHD).exists():
            raise SshdError("OpenSSH sshd is not installed: run `make sysdeps` (apt-get install openssh-server)")
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        host_key = keygen(d / "ssh_host_ed25519_key")
        other_host_key = keygen(d / "other_host_key")
        client_key = keygen(d / "client_key")
        other_client_key = keygen(d / "other_client_key")
        (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
        (d / "authorized_keys").chmod(0o600)
        port = free_port()
        config = [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_key}",
            f"PidFile {d / 'sshd.pid'}",
            f"AuthorizedKeysFile {d / 'authorized_keys'}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",
            "Subsystem sftp internal-sftp",
            "LogLevel ERROR",
        ]
        (d / "sshd_config").write_text("\n".join(config) + "\n")
        self._launch(port)
        (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {_public(host_key)}\n")
        (d / "wrong_known_hosts").write_text(f"[127.0.0.1]:{port} {_public(other_host_key)}\n")
        (d / "empty_known_hosts").write_text("")
        self.endpoint = Sshd(
            port,
            getpass.getuser(),
            client_key,
            other_client_key,
            d / "known_hosts",
            d / "wrong_known_hosts",
            d / "empty_known_hosts",
            d,
        )
        return self.endpoint

    def _launch(self, port: int) -> None:
        d = self.dir
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise SshdError(f"sshd did not start: {err}")
            time.sleep(0.1)

    def drop_connections(self) -> int:
        """Kill the processes serving open connections (SIGKILL: no goodbye to the client). How many."""
        if self.proc is None:
            return 0
        pids = _descendants(self.proc.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def restart(self) -> None:
        """Start again after stop(), same port and keys."""
        if self.endpoint is None:
            raise SshdError("restart() needs a server started once")
        self._launch(self.endpoint.port)

    def stop(self, connections: bool = False) -> None:
        """End the server; with connections, also the open connections (an outage) instead of letting them run."""
        if self.proc is not None:
            if connections:
                self.drop_connections()
            self.proc.terminate()
            self.proc.wait(timeout=10)
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
