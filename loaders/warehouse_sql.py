"""`elt sql`: a query on the DuckDB warehouse, opened read-only (a look at the data can never change it), so that
the venv holds everything needed to look at what was loaded (it has no `duckdb` command line)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loaders import runtime


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    more: bool  # rows beyond the limit were left out


def query(sql: str, db: Path | None = None, limit: int = 100) -> QueryResult:
    """Run sql on db (default: the project's DuckDB file) read-only; at most limit rows are fetched."""
    import duckdb

    if db is None and runtime.target() != "duckdb":
        raise runtime.ConfigError(
            f"elt sql reads the DuckDB warehouse; ELT_TARGET is {runtime.target()}: use that warehouse's own client"
        )
    path = (db or runtime.duckdb_path()).expanduser()
    if not path.exists():
        raise runtime.ConfigError(f"no warehouse at {path}: load something first (`elt load asapp`, `elt demo`)")
    with duckdb.connect(str(path), read_only=True) as con:
        cursor = con.execute(sql)
        if cursor.description is None:  # a statement without rows
            return QueryResult([], [], False)
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchmany(limit + 1)
    return QueryResult(columns, rows[:limit], len(rows) > limit)
