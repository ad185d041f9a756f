"""Fixtures: a real OpenSSH sshd on 127.0.0.1 (own host key, own authorized_keys, free port) and an isolated
configuration per test (own DuckDB file, dlt pipelines folder, dbt target folder)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from loaders.sandbox.openssh import OpenSshServer, Sshd, SshdError
from loaders.sandbox.postgres import Postgres, PostgresError, PostgresServer
from tests.python.helpers import DuckDbWarehouse, PgWarehouse, SparkWarehouse, Warehouse

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    server = OpenSshServer(tmp_path_factory.mktemp("sshd"))
    try:
        endpoint = server.start()
    except SshdError as e:
        pytest.fail(str(e))
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """A private PostgreSQL server on 127.0.0.1 (Debian's postgresql package), UTC, tuned for tests."""
    server = PostgresServer()
    try:
        endpoint = server.start()
    except PostgresError as e:
        pytest.fail(str(e))
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
def spark_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Spark's warehouse folder (managed tables, metastore) for the whole test session: dbt-spark starts one Spark
    session in this process at its first command, which fixes the folder; each test starts on an empty catalog."""
    if importlib.util.find_spec("pyspark") is None or shutil.which("java") is None:
        pytest.fail("Spark needs the `spark` extra and a Java runtime: run `make venv sysdeps`")
    return tmp_path_factory.mktemp("spark")


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Warehouse:
    """An isolated warehouse (DuckDB file by default; a fresh Postgres database with the indirect parameter
    "postgres"; an empty Spark catalog and raw files in tmp_path with "spark"), with its own dlt pipelines folder
    and dbt target folder under tmp_path."""
    for name in list(os.environ):
        if name.startswith(("SOURCES__", "ELT_", "ASAPP_API__")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ELT_DUCKDB_PATH", str(tmp_path / "asapp.duckdb"))
    monkeypatch.setenv("ELT_PIPELINES_DIR", str(tmp_path / "pipelines"))
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "target"))
    monkeypatch.setenv("DBT_LOG_PATH", str(tmp_path / "logs"))
    engine = getattr(request, "param", "duckdb")
    monkeypatch.setenv("ELT_TARGET", engine)
    if engine == "duckdb":
        return DuckDbWarehouse(tmp_path / "asapp.duckdb")
    if engine == "spark":
        monkeypatch.setenv("ELT_SPARK_WAREHOUSE", str(request.getfixturevalue("spark_home")))
        monkeypatch.setenv("ELT_SPARK_RAW_URL", str(tmp_path / "raw"))
        spark = SparkWarehouse(tmp_path)
        spark.reset()
        return spark
    server: Postgres = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:12]}"
    server.create_database(name)
    for key, value in server.env(name).items():
        monkeypatch.setenv(key, value)
    return PgWarehouse(server.port, name, tmp_path)


@pytest.fixture
def exports(tmp_path: Path, sshd: Sshd, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty export tree served by the sshd, with the asapp_sftp source configured for it."""
    root = tmp_path / "exports"
    root.mkdir()
    for key, value in sshd.env(root).items():
        monkeypatch.setenv(key, value)
    return root
