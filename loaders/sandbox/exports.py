"""Write ASAPP export partitions in the documented layout, and generate a realistic tree of them.

The generated tree has the demo feeds with their real columns (from export_docs.yaml), several days of hourly
partitions, split and gzip files, records re-exported with updates in later partitions (including a tie on the
ordering key that only the partition time breaks), and a last partition that is still missing its _SUCCESS.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from loaders.export_docs import Feed, load_export_docs

DEMO_FEEDS = ("convos_intents", "convos_metadata", "convos_metrics", "customer_feedback", "utterances")
COMPANY = "acme"
INTENTS = ("BILLING", "PAYMENT", "OUTAGE", "UPGRADE", "CANCEL", "TECH_SUPPORT", "ROAMING")
# Customer ids 900000..900199: the APSIS sandbox exports profiles for the same customers.
CUSTOMERS = 200
QUESTIONS = ("How satisfied are you?", "Was your issue resolved?", "Would you recommend us?")


def partition_dir(root: Path, feed: str, at: datetime, version: str = "1", fmt: str = "jsonl") -> Path:
    return root / feed / f"version={version}" / f"format={fmt}" / f"dt={at:%Y-%m-%d}" / f"hr={at:%H}" / f"mi={at:%M}"


def write_partition(
    root: Path,
    feed: str,
    at: datetime,
    rows: Sequence[dict[str, Any]],
    *,
    splits: int = 1,
    gz: bool = False,
    success: bool = True,
    version: str = "1",
) -> Path:
    """Write one partition: rows spread over `splits` files (FEED.jsonl or FEED.jsonl.NN), optionally gzip."""
    directory = partition_dir(root, feed, at, version)
    directory.mkdir(parents=True, exist_ok=True)
    chunks = [rows[i::splits] for i in range(splits)] if splits > 1 else [rows]
    for i, chunk in enumerate(chunks):
        name = f"{feed}.jsonl" + (f".{i:02d}" if splits > 1 else "") + (".gz" if gz else "")
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in chunk).encode()
        (directory / name).write_bytes(gzip.compress(data, mtime=0) if gz else data)
    if success:
        (directory / "_SUCCESS").write_bytes(b"")
    return directory


def ts(at: datetime, iso: bool = False) -> str:
    """Both timestamp shapes that ASAPP exports carry."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "+00:00" if iso else at.strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Issue:
    issue_id: int
    customer_id: int
    rep_id: str
    started_at: datetime
    intent: str


@dataclass
class TreeSummary:
    root: Path
    partitions: int = 0
    waiting: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    # issue_id -> the final_intent_code that must win in staging (re-exported records)
    expected_intent: dict[int, str] = field(default_factory=dict)


