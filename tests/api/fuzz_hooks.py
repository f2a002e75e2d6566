"""schemathesis hooks of `test_fuzz.py`: aim generated requests at the fuzzing key's organization.

Loaded by the schemathesis process (`SCHEMATHESIS_HOOKS=fuzz_hooks`); `FUZZ_ORG` names the
organization. Without it, random organization ids would stop almost every request at the access
check (404) and the handlers behind it would go unfuzzed.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

ORG = os.environ.get("FUZZ_ORG")


@schemathesis.hook
def map_path_parameters(context: Any, path_parameters: Any) -> Any:
    if ORG and isinstance(path_parameters, dict) and "org_id" in path_parameters:
        return {**path_parameters, "org_id": ORG}
    return path_parameters


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if not ORG or not isinstance(body, dict):
        return body
    if "org_id" in body:
        body = {**body, "org_id": ORG}
    data = body.get("data")
    if isinstance(data, dict) and "org_id" in data:
        body = {**body, "data": {**data, "org_id": ORG}}
    return body
