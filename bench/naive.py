"""The peer baseline: how SFTP loads are commonly written with dlt (one Python dict per line, read line by line
from a paramiko file without prefetch). Run on a sample; the harness extrapolates and says so."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import dlt
import paramiko


def main() -> None:
    host, port, user, key, known_hosts, remote, limit, db = sys.argv[1:9]
    client = paramiko.SSHClient()
    client.load_host_keys(known_hosts)
    client.connect(host, int(port), user, key_filename=key, look_for_keys=False, allow_agent=False)
    sftp = client.open_sftp()

    def rows() -> Iterator[dict[str, object]]:
        with sftp.open(remote) as f:
            for n, line in enumerate(f):
                if n >= int(limit):
                    return
                yield json.loads(line)

    pipeline = dlt.pipeline(
        "naive",
        destination=dlt.destinations.duckdb(db),
        dataset_name="naive_raw",
        pipelines_dir=str(Path(db).parent / "naive_pipelines"),
    )
    pipeline.run(dlt.resource(rows(), name="utterances"))
    client.close()


if __name__ == "__main__":
    main()
