"""Small helpers shared by the tests: read the warehouse (DuckDB, Postgres or Spark), run the CLI as a user would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import psycopg2
import pyarrow as pa

PROJECT = Path(__file__).resolve().parents[2]
ELT = str(Path(sys.executable).parent / "elt")


class Warehouse:
    engine: str
    dir: Path

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """sql with ? placeholders."""
        raise NotImplementedError

    def exists(self) -> bool:
        return True

    @property
    def parent(self) -> Path:
        return self.dir


@dataclass
class DuckDbWarehouse(Warehouse):
    path: Path
    engine: str = "duckdb"

    @property
    def dir(self) -> Path:  # type: ignore[override]
        return self.path.parent

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(self.path)) as con:  # same config as dbt-duckdb's in-process connection
            return con.execute(sql).fetchall()

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with duckdb.connect(str(self.path)) as con:
            insert = re.fullmatch(r"\s*(insert into \S+)\s+values\s*\((\s*\?\s*,?)+\)\s*", sql, re.I | re.S)
            if rows and insert:  # as one Arrow table: executemany took ~3 ms a row
                columns = {f"c{i}": pa.array(values) for i, values in enumerate(zip(*rows, strict=True))}
                con.register("new_rows", pa.table(columns))
                con.execute(f"{insert.group(1)} select * from new_rows")
            elif rows:
                con.executemany(sql, rows)
            else:
                con.execute(sql)

    def exists(self) -> bool:
        return self.path.exists()


@dataclass
class PgWarehouse(Warehouse):
    port: int
    database: str
    dir: Path  # type: ignore[misc]
    engine: str = "postgres"

    def _connect(self) -> Any:
        return psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=self.database)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        con = self._connect()
        try:
            with con.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall()) if cur.description else []
        finally:
            con.commit()
            con.close()

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        con = self._connect()
        try:
            with con.cursor() as cur:
                if rows:
                    cur.executemany(sql.replace("?", "%s"), rows)
                else:
                    cur.execute(sql)
            con.commit()
        finally:
            con.close()


@dataclass
class SparkWarehouse(Warehouse):
    """The Spark session that dbt-spark (method: session) started in this process, and its catalog: one per test
    process, since a session's warehouse folder and metastore are fixed when it starts."""

    dir: Path  # type: ignore[misc]
    engine: str = "spark"

    @staticmethod
    def _session() -> Any:
        from pyspark.sql import SparkSession

        return SparkSession.builder.getOrCreate()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self._session().sql(sql).collect()]

    def reset(self) -> None:
        """An empty catalog for the next test: every database but default dropped, with its tables (the raw
        tables are external: their files stay with the test that wrote them)."""
        from pyspark import SparkContext

        if SparkContext._active_spark_context is None:  # dbt has not started the session yet: nothing to drop
            return
        session = self._session()
        for database in session.catalog.listDatabases():
            if database.name != "default":
                session.sql(f"drop database `{database.name}` cascade")


def query(db: Warehouse, sql: str) -> list[tuple[Any, ...]]:
    return db.query(sql)


def scalar(db: Warehouse, sql: str) -> Any:
    return db.query(sql)[0][0]


def elt(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the installed `elt` command in a subprocess with the current (test) environment."""
    return subprocess.run(
        [ELT, *args], cwd=PROJECT, env=dict(os.environ), capture_output=True, text=True, timeout=timeout
    )


def key_copy(key: Path, path: Path, mode: int = 0o600, passphrase: str | None = None) -> Path:
    """A copy of a private key at path, with these permissions, encrypted with passphrase when given."""
    path.write_bytes(key.read_bytes())
    path.chmod(mode)
    if passphrase is not None:
        subprocess.run(["ssh-keygen", "-q", "-p", "-N", passphrase, "-f", str(path)], check=True)
    return path


@contextmanager
def apsis_api(folder: Path, monkeypatch: Any, polls_until_ready: int) -> Iterator[Any]:
    """The APSIS emulator on 127.0.0.1, its settings in the environment, polls and back-off shortened for tests."""
    from loaders.sandbox.apsis_emulator import ApsisEmulator

    emu = ApsisEmulator(folder, polls_until_ready=polls_until_ready)
    emu.start()
    try:
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("SOURCES__APSIS__POLL_INITIAL_INTERVAL", "0.01")
        monkeypatch.setenv("SOURCES__APSIS__POLL_MAX_INTERVAL", "0.05")
        monkeypatch.setenv("SOURCES__APSIS__REQUEST_BACKOFF_FACTOR", "0.01")
        yield emu
    finally:
        emu.stop()
