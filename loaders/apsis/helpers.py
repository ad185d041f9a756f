"""APSIS One client: OAuth2 client credentials, export request and validation, polling with back-off, a
streamed download, and an incremental (ijson) parse of the export into columnar batches."""

from __future__ import annotations

import gzip
import json
import logging
import random
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import ijson
import pendulum
import pyarrow as pa
from dlt.sources.helpers.requests import Client, Response

from loaders import runtime
from loaders.apsis import settings

log = logging.getLogger(__name__)


class ApsisError(RuntimeError):
    """A problem with the APSIS export the user can act on: the message says what happened and what to do."""


class ApsisRequestError(ApsisError, ValueError):
    """The export request is invalid (checked before anything is sent)."""


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ExportRequest:
    attributes: tuple[str, ...]
    tags: tuple[str, ...]
    events: tuple[str, ...]
    start_at: datetime | None
    end_at: datetime | None
    segment_filter: Any = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"attributes": list(self.attributes), "tags": list(self.tags)}
        if self.events:
            body["events"] = list(self.events)
        if self.start_at is not None:
            body["start_at"] = _iso(self.start_at)
        if self.end_at is not None:
            body["end_at"] = _iso(self.end_at)
        if self.segment_filter:
            body["segment_filter"] = self.segment_filter
        return body


def add_months(moment: datetime, months: int) -> datetime:
    return pendulum.instance(moment).add(months=months)


def validate(request: ExportRequest) -> None:
    """The documented rules, checked before sending so a bad request fails fast with a clear message."""
    if not request.attributes and not request.tags:
        raise ApsisRequestError(
            "request at least one attribute or tag: without one, APSIS exports no profile "
            "(set SOURCES__APSIS__ATTRIBUTES or SOURCES__APSIS__TAGS)"
        )
    if len(request.attributes) > settings.MAX_ATTRIBUTES:
        raise ApsisRequestError(
            f"{len(request.attributes)} attributes requested: an export can include at most {settings.MAX_ATTRIBUTES}"
        )
    if len(request.tags) > settings.MAX_TAGS:
        raise ApsisRequestError(
            f"{len(request.tags)} tags requested: an export can include at most {settings.MAX_TAGS}"
        )
    if request.events and request.start_at is None:
        raise ApsisRequestError("start_at is mandatory when events are requested")
    if request.start_at is not None and request.end_at is not None:
        if request.end_at <= request.start_at:
            raise ApsisRequestError(f"end_at {_iso(request.end_at)} is not after start_at {_iso(request.start_at)}")
        if request.end_at > add_months(request.start_at, settings.MAX_WINDOW_MONTHS):
            raise ApsisRequestError(
                f"the events window {_iso(request.start_at)} .. {_iso(request.end_at)} is longer than "
                f"{settings.MAX_WINDOW_MONTHS} months: split it (the source does this for you)"
            )


def windows(start_at: datetime, end_at: datetime) -> list[tuple[datetime, datetime]]:
    """Consecutive windows of at most three months covering [start_at, end_at)."""
    if end_at <= start_at:
        raise ApsisRequestError(f"end_at {_iso(end_at)} is not after start_at {_iso(start_at)}")
    result = []
    current = start_at
    while current < end_at:
        nxt = min(add_months(current, settings.MAX_WINDOW_MONTHS), end_at)
        result.append((current, nxt))
        current = nxt
    return result


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


def open_export(path: Path) -> IO[bytes]:
    """The export file, gzip or not (told by its magic bytes, whatever the headers said)."""
    with path.open("rb") as f:
        magic = f.read(2)
    return cast(IO[bytes], gzip.open(path, "rb")) if magic == b"\x1f\x8b" else path.open("rb")


def _profiles_prefix(path: Path) -> str:
    """'' for {key: profile, ...}; 'profiles' for {"profiles": {...}, "metadata": ...}."""
    with open_export(path) as f:
        events = ijson.parse(f)
        for prefix, event, value in events:
            if event == "map_key" and prefix == "":
                if value == "profiles":
                    _, nxt, _ = next(events)
                    return "profiles" if nxt == "start_map" else ""
                return ""
            if event in ("start_array", "string", "number", "boolean", "null"):
                raise ApsisError(f"{path.name}: the export's top level is not a JSON object")
    return ""