class TreeGenerator:
    def __init__(self, feeds: dict[str, Feed], seed: int = 7) -> None:
        self.feeds = feeds
        self.rnd = random.Random(seed)

    def _filler(self, feed: Feed, row: dict[str, Any], at: datetime) -> dict[str, Any]:
        """Plausible values for the documented columns the scenario does not set."""
        for c in feed.columns:
            if c.name in row or not c.documented:
                continue
            if c.name == "company_name":
                row[c.name] = COMPANY
            elif c.name in ("company_subdivision", "company_segments"):
                row[c.name] = self.rnd.choice(("consumer", "business"))
            elif c.name in ("platform",):
                row[c.name] = self.rnd.choice(("web", "ios", "android"))
            elif c.type == "timestamp":
                row[c.name] = ts(at + timedelta(seconds=self.rnd.randint(0, 3000)), iso=self.rnd.random() < 0.3)
            elif c.type in ("bigint", "integer"):
                row[c.name] = self.rnd.randint(0, 500)
            elif c.type == "double":
                row[c.name] = round(self.rnd.uniform(0, 900), 3)
            elif c.type == "boolean":
                row[c.name] = self.rnd.random() < 0.5
            else:
                row[c.name] = f"{c.name}_{self.rnd.randint(1, 20)}"
        return row

    def issues_for_hour(self, at: datetime, n: int, first_id: int) -> list[Issue]:
        return [
            Issue(
                first_id + i,
                900_000 + self.rnd.randint(0, CUSTOMERS - 1),
                f"rep{self.rnd.randint(1, 40)}",
                at + timedelta(minutes=self.rnd.randint(0, 50)),
                self.rnd.choice(INTENTS),
            )
            for i in range(n)
        ]

    def intents_row(self, issue: Issue, intent: str, instance_at: datetime) -> dict[str, Any]:
        return self._filler(
            self.feeds["convos_intents"],
            {
                "issue_id": issue.issue_id,
                "conversation_id": issue.issue_id,
                "customer_id": issue.customer_id,
                "first_intent_code": issue.intent,
                "final_intent_code": intent,
                "first_utterance_ts": ts(issue.started_at),
                "first_rep_id": issue.rep_id,
                "instance_ts": ts(instance_at),
            },
            issue.started_at,
        )

    def metadata_row(self, issue: Issue, last_event_at: datetime) -> dict[str, Any]:
        # The client's customer id (external_user_id) is the APSIS profile's customer_id attribute; a few
        # guests carry ids the metadata API would refuse, so the push's validation has something to do.
        guest = issue.issue_id % 50 == 0
        return self._filler(
            self.feeds["convos_metadata"],
            {
                "issue_id": issue.issue_id,
                "conversation_id": issue.issue_id,
                "customer_id": issue.customer_id,
                "external_user_id": f"guest #{issue.issue_id}" if guest else str(issue.customer_id),
                "external_issue_id": f"conv-{issue.issue_id}",
                "auth_external_user_id": f"user{issue.customer_id}",
                "first_event_ts": ts(issue.started_at),
                "last_event_ts": ts(last_event_at),
            },
            issue.started_at,
        )

    def metrics_row(self, issue: Issue, handle_time: float) -> dict[str, Any]:
        return self._filler(
            self.feeds["convos_metrics"],
            {
                "issue_id": issue.issue_id,
                "conversation_id": issue.issue_id,
                "customer_id": issue.customer_id,
                "first_utterance_ts": ts(issue.started_at, iso=True),
                "total_handle_time": handle_time,
            },
            issue.started_at,
        )

    def utterance_rows(self, issue: Issue) -> list[dict[str, Any]]:
        rows = []
        for seq in range(self.rnd.randint(2, 6)):
            sent = issue.started_at + timedelta(seconds=30 * seq)
            customer = seq % 2 == 0
            rows.append(
                self._filler(
                    self.feeds["utterances"],
                    {
                        "issue_id": issue.issue_id,
                        "conversation_id": issue.issue_id,
                        "sequence_id": seq,
                        "created_ts": ts(sent),
                        "instance_ts": ts(sent.replace(minute=0, second=0)),
                        "sender_id": issue.customer_id if customer else 10_000 + int(issue.rep_id[3:]),
                        "sender_type": "customer" if customer else "rep",
                        "utterance": self.rnd.choice(
                            (
                                "hi",
                                "I need help with my bill",
                                "sure, one moment",
                                "thanks!",
                                "is there anything else?",
                            )
                        ),
                        "event_uuid": f"{issue.issue_id:x}-{seq}",
                    },
                    sent,
                )
            )
        return rows

    def feedback_row(self, issue: Issue, question: str, answer: str, last_event_at: datetime) -> dict[str, Any]:
        return self._filler(
            self.feeds["customer_feedback"],
            {
                "issue_id": issue.issue_id,
                "conversation_id": issue.issue_id,
                "company_marker": COMPANY,
                "last_rep_id": issue.rep_id,
                "last_agent_id": issue.rep_id,
                "question": question,
                "answer": answer,
                "instance_ts": ts(issue.started_at.replace(minute=0, second=0)),
                "last_event_ts": ts(last_event_at),
            },
            issue.started_at,
        )


