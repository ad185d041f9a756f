"""The SSH connection to the export server: host keys verified against known_hosts, and re-opened with
back-off when it drops (server restarted, connection reset, network down for a while)."""

from __future__ import annotations

import logging
import shutil
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paramiko
import tenacity

from loaders.asapp_sftp import settings
from loaders.asapp_sftp.transports.base import FileChanged, Target, TransportError, TransportUnreachable

log = logging.getLogger(__name__)

T = TypeVar("T")


class SftpError(TransportError):
    """A problem the user can fix (configuration, keys, server): the message says how."""


class SftpUnreachable(SftpError, TransportUnreachable):
    """The server cannot be reached, or the connection dropped: retried with back-off, then reported."""


# A wider SSH window than paramiko's 2 MiB keeps more of a prefetched download in flight, and an AEAD cipher
# (AES-GCM, OpenSSH's own preference after chacha20) needs no separate HMAC per packet: together they take less
# CPU per byte downloaded. Only the order changes: a server without AES-GCM still negotiates another.
WINDOW_BYTES = 8 << 20
# The largest SSH packet the server may send on the channel (paramiko's default: 32 KiB). With 256 KiB an answer to
# a 128 KiB read request arrives in one packet instead of five, each of which paramiko decrypts and queues in
# Python. A server keeps to its own limit when that is smaller.
MAX_PACKET_BYTES = 256 << 10


def download(
    sftp: paramiko.SFTPClient,
    remote: str,
    target: Target,
    request_bytes: int = settings.DEFAULT_READ_REQUEST_BYTES,
    listed: int | None = None,
) -> None:
    """The remote file into target, prefetched (many requests in flight, not one small read at a time) in requests of
    request_bytes: what paramiko's SFTPClient.get does, with larger requests (settings.DEFAULT_READ_REQUEST_BYTES),
    and the same size check at the end, against the size listed when the partition was planned too."""
    with sftp.open(remote, "rb") as source, target.open() as local:
        source.MAX_REQUEST_SIZE = request_bytes  # paramiko's class default (32 KiB), read by its prefetch
        size = source.stat().st_size or 0
        source.prefetch(size)
        shutil.copyfileobj(source, local, 1 << 20)
    got = target.size()
    if got != size or (listed is not None and got != listed):
        was = f"listed {listed} bytes" if listed is not None else "listed"
        raise FileChanged(
            f"downloaded {got} bytes, the server {was} and says {size} now: the file changed since it was listed"
        )


def _transport(
    sock: Any, /, *, disabled_algorithms: Mapping[str, Iterable[str]] | None = None, **_: Any
) -> paramiko.Transport:
    """SSHClient.connect's transport_factory (it passes the socket and the disabled algorithms)."""
    transport = paramiko.Transport(
        sock,
        default_window_size=WINDOW_BYTES,
        default_max_packet_size=MAX_PACKET_BYTES,
        disabled_algorithms=disabled_algorithms,
    )
    options = transport.get_security_options()
    options.ciphers = tuple(sorted(options.ciphers, key=lambda name: "-gcm@" not in name))
    return transport


