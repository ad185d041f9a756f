"""Parse export_docs.yaml into typed feeds, resolving the known flaws of the published metadata.

Decisions (documented in README, "How the ASAPP feed schema is read"):
- ``primary_key`` is a comma separated string; a stray ``primary-key:`` prefix is stripped.
- A key or ordering column that is not in the feed's column list is still a column of the staging model:
  its type is taken from the same column in other feeds (else from its name), it is marked
  ``documented: false`` and it gets no not_null test, because it may be absent from the data.
- Deprecated columns (a ``deleted_date``, or a description starting "deprecated: <date>") are marked; deprecated
  key columns stay in the key, as published, without a not_null test.
- Types are normalised to a small canonical set (see ``canonical_type``); an empty type is ``varchar``.

The file is vendor input (the SFTP server may ship its own copy) and what codegen writes from it runs in dbt, which
renders Jinja: every value that reaches generated SQL is validated whole against a grammar (names, the whitelist of
type spellings, ``version`` digits, ``sync_time``, the ordering key's COALESCE/GREATEST/LEAST of columns), and a
file that breaks one is refused with one ExportDocsError. Free text (descriptions, dates) is kept as text here;
codegen makes it inert where it writes it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loaders.contract import Cadence, cadence
from loaders.yaml_load import safe_load

# Names become SQL identifiers, file names and YAML keys: plain ASCII identifiers only, matched whole.
_IDENT = re.compile(r"[a-z_][a-z0-9_]*", re.ASCII)
MAX_NAME = 128
_VERSION = re.compile(r"[0-9]{1,9}", re.ASCII)
_SYNC_TIME = re.compile(r"[0-9]{1,4}[hd]", re.ASCII)

# The spellings of column types ASAPP documents (Redshift, MySQL and Postgres), matched whole and case-insensitively
# after whitespace is collapsed; the type reaches SQL, so nothing else is accepted.
_LENGTH = r"(?:\([0-9]{1,5}\))"
_PRECISION = r"(?:\([0-9]{1,2}\))"
_UNSIGNED = r"(?: unsigned)?"
_TYPES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p, re.ASCII), canonical)
    for p, canonical in [
        (r"(?:text|string|json)?", "varchar"),
        (rf"(?:varchar|character varying|char|character){_LENGTH}?", "varchar"),
        (rf"bigint{_LENGTH}?{_UNSIGNED}", "bigint"),
        (rf"(?:int|smallint){_LENGTH}?{_UNSIGNED}|integer|int4|int2", "integer"),
        (rf"tinyint\(1\){_UNSIGNED}|boolean|bool", "boolean"),
        (rf"tinyint{_LENGTH}?{_UNSIGNED}", "integer"),
        (r"double|double precision|float|float8|real|float4", "double"),
        (r"(?:numeric|decimal)(?:\([0-9]{1,3}\))?", "double"),  # no scale published
        (rf"timestamp{_PRECISION}?(?: with(?:out)? time zone)?|timestamptz|datetime{_PRECISION}?", "timestamp"),
        (r"date", "date"),
    ]
]
_NUMERIC = re.compile(r"(?:numeric|decimal)\(([0-9]{1,3}),([0-9]{1,3})\)", re.ASCII)
ALLOWED_TYPES = (
    "varchar|char[acter]|character varying[(n)], text, string, json, big|small|tiny|int[(n)] [unsigned], integer, "
    "int2, int4, bool[ean], double [precision], float[4|8], real, numeric|decimal[(p[,s])], "
    "timestamp[(n)] [with[out] time zone], timestamptz, datetime[(n)], date, or none"
)
CANONICAL_TYPE = re.compile(
    r"bigint|integer|double|boolean|timestamp|date|varchar|numeric\([0-9]{1,3},[0-9]{1,3}\)", re.ASCII
)

_ORDERING_FUNCTIONS = ("coalesce", "greatest", "least")
_ORDERING_TOKEN = re.compile(r" ?(?:([A-Za-z_][A-Za-z0-9_]*)|([(),]))", re.ASCII)
MAX_ORDERING_DEPTH = 8
MAX_ORDERING_LENGTH = 500
ALLOWED_ORDERING = "a column name, or COALESCE(...), GREATEST(...) or LEAST(...) of column names, nested"


class ExportDocsError(ValueError):
    """export_docs.yaml cannot be understood."""


def _shown(value: Any) -> str:
    """A refused value as an error message shows it: quoted, and cut short (it may be the size of the file)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_name(text: str) -> bool:
    """A plain identifier: what feed, column and key names must be."""
    return len(text) <= MAX_NAME and _IDENT.fullmatch(text) is not None


def _spelling(raw_type: str) -> str:
    """A documented type with its whitespace collapsed, or with none in parentheses."""
    text = re.sub(r" ?([(,]) ?", r"\1", " ".join(raw_type.split()))
    return text.replace(" )", ")")


