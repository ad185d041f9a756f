"""Small helpers shared by the tests: read the warehouse, run the CLI as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb

PROJECT = Path(__file__).resolve().parents[2]
ELT = str(Path(sys.executable).parent / "elt")


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(db)) as con:  # same config as dbt-duckdb's in-process connection
        return con.execute(sql).fetchall()


def scalar(db: Path, sql: str) -> Any:
    return query(db, sql)[0][0]


def elt(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the installed `elt` command in a subprocess with the current (test) environment."""
    return subprocess.run(
        [ELT, *args], cwd=PROJECT, env=dict(os.environ), capture_output=True, text=True, timeout=timeout
    )
