"""Where things live and how the engines are reached: one place for the paths, targets and dbt invocation."""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# duckdb, postgres and spark are configured here (ELT_DUCKDB_PATH, ELT_PG_*, ELT_SPARK_*); the others take dlt's
# own credentials (DESTINATION__<NAME>__CREDENTIALS__...) and the dbt output of the same name in your profile.
TARGETS = ("duckdb", "postgres", "spark", "motherduck", "snowflake", "bigquery", "databricks")


class ConfigError(RuntimeError):
    """Bad configuration: the message says what to set."""


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Leave the objects alive now (modules, dlt, the configuration) out of garbage collection while a long run
    allocates: they are never garbage, and each full collection would walk them all again (in the push, pauses
    that cut its request rate; in a load, CPU spent for nothing)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def project_dir() -> Path:
    """The dbt project (this checkout), or ELT_PROJECT_DIR."""
    configured = os.environ.get("ELT_PROJECT_DIR")
    return Path(configured).resolve() if configured else Path(__file__).resolve().parents[1]


def target() -> str:
    value = os.environ.get("ELT_TARGET", "duckdb").strip().lower()
    if value not in TARGETS:
        raise ConfigError(f"ELT_TARGET={value!r} is not supported: use one of {', '.join(TARGETS)}")
    return value


