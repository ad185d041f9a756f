"""dlt's Postgres destination on its fast path: the parquet files of a load are copied by the ADBC driver (binary
COPY, the `adbc-driver-postgresql` package) instead of INSERT statements.

dlt 1.31's copy job hands the driver the batches of a file; a file of no rows has none, which the driver refuses
("Must pass schema, or at least one RecordBatch"), failing the load for good (an empty Arrow table yielded to dlt
writes such a file: the push's last log part can be one). Here such a file is skipped: dlt creates its table before
it loads any file, so skipping it loses nothing."""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq
from dlt.destinations.impl.postgres.factory import postgres as dlt_postgres
from dlt.destinations.impl.postgres.postgres import PostgresClient, PostgresParquetCopyJob


class _ParquetCopyJob(PostgresParquetCopyJob):
    def run(self) -> None:
        if pq.ParquetFile(self._file_path).metadata.num_rows:
            super().run()


class _Client(PostgresClient):
    def create_load_job(self, table: Any, file_path: str, load_id: str, restore: bool = False) -> Any:
        job = super().create_load_job(table, file_path, load_id, restore)
        return _ParquetCopyJob(file_path) if isinstance(job, PostgresParquetCopyJob) else job


class postgres(dlt_postgres):  # named as dlt names its destination factories
    """dlt.destinations.postgres, with the copy job above; pipelines record it as dlt's own postgres, so dlt's CLI
    and dlt.attach() open them as before."""

    @property
    def destination_type(self) -> str:
        return "dlt.destinations.postgres"

    @property
    def client_class(self) -> type[PostgresClient]:
        return _Client