def connect_sftp(
    host: str,
    port: int,
    username: str,
    private_key_path: str,
    known_hosts_path: str | None,
    private_key_passphrase: str | None = None,
    accept_unknown_host: bool = False,
    timeout: float = 30.0,
) -> paramiko.SSHClient:
    """Open an SSH connection whose host key is checked against known_hosts; unknown hosts are refused."""
    client = paramiko.SSHClient()
    if known_hosts_path:
        kh = Path(known_hosts_path).expanduser()
        if not kh.exists():
            raise SftpError(
                f"known_hosts file {kh} does not exist: create it with "
                f"`ssh-keyscan -p {port} {host} > {kh}` after checking the fingerprint with ASAPP"
            )
        client.load_host_keys(str(kh))
    else:
        client.load_system_host_keys()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy() if accept_unknown_host else paramiko.RejectPolicy())
    key_path = Path(private_key_path).expanduser()
    if not key_path.exists():
        raise SftpError(f"private key {key_path} does not exist (SOURCES__ASAPP_SFTP__PRIVATE_KEY_PATH)")
    if key_path.stat().st_mode & 0o077:
        log.warning("private key %s can be read by other users of this machine: chmod 600 %s", key_path, key_path)
    try:
        # the stubs say str, but cryptography (which decrypts OpenSSH-format keys) needs bytes
        passphrase = private_key_passphrase.encode() if private_key_passphrase else None
        pkey = paramiko.PKey.from_path(key_path, password=passphrase)  # type: ignore[arg-type]
    except (paramiko.SSHException, TypeError, ValueError) as e:
        # paramiko and cryptography say "password-protected" in several ways; none of them quotes the passphrase
        if not private_key_passphrase:
            raise SftpError(
                f"private key {key_path} cannot be read without a passphrase: if it has one, set "
                f"SOURCES__ASAPP_SFTP__PRIVATE_KEY_PASSPHRASE ({type(e).__name__})"
            ) from None
        raise SftpError(
            f"private key {key_path} cannot be read with the configured passphrase: check "
            f"SOURCES__ASAPP_SFTP__PRIVATE_KEY_PASSPHRASE ({type(e).__name__})"
        ) from None
    try:
        # paramiko leaves Nagle's algorithm on: every file's last request then waits for a delayed ACK, a wait that
        # adds up over many partition files.
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.connect(
            sock=sock,
            hostname=host,
            port=port,
            username=username,
            pkey=pkey,
            look_for_keys=False,
            allow_agent=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            transport_factory=_transport,
        )
    except paramiko.BadHostKeyException as e:
        raise SftpError(
            f"host key of {host}:{port} does not match the one in {known_hosts_path or 'known_hosts'}: "
            f"the server changed its key or someone is in between. Verify the new fingerprint with ASAPP "
            f"before replacing the entry."
        ) from e
    except paramiko.AuthenticationException as e:
        raise SftpError(
            f"authentication failed for user {username!r} at {host}:{port} with key {key_path}: "
            f"check the username and that ASAPP has the matching public key"
        ) from e
    except paramiko.SSHException as e:
        if "not found in known_hosts" in str(e):
            where = known_hosts_path or "~/.ssh/known_hosts"
            hostspec = host if port == 22 else f"[{host}]:{port}"
            raise SftpError(
                f"host key of {hostspec} is not in {where}: unknown hosts are refused. Check the fingerprint "
                f"with ASAPP, then add it: ssh-keyscan -p {port} {host} >> {where}"
            ) from e
        raise SftpUnreachable(f"SSH error with {host}:{port}: {e}") from e  # banner timeouts, resets: transient
    except (OSError, EOFError) as e:
        raise SftpUnreachable(f"cannot reach {host}:{port}: {e}") from e
    return client


@dataclass(frozen=True)
class RetryPolicy:
    """How long a dropped connection is waited for: `attempts` tries per operation, the waits between them
    starting at `wait` seconds and doubling (with jitter) up to `max_wait`."""

    attempts: int = settings.DEFAULT_RETRY_ATTEMPTS
    wait: float = settings.DEFAULT_RETRY_WAIT_SECONDS
    max_wait: float = 60.0


def _quiet_prefetch_thread_errors(args: threading.ExceptHookArgs) -> None:
    """paramiko's prefetch thread dies with a traceback on stderr when the connection drops mid-download; the
    download itself raises too, and is retried and reported: the thread's traceback only alarms."""
    if (
        args.thread is not None
        and "_prefetch_thread" in args.thread.name
        and issubclass(args.exc_type, EOFError | OSError | paramiko.SSHException)
    ):
        log.debug("paramiko's prefetch thread ended with the connection: %r", args.exc_value)
        return
    _previous_excepthook(args)


_previous_excepthook = threading.excepthook
threading.excepthook = _quiet_prefetch_thread_errors


class _Dropped(Exception):
    """Internal: the connection was lost during an operation (retried)."""


