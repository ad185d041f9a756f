"""ASAPP's File Exporter API (loaders/asapp_sftp/fileexporter-openapi.yml): the export tree walked through
listfeeds -> listfeedversions -> listfeedformats -> listfeeddates -> listfeedintervals -> listfeedfiles, and each
file fetched from the presigned URL getfeedfile returns.

The API is shown to the walker as the same tree of folders (FEED/version=V/format=F/dt=D/hr=H/mi=M/FILE), so
partition keys are the same as SFTP's and a switch of transport reloads nothing. The presigned URL is downloaded
WITHOUT the API's headers (the store behind it must never see the API secret); one that expired (403) is asked for
again. 429 waits for Retry-After, 5xx and network errors are retried with back-off, 401 is one error naming the
settings. The API lists names only: no size, no time, and no _SUCCESS flag is documented (see the walker's
completeness rule: settings.FILE_EXPORTER_DAILY_REFRESH)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import time
from pathlib import Path
from typing import Any, TypeVar

import requests
from dlt.common.configuration import configspec, resolve_configuration
from dlt.common.configuration.specs import BaseConfiguration
from dlt.common.typing import TSecretStrValue

from loaders.asapp_sftp import settings
from loaders.asapp_sftp.transports.base import (
    Entry,
    FileChanged,
    Retry,
    Target,
    TransportError,
    TransportUnreachable,
    retried,
)

log = logging.getLogger(__name__)

SECTION = "asapp_file_exporter"
API = "/fileexporter/v1/static/"
# ASAPP's published spec of the API, shipped with the project (the emulator checks requests against it).
SPEC_PATH = Path(__file__).with_name("file_exporter_openapi.yml")
T = TypeVar("T")


@configspec
class FileExporterConfiguration(BaseConfiguration):
    """SOURCES__ASAPP_FILE_EXPORTER__*; the credentials fall back to ASAPP_API__API_ID / __API_SECRET."""

    base_url: str = settings.FILE_EXPORTER_BASE_URL
    api_id: str | None = None
    api_secret: TSecretStrValue | None = None
    retry_attempts: int = settings.DEFAULT_RETRY_ATTEMPTS
    retry_wait_seconds: float = settings.DEFAULT_RETRY_WAIT_SECONDS
    timeout_seconds: float = settings.DEFAULT_TIMEOUT_SECONDS


CREDENTIALS = "SOURCES__ASAPP_FILE_EXPORTER__API_ID and __API_SECRET (or ASAPP_API__API_ID and __API_SECRET)"


def configured() -> FileExporterConfiguration:
    config = resolve_configuration(FileExporterConfiguration(), sections=("sources", SECTION))
    if not config.api_id or not config.api_secret:
        # typed, as the push reads them: a TOML number becomes the string a header needs (imported here: the push's
        # package costs 0.2 s to import)
        from loaders.asapp_metadata.settings import AsappApiCredentials

        fallback = resolve_configuration(AsappApiCredentials(), sections=("asapp_api",))
        config.api_id = config.api_id or fallback.api_id
        config.api_secret = config.api_secret or fallback.api_secret
    if not config.api_id or not config.api_secret:
        raise TransportError(f"the File Exporter API needs an API id and secret: set {CREDENTIALS}")
    return config


def _retry_after(response: requests.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None  # an HTTP date, or nothing: the back-off decides


def _error(response: requests.Response) -> str:
    try:
        detail = response.json().get("error", {}).get("message")
    except (ValueError, AttributeError):
        detail = None
    return f"HTTP {response.status_code}" + (f" ({' '.join(str(detail).split())[:200]})" if detail else "")


class FileExporterFiles:
    """The API's tree, for one thread: its own HTTP sessions, and the intervals of the dates it listed."""

    def __init__(self, transport: FileExporterTransport) -> None:
        self.t = transport
        self.api = requests.Session()
        self.api.headers.update({"asapp-api-id": transport.api_id, "asapp-api-secret": transport.api_secret})
        self.store = requests.Session()  # the presigned URLs: no API header, ever
        self.intervals: dict[tuple[str, ...], list[str]] = {}

    def _run(self, what: str, operation: Callable[[], T]) -> T:
        t = self.t
        return retried(
            what,
            operation,
            attempts=t.attempts,
            wait=t.wait,
            where=t.where,
            max_after=settings.FILE_EXPORTER_MAX_RETRY_AFTER_SECONDS,
        )

    def _post(self, operation: str, body: dict[str, str]) -> dict[str, Any]:
        """One API call's answer; a 4xx other than 401/429 is FileNotFoundError (the walker reports the path)."""

        def call() -> dict[str, Any]:
            try:
                # listfeeds takes no body
                response = self.api.post(self.t.base_url + API + operation, json=body or None, timeout=self.t.timeout)
            except requests.RequestException as e:
                raise Retry(f"{type(e).__name__}: {e}") from None
            if response.status_code == 401:
                raise TransportError(f"the File Exporter API refused the credentials (401): check {CREDENTIALS}")
            if response.status_code == 429:
                raise Retry(_error(response), _retry_after(response))
            if response.status_code >= 500:
                raise Retry(_error(response), _retry_after(response) if response.status_code == 503 else None)
            if response.status_code == 403:
                raise TransportError(
                    f"the File Exporter API forbids {operation} ({_error(response)}): ask ASAPP to give the API id "
                    "of SOURCES__ASAPP_FILE_EXPORTER__API_ID access to the File Exporter"
                )
            if response.status_code != 200:
                raise FileNotFoundError(2, f"{operation} answered {_error(response)}", str(body))
            try:
                answer = response.json()
            except ValueError:
                raise Retry(f"{operation} answered 200 with a body that is not JSON") from None
            if not isinstance(answer, dict):
                raise Retry(f"{operation} answered 200 with JSON that is not an object")
            return answer

        return self._run(f"{operation} {body}", call)

    def _names(self, answer: dict[str, Any], field: str) -> list[str]:
        values = answer.get(field)
        return [v for v in values if isinstance(v, str)] if isinstance(values, list) else []

    @staticmethod
    def _parts(path: str) -> list[str]:
        return [p for p in path.split("/") if p]

    @staticmethod
    def _request(parts: list[str]) -> dict[str, str]:
        """The API's request body for the folders of a path (feed, version=, format=, dt=, hr=/mi=)."""
        names = ("feed", "version", "format", "date")
        body: dict[str, str] = {}
        for name, part in zip(names, parts[:4], strict=False):
            prefix = "" if name == "feed" else f"{'dt' if name == 'date' else name}="
            if not part.startswith(prefix):
                raise FileNotFoundError(2, "not a folder of the export layout", "/".join(parts))
            body[name] = part.removeprefix(prefix)
        if len(parts) >= 6:
            body["interval"] = f"{parts[4]}/{parts[5]}"
        return body

    def _intervals(self, body: dict[str, str]) -> list[str]:
        key = (body["feed"], body["version"], body["format"], body["date"])
        if key not in self.intervals:
            day = {k: body[k] for k in ("feed", "version", "format", "date")}
            self.intervals[key] = self._names(self._post("listfeedintervals", day), "intervals")
        return self.intervals[key]

    def listdir(self, path: str) -> list[Entry]:
        parts = self._parts(path)
        body = self._request(parts)
        depth = len(parts)
        if depth == 0:
            return [Entry(n, True, False) for n in self._names(self._post("listfeeds", {}), "feeds")]
        if depth == 1:
            versions = self._names(self._post("listfeedversions", body), "versions")
            return [Entry(f"version={v}", True, False) for v in versions]
        if depth == 2:
            return [
                Entry(f"format={f}", True, False) for f in self._names(self._post("listfeedformats", body), "formats")
            ]
        if depth == 3:
            self.intervals.clear()  # a new listing of the dates: intervals are asked for again
            return [Entry(f"dt={d}", True, False) for d in self._names(self._post("listfeeddates", body), "dates")]
        if depth == 4:
            hours: dict[str, Entry] = {}
            for interval in self._intervals(body):
                pieces = interval.split("/")
                if len(pieces) == 2:
                    hours.setdefault(pieces[0], Entry(pieces[0], True, False))
                else:  # not an hr=/mi= interval: the walker reports it by name
                    hours.setdefault(interval, Entry(interval, False, False))
            return list(hours.values())
        if depth == 5:
            minutes = [i.split("/") for i in self._intervals(body)]
            return [Entry(p[1], True, False) for p in minutes if len(p) == 2 and p[0] == parts[4]]
        if depth == 6:
            return [Entry(n, False, True) for n in self._names(self._post("listfeedfiles", body), "files")]
        raise FileNotFoundError(2, "not a folder of the export layout", path)

    def _url(self, path: str) -> str:
        parts = self._parts(path)
        if len(parts) != 7:
            raise FileNotFoundError(2, "not a file of the export layout", path)
        url = self._post("getfeedfile", {**self._request(parts), "fileName": parts[6]}).get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise FileNotFoundError(2, "getfeedfile answered without a URL", path)
        return url

    def _download(self, path: str, write: Callable[[requests.Response], None]) -> None:
        """The file from a fresh presigned URL; one that expired (403) is asked for again."""
        for _ in range(settings.FILE_EXPORTER_URL_ATTEMPTS):
            url = self._url(path)

            def get(url: str = url) -> bool:
                try:
                    with self.store.get(url, stream=True, timeout=self.t.timeout) as response:
                        if response.status_code == 403:
                            return False  # expired: a new URL
                        if response.status_code == 404:
                            raise FileNotFoundError(2, "the presigned URL answered 404", path)
                        if response.status_code == 429 or response.status_code >= 500:
                            raise Retry(f"downloading {path}: HTTP {response.status_code}", _retry_after(response))
                        if response.status_code != 200:
                            raise FileNotFoundError(2, f"the presigned URL answered {response.status_code}", path)
                        write(response)
                        return True
                except requests.RequestException as e:
                    raise Retry(f"{type(e).__name__}: {e}") from None

            if self._run(f"downloading {path}", get):
                return
            log.info("%s: the presigned URL expired; asking for a new one", path)
        raise TransportUnreachable(
            f"downloading {path}: {settings.FILE_EXPORTER_URL_ATTEMPTS} presigned URLs in a row answered 403 (expired "
            f"or refused) on {self.t.where}"
        )

    def fetch(self, path: str, target: Target, size: int | None) -> None:
        def write(response: requests.Response) -> None:
            expected = response.headers.get("Content-Length")
            with target.open() as local:
                for chunk in response.iter_content(1 << 20):
                    local.write(chunk)
            got = target.size()
            if (expected is not None and expected.isdigit() and got != int(expected)) or (
                size is not None and got != size
            ):
                raise FileChanged(f"downloaded {got} bytes, the server announced {expected or size}")

        self._download(path, write)

    def read(self, path: str, max_bytes: int) -> bytes:
        data = bytearray()

        def write(response: requests.Response) -> None:
            for chunk in response.iter_content(1 << 16):
                data.extend(chunk[: max_bytes - len(data)])
                if len(data) >= max_bytes:
                    break

        self._download(path, write)
        return bytes(data)

    def abort(self) -> None:
        return None

    def close(self) -> None:
        self.api.close()
        self.store.close()


class FileExporterTransport:
    name = "file-exporter"
    root = ""  # the API's tree starts at its feeds
    daily_refresh: time | None = settings.FILE_EXPORTER_DAILY_REFRESH
    flag_times = False  # the API lists names only

    def __init__(
        self,
        base_url: str,
        api_id: str,
        api_secret: str,
        attempts: int = settings.DEFAULT_RETRY_ATTEMPTS,
        wait: float = settings.DEFAULT_RETRY_WAIT_SECONDS,
        timeout: float = settings.DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.where = self.base_url
        self.api_id = api_id
        self.api_secret = api_secret
        self.attempts = attempts
        self.wait = wait
        self.timeout = timeout
        self.reconnects = 0

    @classmethod
    def configure(cls, config: FileExporterConfiguration) -> FileExporterTransport:
        return cls(
            config.base_url,
            str(config.api_id),
            str(config.api_secret),
            int(config.retry_attempts),
            float(config.retry_wait_seconds),
            float(config.timeout_seconds),
        )

    def files(self) -> FileExporterFiles:
        return FileExporterFiles(self)

    def close(self) -> None:
        return None
