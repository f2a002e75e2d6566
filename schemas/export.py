"""Write the JSON Schemas of the wire contracts next to this file.

``python -m schemas.export`` regenerates ``schemas/usage-event.schema.json`` from
`schemas.event_model.UsageEventModel`; a test fails when the committed file differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.event_model import UsageEventModel

SCHEMA_DIR = Path(__file__).parent
USAGE_EVENT_SCHEMA = SCHEMA_DIR / "usage-event.schema.json"


def usage_event_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a usage event."""
    schema = UsageEventModel.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def render(schema: dict[str, Any]) -> str:
    """The committed text of a schema: stable key order, two-space indent, final newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas() -> list[Path]:
    """Regenerate every exported schema file; returns the paths written."""
    USAGE_EVENT_SCHEMA.write_text(render(usage_event_schema()), encoding="utf-8")
    return [USAGE_EVENT_SCHEMA]


if __name__ == "__main__":
    for path in write_schemas():
        print(f"wrote {path}")
