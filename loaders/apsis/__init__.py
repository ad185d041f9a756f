"""dlt source for APSIS One's "profile in segment event export": request, poll, stream and flatten.

Raw tables (schema apsis_raw): profiles, profile_attributes, profile_tags, events, exports (one row per export:
window, request time, counts), and the reference data sections, attributes, tags, event_types, so ids can be
mapped to names. Incremental: the next run starts at the last loaded end_at minus an overlap for late events;
the duplicates that overlap creates are removed in dbt.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

import dlt
import pendulum
from dlt.common.typing import TSecretStrValue
from dlt.sources import DltResource

from loaders.apsis import settings
from loaders.apsis.client import ApsisClient
from loaders.apsis.export_file import parse_export
from loaders.apsis.request import ApsisRequestError, ExportRequest, ids_from_config, validate, windows
from loaders.apsis.settings import ApsisConfiguration

log = logging.getLogger(__name__)


@dataclass
class ApsisStats:
    exports: int = 0
    windows: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)


def _id(item: dict[str, Any]) -> str:
    return str(item.get("discriminator") or item.get("id") or "")


class _Reference:
    """Sections, attributes, tags and event types, read once per run."""

    def __init__(self, client: ApsisClient, section: str | None) -> None:
        self.client = client
        self.section = section

    @cached_property
    def sections(self) -> list[dict[str, Any]]:
        return [
            {"section_id": _id(s), "name": s.get("name"), "raw": s}
            for s in self.client.get_items(settings.SECTIONS_PATH)
            if not self.section or _id(s) == self.section
        ]

    def _items(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        return [
            (s["section_id"], item)
            for s in self.sections
            for item in self.client.get_items(settings.SECTION_ITEMS_PATH.format(section=s["section_id"], kind=kind))
        ]

    @cached_property
    def attributes(self) -> list[dict[str, Any]]:
        return [
            {"section_id": sid, "attribute_id": _id(a), "name": a.get("name"), "type": a.get("type")}
            for sid, a in self._items("attributes")
        ]

    @cached_property
    def tags(self) -> list[dict[str, Any]]:
        return [{"section_id": sid, "tag_id": _id(t), "name": t.get("name")} for sid, t in self._items("tags")]

    @cached_property
    def event_types(self) -> list[dict[str, Any]]:
        rows = []
        for sid, e in self._items("events"):
            versions = e.get("versions") or [{"id": _id(e)}]
            for v in versions:
                rows.append(
                    {
                        "section_id": sid,
                        "event_id": _id(e),
                        "version_id": str(v.get("id") or _id(e)),
                        "name": e.get("name"),
                    }
                )
        return rows


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
            export (attributes, tags, events; unset: every attribute, tag and event type found through the
            reference endpoints, within the 75 attributes / 25 tags limits), section, segment_filter, polling.
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
    )
    section, segment_filter, export_path = config.section, config.segment_filter, config.export_path
    attributes, tags, events = config.attributes, config.tags, config.events
    reference = _Reference(client, section)
    explicit_start, explicit_end = _parse_time(start_at), _parse_time(end_at)

    def requested() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        attrs = ids_from_config(attributes)
        tag_ids = ids_from_config(tags)
        event_ids = ids_from_config(events)
        if attrs is None:
            attrs = tuple(dict.fromkeys(a["attribute_id"] for a in reference.attributes))[: settings.MAX_ATTRIBUTES]
        if tag_ids is None:
            tag_ids = tuple(dict.fromkeys(t["tag_id"] for t in reference.tags))[: settings.MAX_TAGS]
        if event_ids is None:
            event_ids = tuple(dict.fromkeys(e["event_id"] for e in reference.event_types))
        return attrs, tag_ids, event_ids

    def export_rows() -> Iterator[Any]:
        state = dlt.current.source_state()
        attrs, tag_ids, event_ids = requested()
        start, end = _window(
            state,
            explicit_start,
            explicit_end,
            timedelta(hours=config.overlap_hours),
            timedelta(days=config.initial_lookback_days),
        )
        parts = windows(start, end)
        for part_start, part_end in parts:  # validate every export before requesting the first
            validate(ExportRequest(attrs, tag_ids, event_ids, part_start, part_end, segment_filter))
        for part_start, part_end in parts:
            request = ExportRequest(attrs, tag_ids, event_ids, part_start, part_end, segment_filter)
            export_id = uuid.uuid4().hex
            requested_at = datetime.now(UTC)
            log.info("APSIS export %s .. %s requested", part_start.isoformat(), part_end.isoformat())
            path = client.export_to_file(request, path=export_path)
            counts: dict[str, int] = {}
            try:
                for table, batch in parse_export(path, export_id):
                    counts[table] = counts.get(table, 0) + batch.num_rows
                    yield dlt.mark.with_table_name(batch, table)
                size = path.stat().st_size
            finally:
                path.unlink(missing_ok=True)
            yield dlt.mark.with_hints(
                {
                    "export_id": export_id,
                    "start_at": part_start,
                    "end_at": part_end,
                    "requested_at": requested_at,
                    "completed_at": datetime.now(UTC),
                    "segment_filter": None if segment_filter is None else str(segment_filter),
                    "attributes_requested": len(attrs),
                    "tags_requested": len(tag_ids),
                    "events_requested": len(event_ids),
                    "file_bytes": size,
                    **{
                        f"{t}_rows": counts.get(t, 0)
                        for t in ("profiles", "profile_attributes", "profile_tags", "events")
                    },
                },
                dlt.mark.make_hints(table_name="exports", columns={"segment_filter": {"data_type": "text"}}),
            )
            # Committed with this window's rows: an interrupted run restarts from the last complete window.
            state["last_end_at"] = part_end.isoformat()
            run_stats.exports += 1
            run_stats.windows.append(f"{part_start:%Y-%m-%d %H:%M} .. {part_end:%Y-%m-%d %H:%M}")
            for t, n in counts.items():
                run_stats.rows[t] = run_stats.rows.get(t, 0) + n

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