class SftpConnection:
    """One SSH connection shared by the listing and the downloads; each holds its own SFTP channel
    (`SftpChannel`). When the connection drops, the first user to notice closes it and the next channel opened
    reconnects; users of the old connection open new channels on the new one."""

    def __init__(self, connect: Callable[[], paramiko.SSHClient], where: str, retry: RetryPolicy, timeout: float):
        self._connect = connect
        self.where = where
        self.retry = retry
        self.timeout = timeout
        self._lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        self._generation = 0  # bumped by every successful connect
        self.reconnects = 0

    def open_channel(self) -> tuple[paramiko.SFTPClient, int]:
        """A new SFTP channel, connecting first when there is no live connection; and the connection's number."""
        with self._lock:
            if self._client is None:
                self._client = self._connect()  # SftpUnreachable is retried by the caller; other SftpErrors are not
                self._generation += 1
                if self._generation > 1:
                    self.reconnects += 1
                    log.warning("reconnected to %s", self.where)
            try:
                sftp = self._client.open_sftp()
            except (paramiko.SSHException, EOFError, OSError) as e:
                self._drop()
                raise SftpUnreachable(f"cannot open an SFTP channel on {self.where}: {e}") from e
            # a server that stops answering without closing the connection must not hang the run
            sftp.get_channel().settimeout(self.timeout)  # type: ignore[union-attr]
            return sftp, self._generation

    def lost(self, generation: int, error: BaseException) -> bool:
        """Whether `error`, raised on a channel of connection `generation`, means that connection is gone (it is
        then closed, so the next channel reconnects). A missing file or a permission error is not."""
        with self._lock:
            if generation != self._generation or self._client is None:
                return True  # a channel of a connection already replaced
            transport = self._client.get_transport()
            dead = transport is None or not transport.is_active()
            if dead or isinstance(error, EOFError | ConnectionError | TimeoutError | paramiko.SSHException):
                self._drop()
                return True
            return False

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        with self._lock:
            self._drop()


class SftpChannel:
    """An SFTP channel on a shared connection whose operations survive a dropped connection: `run` retries the
    operation (from its start) on a new connection with back-off, and raises SftpUnreachable when the server
    stays away for the policy's attempts. `abort()` stops the waiting (the run is ending anyway)."""

    def __init__(self, connection: SftpConnection) -> None:
        self.connection = connection
        self._sftp: paramiko.SFTPClient | None = None
        self._generation = 0
        self._aborted = threading.Event()

    def run(self, what: str, operation: Callable[[paramiko.SFTPClient], T]) -> T:
        policy = self.connection.retry
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(policy.attempts) | tenacity.stop_when_event_set(self._aborted),
            wait=tenacity.wait_exponential_jitter(multiplier=policy.wait, max=policy.max_wait, jitter=policy.wait / 2),
            retry=tenacity.retry_if_exception_type(_Dropped),
            sleep=self._wait,
            before_sleep=lambda state: log.warning(
                "%s: %s; retrying in %.1f s (attempt %d of %d)",
                what,
                state.outcome.exception() if state.outcome else "?",
                state.upcoming_sleep,
                state.attempt_number + 1,
                policy.attempts,
            ),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._once(operation)
        except _Dropped as e:
            cause = e.__cause__  # the network's own error (for --debug), below any message of ours
            while isinstance(cause, SftpError) and cause.__cause__ is not None:
                cause = cause.__cause__
            raise SftpUnreachable(
                f"{what}: {e}, and the connection to {self.connection.where} could not be restored "
                f"({policy.attempts} attempts). The run stops here: nothing of the partitions being read was "
                f"committed, and the next run resumes where this one stopped."
            ) from cause
        raise AssertionError("unreachable")  # tenacity either returns or raises

    def _once(self, operation: Callable[[paramiko.SFTPClient], T]) -> T:
        try:
            if self._sftp is None:
                self._sftp, self._generation = self.connection.open_channel()
        except SftpUnreachable as e:
            raise _Dropped(str(e)) from e
        try:
            return operation(self._sftp)
        except Exception as e:
            if not self.connection.lost(self._generation, e):
                raise
            self._sftp = None  # its connection is closed: nothing to close here
            raise _Dropped(f"connection lost ({type(e).__name__}: {e})" if str(e) else "connection lost") from e

    def _wait(self, seconds: float) -> None:
        self._aborted.wait(seconds)

    def abort(self) -> None:
        self._aborted.set()

    def close(self) -> None:
        self.abort()
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
