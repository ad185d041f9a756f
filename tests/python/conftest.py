"""Fixtures: a real OpenSSH sshd on 127.0.0.1 (own host key, own authorized_keys, free port) and an isolated
configuration per test (own DuckDB file, dlt pipelines folder, dbt target folder)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from loaders.sandbox.openssh import OpenSshServer, Sshd, SshdError, free_port
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


PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


@dataclass(frozen=True)
class PgServer:
    port: int


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """A private PostgreSQL server on 127.0.0.1 (Debian's postgresql package), UTC, tuned for tests."""
    if not PG_BINS:
        pytest.fail("PostgreSQL is not installed: run `make sysdeps` (apt-get install postgresql)")
    bin_dir = PG_BINS[-1]
    base = Path(tempfile.mkdtemp(prefix="elt-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the package's postgres user
        shutil.chown(base, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    data = base / "data"
    subprocess.run(
        [
            *run_as,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            *run_as,
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "-k",
            str(base),
            "-c",
            "timezone=UTC",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres").close()
            break
        except psycopg2.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"postgres did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.2)
    try:
        yield PgServer(port)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


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
    server: PgServer = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"create database {name}")
    admin.close()
    for key, value in {
        "HOST": "127.0.0.1",
        "PORT": str(server.port),
        "USER": "postgres",
        "PASSWORD": "",
        "DATABASE": name,
    }.items():
        monkeypatch.setenv(f"ELT_PG_{key}", value)
    return PgWarehouse(server.port, name, tmp_path)


@pytest.fixture
def exports(tmp_path: Path, sshd: Sshd, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty export tree served by the sshd, with the asapp_sftp source configured for it."""
    root = tmp_path / "exports"
    root.mkdir()
    for key, value in sshd.env(root).items():
        monkeypatch.setenv(key, value)
    return root
