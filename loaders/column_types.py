"""The type each raw column is loaded in: the one the raw table has, else the one export_docs.yaml documents."""

from __future__ import annotations

from typing import Any

from loaders.export_docs.project import project_export_docs


def raw_type(column: Any) -> str:
    """The canonical type (loaders/export_docs/model.py) of a raw column as dlt's schema holds it."""
    data_type = column.get("data_type")
    if data_type == "bigint":
        return "integer" if column.get("precision") == 32 else "bigint"
    if data_type == "decimal" and column.get("precision") is not None:
        return f"numeric({column['precision']},{column.get('scale') or 0})"
    return {"double": "double", "bool": "boolean", "timestamp": "timestamp", "date": "date"}.get(data_type, "varchar")


class ColumnTypes:
    """feed -> {column: canonical type} the load casts each value to: the type the raw table already has for the
    column (a raw column never changes type: one created as text stays text), else the type documented in the
    project's export_docs.yaml (read on the first .get()); any other column is text."""

    def __init__(self, pipeline: Any) -> None:
        self._pipeline = pipeline
        self._documented: dict[str, dict[str, str]] | None = None

    def get(self, feed: str) -> dict[str, str] | None:
        if self._documented is None:
            self._documented = {f.name: {c.name: c.type for c in f.columns} for f in project_export_docs()}
        types = dict(self._documented.get(feed) or {})
        schema = self._pipeline.default_schema if self._pipeline.default_schema_name else None
        if schema is not None and feed in schema.tables:
            for name, column in schema.tables[feed].get("columns", {}).items():
                if column.get("data_type") and not name.startswith("_"):
                    types[name] = raw_type(column)
        return types or None

    def version(self, feed: str) -> str | None:
        """The feed's version as export_docs.yaml documents it (staging takes its rows only), None when undocumented."""
        feed_docs = project_export_docs().feeds.get(feed)
        return feed_docs.version if feed_docs else None
