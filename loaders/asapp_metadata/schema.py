"""ASAPP's published item schema: one fast check for every item (jsonschema-rs), and the reasons for a refused one."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import jsonschema_rs
from openapi_schema_validator import OAS30Validator

from loaders.asapp_metadata import settings
from loaders.yaml_load import safe_load


@cache
def spec() -> dict[str, Any]:
    document: dict[str, Any] = safe_load(settings.SPEC_PATH.read_text(encoding="utf-8"))
    return document


def request_body_schema() -> dict[str, Any]:
    """The many-customer-metadata request body schema of the spec, as published."""
    schema: dict[str, Any] = spec()["paths"][settings.ENDPOINT]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    return schema


@cache
def item_schema() -> dict[str, Any]:
    """The spec's item schema, with its patterns anchored: the published ones ('[a-zA-Z0-9\\-\\_]+') match any
    string holding one such character; the service expects the whole value to match."""
    schema: dict[str, Any] = copy.deepcopy(request_body_schema()["properties"]["items"]["items"])

    def anchor(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str) and not node["pattern"].startswith("^"):
                node["pattern"] = f"^(?:{node['pattern']})$"
            for value in node.values():
                anchor(value)
        elif isinstance(node, list):
            for value in node:
                anchor(value)

    anchor(schema)
    return schema


def json_schema(openapi_schema: Any) -> Any:
    """An OpenAPI 3.0 schema as plain JSON Schema (`nullable: true` admits null), for jsonschema-rs."""
    if isinstance(openapi_schema, list):
        return [json_schema(v) for v in openapi_schema]
    if not isinstance(openapi_schema, dict):
        return openapi_schema
    out = {k: json_schema(v) for k, v in openapi_schema.items() if k not in ("nullable", "example")}
    if openapi_schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@cache
def item_check() -> Any:
    """The item schema in Rust: ~1 µs an item, where the OpenAPI validator takes ~450 µs."""
    return jsonschema_rs.validator_for(json_schema(item_schema()), validate_formats=True)


@cache
def items_check() -> Any:
    """A list of items, each checked by the item schema: a batch's items in one call."""
    return jsonschema_rs.validator_for({"type": "array", "items": json_schema(item_schema())}, validate_formats=True)


def reasons(item: Any) -> list[str]:
    """Why an item the fast check refuses is refused, worded by the OpenAPI validator; jsonschema-rs's own
    reasons where it is the stricter (an email with no valid domain)."""
    errors = []
    validator = OAS30Validator(item_schema(), format_checker=OAS30Validator.FORMAT_CHECKER)
    for error in sorted(validator.iter_errors(item), key=lambda e: [str(p) for p in e.absolute_path]):
        where = ".".join(str(p) for p in error.absolute_path) or "item"
        errors.append(f"{where}: {_reason(error.validator, error.validator_value, error.message)}")
    if not errors:
        schema = json_schema(item_schema())
        for fault in item_check().iter_errors(item):
            rule: Any = schema
            for step in fault.schema_path:
                rule = rule[step]
            where = ".".join(str(p) for p in fault.instance_path) or "item"
            errors.append(f"{where}: {_reason(fault.schema_path[-1], rule, fault.message)}")
    return errors or ["item: refused by the item schema"]


def _reason(rule: Any, limit: Any, message: str) -> str:
    """The rule that failed, without echoing the (possibly long, possibly personal) value."""
    return {
        "maxLength": f"longer than {limit} characters",
        "maxItems": f"more than {limit} items",
        "pattern": f"does not match {limit}",
        "format": f"is not a valid {limit}",
        "type": f"is not of type {limit}",
    }.get(str(rule), message[:200])
