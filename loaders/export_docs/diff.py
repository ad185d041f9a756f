"""Compare two versions of export_docs.yaml: what a feed schema change means for the pipeline.

Breaking: a feed or column removed, a column's type changed (canonical type), a unique condition or ordering
key changed, a feed version bumped (ASAPP bumps it for changes that can break integrations).
Additive: a feed or column added, a documented type spelled differently but meaning the same (its raw text
changed, its canonical type did not), a feed's or a column's description changed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from loaders.export_docs.model import ExportDocs


@dataclass(frozen=True)
class Change:
    feed: str
    kind: str  # feed_added, feed_removed, column_added, column_removed, column_retyped, unique_key_changed,
    # ordering_key_changed, version_changed, column_type_text_changed, column_description_changed,
    # description_changed
    detail: str
    breaking: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _short(text: str, limit: int = 60) -> str:
    if not text:
        return "(none)"
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def diff(old: ExportDocs, new: ExportDocs) -> list[Change]:
    changes: list[Change] = []
    for name in sorted(set(new.feeds) - set(old.feeds)):
        changes.append(Change(name, "feed_added", f"new feed with {len(new[name].columns)} columns", False))
    for name in sorted(set(old.feeds) - set(new.feeds)):
        changes.append(Change(name, "feed_removed", "feed no longer documented", True))
    for name in sorted(set(old.feeds) & set(new.feeds)):
        a, b = old[name], new[name]
        a_cols = {c.name: c for c in a.columns if c.documented}
        b_cols = {c.name: c for c in b.columns if c.documented}
        for col in [c for c in b_cols if c not in a_cols]:
            changes.append(Change(name, "column_added", f"{col} ({b_cols[col].source_type or 'untyped'})", False))
        for col in [c for c in a_cols if c not in b_cols]:
            changes.append(Change(name, "column_removed", col, True))
        for col in [c for c in a_cols if c in b_cols]:
            before, after = a_cols[col], b_cols[col]
            if before.type != after.type:
                changes.append(Change(name, "column_retyped", f"{col}: {before.type} -> {after.type}", True))
            elif before.source_type != after.source_type:
                changes.append(
                    Change(
                        name,
                        "column_type_text_changed",
                        f"{col}: {before.source_type or '(none)'} -> {after.source_type or '(none)'} "
                        f"(both {after.type})",
                        False,
                    )
                )
            if before.description != after.description:
                changes.append(
                    Change(
                        name,
                        "column_description_changed",
                        f"{col}: {_short(before.description)} -> {_short(after.description)}",
                        False,
                    )
                )
        if a.unique_key != b.unique_key:
            changes.append(
                Change(name, "unique_key_changed", f"{', '.join(a.unique_key)} -> {', '.join(b.unique_key)}", True)
            )
        if a.ordering_key != b.ordering_key:
            changes.append(
                Change(
                    name, "ordering_key_changed", f"{a.ordering_key or '(none)'} -> {b.ordering_key or '(none)'}", True
                )
            )
        if a.version != b.version:
            changes.append(Change(name, "version_changed", f"{a.version} -> {b.version}", True))
        if a.description != b.description:
            changes.append(
                Change(name, "description_changed", f"{_short(a.description)} -> {_short(b.description)}", False)
            )
    return changes


def is_breaking(changes: list[Change]) -> bool:
    return any(c.breaking for c in changes)
