"""Items for ASAPP's many-customer-metadata endpoint: built from mart rows, validated against the published
OpenAPI schema, identified by a content hash; and a client that batches, paces and retries as documented."""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from typing import Any, NamedTuple

import jsonschema_rs
import orjson
import pyarrow as pa
import requests
from openapi_schema_validator import OAS30Validator

from loaders.asapp_metadata import settings
from loaders.yaml_load import safe_load


class PushError(RuntimeError):
    """The push cannot go on (configuration, authentication): the message says what to fix."""


@cache
def spec() -> dict[str, Any]:
    document: dict[str, Any] = safe_load(settings.SPEC_PATH.read_text(encoding="utf-8"))
    return document


def request_body_schema() -> dict[str, Any]:
    """The many-customer-metadata request body schema of the spec, as published."""
    schema: dict[str, Any] = spec()["paths"][settings.ENDPOINT]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    return schema


def _item_schema() -> dict[str, Any]:
    """The spec's item schema, with its patterns anchored: the published ones ('[a-zA-Z0-9\\-\\_]+') match any
    string holding one such character; the service expects the whole value to match."""
    schema: dict[str, Any] = copy.deepcopy(request_body_schema()["properties"]["items"]["items"])

    def anchor(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str) and not node["pattern"].startswith("^"):
                node["pattern"] = f"^(?:{node['pattern']})$"
            for value in node.values():
                anchor(value)
        elif isinstance(node, list):
            for value in node:
                anchor(value)

    anchor(schema)
    return schema


@cache
def item_validator() -> OAS30Validator:
    """Lists every reason an item breaks the spec (slow: used for the items the fast check refuses)."""
    return OAS30Validator(_item_schema(), format_checker=OAS30Validator.FORMAT_CHECKER)


def json_schema(openapi_schema: Any) -> Any:
    """An OpenAPI 3.0 schema as plain JSON Schema (`nullable: true` becomes a type that admits null), for
    jsonschema-rs."""
    if isinstance(openapi_schema, list):
        return [json_schema(v) for v in openapi_schema]
    if not isinstance(openapi_schema, dict):
        return openapi_schema
    out = {k: json_schema(v) for k, v in openapi_schema.items() if k not in ("nullable", "example")}
    if openapi_schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@cache
def _fast_item_check() -> Any:
    """The same item schema, checked by jsonschema-rs (Rust): ~1 us an item instead of ~450 us. The reasons for
    an item it refuses are listed by item_validator."""
    return jsonschema_rs.validator_for(json_schema(_item_schema()), validate_formats=True)


def validate_item(item: dict[str, Any]) -> list[str]:
    if _fast_item_check().is_valid(item):
        return []
    errors = []
    for error in sorted(item_validator().iter_errors(item), key=lambda e: [str(p) for p in e.absolute_path]):
        where = ".".join(str(p) for p in error.absolute_path) or "item"
        errors.append(f"{where}: {_reason(error.validator, error.validator_value, error.message)}")
    if not errors:  # jsonschema-rs is stricter on formats (an email with no valid domain): its own reasons
        schema = json_schema(_item_schema())
        for fault in _fast_item_check().iter_errors(item):
            rule: Any = schema
            for step in fault.schema_path:
                rule = rule[step]
            where = ".".join(str(p) for p in fault.instance_path) or "item"
            errors.append(f"{where}: {_reason(fault.schema_path[-1], rule, fault.message)}")
    return errors


def _reason(rule: Any, limit: Any, message: str) -> str:
    """The rule that failed, without echoing the (possibly long, possibly personal) value."""
    return {
        "maxLength": f"longer than {limit} characters",
        "maxItems": f"more than {limit} items",
        "pattern": f"does not match {limit}",
        "format": f"is not a valid {limit}",
        "type": f"is not of type {limit}",
    }.get(str(rule), message[:200])


def content_hash(item: dict[str, Any]) -> str:
    """Hash of everything sent but the eventId: the same content always has the same hash."""
    return _digest({k: v for k, v in item.items() if k != "eventId"})


def _digest(payload: dict[str, Any]) -> str:
    """sha256 of the payload as `json.dumps(payload, sort_keys=True, separators=(",", ":"))`, the encoding every
    hash in a push log was made with. orjson gives the same bytes whenever its output is ASCII without DEL
    (json.dumps escapes the rest as \\uXXXX), ~10x faster; otherwise json.dumps is used."""
    try:
        encoded: bytes | None = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # a lone surrogate, which json.dumps escapes
        encoded = None
    if encoded is None or not encoded.isascii() or b"\x7f" in encoded:
        encoded = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


