"""What an APSIS One export asks for: the request, its documented limits checked before sending, its windows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pendulum

from loaders.apsis import settings


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


def ids_from_config(value: Sequence[str] | str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)
