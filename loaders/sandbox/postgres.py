"""A private PostgreSQL server on 127.0.0.1 for tests and benchmarks (Debian's postgresql package): its own data
folder, a free port, UTC, trust authentication and no durability (a throwaway server)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from loaders.sandbox.openssh import free_port

PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


class PostgresError(RuntimeError):
    pass


@dataclass(frozen=True)
class Postgres:
    port: int
    user: str = "postgres"

    def connect(self, database: str = "postgres") -> psycopg2.extensions.connection:
        return psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname=database)

    def create_database(self, name: str) -> None:
        """A new, empty database (name: letters, digits and _ only)."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"not a plain database name: {name!r}")
        admin = self.connect()
        admin.autocommit = True
        try:
            with admin.cursor() as cur:
                cur.execute(f"create database {name}")
        finally:
            admin.close()

    def env(self, database: str) -> dict[str, str]:
        """The project's settings for this server's database (ELT_TARGET=postgres and ELT_PG_*)."""
        return {
            "ELT_TARGET": "postgres",
            "ELT_PG_HOST": "127.0.0.1",
            "ELT_PG_PORT": str(self.port),
            "ELT_PG_USER": self.user,
            "ELT_PG_PASSWORD": "",
            "ELT_PG_DATABASE": database,
        }


class PostgresServer:
    """initdb in a temporary folder, then postgres on a free port; stop() ends it and removes the folder.

    The folder is made with tempfile (not under a test's tmp_path): run as root, the server runs as the package's
    postgres user, who must reach its data folder."""

    def __init__(self) -> None:
        self.base: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Postgres:
        if not PG_BINS:
            raise PostgresError("PostgreSQL is not installed: run `make sysdeps` (apt-get install postgresql)")
        bin_dir = PG_BINS[-1]
        self.base = base = Path(tempfile.mkdtemp(prefix="elt-pg-"))
        run_as: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root: run it as the package's postgres user
            shutil.chown(base, "postgres", "postgres")
            run_as = ["runuser", "-u", "postgres", "--"]
        data = base / "data"
        initdb = ["-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"]
        subprocess.run([*run_as, str(bin_dir / "initdb"), *initdb], check=True, stdout=subprocess.DEVNULL)
        port = free_port()
        settings = {"timezone": "UTC", "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        log = base / "postgres.log"  # a file, not a pipe: a pipe nobody reads would block the server once full
        options = ["-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(base)]
        options += [arg for k, v in settings.items() for arg in ("-c", f"{k}={v}")]
        with log.open("wb") as out:
            postgres = [*run_as, str(bin_dir / "postgres"), *options]
            self.proc = subprocess.Popen(postgres, stdout=subprocess.DEVNULL, stderr=out)
        server = Postgres(port)
        deadline = time.monotonic() + 30
        while True:
            try:
                server.connect().close()
                return server
            except psycopg2.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = log.read_text(errors="replace")[-2000:]
                    self.stop()
                    raise PostgresError(f"postgres did not start: {err}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
