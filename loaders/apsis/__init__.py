"""dlt source for APSIS One's "profile in segment event export": request, poll, stream and flatten.

Raw tables (schema apsis_raw): profiles, profile_attributes, profile_tags, events, exports (one row per export:
window, request time, counts), _rejects (values that could not be loaded, and why), and the reference data
sections, attributes, tags, event_types, so ids can be mapped to names. Incremental: the next run starts at the
last loaded end_at minus an overlap for late events; the duplicates that overlap creates are removed in dbt.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dlt
import pendulum
from dlt.common.typing import TSecretStrValue
from dlt.sources import DltResource

from loaders.apsis import settings
from loaders.apsis.client import ApsisClient
from loaders.apsis.export_file import parse_export
from loaders.apsis.reference import Reference, requested_ids
from loaders.apsis.request import (
    ApsisError,
    ApsisExportFailed,
    ApsisRequestError,
    ExportRequest,
    halves,
    parts,
    validate,
    window_text,
    windows,
)
from loaders.apsis.settings import ApsisConfiguration

__all__ = ["ApsisConfiguration", "ApsisError", "ApsisStats", "apsis"]

log = logging.getLogger(__name__)

COUNTED_TABLES = ("profiles", "profile_attributes", "profile_tags", "events", settings.REJECTS_TABLE)


@dataclass
class ApsisStats:
    exports: int = 0
    windows: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # per raw table; _rejects: values rejected


def _parse_time(value: str | datetime | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = pendulum.parse(str(value), tz="UTC")
    if not isinstance(parsed, datetime):
        raise ApsisRequestError(f"{value!r} is not a date or time")
    return parsed


def _window(
    state: dict[str, Any],
    start_at: datetime | None,
    end_at: datetime | None,
    overlap: timedelta,
    initial_lookback: timedelta,
) -> tuple[datetime, datetime]:
    """The events window of this run: explicit, else from the last loaded end_at (minus overlap) to now."""
    if start_at is not None:
        return start_at, end_at or start_at + settings.DEFAULT_WINDOW  # as APSIS defaults it
    now = datetime.now(UTC).replace(microsecond=0)
    last = _parse_time(state.get("last_end_at"))
    return (last - overlap if last else now - initial_lookback), end_at or now


class _Exporter:
    """The exports of one run: a window at a time, each window one export in raw (split into parts beyond the
    75/25 limits), a window APSIS cannot produce tried again as two halves."""

    def __init__(
        self,
        client: ApsisClient,
        config: ApsisConfiguration,
        ids: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]],
        stats: ApsisStats,
    ) -> None:
        self.client, self.config, self.stats = client, config, stats
        self.attributes, self.tags, self.events = ids

    def plan(self, start: datetime, end: datetime) -> list[ExportRequest]:
        return parts(self.attributes, self.tags, self.events, start, end, self.config.segment_filter)

    def window(self, state: dict[str, Any], start: datetime, end: datetime) -> Iterator[Any]:
        """One window, or its halves (recursively, down to min_window_hours) when APSIS fails to produce it."""
        try:
            yield from self._export(state, start, end)
            return
        except ApsisExportFailed as e:
            failure = str(e)
        # outside the handler: the error a user sees is the last window's, not a chain of the larger ones
        if not self.events:
            why = "no event types are requested, so a smaller window would not help"
        elif (end - start) / 2 < timedelta(hours=self.config.min_window_hours):
            hours = self.config.min_window_hours
            why = f"its halves would be shorter than {hours:g} h (SOURCES__APSIS__MIN_WINDOW_HOURS)"
        else:
            (a, b), (_, c) = halves(start, end)
            log.warning("%s: trying %s and %s", failure, window_text(a, b), window_text(b, c))
            yield from self.window(state, a, b)
            yield from self.window(state, b, c)
            return
        raise ApsisError(
            f"{failure}; {why}: try a smaller request (fewer attributes, tags or event types, a simpler segment)"
        )

    def _export(self, state: dict[str, Any], start: datetime, end: datetime) -> Iterator[Any]:
        """Every part of the window downloaded first (a part that fails leaves nothing loaded of the window), then
        parsed into the same export_id."""
        requests = self.plan(start, end)
        export_id = uuid.uuid4().hex
        requested_at = datetime.now(UTC)
        files: list[Path] = []
        counts: dict[str, int] = {}
        try:
            for number, request in enumerate(requests):
                log.info(
                    "APSIS export %s requested%s",
                    window_text(start, end),
                    f" (part {number + 1} of {len(requests)})" if len(requests) > 1 else "",
                )
                files.append(self.client.export_to_file(request, path=self.config.export_path))
            size = sum(f.stat().st_size for f in files)
            for number, (request, path) in enumerate(zip(requests, files, strict=True)):
                batches = parse_export(
                    path, export_id, part=number, tags=request.tags, max_bytes=self.config.max_export_bytes
                )
                for table, batch in batches:
                    counts[table] = counts.get(table, 0) + batch.num_rows
                    yield dlt.mark.with_table_name(batch, table)
        finally:
            for path in files:
                path.unlink(missing_ok=True)
        yield dlt.mark.with_hints(
            {
                "export_id": export_id,
                "start_at": start,
                "end_at": end,
                "requested_at": requested_at,
                "completed_at": datetime.now(UTC),
                "segment_filter": None if self.config.segment_filter is None else str(self.config.segment_filter),
                "attributes_requested": len(self.attributes),
                "tags_requested": len(self.tags),
                "events_requested": len(self.events),
                "parts": len(requests),
                "file_bytes": size,
                **{f"{t}_rows": counts.get(t, 0) for t in COUNTED_TABLES if t != settings.REJECTS_TABLE},
                "rejected_rows": counts.get(settings.REJECTS_TABLE, 0),
            },
            dlt.mark.make_hints(table_name="exports", columns={"segment_filter": {"data_type": "text"}}),
        )
        # Committed with this window's rows: an interrupted run restarts from the last complete window.
        state["last_end_at"] = end.isoformat()
        self.stats.exports += 1
        self.stats.windows.append(f"{start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M}")
        for t, n in counts.items():
            self.stats.rows[t] = self.stats.rows.get(t, 0) + n


@dlt.source(name="apsis", section="apsis", max_table_nesting=0, spec=ApsisConfiguration)
def apsis(
    base_url: str = dlt.config.value,
    client_id: str = dlt.config.value,
    client_secret: TSecretStrValue = dlt.secrets.value,
    start_at: str | None = None,
    end_at: str | None = None,
    config: ApsisConfiguration = dlt.config.value,
    stats: ApsisStats | None = None,
) -> list[DltResource]:
    """APSIS One profiles, attributes, tags and events of a segment (or of the account), and reference data.

    Args:
        base_url, client_id, client_secret: the APSIS One API and its OAuth2 client credentials.
        start_at, end_at: the events window; longer than three months is split into consecutive exports.
            Without start_at, the run starts at the last loaded end_at minus overlap_hours.
        config: every setting (settings.ApsisConfiguration), resolved by dlt from SOURCES__APSIS__*: what to
            export (attributes, tags, events; unset: everything the reference endpoints list, split into several
            exports beyond the 75 attributes / 25 tags limits), section, segment_filter, polling, caps.
        stats: filled with the run's counts.
    """
    run_stats = stats if stats is not None else ApsisStats()
    client = ApsisClient(
        base_url,
        client_id,
        client_secret,
        backoff_factor=config.request_backoff_factor,
        poll_initial_interval=config.poll_initial_interval,
        poll_max_interval=config.poll_max_interval,
        poll_timeout=config.poll_timeout,
        gzip_download=config.gzip,
        max_export_bytes=config.max_export_bytes,
        download_timeout=config.download_timeout,
    )
    reference = Reference(client, config.section)
    explicit_start, explicit_end = _parse_time(start_at), _parse_time(end_at)

    def export_rows() -> Iterator[Any]:
        state = dlt.current.source_state()
        exporter = _Exporter(
            client, config, requested_ids(reference, config.attributes, config.tags, config.events), run_stats
        )
        start, end = _window(
            state,
            explicit_start,
            explicit_end,
            timedelta(hours=config.overlap_hours),
            timedelta(days=config.initial_lookback_days),
        )
        three_months = windows(start, end)
        for part_start, part_end in three_months:  # validate every export before requesting the first
            for request in exporter.plan(part_start, part_end):
                validate(request)
        for part_start, part_end in three_months:
            yield from exporter.window(state, part_start, part_end)

    return [
        dlt.resource(export_rows(), name="profile_export", write_disposition="append"),
        dlt.resource(
            lambda: reference.sections,
            name="sections",
            write_disposition="replace",
            primary_key="section_id",
            columns={"raw": {"data_type": "json"}},
        ),
        dlt.resource(
            lambda: reference.attributes,
            name="attributes",
            write_disposition="replace",
            primary_key=["section_id", "attribute_id"],
        ),
        dlt.resource(
            lambda: reference.tags, name="tags", write_disposition="replace", primary_key=["section_id", "tag_id"]
        ),
        dlt.resource(
            lambda: reference.event_types,
            name="event_types",
            write_disposition="replace",
            primary_key=["section_id", "version_id"],
        ),
    ]