def generate_tree(
    root: Path,
    start: date = date(2026, 11, 1),
    days: int = 3,
    issues_per_hour: int = 12,
    seed: int = 7,
    export_docs: Path | None = None,
) -> TreeSummary:
    """A realistic export tree of the demo feeds under root (which is created)."""
    docs = load_export_docs(export_docs or Path(__file__).resolve().parents[2] / "export_docs.yaml")
    gen = TreeGenerator({name: docs[name] for name in DEMO_FEEDS}, seed)
    summary = TreeSummary(root=root)
    root.mkdir(parents=True, exist_ok=True)
    begin = datetime(start.year, start.month, start.day, tzinfo=UTC)
    hours = [begin + timedelta(hours=h) for h in range(days * 24)]
    previous: list[Issue] = []
    day_issues: dict[date, list[Issue]] = {}
    next_id = 5_000_000

    def emit(feed: str, at: datetime, rows: list[dict[str, Any]], index: int, success: bool = True) -> None:
        write_partition(root, feed, at, rows, splits=2 if index % 5 == 4 else 1, gz=index % 3 == 1, success=success)
        summary.partitions += 1
        summary.rows[feed] = summary.rows.get(feed, 0) + len(rows)
        if not success:
            summary.waiting.append(f"{feed}/{partition_dir(root, feed, at).relative_to(root / feed)}")

    for index, at in enumerate(hours):
        issues = gen.issues_for_hour(at, issues_per_hour, next_id)
        next_id += issues_per_hour
        day_issues.setdefault(at.date(), []).extend(issues)
        intents, metrics, utterances, metadata = [], [], [], []
        for issue in issues:
            metadata.append(gen.metadata_row(issue, issue.started_at))
            intents.append(gen.intents_row(issue, issue.intent, at))
            summary.expected_intent[issue.issue_id] = issue.intent
            metrics.append(gen.metrics_row(issue, round(gen.rnd.uniform(60, 900), 1)))
            utterances += gen.utterance_rows(issue)
        for i, issue in enumerate(previous):
            # Re-exported an hour later with an update: a newer instance_ts, or (every third) the same
            # instance_ts, where only the later partition time can tell the newer version.
            final = gen.rnd.choice([x for x in INTENTS if x != issue.intent])
            instance_at = at - timedelta(hours=1) if i % 3 == 0 else at
            intents.append(gen.intents_row(issue, final, instance_at))
            summary.expected_intent[issue.issue_id] = final
            metrics.append(gen.metrics_row(issue, round(gen.rnd.uniform(900, 1800), 1)))
            metadata.append(gen.metadata_row(issue, at + timedelta(minutes=5)))
            if i % 4 == 0:
                utterances += gen.utterance_rows(issue)[:1]  # an exact re-export of an utterance
        gen.rnd.shuffle(intents)
        last = index == len(hours) - 1
        emit("convos_intents", at, intents, index)
        emit("convos_metrics", at, metrics, index)
        emit("convos_metadata", at, metadata, index)
        emit("utterances", at, utterances, index, success=not last)  # the newest export is still running
        previous = issues
    for day, issues in sorted(day_issues.items()):
        at = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        rows = []
        for issue in issues[: max(1, len(issues) // 3)]:
            question = gen.rnd.choice(QUESTIONS)
            rows.append(gen.feedback_row(issue, question, "3", issue.started_at + timedelta(minutes=20)))
            rows.append(gen.feedback_row(issue, question, "5", issue.started_at + timedelta(minutes=40)))
        emit("customer_feedback", at, rows, at.day)
    return summary


def rows_of(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """All rows of some export files (tests use it to compute expectations)."""
    rows = []
    for p in paths:
        data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        rows += [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    return rows
