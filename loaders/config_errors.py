"""A missing setting, said in a few lines a person can act on: dlt's own message lists every key and file it looked
in (63 lines for the SFTP source) and leaves the reader to guess which one to set."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

# The README section that explains each group of settings.
README_SECTIONS = {"sources": "Use it on your ASAPP export", "destination": "Scaling out"}


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _names(field: str, traces: Any) -> tuple[str, str] | None:
    """(environment variable, toml table) of a missing field: the fullest name dlt tried that carries no pipeline
    name prefix and no doubled section (SOURCES__ASAPP_SFTP__HOST, [sources.asapp_sftp])."""
    best: tuple[str, ...] | None = None
    for trace in traces:
        sections = tuple(getattr(trace, "sections", None) or ())
        key = getattr(trace, "key", "")
        if getattr(trace, "provider", "") != "Environment Variables" or not sections:
            continue
        doubled = any(a == b for a, b in pairwise(sections))
        if doubled or key != "__".join((*sections, field)).upper():
            continue
        if best is None or len(sections) > len(best):
            best = sections
    if best is None:
        return None
    return "__".join((*best, field)).upper(), ".".join(best)


def missing_settings(error: BaseException) -> list[str] | None:
    """The lines to print when error (or an error it wraps) is dlt's missing configuration; None otherwise."""
    from dlt.common.configuration.exceptions import ConfigFieldMissingException

    missing = next((e for e in _chain(error) if isinstance(e, ConfigFieldMissingException)), None)
    if missing is None:
        return None
    env_vars: list[str] = []
    tables: dict[str, list[str]] = {}
    for field, traces in missing.traces.items():
        names = _names(field, traces)
        if names is None:
            env_vars.append(field.upper())
            continue
        env_vars.append(names[0])
        tables.setdefault(names[1], []).append(field)
    what = next(iter(tables), "")
    lines = [
        f"missing setting(s) {', '.join(missing.fields)}" + (f" of {what}" if what else ""),
        f"  set in the environment: {', '.join(env_vars)}",
    ]
    lines += [
        f"  or in .dlt/secrets.toml (or .dlt/config.toml): {', '.join(fields)} under [{table}]"
        for table, fields in tables.items()
    ]
    section = README_SECTIONS.get(what.split(".")[0], README_SECTIONS["sources"])
    lines.append(f'  see README.md, "{section}"')
    return lines[:6]
