"""Render export_docs.yaml from ASAPP's published feed schema (JSON) and its ordering precedence table.

ASAPP ships export_docs.yaml daily; until a customer has one, the project commits one rendered from the
published schema page. Run: ``python -m loaders.export_docs.reference SHARED/reference export_docs.yaml``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

# From the published page's "Ordering Precedence" (asapp-ordering-precedence.md); the JSON carries none.
ORDERING_PRECEDENCE = {
    "convos_intents": "instance_ts",
    "convos_intents_ended": "instance_ts",
    "convos_metadata": "last_event_ts",
    "convos_metadata_ended": "last_event_ts",
    "customer_feedback": "last_event_ts",
    "customer_params": "event_ts",
    "flow_completions": "COALESCE(success_event_ts, negation_event_ts)",
}


def render(feeds_json: Path) -> str:
    document = json.loads(feeds_json.read_text(encoding="utf-8"))
    for schema in document["schemas"]:
        for table in schema["tables"]:
            if not table.get("ordering_key") and table["name"] in ORDERING_PRECEDENCE:
                table["ordering_key"] = ORDERING_PRECEDENCE[table["name"]]
    header = (
        "# ASAPP export_docs.yaml, rendered from ASAPP's published feed schema (asapp-messaging-feeds.json)\n"
        "# with the ordering precedence of the schema page. Replace it with the export_docs.yaml ASAPP ships,\n"
        "# then run `elt schema-diff` and `elt generate`.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120)


def main() -> None:
    reference, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.write_text(render(reference / "asapp-messaging-feeds.json"), encoding="utf-8")


if __name__ == "__main__":
    main()
