"""Sized ASAPP export trees for the benchmark: utterance-like rows, hourly partitions, splits and gzip."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

FEEDS = ("utterances", "convos_metrics", "convos_intents")
START = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass(frozen=True)
class TreeInfo:
    root: Path
    files: list[Path]
    rows: int
    bytes_uncompressed: int
    bytes_on_disk: int


def line(feed: str, i: int, at: datetime) -> str:
    ts = (at + timedelta(seconds=i % 3600)).strftime("%Y-%m-%d %H:%M:%S")
    return (
        json.dumps(
            {
                "issue_id": 1_000_000 + i,
                "conversation_id": 1_000_000 + i,
                "customer_id": 900_000 + i % 5000,
                "sender_id": 10_000 + i % 40,
                "sender_type": "customer" if i % 2 else "rep",
                "sequence_id": i % 30,
                "created_ts": ts,
                "instance_ts": at.strftime("%Y-%m-%d %H:00:00"),
                "company_name": "acme",
                "company_subdivision": "consumer",
                "company_segments": "retail",
                "utterance_type": "text",
                "sent_to_agent": bool(i % 3),
                "event_uuid": f"{feed}-{i:012d}",
                "utterance": "I would like to know why my last bill is higher than usual, can you help me with that?",
                "total_handle_time": round((i % 997) * 1.7, 2),
                "final_intent_code": ("BILLING", "OUTAGE", "UPGRADE")[i % 3],
            },
            separators=(",", ":"),
        )
        + "\n"
    )


def sized_tree(root: Path, size_mb: float, partitions_per_feed: int = 24) -> TreeInfo:
    """About size_mb of uncompressed JSON lines over FEEDS; every 3rd partition split in two, every 2nd gzip."""
    sample = line("utterances", 1, START)
    rows_total = max(len(FEEDS) * partitions_per_feed, int(size_mb * 1e6 / len(sample)))
    per_partition = max(1, rows_total // (len(FEEDS) * partitions_per_feed))
    files: list[Path] = []
    raw_bytes = rows = 0
    n = 0
    for feed in FEEDS:
        for p in range(partitions_per_feed):
            at = START + timedelta(hours=p)
            d = root / feed / "version=1" / "format=jsonl" / f"dt={at:%Y-%m-%d}" / f"hr={at:%H}" / "mi=00"
            d.mkdir(parents=True, exist_ok=True)
            splits = 2 if p % 3 == 2 else 1
            for s in range(splits):
                count = per_partition // splits
                data = "".join(line(feed, n + k, at) for k in range(count)).encode()
                n += count
                rows += count
                raw_bytes += len(data)
                name = f"{feed}.jsonl" + (f".{s:02d}" if splits > 1 else "") + (".gz" if p % 2 else "")
                path = d / name
                path.write_bytes(gzip.compress(data, compresslevel=1, mtime=0) if p % 2 else data)
                files.append(path)
            (d / "_SUCCESS").write_bytes(b"")
    return TreeInfo(root, files, rows, raw_bytes, sum(f.stat().st_size for f in files))


def history_tree(root: Path, days: int, feeds: tuple[str, ...] = FEEDS[:2]) -> int:
    """days x 24 hourly partitions per feed, each one tiny file: what a long-running export location holds."""
    count = 0
    for feed in feeds:
        for h in range(days * 24):
            at = START - timedelta(days=days) + timedelta(hours=h)
            d = root / feed / "version=1" / "format=jsonl" / f"dt={at:%Y-%m-%d}" / f"hr={at:%H}" / "mi=00"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{feed}.jsonl").write_text(line(feed, h, at))
            (d / "_SUCCESS").write_bytes(b"")
            count += 1
    return count


def new_partitions(root: Path, at: datetime, first_id: int, rows: int, feeds: tuple[str, ...] = FEEDS) -> list[Path]:
    """One partition at `at` in each feed, of `rows` new records (ids from first_id): an hour's new data. Their
    folders."""
    folders = []
    for feed in feeds:
        d = root / feed / "version=1" / "format=jsonl" / f"dt={at:%Y-%m-%d}" / f"hr={at:%H}" / "mi=00"
        d.mkdir(parents=True)
        (d / f"{feed}.jsonl").write_text("".join(line(feed, first_id + k, at) for k in range(rows)))
        (d / "_SUCCESS").write_bytes(b"")
        folders.append(d)
    return folders
