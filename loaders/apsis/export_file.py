"""The APSIS One export file, gzip or not, parsed incrementally (ijson) into columnar batches per raw table.

Every value has a defined outcome: a row of its table, or a row of _rejects saying what was wrong (a profile without
a key or not an object, a section, attributes or events of the wrong shape, an event not an object or with a time
out of range). A rejected value never stops the rest of the export.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import ijson
import pyarrow as pa

from loaders.apsis import settings
from loaders.apsis.request import ApsisError

log = logging.getLogger(__name__)

MAX_REJECTS_LOGGED = 10  # per export file; _rejects and the run's counts hold them all


class _Capped:
    """A binary file that fails once more than limit bytes were read from it: an export inflating without end
    fails with a clear error instead of filling the run's time."""

    def __init__(self, f: IO[bytes], limit: int, name: str) -> None:
        self._f, self.limit, self.name, self.read_bytes = f, limit, name, 0

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise ApsisError(
                f"{self.name}: the export inflates to more than {self.limit} bytes "
                f"(SOURCES__APSIS__MAX_EXPORT_BYTES): raise it if the export is genuine, or request less"
            )
        return data

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _Capped:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open(path: Path) -> IO[bytes]:
    with path.open("rb") as f:
        magic = f.read(2)
    return cast(IO[bytes], gzip.open(path, "rb")) if magic == b"\x1f\x8b" else path.open("rb")


def open_export(path: Path, max_bytes: int | None = None) -> IO[bytes]:
    """The export file, gzip or not (told by its magic bytes, whatever the headers said), failing past max_bytes
    of JSON."""
    return _open(path) if max_bytes is None else cast(IO[bytes], _Capped(_open(path), max_bytes, path.name))


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


class _Rejected(ValueError):
    """A value that cannot be loaded as documented: its item goes to _rejects with this message."""


_LATEST_MS = (datetime(9999, 12, 31, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1000


def _ms_to_datetime(value: Any, name: str = "time") -> datetime | None:
    """Milliseconds since the epoch; 0 (or nothing) means unknown, not 1970. Anything else that is not a time from
    1970 to 9999 is rejected."""
    if value in (None, 0, "0", "") and not isinstance(value, bool):
        return None
    try:
        if isinstance(value, bool):
            raise ValueError("a boolean")
        ms = float(value)
        if not 0 < ms <= _LATEST_MS:  # also NaN
            raise ValueError("out of range")
        return datetime.fromtimestamp(ms / 1000.0, tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError) as e:
        raise _Rejected(f"{name} {str(value)[:40]!r} is not a time in milliseconds from 1970 to 9999 ({e})") from None


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)


@dataclass
class _Columns:
    """Columnar buffers turned into Arrow tables every ARROW_BATCH_ROWS rows (memory stays flat). Constant columns
    (the export's id and part) are filled in when a batch is taken, not row by row."""

    schema: pa.Schema
    constants: dict[str, Any] = field(default_factory=dict)
    data: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = {name: [] for name in self.schema.names if name not in self.constants}

    def add(self, **row: Any) -> None:
        for name, column in self.data.items():
            column.append(row.get(name))

    def __len__(self) -> int:
        return len(next(iter(self.data.values())))

    def take(self) -> pa.Table:
        rows = len(self)
        arrays = [
            pa.repeat(pa.scalar(self.constants[f.name], f.type), rows)
            if f.name in self.constants
            else pa.array(self.data[f.name], f.type)
            for f in self.schema
        ]
        self.__post_init__()
        return pa.Table.from_arrays(arrays, schema=self.schema)


TS = pa.timestamp("us", tz="UTC")
# export_part: which of the exports a request beyond the 75/25 limits was split into (0 when it was not); the parts
# share their export_id, so each profile's attributes and tags are joined across them by profile key
SCHEMAS = {
    "profiles": pa.schema([("profile_key", pa.string()), ("export_id", pa.string()), ("export_part", pa.int64())]),
    "profile_attributes": pa.schema(
        [
            ("profile_key", pa.string()),
            ("section_id", pa.string()),
            ("attribute_id", pa.string()),
            ("value", pa.string()),
            ("value_type", pa.string()),
            ("export_id", pa.string()),
            ("export_part", pa.int64()),
        ]
    ),
    "profile_tags": pa.schema(
        [
            ("profile_key", pa.string()),
            ("section_id", pa.string()),
            ("tag_id", pa.string()),
            ("export_id", pa.string()),
            ("export_part", pa.int64()),
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
            ("export_part", pa.int64()),
        ]
    ),
    settings.REJECTS_TABLE: pa.schema(
        [
            ("export_id", pa.string()),
            ("export_part", pa.int64()),
            ("profile_key", pa.string()),
            ("section_id", pa.string()),
            ("item", pa.string()),  # profile, sections, section, attributes, events, event <index>
            ("error", pa.string()),
            ("raw_text", pa.string()),  # the item's JSON, up to REJECT_RAW_LIMIT characters
            ("rejected_at", TS),
        ]
    ),
}


def _value_type(value: Any) -> str:
    if value is None:
        return "null"
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


_KINDS = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), "number")


