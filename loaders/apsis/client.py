"""The APSIS One client: OAuth2 client credentials, the export request, polling with back-off and a streamed
download."""

from __future__ import annotations

import logging
import random
import re
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from dlt.sources.helpers.requests import Client, Response

from loaders import runtime
from loaders.apsis import settings
from loaders.apsis.request import ApsisError, ExportRequest, validate

log = logging.getLogger(__name__)


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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client_id = client_id
        self._client_secret = client_secret
        self._token: str | None = None
        self._token_expires = 0.0
        self.poll_initial_interval = poll_initial_interval
        self.poll_max_interval = poll_max_interval
        self.poll_timeout = poll_timeout
        self.gzip_download = gzip_download
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
                    f"APSIS denied {method} {url} (HTTP {response.status_code}) with a fresh token: "
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
        delay = min(self.poll_max_interval, self.poll_initial_interval * (2**attempt))
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, min(float(retry_after), self.poll_max_interval))
        time.sleep(delay * random.uniform(0.5, 1.0))  # full jitter on the upper half

    def download(self, poll_url: str, target: IO[bytes]) -> str | None:
        """Poll until the export is ready and stream it into target. Returns None when a new export is needed
        (410: gone or invalid; 503: processing failed), else the content encoding ('gzip' or '')."""
        started = time.monotonic()
        attempt = 0
        headers = {"Accept-Encoding": "gzip" if self.gzip_download else "identity"}
        while True:
            response = self._send(self.poller, "GET", poll_url, headers=headers, stream=True)
            status = response.status_code
            if status == 200:
                encoding = response.headers.get("Content-Encoding", "").lower()
                for chunk in response.raw.stream(settings.DOWNLOAD_CHUNK, decode_content=False):
                    target.write(chunk)
                response.close()
                return encoding
            response.close()
            if status in (410, 503):
                log.warning(
                    "export at %s %s: requesting a new one",
                    poll_url,
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
        """Request, poll and download one export into a (decompressed-on-read) temporary file."""
        prefix = runtime.scratch_prefix("apsis-export", workdir)
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
            log.warning("new export requested (attempt %d of %d)", attempt + 1, settings.MAX_EXPORT_ATTEMPTS)
        raise ApsisError(
            f"APSIS could not produce the export after {settings.MAX_EXPORT_ATTEMPTS} requests (410/503): try a "
            f"smaller request (fewer attributes, tags or event types, a shorter window, a simpler segment)"
        )
