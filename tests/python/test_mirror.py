"""The mirror transport on a real S3 API (moto's server on 127.0.0.1, reached through s3fs with an endpoint URL):
the tree under a bucket prefix loads like SFTP's, credentials come from the AWS chain and never reach the output,
and a refused or missing bucket is one clear error. The local-folder mirror runs every scenario of
test_transports.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from loaders.loads import load_asapp
from loaders.sandbox.exports import write_partition
from loaders.sandbox.openssh import free_port
from tests.python.helpers import Warehouse, elt, query

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
FEED = "convos_intents"
SECRET = "mirror-secret-key-never-printed"


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(s3: str, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    name = f"exports-{tmp_path.name.lower().replace('_', '-')[-30:]}"
    client = boto3.client("s3", endpoint_url=s3)
    client.create_bucket(Bucket=name)
    monkeypatch.setenv("SOURCES__ASAPP_MIRROR__URL", f"s3://{name}/asapp/export")
    monkeypatch.setenv("SOURCES__ASAPP_MIRROR__ENDPOINT_URL", s3)
    monkeypatch.setenv("SOURCES__ASAPP_MIRROR__RETRY_WAIT_SECONDS", "0.05")
    yield name


def sync(root: Path, s3: str, bucket: str) -> None:
    """What `aws s3 sync` does: the local tree uploaded under the prefix."""
    client = boto3.client("s3", endpoint_url=s3)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"asapp/export/{path.relative_to(root).as_posix()}")


def test_a_tree_on_s3_loads_once_with_its_lineage(s3: str, bucket: str, tmp_path: Path, warehouse: Warehouse) -> None:
    root = tmp_path / "tree"
    write_partition(root, FEED, T0, [{"issue_id": i} for i in range(6)], splits=2, gz=True)
    write_partition(root, FEED, T0.replace(hour=11), [{"issue_id": 9}], success=False)
    sync(root, s3, bucket)
    stats = load_asapp()
    assert stats.source == "mirror" and stats.feeds[FEED].partitions_loaded == 1
    assert stats.feeds[FEED].partitions_waiting == 1
    (root / FEED / "version=1/format=jsonl/dt=2026-11-01/hr=11/mi=00/_SUCCESS").write_bytes(b"")
    sync(root, s3, bucket)
    assert load_asapp().feeds[FEED].partitions_loaded == 1  # no listing cache hides the new flag
    assert load_asapp().feeds[FEED].partitions_loaded == 0
    assert query(warehouse, f"select count(*), count(distinct issue_id), min(_asapp_source) from asapp_raw.{FEED}") == [
        (7, 7, "mirror")
    ]
    # ASAPP re-exports the first partition, the sync uploads it again: a rescan loads it as restated
    write_partition(root, FEED, T0, [{"issue_id": i} for i in range(7)], splits=2, gz=True)
    sync(root, s3, bucket)
    assert load_asapp(rescan=True).feeds[FEED].restated == ["version=1/format=jsonl/dt=2026-11-01/hr=10/mi=00"]


def test_refused_credentials_and_a_missing_bucket_are_one_clear_line(
    s3: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__ASAPP_MIRROR__URL", f"s3://{bucket}-missing/asapp")
    result = elt("load", "asapp")
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr
