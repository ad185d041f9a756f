"""The many-customer-metadata client: paced, retried as documented, and every answer turned into one outcome per
item of the batch.

Outcomes: `accepted` and `already_persisted` (acknowledged), `rejected` (the API refused the item), `unknown` (the
answer does not say what became of it), `failed` (the request got no usable answer). Only acknowledged items are
settled; the others are sent again by the next push.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

import orjson
import requests

from loaders.asapp_metadata import settings

ACKNOWLEDGED = ("accepted", "already_persisted")
MAX_REDIRECTS = 5


class PushError(RuntimeError):
    """The push cannot go on (configuration, authentication): the message says what to fix."""


class Outcome(NamedTuple):
    status: str
    http_status: int | None
    error: str


class RateLimiter:
    """At most `rate` requests in any one second (the API's spike limit), on an even schedule of 1/rate apart.

    A request late to its slot (the machine stalled, an answer was slow) does not push the schedule back: up to
    `catch_up` seconds of missed slots are used at once, so a stall costs no throughput."""

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


def item_errors(content: bytes, event_ids: list[str]) -> list[str | None] | None:
    """Each item's error from an answer's `results` ("" when it was taken, None when the answer names it not), or
    None when the results cannot be told apart: they are matched by eventId when they echo the ids sent, else by
    position when there is one per item (the spec's own example answers with ids the service computed)."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        return None
    errors: list[str | None] = ["" if r.get("error") in (None, "") else str(r["error"]) for r in results]
    ids = [r.get("eventId") for r in results]
    if ids == event_ids:  # echoed, in order: the common answer, matched at once
        return errors
    sent = set(event_ids)
    if ids and len(set(ids)) == len(ids) and all(i in sent for i in ids):
        by_id = dict(zip(ids, errors, strict=True))
        return [by_id.get(i) for i in event_ids]
    if len(results) == len(event_ids):
        return errors
    return None


def _retry_after(response: requests.Response) -> float | None:
    """The wait a 429 asks for (seconds, or an HTTP date), if it says."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class MetadataClient:
    def __init__(
        self,
        api: settings.AsappApiConfiguration,
        *,
        rate: float = settings.MAX_REQUESTS_PER_SECOND,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = api.base_url.rstrip("/") + settings.ENDPOINT
        self._headers = {
            "asapp-api-id": api.api_id,
            "asapp-api-secret": str(api.api_secret),
            "Content-Type": "application/json",
        }
        self._local = threading.local()  # a session (its kept-alive connection) per sending thread
        self.limiter = RateLimiter(rate)
        self.sleep = sleep

    def send(self, event_ids: list[str], wires: list[str]) -> list[Outcome]:
        """One outcome per item (wires: the items' JSON). A batch too large (413) or refused whole (a 400 that names
        no item) is sent again in halves, so the good items still go and the bad ones are named."""
        items = len(wires)
        response = self._post(b'{"items":[' + ",".join(wires).encode() + b"]}")
        if isinstance(response, str):
            return [Outcome("failed", None, response)] * items
        status = response.status_code
        if status in (401, 403):
            raise PushError(
                f"ASAPP refused the credentials (HTTP {status}): check ASAPP_API__API_ID and ASAPP_API__API_SECRET"
            )
        if status == 409:
            return [Outcome("already_persisted", status, "")] * items
        errors = item_errors(response.content, event_ids) if status in (200, 400) else None
        if status == 200 and errors is not None and not any(errors) and None not in errors:
            return [Outcome("accepted", status, "")] * items  # the common answer: one outcome object for them all
        if errors is not None and (status == 200 or any(errors)):
            taken = "accepted" if status == 200 else "unknown"  # a 400 takes nothing: an item it names not is owed
            return [
                Outcome("unknown", status, "the answer names no result for the item")
                if error is None
                else Outcome("rejected" if error else taken, status, error)
                for error in errors
            ]
        if status in (400, 413) and items > 1:
            half = items // 2
            return self.send(event_ids[:half], wires[:half]) + self.send(event_ids[half:], wires[half:])
        if status == 200:
            return [Outcome("unknown", status, "the answer does not account for the items")] * items
        return [Outcome("rejected" if status in (400, 413) else "failed", status, _describe(response))] * items

    def _post(self, body: bytes) -> requests.Response | str:
        """The answer, after the documented retries of 429 (Retry-After, else 1, 2, 4 s) and of 5xx and connection
        errors (250 ms, 500 ms, 1 s); a string when no answer came."""
        waits_429, waits_5xx = iter(settings.RETRY_429_S), iter(settings.RETRY_5XX_S)
        while True:
            self.limiter.wait()
            try:
                response = self._post_once(body)
            except requests.RequestException as e:  # the exception's text may hold the URL: its type only
                wait = next(waits_5xx, None)
                if wait is None:
                    return f"connection error: {type(e).__name__}"
                self.sleep(wait)
                continue
            status = response.status_code
            if status == 429:
                wait = next(waits_429, None)
                asked = _retry_after(response)
                wait = asked if wait is not None and asked is not None else wait
                if wait is None or wait > settings.MAX_RETRY_AFTER_S:
                    return response
            elif status >= 500:
                wait = next(waits_5xx, None)
                if wait is None:
                    return response
            else:
                return response
            self.sleep(wait)

    def _post_once(self, body: bytes) -> requests.Response:
        """POST, following a 307/308 only to the configured origin: the credentials and the customers' data never
        go to another host (requests would follow it, with the asapp-api-* headers)."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        url = self.url
        for _ in range(MAX_REDIRECTS):
            response = session.post(
                url, data=body, headers=self._headers, timeout=settings.REQUEST_TIMEOUT_S, allow_redirects=False
            )
            target = urljoin(url, response.headers.get("Location", ""))
            if response.status_code not in (307, 308) or not _same_origin(target, self.url):
                break
            url = target
        return response


def _same_origin(url: str, other: str) -> bool:
    a, b = urlsplit(url), urlsplit(other)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def _describe(response: requests.Response) -> str:
    if response.is_redirect:
        where = urlsplit(urljoin(response.url, response.headers.get("Location", ""))).netloc
        return f"HTTP {response.status_code}: a redirect to {where}, not followed"
    return f"HTTP {response.status_code}: {response.text[:300]}"