_API_FIELDS = tuple(settings.FIELDS.values())


def build_item(values: Sequence[Any], attributes: Sequence[tuple[str, str]]) -> tuple[dict[str, Any], str]:
    """A mart row (its values in settings.FIELDS order) and its attributes as an API item, and its content_hash;
    a deterministic eventId from it. Null and empty values are left out."""
    item: dict[str, Any] = {
        field: value if type(value) is str else str(value)
        for field, value in zip(_API_FIELDS, values, strict=True)
        if value is not None and value != ""
    }
    if attributes:
        item["attributes"] = [{"name": str(n), "value": "" if v is None else str(v)} for n, v in attributes]
    digest = _digest(item)  # no eventId yet: the content_hash, computed once
    item["eventId"] = event_id(digest)
    return item, digest


EVENT_ID_PREFIX, EVENT_ID_HEX_DIGITS = "elt-", 40


def event_id(digest: str) -> str:
    """The item's deterministic eventId, from its content hash."""
    return EVENT_ID_PREFIX + digest[:EVENT_ID_HEX_DIGITS]


class Batch(NamedTuple):
    """Items to send as one request, with their log keys (columnar.SEND_SCHEMA: each item's JSON and a comma)."""

    rows: pa.Table

    def body(self) -> bytes:
        """The request body: the items' JSON end to end, taken from the Arrow buffers, with no object per item."""
        parts = [b'{"items":[']
        for chunk in self.rows["wire"].chunks:
            if len(chunk):  # a binary array: int32 offsets into its data; a slice's are those of its parent's
                _, offsets, data = chunk.buffers()
                positions = memoryview(offsets).cast("i")
                parts.append(data[positions[chunk.offset] : positions[chunk.offset + len(chunk)]].to_pybytes())
        parts[-1] = parts[-1][:-1]  # the last item's comma
        parts.append(b"]}")
        return b"".join(parts)

    def event_ids(self) -> list[str]:
        ids: list[str] = self.rows["event_id"].to_pylist()
        return ids


class Outcomes(NamedTuple):
    """A batch's outcomes, one per item in the batch's order, by column."""

    status: pa.Array  # accepted | already_persisted | failed | rejected (400) | unknown
    http_status: pa.Array
    error: pa.Array

    @classmethod
    def same(cls, items: int, status: str, http_status: int, error: str) -> Outcomes:
        return cls(
            pa.repeat(pa.scalar(status), items),
            pa.repeat(pa.scalar(http_status, pa.int64()), items),
            pa.repeat(pa.scalar(error), items),
        )

    @classmethod
    def each(cls, outcomes: Sequence[tuple[str, int, str]]) -> Outcomes:
        status, http_status, error = zip(*outcomes, strict=True) if outcomes else ((), (), ())
        return cls(pa.array(status, pa.string()), pa.array(http_status, pa.int64()), pa.array(error, pa.string()))


