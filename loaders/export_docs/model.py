"""Parse export_docs.yaml into typed feeds, resolving the known flaws of the published metadata.

Decisions (documented in README, "How the ASAPP feed schema is read"):
- ``primary_key`` is a comma separated string; a stray ``primary-key:`` prefix is stripped.
- A key or ordering column that is not in the feed's column list is still a column of the staging model:
  its type is taken from the same column in other feeds (else from its name), it is marked
  ``documented: false`` and it gets no not_null test, because it may be absent from the data.
- Deprecated columns (a ``deleted_date``, or a description starting "deprecated: <date>") are marked; deprecated
  key columns stay in the key, as published, without a not_null test.
- Types are normalised to a small canonical set (see ``canonical_type``); an empty type is ``varchar``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loaders.yaml_load import safe_load

_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
_ORDER_IDENT = re.compile(r"[a-z_][a-z0-9_]*")
_SQL_WORDS = {"coalesce", "greatest", "least", "nullif", "and", "or", "null"}


class ExportDocsError(ValueError):
    """export_docs.yaml cannot be understood."""


def canonical_type(raw_type: str) -> str:
    """Map ASAPP's documented type (Redshift, MySQL and Postgres spellings) to our canonical set.

    The result is one of: bigint, integer, double, numeric(p,s), boolean, timestamp, date, varchar.
    """
    t = (raw_type or "").strip().lower()
    if t in ("", "text", "string", "json") or t.startswith(("varchar", "character varying", "char")):
        return "varchar"
    if t.startswith("bigint"):
        return "bigint"
    if t in ("int", "integer", "smallint", "int4", "int2") or t.startswith(("int(", "smallint(")):
        return "integer"
    if t.startswith("tinyint(1)") or t in ("boolean", "bool"):
        return "boolean"
    if t.startswith("tinyint"):
        return "integer"
    if t in ("double", "double precision", "float", "float8", "real", "float4"):
        return "double"
    if t.startswith(("numeric", "decimal")):
        m = re.match(r"(?:numeric|decimal)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)", t)
        return f"numeric({m.group(1)},{m.group(2)})" if m else "double"
    if t.startswith(("timestamp", "datetime")):
        return "timestamp"
    if t == "date":
        return "date"
    raise ExportDocsError(f"unknown column type {raw_type!r}")


def _type_from_name(name: str) -> str:
    if name.endswith(("_ts", "_at")):
        return "timestamp"
    if name.startswith(("is_", "has_")):
        return "boolean"
    return "varchar"


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # canonical
    source_type: str  # as documented
    description: str = ""
    pii: bool = False
    deprecated: bool = False
    deleted_date: str = ""
    created_date: str = ""
    documented: bool = True


@dataclass(frozen=True)
class Feed:
    name: str
    description: str
    version: str
    sync_time: str
    unique_key: tuple[str, ...]
    ordering_key: str  # SQL expression over columns, "" when none is published
    columns: tuple[Column, ...]
    deprecated: bool = False
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def is_hourly(self) -> bool:
        return self.sync_time.strip().lower().endswith("h")


@dataclass(frozen=True)
class ExportDocs:
    feeds: dict[str, Feed]

    def __getitem__(self, name: str) -> Feed:
        return self.feeds[name]

    def __iter__(self) -> Iterator[Feed]:
        return iter(self.feeds.values())

    def __len__(self) -> int:
        return len(self.feeds)


def parse_key(primary_key: str) -> tuple[str, ...]:
    text = (primary_key or "").strip()
    text = re.sub(r"^primary[-_ ]key\s*:\s*", "", text, flags=re.IGNORECASE)
    keys = tuple(k.strip().lower() for k in text.split(",") if k.strip())
    for k in keys:
        if not _IDENT.match(k):
            raise ExportDocsError(f"key column {k!r} is not a plain column name")
    return keys


def ordering_columns(expression: str) -> list[str]:
    """Column names referenced by an ordering expression such as COALESCE(a_ts, b_ts)."""
    names = [n for n in _ORDER_IDENT.findall(expression.lower()) if n not in _SQL_WORDS]
    return list(dict.fromkeys(names))


def _columns_by_name_types(tables: list[dict[str, Any]]) -> dict[str, str]:
    counts: dict[str, Counter[str]] = {}
    for t in tables:
        for c in t.get("columns") or []:
            if c.get("type"):
                counts.setdefault(c["name"].lower(), Counter())[canonical_type(c["type"])] += 1
    return {name: counter.most_common(1)[0][0] for name, counter in counts.items()}


def _parse_feed(table: dict[str, Any], known_types: dict[str, str]) -> Feed:
    name = str(table["name"]).strip().lower()
    if not _IDENT.match(name):
        raise ExportDocsError(f"feed name {name!r} is not a plain identifier")
    columns: list[Column] = []
    for c in table.get("columns") or []:
        cname = str(c["name"]).strip().lower()
        if not _IDENT.match(cname):
            raise ExportDocsError(f"{name}: column name {cname!r} is not a plain identifier")
        if any(existing.name == cname for existing in columns):
            continue  # a repeated column in the published list: the first wins
        deleted = str(c.get("deleted_date") or "").strip()
        description = " ".join(str(c.get("description") or "").split())
        # Some columns are deprecated only in words: "deprecated: 2019-09-25".
        said = re.match(r"^deprecated\s*:?\s*(\d{4}-\d{2}-\d{2})?", description, flags=re.IGNORECASE)
        if said and not deleted:
            deleted = said.group(1) or "deprecated"
        columns.append(
            Column(
                name=cname,
                type=canonical_type(str(c.get("type") or "")),
                source_type=str(c.get("type") or ""),
                description=description,
                pii=str(c.get("pii") or "").strip().lower() in ("true", "yes", "1", "pii"),
                deprecated=bool(deleted),
                deleted_date=deleted,
                created_date=str(c.get("created_date") or "").strip(),
            )
        )
    unique_key = parse_key(str(table.get("primary_key") or ""))
    if not unique_key:
        raise ExportDocsError(f"{name}: no unique condition (primary_key) is published")
    ordering_key = " ".join(str(table.get("ordering_key") or "").split())
    present = {c.name for c in columns}
    for missing in [k for k in (*unique_key, *ordering_columns(ordering_key)) if k not in present]:
        present.add(missing)
        columns.append(
            Column(
                name=missing,
                type=known_types.get(missing, _type_from_name(missing)),
                source_type="",
                description=(
                    "Undocumented: named by the feed's unique condition or ordering key but absent from "
                    "its published column list; null when the export does not carry it."
                ),
                documented=False,
            )
        )
    return Feed(
        name=name,
        description=" ".join(str(table.get("description") or "").split()),
        version=str(table.get("version") or "1").strip(),
        sync_time=str(table.get("sync_time") or "").strip() or "1d",
        unique_key=unique_key,
        ordering_key=ordering_key,
        columns=tuple(columns),
        deprecated=bool(table.get("deprecation_date")),
        raw=table,
    )


def parse_export_docs(document: dict[str, Any]) -> ExportDocs:
    if not isinstance(document, dict) or not isinstance(document.get("schemas"), list):
        raise ExportDocsError("expected a mapping with a 'schemas' list at the top level")
    tables = [t for s in document["schemas"] for t in (s.get("tables") or [])]
    known_types = _columns_by_name_types(tables)
    feeds: dict[str, Feed] = {}
    for table in tables:
        feed = _parse_feed(table, known_types)
        if feed.name in feeds:
            raise ExportDocsError(f"feed {feed.name!r} is listed twice")
        feeds[feed.name] = feed
    return ExportDocs(feeds=dict(sorted(feeds.items())))


def load_export_docs(path: str | Path) -> ExportDocs:
    path = Path(path)
    try:
        document = safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ExportDocsError(f"{path} not found") from e
    except yaml.YAMLError as e:
        raise ExportDocsError(f"{path} is not valid YAML: {e}") from e
    try:
        return parse_export_docs(document)
    except ExportDocsError as e:
        raise ExportDocsError(f"{path}: {e}") from e
