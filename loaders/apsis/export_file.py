"""The APSIS One export file, gzip or not, parsed incrementally (ijson) into columnar batches per raw table."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import ijson
import pyarrow as pa

from loaders.apsis import settings
from loaders.apsis.request import ApsisError


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