class RateLimiter:
    """At most `rate` requests in any one second (the API's spike limit), on an even schedule of 1/rate apart.

    A request that comes late to its slot (the machine stalled, a response was slow) does not push the schedule
    back: up to `catch_up` seconds of missed slots are used at once. Evenly spaced alone, every stall was lost for
    good (a 20 ms pause cost two requests), and the push stayed under the limit it was allowed.
    """

    def __init__(
        self,
        rate: float,
        *,
        catch_up: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate
        self.catch_up = catch_up
        self._next: float | None = None
        self._sent: deque[float] = deque(maxlen=max(1, int(rate)))  # the last `rate` send times
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = self._clock()
            slot = now if self._next is None else max(self._next, now - self.catch_up)
            if len(self._sent) == self._sent.maxlen:  # never more than `rate` within one second
                slot = max(slot, self._sent[0] + 1.0)
            self._next = slot + self.interval
            self._sent.append(max(slot, now))
        if slot > now:
            self._sleep(slot - now)


class MetadataClient:
    def __init__(
        self,
        base_url: str,
        api_id: str,
        api_secret: str,
        *,
        rate: float = settings.MAX_REQUESTS_PER_SECOND,
        sleep: Callable[[float], None] = time.sleep,
        concurrency: int = settings.CONCURRENT_REQUESTS,
    ) -> None:
        self.url = base_url.rstrip("/") + settings.ENDPOINT
        self._headers = {"asapp-api-id": api_id, "asapp-api-secret": api_secret, "Content-Type": "application/json"}
        self._local = threading.local()  # a requests.Session per sending thread
        self.limiter = RateLimiter(rate)
        self.sleep = sleep
        self.concurrency = concurrency

    @property
    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers.update(self._headers)
        return session

    def post_batches(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, Outcomes]]:
        """(batch, outcomes) for every batch of `batches`, in order, with up to `concurrency` requests in flight.
        `batches` is read only when a slot is free, so a lazy one is built while requests are in flight. When a
        batch raises (refused credentials) or reading `batches` does (the mart; the push's Ctrl-C), no further batch
        is sent; the batches already in flight are still answered and yielded (so they are logged) before the error
        is raised."""
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="asapp-push") as pool:
            pending: deque[tuple[Batch, Future[Outcomes]]] = deque()
            queue = iter(batches)
            error: BaseException | None = None
            while True:
                while error is None and len(pending) < self.concurrency:
                    try:
                        batch = next(queue, None)
                    except BaseException as e:  # raised once what is in flight is answered
                        error = e
                        break
                    if batch is None:
                        break
                    pending.append((batch, pool.submit(self.post_batch, batch)))
                if not pending:
                    break
                batch, future = pending[0]
                try:
                    outcomes = future.result()
                except PushError as e:
                    pending.popleft()
                    error = error or e
                    continue
                pending.popleft()
                yield batch, outcomes
            if error is not None:
                raise error

    def post_batch(self, batch: Batch) -> Outcomes:
        """Send one batch; retry 429 (1 s, 2 s, 4 s) and 5xx (250 ms, 500 ms, 1 s); never other 4xx."""
        attempt_429 = attempt_5xx = 0
        body = batch.body()
        while True:
            self.limiter.wait()
            try:
                response = self.session.post(self.url, data=body, timeout=settings.REQUEST_TIMEOUT_S)
            except requests.RequestException as e:
                if attempt_5xx < len(settings.RETRY_5XX_S):
                    self.sleep(settings.RETRY_5XX_S[attempt_5xx])
                    attempt_5xx += 1
                    continue
                return Outcomes.same(len(batch.rows), "failed", 0, f"connection error: {type(e).__name__}")
            status = response.status_code
            if status == 429 and attempt_429 < len(settings.RETRY_429_S):
                self.sleep(settings.RETRY_429_S[attempt_429])
                attempt_429 += 1
                continue
            if status >= 500 and attempt_5xx < len(settings.RETRY_5XX_S):
                self.sleep(settings.RETRY_5XX_S[attempt_5xx])
                attempt_5xx += 1
                continue
            return self._outcomes(batch, response)

    @staticmethod
    def _outcomes(batch: Batch, response: requests.Response) -> Outcomes:
        status = response.status_code
        items = len(batch.rows)
        if status in (401, 403):
            raise PushError(
                f"ASAPP refused the credentials (HTTP {status}): check ASAPP_API__API_ID and ASAPP_API__API_SECRET"
            )
        if status == 409:
            return Outcomes.same(items, "already_persisted", status, "")
        if status in (200, 400):
            try:
                body = orjson.loads(response.content)
                results = {r.get("eventId"): r.get("error") or "" for r in body.get("results") or []}
            except (ValueError, AttributeError):
                body, results = {}, {}
            accepted_if_unreported = status == 200 and not body.get("errorCount")
            if accepted_if_unreported and not any(results.values()):  # every item taken: no look at each
                return Outcomes.same(items, "accepted", status, "")
            refused = "failed" if status == 200 else "rejected"
            outcomes = []
            for event_id in batch.event_ids():
                error = results.get(event_id)  # a reported item's error is a string, "" when it was taken
                if error is None:  # not reported on: never assume it was taken unless no item failed
                    outcomes.append(
                        ("accepted", status, "")
                        if accepted_if_unreported
                        else ("unknown", status, "no result returned for the item")
                    )
                else:
                    outcomes.append((refused if error or status != 200 else "accepted", status, error))
            return Outcomes.each(outcomes)
        text = response.text[:300]
        return Outcomes.same(items, "failed", status, f"HTTP {status}: {text}")
