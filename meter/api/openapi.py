"""The OpenAPI document, generated from the route table and the models of `schemas.api`.

`python -m meter.api.openapi` rewrites the committed copy, `schemas/openapi.json`; a test fails
when the two differ.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from schemas import api

COMMITTED = Path(__file__).resolve().parents[2] / "schemas" / "openapi.json"

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Malformed request",
    401: "Missing, unknown or revoked key",
    403: "The key's scope does not allow this",
    404: "Not found (or another organization's)",
    409: "Conflicts with the current state",
    413: "Body too large",
    415: "Unsupported content type",
    422: "Invalid input",
    503: "A dependency is unavailable",
}


def document() -> dict[str, Any]:
    from meter.api.routes import ROUTES

    models: set[type[BaseModel]] = {api.ErrorBody}
    for route in ROUTES:
        models.update(m for m in (route.request, route.response) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    keys, schemas = models_json_schema(
        [(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}"
    )
    ref = {m: keys[(m, "validation")]["$ref"] for m in ordered}
    error = {"content": {"application/json": {"schema": {"$ref": ref[api.ErrorBody]}}}}
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "tags": [route.tag] if route.tag else [],
        }
        params = re.findall(r"{(\w+)}", route.path)
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ]
        if route.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": ref[route.request]}}},
            }
        elif route.path == "/v1/events":
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/cloudevents+json": {"schema": {"type": "object"}},
                    "application/cloudevents-batch+json": {
                        "schema": {"type": "array", "items": {"type": "object"}}
                    },
                },
            }
        ok: dict[str, Any] = {"description": _STATUS_TEXT[route.status]}
        if route.response is not None:
            ok["content"] = {"application/json": {"schema": {"$ref": ref[route.response]}}}
        responses: dict[str, Any] = {str(route.status): ok}
        if route.access != "public":
            op["security"] = [{"bearer": []}]
            codes = (
                [401, 403, 404, 422]
                if route.request or route.path == "/v1/events"
                else [401, 403, 404]
            )
            if route.method in ("POST", "PATCH", "PUT"):
                codes += [400, 409, 413, 415]
            if route.path == "/v1/events":
                codes.append(503)
            for code in sorted(set(codes)):
                responses[str(code)] = {"description": _STATUS_TEXT[code], **error}
        op["responses"] = responses
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "meter",
            "version": "1",
            "description": "Usage metering for AI products that sell seats and credits.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


@functools.cache
def openapi_bytes() -> bytes:
    return orjson.dumps(document(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write(path: Path = COMMITTED) -> None:
    path.write_bytes(openapi_bytes())


if __name__ == "__main__":
    write()