def _ms_to_datetime(value: Any) -> datetime | None:
    """Milliseconds since the epoch; 0 (or nothing) means unknown, not 1970."""
    if value in (None, 0, "0", ""):
        return None
    return datetime.fromtimestamp(float(value) / 1000.0, tz=UTC)


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)


@dataclass
class _Columns:
    """Columnar buffers turned into Arrow tables every ARROW_BATCH_ROWS rows (memory stays flat)."""

    schema: pa.Schema
    data: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = {name: [] for name in self.schema.names}

    def add(self, **row: Any) -> None:
        for name, column in self.data.items():
            column.append(row.get(name))

    def __len__(self) -> int:
        return len(next(iter(self.data.values())))

    def take(self) -> pa.Table:
        table = pa.table(self.data, schema=self.schema)
        self.__post_init__()
        return table


TS = pa.timestamp("us", tz="UTC")
SCHEMAS = {
    "profiles": pa.schema([("profile_key", pa.string()), ("export_id", pa.string())]),
    "profile_attributes": pa.schema(
        [
            ("profile_key", pa.string()),
            ("section_id", pa.string()),
            ("attribute_id", pa.string()),
            ("value", pa.string()),
            ("value_type", pa.string()),
            ("export_id", pa.string()),
        ]
    ),
    "profile_tags": pa.schema(
        [
            ("profile_key", pa.string()),
            ("section_id", pa.string()),
            ("tag_id", pa.string()),
            ("export_id", pa.string()),
        ]
    ),
    "events": pa.schema(
        [
            ("profile_key", pa.string()),
            ("section_id", pa.string()),
            ("correlation_id", pa.string()),
            ("type_id", pa.string()),
            ("source_event_time", TS),
            ("created_at", TS),
            ("data", pa.string()),
            ("event_index", pa.int64()),  # position in the profile's section: with export_id, the row's identity
            ("export_id", pa.string()),
        ]
    ),
}


def _value_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float) or type(value).__name__ == "Decimal":
        return "number"
    if isinstance(value, str):
        return "string"
    return "json"


def _value_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) or type(value).__name__ == "Decimal":
        return str(value)
    return _json_text(value)


def parse_export(
    path: Path, export_id: str, batch_rows: int = settings.ARROW_BATCH_ROWS
) -> Iterator[tuple[str, pa.Table]]:
    """Stream the export file profile by profile; yield (table name, Arrow batch) pairs.

    Tags are the attributes whose value is null: they go to profile_tags, the others to profile_attributes.
    """
    buffers = {name: _Columns(schema) for name, schema in SCHEMAS.items()}
    prefix = _profiles_prefix(path)
    with open_export(path) as f:
        for profile_key, profile in ijson.kvitems(f, prefix, use_float=True):
            if not isinstance(profile, dict):
                raise ApsisError(f"{path.name}: profile {profile_key!r} is not a JSON object")
            sections = profile.get("sections", profile) if isinstance(profile.get("sections"), dict) else profile
            buffers["profiles"].add(profile_key=profile_key, export_id=export_id)
            for section_id, section in sections.items():
                if not isinstance(section, dict):
                    continue
                for attribute_id, attribute in (section.get("attributes") or {}).items():
                    value = attribute.get("value") if isinstance(attribute, dict) else attribute
                    if value is None:
                        buffers["profile_tags"].add(
                            profile_key=profile_key, section_id=section_id, tag_id=attribute_id, export_id=export_id
                        )
                    else:
                        buffers["profile_attributes"].add(
                            profile_key=profile_key,
                            section_id=section_id,
                            attribute_id=attribute_id,
                            value=_value_text(value),
                            value_type=_value_type(value),
                            export_id=export_id,
                        )
                for index, event in enumerate(section.get("events") or []):
                    buffers["events"].add(
                        profile_key=profile_key,
                        section_id=section_id,
                        correlation_id=_value_text(event.get("correlationId")),
                        type_id=_value_text(event.get("typeId")),
                        source_event_time=_ms_to_datetime(event.get("sourceEventTime")),
                        created_at=_ms_to_datetime(event.get("createdAt")),
                        data=None if event.get("data") is None else _json_text(event.get("data")),
                        event_index=index,
                        export_id=export_id,
                    )
            for name, buffer in buffers.items():
                if len(buffer) >= batch_rows:
                    yield name, buffer.take()
    for name, buffer in buffers.items():
        if len(buffer):
            yield name, buffer.take()


def ids_from_config(value: Sequence[str] | str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)