@dataclass
class _Export:
    """One export file being parsed: its buffers, and the rejects of its bad values."""

    path: Path
    export_id: str
    part: int
    tags: frozenset[str] | None
    buffers: dict[str, _Columns] = field(default_factory=dict)
    add: dict[str, Callable[..., None]] = field(default_factory=dict)  # a row to a table's buffer
    rejected_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    rejected: int = 0

    def __post_init__(self) -> None:
        constants = {"export_id": self.export_id, "export_part": self.part}
        self.buffers = {name: _Columns(schema, constants) for name, schema in SCHEMAS.items()}
        self.add = {name: buffer.add for name, buffer in self.buffers.items()}

    def reject(self, profile_key: str, item: str, error: str, raw: Any, section_id: str | None = None) -> None:
        self.rejected += 1
        if self.rejected <= MAX_REJECTS_LOGGED:
            log.warning("%s: profile %r %s rejected: %s", self.path.name, profile_key[:80], item, error)
        self.add[settings.REJECTS_TABLE](
            profile_key=profile_key,
            section_id=section_id,
            item=item,
            error=error,
            raw_text=_json_text(raw)[: settings.REJECT_RAW_LIMIT],
            rejected_at=self.rejected_at,
        )

    def profile(self, key: str, profile: Any) -> None:
        if not key.strip():
            self.reject(key, "profile", "a profile without a key", profile)
            return
        if not isinstance(profile, dict):
            self.reject(key, "profile", f"the profile is a JSON {_kind(profile)}, not an object", profile)
            return
        self.add["profiles"](profile_key=key)
        sections = profile.get("sections", profile)
        if not isinstance(sections, dict):
            self.reject(key, "sections", f"sections is a JSON {_kind(sections)}, not an object", sections)
            return
        for section_id, section in sections.items():
            if not isinstance(section, dict):
                self.reject(
                    key, "section", f"the section is a JSON {_kind(section)}, not an object", section, section_id
                )
                continue
            self.attributes(key, section_id, section.get("attributes"))
            self.events(key, section_id, section.get("events"))

    def attributes(self, key: str, section_id: str, attributes: Any) -> None:
        if attributes is None:
            return
        if not isinstance(attributes, dict):
            error = f"attributes is a JSON {_kind(attributes)}, not an object"
            self.reject(key, "attributes", error, attributes, section_id)
            return
        add_tag, add_attribute = self.add["profile_tags"], self.add["profile_attributes"]
        for attribute_id, attribute in attributes.items():
            value = attribute.get("value") if isinstance(attribute, dict) else attribute
            # A tag is an id requested as a tag (its value is always null); an attribute's null value stays an
            # attribute. Without the requested tags (a file parsed alone), a null value marks a tag.
            if value is None if self.tags is None else attribute_id in self.tags:
                add_tag(profile_key=key, section_id=section_id, tag_id=attribute_id)
            else:
                add_attribute(
                    profile_key=key,
                    section_id=section_id,
                    attribute_id=attribute_id,
                    value=_value_text(value),
                    value_type=_value_type(value),
                )

    def events(self, key: str, section_id: str, events: Any) -> None:
        if events is None:
            return
        if not isinstance(events, list):
            self.reject(key, "events", f"events is a JSON {_kind(events)}, not an array", events, section_id)
            return
        for index, event in enumerate(events):
            item = f"event {index}"
            if not isinstance(event, dict):
                self.reject(key, item, f"the event is a JSON {_kind(event)}, not an object", event, section_id)
                continue
            try:
                source_event_time = _ms_to_datetime(event.get("sourceEventTime"), "sourceEventTime")
                created_at = _ms_to_datetime(event.get("createdAt"), "createdAt")
            except _Rejected as e:
                self.reject(key, item, str(e), event, section_id)
                continue
            self.add["events"](
                profile_key=key,
                section_id=section_id,
                correlation_id=_value_text(event.get("correlationId")),
                type_id=_value_text(event.get("typeId")),
                source_event_time=source_event_time,
                created_at=created_at,
                data=None if event.get("data") is None else _json_text(event.get("data")),
                event_index=index,
            )


def _profiles(path: Path, max_bytes: int | None) -> Iterator[tuple[str, Any]]:
    """The export's (profile key, profile) pairs. ijson's C parser stops at a number beyond 64 bits; the profiles
    from that one on are then read with its pure-Python parser, which takes any number (as a Decimal), so the value
    meets its defined outcome instead of failing the whole export."""
    prefix = _profiles_prefix(path)
    done = 0
    try:
        with open_export(path, max_bytes) as f:
            for item in ijson.kvitems(f, prefix, use_float=True):
                yield item
                done += 1
        return
    except ijson.common.IncompleteJSONError as e:
        if "overflow" not in str(e):
            raise ApsisError(f"{path.name}: the export is not valid JSON after {done} profiles: {e}") from None
    log.warning("%s: a number beyond 64 bits after %d profiles: the rest is read with a slower parser", path.name, done)
    with open_export(path, max_bytes) as f:
        try:
            for n, item in enumerate(ijson.get_backend("python").kvitems(f, prefix)):
                if n >= done:
                    yield item
        except ijson.common.JSONError as e:
            raise ApsisError(f"{path.name}: the export is not valid JSON: {e}") from None


def parse_export(
    path: Path,
    export_id: str,
    batch_rows: int = settings.ARROW_BATCH_ROWS,
    *,
    part: int = 0,
    tags: Collection[str] | None = None,
    max_bytes: int | None = None,
) -> Iterator[tuple[str, pa.Table]]:
    """Stream the export file profile by profile; yield (table name, Arrow batch) pairs, _rejects among them.

    tags: the tag ids requested (they go to profile_tags, everything else to profile_attributes); None: the
    attributes whose value is null are tags. max_bytes: fail when the JSON inflates to more.
    """
    export = _Export(path, export_id, part, None if tags is None else frozenset(tags))
    for profile_key, profile in _profiles(path, max_bytes):
        export.profile(profile_key, profile)
        for name, buffer in export.buffers.items():
            if len(buffer) >= batch_rows:
                yield name, buffer.take()
    for name, buffer in export.buffers.items():
        if len(buffer):
            yield name, buffer.take()
    if export.rejected > MAX_REJECTS_LOGGED:
        log.warning("%s: %d values rejected in all (see _rejects)", path.name, export.rejected)