def _project_path(value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else project_dir() / path


def duckdb_path() -> Path:
    return _project_path(os.environ.get("ELT_DUCKDB_PATH", "warehouse/asapp.duckdb"))


def spark_warehouse() -> Path:
    """Spark's folder (ELT_TARGET=spark): its managed tables, its metastore and, by default, the raw files."""
    return _project_path(os.environ.get("ELT_SPARK_WAREHOUSE", "warehouse/spark"))


def spark_raw_url() -> str:
    """Where dlt lands the raw parquet files on Spark: a local folder or an object-store URL (s3://...)."""
    url = os.environ.get("ELT_SPARK_RAW_URL", "")
    if "://" in url:
        return url
    return str(_project_path(url) if url else spark_warehouse() / "raw")


def pipelines_dir() -> Path:
    """dlt's working folder for our pipelines: `dlt pipeline --pipelines-dir <this> asapp_sftp info`."""
    return _project_path(os.environ.get("ELT_PIPELINES_DIR", "warehouse/pipelines"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def scratch_prefix(kind: str, parent: Path | None = None) -> str:
    """The name prefix of this process's temporary files or folders of one kind (`<kind>-<pid>-`), in parent
    (default: the system's temporary folder). What a killed run left there (downloads it could not delete: a
    SIGKILL gives no chance to) is removed first, once its process is gone."""
    folder = parent or Path(tempfile.gettempdir())
    for path in folder.glob(f"{kind}-*-*"):
        pid = path.name[len(kind) + 1 :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return f"{kind}-{os.getpid()}-"


def configure() -> None:
    """Settings every command relies on, exported for dlt and dbt (which read the environment)."""
    # dlt reads .dlt/config.toml and .dlt/secrets.toml from the project, wherever `elt` is started.
    os.environ.setdefault("DLT_PROJECT_DIR", str(project_dir()))
    os.environ["ELT_DUCKDB_PATH"] = str(duckdb_path())
    duckdb_path().parent.mkdir(parents=True, exist_ok=True)
    if target() == "spark":  # absolute, for dbt's Spark session (profiles.yml) and its raw tables
        os.environ["ELT_SPARK_WAREHOUSE"] = str(spark_warehouse())
        os.environ["ELT_SPARK_RAW_URL"] = raw = spark_raw_url()
        if "://" not in raw:  # dbt lists the files in it: an empty folder is no files, a missing one an error
            Path(raw).mkdir(parents=True, exist_ok=True)
        # Spark's own services bind here, not to the machine's first network interface (profiles.yml: the driver)
        os.environ.setdefault("SPARK_LOCAL_IP", os.environ.get("ELT_SPARK_DRIVER_HOST", "127.0.0.1"))
    # Arrow batches skip dlt's normalizer: ask it to stamp the load id anyway, for lineage.
    os.environ.setdefault("NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_LOAD_ID", "true")
    # The push log (pipeline asapp_metadata) goes as Arrow too, and keeps dlt's row id, as its rows had when they
    # went as dicts (a log created then has it NOT NULL); raw tables have none.
    os.environ.setdefault("ASAPP_METADATA__NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_ID", "true")
    # Its normalize and load take memory with each file's size: files of 100,000 rows bound it.
    os.environ.setdefault("ASAPP_METADATA__NORMALIZE__DATA_WRITER__FILE_MAX_ITEMS", "100000")
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    # A loaded package's data files are deleted (dlt keeps them by default: a copy of every row loaded, of the
    # exports and of the APSIS profiles). A package with a failed job keeps them, for the next run.
    os.environ.setdefault("LOAD__DELETE_COMPLETED_JOBS", "true")
    # DuckDB has one writer per file: parallel load jobs only add memory.
    if target() in ("duckdb", "motherduck"):
        os.environ.setdefault("LOAD__WORKERS", "1")
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")


def is_configured(key: str) -> bool:
    """Whether a dlt setting (e.g. "sources.apsis.base_url") is set in the environment or .dlt/ files."""
    import dlt

    configure()
    return bool(dlt.config.get(key))


def destination() -> Any:
    import dlt

    if target() == "duckdb":
        from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials

        # Loading a large file must not take memory in proportion to it: cap DuckDB's buffers, and let it
        # insert out of order (raw rows carry their file and line numbers).
        config = {
            "memory_limit": os.environ.get("ELT_DUCKDB_MEMORY_LIMIT", "512MB"),
            "preserve_insertion_order": False,
        }
        duck = DuckDbCredentials(global_config=config)
        # set, not passed: a path passed is parsed as a connection URL first, which imports SQLAlchemy (slow, at
        # every run's start-up) only to find it is not one
        duck.database = str(duckdb_path())
        return dlt.destinations.duckdb(credentials=duck)
    if target() == "spark":
        # dlt has no Spark destination: raw lands as parquet files, which dbt registers as tables when it starts
        # (macros/spark/asapp_register_raw.sql)
        return dlt.destinations.filesystem(bucket_url=spark_raw_url())
    if target() != "postgres":
        return target()  # dlt resolves the destination's credentials from its configuration
    env = os.environ
    credentials = {
        "host": env.get("ELT_PG_HOST", "127.0.0.1"),
        "port": int(env.get("ELT_PG_PORT", "5432")),
        "username": env.get("ELT_PG_USER", "postgres"),
        "password": env.get("ELT_PG_PASSWORD", ""),
        "database": env.get("ELT_PG_DATABASE", "asapp"),
    }
    from loaders.postgres_destination import postgres

    # No unique constraint on _dlt_id: a load job dlt runs again after a kill would then fail on it (and stop every
    # later load) instead of inserting rows that finish_pending removes again, as on DuckDB.
    return postgres(credentials=credentials, create_indexes=False)


def pipeline(name: str, dataset: str) -> Any:
    import dlt

    configure()
    return dlt.pipeline(
        pipeline_name=name,
        destination=destination(),
        dataset_name=dataset,
        pipelines_dir=str(pipelines_dir()),
    )


def run_dbt(args: Sequence[str]) -> bool:
    """Run a dbt command with the project's profile (dbt's programmatic API, not dlt's dbt runner)."""
    from dbt.cli.main import dbtRunner

    configure()
    pd = str(project_dir())
    extra = ["--project-dir", pd]
    if "--profiles-dir" not in args and not os.environ.get("DBT_PROFILES_DIR"):
        extra += ["--profiles-dir", pd]
    if "--target" not in args and "-t" not in args:
        extra += ["--target", target()]
    result = dbtRunner().invoke([*args, *extra])
    if result.exception is not None:
        raise RuntimeError(f"dbt {' '.join(args)} could not run: {result.exception}")
    return bool(result.success)
