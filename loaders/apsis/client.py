"""The APSIS One client: OAuth2 client credentials, the export request, polling with back-off and a streamed
download, capped in size and time. The token goes to the configured APSIS origin only."""

from __future__ import annotations

import logging
import random
import re
import tempfile
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

from dlt.sources.helpers.requests import Client, Response

from loaders import runtime
from loaders.apsis import settings
from loaders.apsis.request import ApsisError, ApsisExportFailed, ExportRequest, validate, window_text

log = logging.getLogger(__name__)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL: what must match for the token to be sent."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError as e:
        raise ApsisError(f"{display_url(url)!r} is not a valid URL: {e}") from None
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ApsisError(f"{display_url(url)!r} is not an http(s) URL")
    return scheme, parts.hostname, port


def display_url(url: str) -> str:
    """A URL as logs and errors show it: without its query (a presigned URL's signature) or user info."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return url.split("?", 1)[0][:200]
    return f"{parts.scheme}://{netloc}{parts.path}"[:200]


def find_poll_url(body: Any) -> str:
    """The response field holding the poll URL is not published: take the known names, else the first URL."""
    if isinstance(body, dict):
        for name in settings.POLL_URL_FIELDS:
            if isinstance(body.get(name), str) and body[name].startswith(("http://", "https://")):
                return str(body[name])
    match = re.search(r"https?://[^\s\"'<>]+", str(body) if not isinstance(body, str) else body)
    if match:
        return match.group(0)
    raise ApsisError(f"the export request's response carries no poll URL: {str(body)[:200]}")


class ApsisClient:
    """Talks to APSIS One with one OAuth2 token, refreshed before it expires and once on 401/403."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        request_attempts: int = 5,
        backoff_factor: float = 1.0,
        poll_initial_interval: float = settings.POLL_INITIAL_INTERVAL_S,
        poll_max_interval: float = settings.POLL_MAX_INTERVAL_S,
        poll_timeout: float = settings.POLL_TIMEOUT_S,
        gzip_download: bool = True,
        max_export_bytes: int = settings.MAX_EXPORT_BYTES,
        download_timeout: float = settings.DOWNLOAD_TIMEOUT_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.origin = origin(self.base_url)
        self._client_id = client_id
        self._client_secret = client_secret
        self._token: str | None = None
        self._token_expires = 0.0
        self.poll_initial_interval = poll_initial_interval
        self.poll_max_interval = poll_max_interval
        self.poll_timeout = poll_timeout
        self.gzip_download = gzip_download
        self.max_export_bytes = max_export_bytes
        self.download_timeout = download_timeout
        # API calls: 429 and 5xx retried with exponential back-off (Retry-After honoured).
        self.api = Client(
            raise_for_status=False,
            request_max_attempts=request_attempts,
            request_backoff_factor=backoff_factor,
            request_max_retry_delay=poll_max_interval,
            status_codes=(429, 500, 502, 504),
        ).session
        # Polls: every status means something (404 not ready, 503 failed...): only connection errors retried.
        self.poller = Client(
            raise_for_status=False,
            request_max_attempts=request_attempts,
            request_backoff_factor=backoff_factor,
            status_codes=(),
        ).session

    # --- auth -----------------------------------------------------------------------------------------------
    def _fetch_token(self) -> None:
        response = self.api.post(
            f"{self.base_url}{settings.TOKEN_PATH}",
            json={
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._client_secret,
            },
        )
        if response.status_code in (400, 401, 403):
            raise ApsisError(
                f"APSIS refused the client credentials (HTTP {response.status_code}): check "
                f"SOURCES__APSIS__CLIENT_ID and SOURCES__APSIS__CLIENT_SECRET"
            )
        if response.status_code != 200:
            raise ApsisError(f"APSIS token endpoint answered HTTP {response.status_code}")
        payload = response.json()
        self._token = str(payload["access_token"])
        self._token_expires = time.monotonic() + float(payload.get("expires_in", 3600))

    def _headers(self) -> dict[str, str]:
        if self._token is None or time.monotonic() > self._token_expires - settings.TOKEN_REFRESH_MARGIN_S:
            self._fetch_token()
        return {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}

    def _send(self, session: Any, method: str, url: str, **kwargs: Any) -> Response:
        """One request; on 401 (or 403 for an expired token) a new token and one more try."""
        extra = kwargs.pop("headers", {})
        response = session.request(method, url, headers={**self._headers(), **extra}, **kwargs)
        if response.status_code in (401, 403):
            response.close()
            self._token = None
            response = session.request(method, url, headers={**self._headers(), **extra}, **kwargs)
            if response.status_code in (401, 403):
                raise ApsisError(
                    f"APSIS denied {method} {display_url(url)} (HTTP {response.status_code}) with a fresh token: "
                    f"check the API client's permissions"
                )
        return response

    # --- reference data ---------------------------------------------------------------------------------------
    def get_items(self, path: str) -> list[dict[str, Any]]:
        response = self._send(self.api, "GET", f"{self.base_url}{path}")
        if response.status_code != 200:
            raise ApsisError(f"GET {path} answered HTTP {response.status_code}")
        body = response.json()
        items = body.get("items", body) if isinstance(body, dict) else body
        if not isinstance(items, list):
            raise ApsisError(f"GET {path}: expected a list of items")
        return items

    # --- export ---------------------------------------------------------------------------------------------
    def request_export(self, request: ExportRequest, path: str = settings.EXPORT_PATH) -> str:
        validate(request)
        response = self._send(self.api, "POST", f"{self.base_url}{path}", json=request.body())
        if response.status_code == 429:
            raise ApsisError("APSIS's pending export limit is reached (HTTP 429) and stayed so: retry later")
        if response.status_code not in (200, 201, 202):
            raise ApsisError(f"the export request was refused (HTTP {response.status_code}): {response.text[:300]}")
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        return find_poll_url(body)

    def _sleep(self, attempt: int, retry_after: str | None = None) -> None:
        # the exponent is capped: a long wait of short polls would reach 2**1024, which no float holds
        delay = min(self.poll_max_interval, self.poll_initial_interval * 2 ** min(attempt, 30))
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, min(float(retry_after), self.poll_max_interval))
        time.sleep(delay * random.uniform(0.5, 1.0))  # full jitter on the upper half

    # --- poll and download ------------------------------------------------------------------------------------
    def _is_apsis(self, url: str) -> bool:
        """Whether url is on the configured APSIS origin (it gets the token). Another origin gets no token, and only
        over https: a URL from an answer could point anywhere, and plain http would expose what it carries."""
        if origin(url) == self.origin:
            return True
        if urlsplit(url).scheme.lower() != "https":
            raise ApsisError(
                f"refusing to fetch {display_url(url)}: a URL outside the APSIS API ({self.base_url}) is fetched "
                f"only over https"
            )
        return False

    def _get(self, url: str, headers: dict[str, str]) -> Response:
        """GET a poll or download URL, following redirects one at a time so each hop gets the origin check: the
        token only to the APSIS origin, a presigned storage URL fetched without it."""
        # a read may wait this long: the download's deadline is checked between reads
        options: dict[str, Any] = {"stream": True, "allow_redirects": False, "timeout": self.read_timeout}
        for _ in range(settings.MAX_REDIRECTS + 1):
            if self._is_apsis(url):
                response = self._send(self.poller, "GET", url, headers=headers, **options)
            else:
                response = self.poller.request("GET", url, headers={"Accept": "*/*", **headers}, **options)
            location = response.headers.get("Location")
            if response.status_code not in (301, 302, 303, 307, 308) or not location:
                return response
            response.close()
            url = urljoin(url, location)
        raise ApsisError(f"the export's poll URL redirected more than {settings.MAX_REDIRECTS} times")

    @property
    def read_timeout(self) -> float:
        return min(60.0, self.download_timeout)

    def _stream(self, response: Response, target: IO[bytes]) -> str:
        """The body into target, at most max_export_bytes within download_timeout. Returns the content encoding."""
        encoding = response.headers.get("Content-Encoding", "").lower()
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_export_bytes:
            raise self._too_large(int(length))
        deadline = time.monotonic() + self.download_timeout
        written = 0
        try:
            # read1: whatever arrived, so a server trickling bytes still meets the deadline between reads
            while chunk := response.raw.read1(settings.DOWNLOAD_CHUNK, decode_content=False):
                written += len(chunk)
                if written > self.max_export_bytes:
                    raise self._too_large(written)
                if time.monotonic() > deadline:
                    raise ApsisError(
                        f"the export download took longer than {self.download_timeout:g} s "
                        f"(SOURCES__APSIS__DOWNLOAD_TIMEOUT; {written} bytes received): raise it, or request less "
                        f"(a shorter window, fewer attributes, tags or event types)"
                    )
                target.write(chunk)
        except ApsisError:
            raise
        except Exception as e:  # the connection broke or stalled past the read timeout
            raise ApsisError(
                f"the export download from {display_url(response.url)} broke off after {written} bytes: "
                f"{type(e).__name__}: {str(e)[:200]}"
            ) from None
        return encoding

    def _too_large(self, size: int) -> ApsisError:
        return ApsisError(
            f"the export is larger than {self.max_export_bytes} bytes ({size} seen; SOURCES__APSIS__MAX_EXPORT_BYTES): "
            f"raise it if the export is genuine (it needs that much room in $TMPDIR), or request less"
        )

    def download(self, poll_url: str, target: IO[bytes]) -> str | None:
        """Poll until the export is ready and stream it into target. Returns None when a new export is needed
        (410: gone or invalid; 503: processing failed), else the content encoding ('gzip' or '')."""
        started = time.monotonic()
        attempt = 0
        headers = {"Accept-Encoding": "gzip" if self.gzip_download else "identity"}
        while True:
            response = self._get(poll_url, headers)
            status = response.status_code
            if status == 200:
                try:
                    return self._stream(response, target)
                finally:
                    response.close()
            response.close()
            if status in (410, 503):
                log.warning(
                    "export at %s %s: requesting a new one",
                    display_url(poll_url),
                    "is gone or invalid (410)" if status == 410 else "failed to process (503)",
                )
                return None
            if status not in (404, 202, 429):
                raise ApsisError(f"polling the export answered HTTP {status}")
            if time.monotonic() - started > self.poll_timeout:
                raise ApsisError(f"the export was not ready after {self.poll_timeout:.0f} s of polling")
            log.debug("export not ready (HTTP %s), waiting", status)
            self._sleep(attempt, response.headers.get("Retry-After") if status == 429 else None)
            attempt += 1

    def export_to_file(
        self, request: ExportRequest, workdir: Path | None = None, path: str = settings.EXPORT_PATH
    ) -> Path:
        """Request, poll and download one export into a (decompressed-on-read) temporary file.

        Raises ApsisExportFailed, naming the window, when every one of MAX_EXPORT_ATTEMPTS requests ends in 410/503.
        """
        prefix = runtime.scratch_prefix("apsis-export", workdir)
        window = window_text(request.start_at, request.end_at)
        for attempt in range(1, settings.MAX_EXPORT_ATTEMPTS + 1):
            poll_url = self.request_export(request, path)
            with tempfile.NamedTemporaryFile(prefix=prefix, suffix=".json", dir=workdir, delete=False) as f:
                try:
                    encoding = self.download(poll_url, f)
                except BaseException:  # a failed download leaves nothing behind
                    Path(f.name).unlink(missing_ok=True)
                    raise
            if encoding is not None:
                return Path(f.name)
            Path(f.name).unlink(missing_ok=True)
            if attempt < settings.MAX_EXPORT_ATTEMPTS:
                log.warning(
                    "export of %s: new export requested (attempt %d of %d)",
                    window,
                    attempt + 1,
                    settings.MAX_EXPORT_ATTEMPTS,
                )
        raise ApsisExportFailed(
            f"APSIS could not produce the export of {window} after {settings.MAX_EXPORT_ATTEMPTS} requests (410/503)"
        )
