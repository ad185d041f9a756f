"""A mirror of the export tree: a local folder, or S3 (`s3://bucket/prefix`, any S3-compatible store through
endpoint_url), read with fsspec (s3fs). Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws, an instance role): they are never settings of ours, and never logged."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from datetime import datetime, time
from typing import Any, TypeVar

import fsspec
from dlt.common.configuration import configspec, resolve_configuration
from dlt.common.configuration.specs import BaseConfiguration

from loaders.asapp_sftp import settings
from loaders.asapp_sftp.transports.base import Entry, FileChanged, Retry, Target, TransportError, retried

log = logging.getLogger(__name__)

SECTION = "asapp_mirror"
T = TypeVar("T")


@configspec
class MirrorConfiguration(BaseConfiguration):
    """SOURCES__ASAPP_MIRROR__*: where the mirror is."""

    url: str = None  # type: ignore[assignment]  # a local folder, or s3://bucket/prefix, holding the feed folders
    endpoint_url: str | None = None  # an S3-compatible store's endpoint (default: AWS)
    retry_attempts: int = settings.DEFAULT_RETRY_ATTEMPTS
    retry_wait_seconds: float = settings.DEFAULT_RETRY_WAIT_SECONDS


def configured() -> MirrorConfiguration:
    return resolve_configuration(MirrorConfiguration(), sections=("sources", SECTION))


def _mtime(info: dict[str, Any]) -> float | None:
    value = info.get("mtime", info.get("LastModified"))
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) if isinstance(value, int | float) else None


class MirrorFiles:
    """The mirror's files; an operation the store or the network fails is retried with back-off."""

    def __init__(self, transport: MirrorTransport) -> None:
        self.transport = transport
        self.fs = transport.fs

    def _run(self, what: str, operation: Callable[[], T]) -> T:
        policy = self.transport
        return retried(
            what,
            lambda: self._once(what, operation),
            attempts=policy.attempts,
            wait=policy.wait,
            where=policy.where,
            max_after=0.0,  # a store names no wait
        )

    def _once(self, what: str, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except (FileNotFoundError, FileChanged, IsADirectoryError, NotADirectoryError):
            raise  # this path's alone: the walker reports it
        except PermissionError as e:
            raise TransportError(
                f"{what}: access denied on {self.transport.where} ({e.strerror or e}): check the credentials of the "
                "standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role) and "
                "that they may list and read this prefix"
            ) from None
        except TransportError:
            raise
        except Exception as e:
            if type(e).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
                raise TransportError(
                    f"{what}: no AWS credentials found for {self.transport.where}: set them in the standard AWS chain "
                    "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws, an instance role)"
                ) from None
            raise Retry(f"{type(e).__name__}: {e}") from e

    def listdir(self, path: str) -> list[Entry]:
        def entries() -> list[Entry]:
            found = []
            for info in self.fs.ls(path, detail=True):
                name = str(info["name"]).rstrip("/").rsplit("/", 1)[-1]
                kind = info.get("type")
                link = bool(info.get("islink"))
                found.append(
                    Entry(
                        name,
                        is_dir=kind == "directory" and not link,
                        is_file=kind == "file" and not link,
                        size=int(info.get("size") or 0),
                        mtime=_mtime(info),
                    )
                )
            return found

        return self._run(f"listing {path}", entries)

    def fetch(self, path: str, target: Target, size: int | None) -> None:
        def get() -> None:
            with self.fs.open(path, "rb") as source, target.open() as local:
                shutil.copyfileobj(source, local, 1 << 20)
            got = target.size()
            if size is not None and got != size:
                raise FileChanged(f"downloaded {got} bytes, the mirror listed {size}: the file changed since")

        self._run(f"downloading {path}", get)

    def read(self, path: str, max_bytes: int) -> bytes:
        def head() -> bytes:
            with self.fs.open(path, "rb") as f:
                data: bytes = f.read(max_bytes)
                return data

        return self._run(f"reading {path}", head)

    def abort(self) -> None:
        return None

    def close(self) -> None:
        return None


class MirrorTransport:
    name = "mirror"
    daily_refresh: time | None = None  # a mirror copies ASAPP's tree, _SUCCESS flags included
    flag_times = False  # a file's time is when the sync copied it

    def __init__(
        self,
        url: str,
        endpoint_url: str | None = None,
        attempts: int = settings.DEFAULT_RETRY_ATTEMPTS,
        wait: float = settings.DEFAULT_RETRY_WAIT_SECONDS,
    ) -> None:
        options: dict[str, Any] = {}
        if url.startswith(("s3://", "s3a://")):
            # every listing asks the store: a cached one would miss what arrived since
            options = {"use_listings_cache": False, "skip_instance_cache": True}
            if endpoint_url:
                options["endpoint_url"] = endpoint_url
        self.fs, self.root = fsspec.core.url_to_fs(url, **options)
        self.where = url if not endpoint_url else f"{url} at {endpoint_url}"
        self.attempts = attempts
        self.wait = wait
        self.reconnects = 0

    @classmethod
    def configure(cls, config: MirrorConfiguration) -> MirrorTransport:
        return cls(config.url, config.endpoint_url, int(config.retry_attempts), float(config.retry_wait_seconds))

    def files(self) -> MirrorFiles:
        return MirrorFiles(self)

    def close(self) -> None:
        return None