def _canonical(raw_type: str) -> str | None:
    text = _spelling(raw_type).lower()
    if not text.isascii():
        return None
    numeric = _NUMERIC.fullmatch(text)
    if numeric:
        return f"numeric({int(numeric.group(1))},{int(numeric.group(2))})"
    return next((canonical for pattern, canonical in _TYPES if pattern.fullmatch(text)), None)


def canonical_type(raw_type: str) -> str:
    """Map ASAPP's documented type (Redshift, MySQL and Postgres spellings) to our canonical set.

    The result is one of: bigint, integer, double, numeric(p,s), boolean, timestamp, date, varchar. A spelling
    outside the known ones is an ExportDocsError.
    """
    canonical = _canonical(raw_type or "")
    if canonical is None:
        raise ExportDocsError(f"unknown column type {_shown(raw_type)}; allowed: {ALLOWED_TYPES}")
    return canonical


def _ordering_tokens(expression: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    text = " ".join(expression.split())
    if len(text) > MAX_ORDERING_LENGTH:
        raise ExportDocsError(f"longer than {MAX_ORDERING_LENGTH} characters")
    while position < len(text):
        m = _ORDERING_TOKEN.match(text, position)
        if not m:
            raise ExportDocsError(f"unexpected {text[position : position + 10]!r}")
        tokens.append(m.group(1) or m.group(2))
        position = m.end()
    return tokens


def _ordering_tree(expression: str) -> tuple[str, list[str]]:
    """The ordering key as lowercase SQL and its columns, by the grammar
    ``expr := column | (COALESCE|GREATEST|LEAST) '(' expr (',' expr)* ')'``; anything else is an ExportDocsError."""
    tokens = _ordering_tokens(expression)
    columns: list[str] = []
    position = 0

    def expr(depth: int) -> str:
        nonlocal position
        if depth > MAX_ORDERING_DEPTH:
            raise ExportDocsError(f"nested deeper than {MAX_ORDERING_DEPTH}")
        if position >= len(tokens) or tokens[position] in ("(", ")", ","):
            raise ExportDocsError("a column name or function expected")
        word = tokens[position].lower()
        position += 1
        if word in _ORDERING_FUNCTIONS:
            if position >= len(tokens) or tokens[position] != "(":
                raise ExportDocsError(f"{word} without arguments")
            position += 1
            arguments = [expr(depth + 1)]
            while position < len(tokens) and tokens[position] == ",":
                position += 1
                arguments.append(expr(depth + 1))
            if position >= len(tokens) or tokens[position] != ")":
                raise ExportDocsError(f"{word}( not closed")
            position += 1
            return f"{word}({', '.join(arguments)})"
        if not is_name(word):
            raise ExportDocsError(f"{_shown(word)} is not a column name")
        columns.append(word)
        return word

    sql = expr(0)
    if position != len(tokens):
        raise ExportDocsError(f"unexpected {_shown(' '.join(tokens[position:]))} after {sql}")
    return sql, list(dict.fromkeys(columns))


def ordering_sql(expression: str) -> str:
    """The ordering key as lowercase SQL: ASAPP writes COALESCE(...) in capitals; our SQL style is lowercase."""
    return _ordering_tree(expression)[0]


def ordering_columns(expression: str) -> list[str]:
    """Column names referenced by an ordering expression such as COALESCE(a_ts, b_ts)."""
    return _ordering_tree(expression)[1] if expression else []


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
    def cadence(self) -> Cadence:
        return cadence(self.sync_time)

    @property
    def is_hourly(self) -> bool:
        return self.cadence == "hourly"


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
    text = re.sub(r"\Aprimary[-_ ]key\s*:\s*", "", text, flags=re.IGNORECASE | re.ASCII)
    keys = tuple(k.strip().lower() for k in text.split(",") if k.strip())
    for k in keys:
        if not is_name(k):
            raise ExportDocsError(f"key column {_shown(k)} is not a plain column name ([a-z_][a-z0-9_]*)")
    return keys


def _text(value: Any) -> str:
    """Free text (descriptions, dates) with its whitespace collapsed; codegen makes it inert where it writes it."""
    return "" if value is None else " ".join(str(value).split())


def _name(value: Any, what: str) -> str:
    name = value.strip().lower() if isinstance(value, str) else None
    if name is None or not name.isascii() or not is_name(name):
        raise ExportDocsError(
            f"{what} {_shown(value)} is not a plain identifier ([a-z_][a-z0-9_]*, at most {MAX_NAME})"
        )
    return name


def _mappings(value: Any, what: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ExportDocsError(f"{what} must be a list of mappings")
    return value


def _parse_columns(feed: str, table: dict[str, Any]) -> list[Column]:
    columns: list[Column] = []
    for c in _mappings(table.get("columns"), f"{feed}: columns"):
        cname = _name(c.get("name"), f"{feed}: column name")
        if any(existing.name == cname for existing in columns):
            continue  # a repeated column in the published list: the first wins
        raw_type = c.get("type")
        canonical = _canonical(raw_type or "") if raw_type is None or isinstance(raw_type, str) else None
        if canonical is None:
            raise ExportDocsError(f"{feed}.{cname}: unknown column type {_shown(raw_type)}; allowed: {ALLOWED_TYPES}")
        deleted = _text(c.get("deleted_date"))
        description = _text(c.get("description"))
        # Some columns are deprecated only in words: "deprecated: 2019-09-25".
        said = re.match(r"deprecated\s*:?\s*(\d{4}-\d{2}-\d{2})?", description, flags=re.IGNORECASE | re.ASCII)
        if said and not deleted:
            deleted = said.group(1) or "deprecated"
        columns.append(
            Column(
                name=cname,
                type=canonical,
                source_type=" ".join((raw_type or "").split()),
                description=description,
                pii=_text(c.get("pii")).lower() in ("true", "yes", "1", "pii"),
                deprecated=bool(deleted),
                deleted_date=deleted,
                created_date=_text(c.get("created_date")),
            )
        )
    return columns


def _version(feed: str, value: Any) -> str:
    version = _text(value) or "1"  # none published: the first version
    if not _VERSION.fullmatch(version):
        raise ExportDocsError(f"{feed}: version {_shown(value)} is refused; allowed: ASCII digits only, e.g. 1")
    return version


def _sync_time(feed: str, value: Any) -> str:
    sync_time = (_text(value) or "1d").lower()  # none published: daily
    if not _SYNC_TIME.fullmatch(sync_time):
        raise ExportDocsError(
            f"{feed}: sync_time {_shown(value)} is refused; allowed: a number of hours or days: 1h, 1d"
        )
    return sync_time


def _ordering_key(feed: str, value: Any) -> str:
    text = _text(value)
    problem = ""
    try:
        if text:
            _ordering_tree(text)
    except ExportDocsError as e:
        problem = str(e)
    if problem:  # raised here, not in the except clause: one error, naming the feed, with no inner one chained
        raise ExportDocsError(
            f"{feed}: ordering_key {_shown(value)} is refused ({problem}); allowed: {ALLOWED_ORDERING}"
        )
    return text


def _parse_feed(table: dict[str, Any], columns: list[Column], known_types: dict[str, str]) -> Feed:
    name = _name(table.get("name"), "feed name")
    unique_key = parse_key(_text(table.get("primary_key")))
    if not unique_key:
        raise ExportDocsError(f"{name}: no unique condition (primary_key) is published")
    ordering_key = _ordering_key(name, table.get("ordering_key"))
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
        description=_text(table.get("description")),
        version=_version(name, table.get("version")),
        sync_time=_sync_time(name, table.get("sync_time")),
        unique_key=unique_key,
        ordering_key=ordering_key,
        columns=tuple(columns),
        deprecated=bool(table.get("deprecation_date")),
        raw=table,
    )


def parse_export_docs(document: Any) -> ExportDocs:
    """Validate and parse an export_docs.yaml document: names, types, versions, sync times and ordering keys by
    their grammars (they reach generated SQL); one ExportDocsError names the first thing refused."""
    if not isinstance(document, dict) or not isinstance(document.get("schemas"), list):
        raise ExportDocsError("expected a mapping with a 'schemas' list at the top level")
    tables = [t for s in _mappings(document["schemas"], "schemas") for t in _mappings(s.get("tables"), "tables")]
    parsed = [(t, _parse_columns(_name(t.get("name"), "feed name"), t)) for t in tables]
    # a key column missing from a feed's list is typed like the same column in other feeds (the most common type)
    counts: dict[str, Counter[str]] = {}
    for _, columns in parsed:
        for c in columns:
            if c.source_type:
                counts.setdefault(c.name, Counter())[c.type] += 1
    known_types = {name: counter.most_common(1)[0][0] for name, counter in counts.items()}
    feeds: dict[str, Feed] = {}
    for table, columns in parsed:
        feed = _parse_feed(table, columns, known_types)
        if feed.name in feeds:
            raise ExportDocsError(f"feed {feed.name!r} is listed twice")
        feeds[feed.name] = feed
    return ExportDocs(feeds=dict(sorted(feeds.items())))


def load_export_docs(path: str | Path) -> ExportDocs:
    """The project's export_docs.yaml, read with libyaml. A file from elsewhere (the SFTP server's) goes through
    loaders.export_docs.untrusted.read_untrusted, which survives hostile YAML."""
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
        problem = str(e)
    raise ExportDocsError(f"{path}: {problem}")  # one error, naming the file, with no inner one chained
