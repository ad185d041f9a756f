"""The push plan, the only item builder, on each engine: the item as sent, its content hash and eventId are the same
on DuckDB and Postgres whatever the characters, and a row of printable ASCII keeps the hash the push log has held
since before the plan (Python's sorted, compact json.dumps)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson
import pytest

from loaders import runtime
from loaders.asapp_metadata import plan, settings
from tests.python.helpers import Warehouse, query
from tests.python.test_push import write_mart

ODD = 'q"b\\s/é😀\n\x01\x7f\t'


def _hash(item: dict[str, Any], ascii_only: bool) -> str:
    payload = {k: v for k, v in item.items() if k != "eventId"}
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only).encode()
    return hashlib.sha256(encoded).hexdigest()


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_the_plan_builds_each_item_its_hash_and_event_id(warehouse: Warehouse) -> None:
    write_mart(warehouse, 3)
    warehouse.execute_many(
        "update marts.customer_metadata set status = ?, phone_number = ?, user_id = ? where external_customer_id = ?",
        [(ODD, "", None, "c1")],
    )
    warehouse.execute_many(
        "insert into marts.customer_metadata_attributes values (?, ?, ?, ?, ?)",
        [
            ("conv-2", "c2", "zeta", None, 3),
            ("conv-2", "c2", "alpha", ODD, 2),
            ("conv-2", "c2", None, "no name: left out", 4),
        ],
    )
    rows = {r[4]: dict(zip(plan.COLUMNS, r, strict=True)) for r in query(warehouse, plan.sql(runtime.target(), None))}
    assert sorted(rows) == ["c0", "c1", "c2"] and {r["state"] for r in rows.values()} == {"new"}
    base = {"addressCountry": "SE", "addressZipcode": "11122"}
    expected = {
        "c0": {
            **base,
            "externalConversationId": "conv-0",
            "externalCustomerId": "c0",
            "status": "known",
            "phoneNumber": "+15550000000",
            "emailAddress": "c0@example.com",
            "userId": "user0",
            "attributes": [{"name": "tier", "value": "gold"}],
        },
        "c1": {  # empty and null values are left out
            **base,
            "externalConversationId": "conv-1",
            "externalCustomerId": "c1",
            "status": ODD,
            "emailAddress": "c1@example.com",
            "attributes": [{"name": "tier", "value": "gold"}],
        },
        "c2": {  # attributes in rank order; a null value is ""
            **base,
            "externalConversationId": "conv-2",
            "externalCustomerId": "c2",
            "status": "known",
            "phoneNumber": "+15550000002",
            "emailAddress": "c2@example.com",
            "userId": "user2",
            "attributes": [
                {"name": "tier", "value": "gold"},
                {"name": "alpha", "value": ODD},
                {"name": "zeta", "value": ""},
            ],
        },
    }
    for customer, item in expected.items():
        row = rows[customer]
        digest = _hash(item, ascii_only=False)
        assert row["content_hash"] == digest, customer
        assert row["event_id"] == "elt-" + digest[: settings.EVENT_ID_HEX_DIGITS]
        assert row["wire"].startswith('{"eventId":')
        assert orjson.loads(row["wire"]) == {"eventId": row["event_id"], **item}
    assert rows["c0"]["content_hash"] == _hash(expected["c0"], ascii_only=True)  # the hash logs already hold


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"], indirect=True)
def test_the_plan_reads_each_row_state_from_the_push_log(warehouse: Warehouse) -> None:
    write_mart(warehouse, 5)
    rows = {r[4]: dict(zip(plan.COLUMNS, r, strict=True)) for r in query(warehouse, plan.sql(runtime.target(), None))}
    warehouse.execute_many("create schema if not exists asapp_metadata", [])
    warehouse.execute_many(
        "create table asapp_metadata.asapp_metadata_push_log (event_id varchar, external_conversation_id varchar, "
        "external_customer_id varchar, content_hash varchar, status varchar, pushed_at timestamp)",
        [],
    )
    log = [
        ("c0", rows["c0"]["content_hash"], "accepted", "2026-11-01 10:00:00"),  # settled
        ("c1", rows["c1"]["content_hash"], "accepted", "2026-11-01 10:00:00"),
        ("c1", rows["c1"]["content_hash"], "unknown", "2026-11-01 11:00:00"),  # its last attempt: owed
        ("c2", "0" * 64, "accepted", "2026-11-01 10:00:00"),  # changed since
        ("c3", rows["c3"]["content_hash"], "invalid", "2026-11-01 10:00:00"),  # settled: refused locally
    ]
    warehouse.execute_many(
        "insert into asapp_metadata.asapp_metadata_push_log values (?, ?, ?, ?, ?, ?)",
        [(f"e-{c}", f"conv-{c[1:]}", c, h, s, t) for c, h, s, t in log],
    )
    planned = query(warehouse, plan.sql(runtime.target(), "asapp_metadata.asapp_metadata_push_log"))
    assert sorted((r[0], r[1]) for r in planned) == [
        ("changed", "accepted"),
        ("new", None),
        ("owed", "unknown"),
        ("settled", "accepted"),
        ("settled", "invalid"),
    ]
    assert {r[4] for r in planned if r[0] == "settled"} == {None}  # nothing more of a settled row is read
