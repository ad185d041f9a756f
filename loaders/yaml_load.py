"""YAML read safely, with libyaml's loader when PyYAML has it: it reads export_docs.yaml and ASAPP's OpenAPI spec
several times faster than the pure-Python loader, into the same document."""

from __future__ import annotations

from typing import Any

import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlLimitError(yaml.YAMLError):
    """A YAML document nested too deep or too large once its aliases are expanded."""


def safe_load(text: str) -> Any:
    """yaml.safe_load, on libyaml when available. Errors are yaml.YAMLError, as with yaml.safe_load."""
    return yaml.load(text, Loader=_LOADER)


def check_limits(text: str, max_depth: int, max_size: int) -> None:
    """Refuse, from the parser's events alone, a document that loading would make dangerous: nested deeper than
    max_depth (libyaml's composer recurses once per level and overflows the C stack, a segfault), or larger than
    max_size once expanded (a scalar counts its length plus one, a collection one plus its items, an alias what it
    repeats: "billion laughs" is small on disk and in the composed graph, and explodes in whatever walks it).
    The parser itself keeps its own stack and is streamed, so the check stops at the first event over a limit."""
    expanded: dict[str, int] = {}  # anchor -> expanded size of its node
    open_collections: list[list[Any]] = []  # [anchor, expanded size so far]
    total = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            if len(open_collections) >= max_depth:
                raise YamlLimitError(f"nested deeper than {max_depth} levels")
            open_collections.append([event.anchor, 1])
            continue
        if isinstance(event, yaml.ScalarEvent):
            anchor, size = event.anchor, 1 + len(event.value)
        elif isinstance(event, yaml.AliasEvent):
            if any(c[0] == event.anchor for c in open_collections):
                raise YamlLimitError(f"alias *{event.anchor} repeats a collection inside itself")
            anchor, size = None, expanded.get(event.anchor or "", 1)  # an undefined alias is the loader's error
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            anchor, size = open_collections.pop()
        else:
            continue  # stream and document start and end
        if anchor is not None:
            expanded[anchor] = size
        if open_collections:
            open_collections[-1][1] += size
        else:
            total += size
        if total > max_size or (open_collections and open_collections[-1][1] > max_size):
            raise YamlLimitError(f"expands to more than {max_size} characters with its aliases repeated in full")


def safe_load_limited(text: str, max_depth: int, max_size: int) -> Any:
    """safe_load of a document that passes check_limits; else YamlLimitError (a yaml.YAMLError)."""
    check_limits(text, max_depth, max_size)
    return safe_load(text)
