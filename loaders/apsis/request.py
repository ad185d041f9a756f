"""What an APSIS One export asks for: the request, its documented limits checked before sending, its windows, and
the parts a request beyond the limits is split into."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from math import ceil
from typing import Any

import pendulum

from loaders.apsis import settings


class ApsisError(RuntimeError):
    """A problem with the APSIS export the user can act on: the message says what happened and what to do."""


class ApsisRequestError(ApsisError, ValueError):
    """The export request is invalid (checked before anything is sent)."""


class ApsisExportFailed(ApsisError):
    """APSIS could not produce an export (410 or 503 on every new request): a smaller window may succeed."""


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def window_text(start_at: datetime | None, end_at: datetime | None) -> str:
    if start_at is None:
        return "(no events window)"
    return f"{_iso(start_at)} .. {_iso(end_at) if end_at is not None else 'a week later'}"


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


def halves(start_at: datetime, end_at: datetime) -> list[tuple[datetime, datetime]]:
    """The two halves of a window, split on a whole second."""
    middle = start_at + timedelta(seconds=(end_at - start_at).total_seconds() // 2)
    return [(start_at, middle), (middle, end_at)]


def parts(
    attributes: Sequence[str],
    tags: Sequence[str],
    events: Sequence[str],
    start_at: datetime | None,
    end_at: datetime | None,
    segment_filter: Any = None,
) -> list[ExportRequest]:
    """The exports that together ask for everything: one within the 75 attributes / 25 tags limits, else several,
    each within them, in the order given (the first holds the first ids), only the first asking for events (so
    none is exported twice). Their files make one export in raw: the same export_id, joined by profile key."""
    count = max(1, ceil(len(attributes) / settings.MAX_ATTRIBUTES), ceil(len(tags) / settings.MAX_TAGS))
    a, t = settings.MAX_ATTRIBUTES, settings.MAX_TAGS
    return [
        ExportRequest(
            tuple(attributes[i * a : (i + 1) * a]),
            tuple(tags[i * t : (i + 1) * t]),
            tuple(events) if i == 0 else (),
            start_at,
            end_at,
            segment_filter,
        )
        for i in range(count)
    ]


def ids_from_config(value: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """Ids from a setting: a list, a JSON list, or comma separated; in order, each once."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = [str(v) for v in json.loads(text)]
            except (ValueError, TypeError) as e:
                raise ApsisRequestError(f"{text[:80]!r} is not a JSON list of ids: {e}") from None
        else:
            value = text.split(",")
    return tuple(dict.fromkeys(str(v).strip() for v in value if str(v).strip()))
