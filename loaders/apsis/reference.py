"""What to export: the reference data (sections, attributes, tags, event types) and the ids chosen from it, with
the attributes and tags the customer_metadata mart reads always among them."""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from loaders import runtime
from loaders.apsis import settings
from loaders.apsis.client import ApsisClient
from loaders.apsis.request import ids_from_config
from loaders.yaml_load import safe_load

log = logging.getLogger(__name__)


def _id(item: dict[str, Any]) -> str:
    return str(item.get("discriminator") or item.get("id") or "")


class Reference:
    """Sections, attributes, tags and event types, read once per run."""

    def __init__(self, client: ApsisClient, section: str | None) -> None:
        self.client = client
        self.section = section

    @cached_property
    def sections(self) -> list[dict[str, Any]]:
        return [
            {"section_id": _id(s), "name": s.get("name"), "raw": s}
            for s in self.client.get_items(settings.SECTIONS_PATH)
            if not self.section or _id(s) == self.section
        ]

    def _items(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        return [
            (s["section_id"], item)
            for s in self.sections
            for item in self.client.get_items(settings.SECTION_ITEMS_PATH.format(section=s["section_id"], kind=kind))
        ]

    @cached_property
    def attributes(self) -> list[dict[str, Any]]:
        return [
            {"section_id": sid, "attribute_id": _id(a), "name": a.get("name"), "type": a.get("type")}
            for sid, a in self._items("attributes")
        ]

    @cached_property
    def tags(self) -> list[dict[str, Any]]:
        return [{"section_id": sid, "tag_id": _id(t), "name": t.get("name")} for sid, t in self._items("tags")]

    @cached_property
    def event_types(self) -> list[dict[str, Any]]:
        rows = []
        for sid, e in self._items("events"):
            versions = e.get("versions") or [{"id": _id(e)}]
            for v in versions:
                rows.append(
                    {
                        "section_id": sid,
                        "event_id": _id(e),
                        "version_id": str(v.get("id") or _id(e)),
                        "name": e.get("name"),
                    }
                )
        return rows


def mart_ids(project: Path | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The attribute and tag ids the customer_metadata mart reads: dbt_project.yml's vars `apsis_*_attribute` and
    `apsis_*_tag`."""
    path = (project or runtime.project_dir()) / "dbt_project.yml"
    if not path.is_file():  # installed without the dbt project: no mart to serve
        return (), ()
    try:
        variables = (safe_load(path.read_text(encoding="utf-8")) or {}).get("vars") or {}
    except (OSError, yaml.YAMLError, AttributeError) as e:
        log.warning("cannot read the APSIS ids customer_metadata needs from %s: %s", path, e)
        return (), ()

    def ids(suffix: str) -> tuple[str, ...]:
        return tuple(
            dict.fromkeys(str(v) for k, v in variables.items() if k.startswith("apsis_") and k.endswith(suffix) and v)
        )

    return ids("_attribute"), ids("_tag")


def _chosen(kind: str, setting: Any, listed: list[str], needed: tuple[str, ...]) -> tuple[str, ...]:
    """The configured ids, else every listed one with those the mart needs first; a needed id left out is said."""
    configured = ids_from_config(setting)
    if configured is not None:
        left_out = [i for i in needed if i not in configured]
        if left_out:
            log.warning(
                "SOURCES__APSIS__%s leaves out %s, which customer_metadata reads (dbt vars apsis_*): its columns "
                "stay empty",
                kind.upper(),
                ", ".join(left_out),
            )
        return configured
    unlisted = [i for i in needed if i not in listed]
    if unlisted:
        log.warning(
            "customer_metadata reads the %s %s, which APSIS does not list: its columns stay empty (check the dbt "
            "vars apsis_*)",
            kind,
            ", ".join(unlisted),
        )
    return tuple(dict.fromkeys([*(i for i in needed if i in listed), *listed]))


def requested_ids(
    reference: Reference, attributes: Any, tags: Any, events: Any
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(attributes, tags, event types) to export: as configured, else all the reference endpoints list. Nothing is
    dropped for the 75 attributes / 25 tags limits: a longer list is split into several exports."""
    needed_attributes, needed_tags = mart_ids()
    attribute_ids = _chosen(
        "attributes", attributes, [a["attribute_id"] for a in reference.attributes], needed_attributes
    )
    tag_ids = _chosen("tags", tags, [t["tag_id"] for t in reference.tags], needed_tags)
    event_ids = ids_from_config(events)
    if event_ids is None:
        event_ids = tuple(dict.fromkeys(e["event_id"] for e in reference.event_types))
    return attribute_ids, tag_ids, event_ids
