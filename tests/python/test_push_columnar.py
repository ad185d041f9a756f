"""The push's bulk build (DuckDB over Arrow chunks of the mart) against build_item and validate_item, which it
must match exactly: the same content hash (change detection and eventIds depend on it), the same item, the same
verdict."""

from __future__ import annotations

import random
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from loaders.asapp_metadata import SETTLED, _mart_sql, columnar, settings
from loaders.asapp_metadata.helpers import Batch, build_item, validate_item

CHARACTERS = ["a", "Z", "0", "-", "_", ".", "@", " ", '"', "\\", "/", "é", "\x7f", "\n", "\x01", "+", "'", "😀"]
GOOD = ("known", "+1-555", "a@example.com", "u1", "SE", "CA", "11122")  # valid values of the fields after the keys


def _value(rng: random.Random, good: str) -> str | None:
    pick = rng.random()
    if pick < 0.7:
        return good
    if pick < 0.75:
        return None
    if pick < 0.8:
        return ""
    if pick < 0.85:
        return good + "x" * rng.choice([10, 30, 250, 1100])  # around the maxLengths (16, 32, 128, 256)
    return "".join(rng.choice(CHARACTERS) for _ in range(rng.randint(1, 8)))


def _rows(n: int, seed: int) -> list[tuple[Any, ...]]:
    """Mart query rows (settings.FIELDS, last_hash, last_status, no attribute): valid, invalid, odd characters,
    unchanged since an outcome that settles them or not."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        keys = [f"conv-{i:05d}", f"c{i}"]
        if rng.random() < 0.1:
            keys[rng.choice([0, 1])] += rng.choice(CHARACTERS)
        values = [*keys, *(_value(rng, good) for good in GOOD)]
        _, digest = build_item(values, [])
        last: tuple[str | None, str | None] = (None, None)
        if rng.random() < 0.4:
            last = (
                digest if rng.random() < 0.7 else "0" * 64,
                rng.choice(["accepted", "invalid", "failed", "unknown"]),
            )
        rows.append((*values, *last, None, None))
    return rows


def test_items_built_in_bulk_are_the_items_built_one_by_one() -> None:
    rows = _rows(4000, seed=6)
    with duckdb.connect() as connection:
        built = columnar.build(connection, columnar.from_rows(rows), SETTLED)
    sent = {(r["external_conversation_id"], r["external_customer_id"]): r for r in built.send.to_pylist()}
    left = {row[:2] for row in built.build}
    unchanged = settled_invalid = 0
    for row in rows:
        values = row[: len(settings.FIELDS)]
        item, digest = build_item(values, [])
        if row[:2] in sent:  # built in bulk: exactly what build_item makes (its JSON and a comma), and valid
            built_row = sent[row[:2]]
            assert built_row["wire"].endswith(b",") and orjson.loads(built_row["wire"][:-1]) == item
            assert (built_row["event_id"], built_row["content_hash"]) == (item["eventId"], digest)
            assert validate_item(item) == []
            assert not (row[9] == digest and row[10] in SETTLED)
        elif row[:2] not in left:  # counted as unchanged: its content met an outcome that settles it
            assert row[9] == digest and row[10] in SETTLED
            unchanged += row[10] != "invalid"
            settled_invalid += row[10] == "invalid"
    assert (built.unchanged, built.settled_invalid) == (unchanged, settled_invalid)
    assert len(sent) + len(left) + unchanged + settled_invalid == len(rows)
    # what is left to build one by one is what the bulk build cannot be sure of: characters JSON escapes or
    # other than printable ASCII, or refused
    for row in built.build:
        item, _ = build_item(row[: len(settings.FIELDS)], [])
        plain = all(
            v is None or (v.isascii() and v.isprintable() and '"' not in v and "\\" not in v)
            for v in row[: len(settings.FIELDS)]
        )
        assert not plain or validate_item(item), row
    assert len(sent) > 500 and unchanged > 50 and settled_invalid > 25 and len(left) > 500  # each route taken


def test_a_duckdb_mart_is_built_in_bulk() -> None:
    # read as the push reads it: DuckDB types a bare `null as last_hash` int32, and a chunk must still be built in
    # bulk, not row by row
    with duckdb.connect() as connection:
        connection.execute("create schema marts")
        columns = ", ".join(f"{c} varchar" for c in settings.FIELDS)
        connection.execute(f"create table marts.{settings.MART} ({columns})")
        connection.execute(
            f"create table marts.{settings.MART_ATTRIBUTES} (external_conversation_id varchar, "
            "external_customer_id varchar, attribute_name varchar, attribute_value varchar, attribute_rank bigint)"
        )
        connection.execute(
            f"insert into marts.{settings.MART} select 'conv-' || i, 'c' || i, 'known', null, 'c' || i || "
            "'@example.com', null, 'SE', null, '11122' from range(2500) t(i)"
        )
        connection.execute(f"insert into marts.{settings.MART_ATTRIBUTES} values ('conv-7', 'c7', 'tier', 'gold', 1)")
        connection.execute(_mart_sql(None))
        chunks = list(columnar.chunks(connection, 1000))
        with duckdb.connect() as builder:
            built = [columnar.build(builder, chunk, SETTLED) for chunk in chunks]
    assert [chunk.num_rows for chunk in chunks] == [1000, 1000, 500]
    assert pa.types.is_integer(chunks[0]["last_hash"].type)
    assert sum(b.send.num_rows for b in built) == 2499
    assert [row[:2] + row[-2:] for b in built for row in b.build] == [("conv-7", "c7", "tier", "gold")]


def test_a_batch_body_is_its_items_end_to_end_whatever_the_slices() -> None:
    # a batch is cut from pieces of several chunks (bulk-built and one by one), each a slice of a larger array: the
    # body is read from the Arrow buffers, so each slice's offsets into its parent's data must be honoured
    items = [{"eventId": f"elt-{i}", "status": "x" * (i % 7)} for i in range(30)]
    wires = [orjson.dumps(item) + b"," for item in items]
    keys = [[f"elt-{i}" for i in range(30)], *([f"k{i}" for i in range(30)] for _ in range(3))]
    table = pa.Table.from_arrays([pa.array(wires, pa.binary()), *map(pa.array, keys)], schema=columnar.SEND_SCHEMA)
    pieces = pa.concat_tables([table.slice(3, 10), table.slice(20, 5), table.slice(0, 1)])
    batch = Batch(pieces.slice(2, 13))  # across the first two pieces' chunks
    expected = items[5:13] + items[20:25]
    assert orjson.loads(batch.body()) == {"items": expected}
    assert batch.event_ids() == [item["eventId"] for item in expected]
