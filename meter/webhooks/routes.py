"""Routes of webhook endpoints: `admin` keys, and `org_admin` keys of the organization."""

from __future__ import annotations

from meter.api.http import (
    NO_CONTENT,
    Access,
    Call,
    Response,
    Route,
    model_response,
    parse_body,
)
from meter.auth import Scope
from meter.webhooks.store import WebhookStore
from schemas import api

ORG = (Scope.ORG_ADMIN,)
OA = Access.ORG
HOOKS = "/v1/orgs/{org_id}/webhooks"
HOOK = HOOKS + "/{endpoint_id}"


async def _store(call: Call) -> WebhookStore:
    await call.app.admin.org_exists(call.params["org_id"])
    return WebhookStore(call.app.pool, production=call.app.settings.env == "production")


async def create_endpoint(call: Call) -> Response:
    body = parse_body(api.WebhookEndpointCreate, call.body)
    store = await _store(call)
    return model_response(await store.create(call.params["org_id"], body), 201)


async def list_endpoints(call: Call) -> Response:
    store = await _store(call)
    return model_response(await store.list_endpoints(call.params["org_id"]))


async def get_endpoint(call: Call) -> Response:
    p = call.params
    return model_response(await (await _store(call)).get(p["org_id"], p["endpoint_id"]))


async def update_endpoint(call: Call) -> Response:
    p = call.params
    body = parse_body(api.WebhookEndpointUpdate, call.body)
    store = await _store(call)
    return model_response(await store.update(p["org_id"], p["endpoint_id"], body))


async def delete_endpoint(call: Call) -> Response:
    p = call.params
    await (await _store(call)).delete(p["org_id"], p["endpoint_id"])
    return NO_CONTENT


async def rotate_secret(call: Call) -> Response:
    p = call.params
    body = (
        parse_body(api.WebhookSecretRotate, call.body) if call.body else api.WebhookSecretRotate()
    )
    store = await _store(call)
    return model_response(await store.rotate(p["org_id"], p["endpoint_id"], body))


async def list_attempts(call: Call) -> Response:
    p = call.params
    return model_response(await (await _store(call)).attempts(p["org_id"], p["endpoint_id"]))


async def redeliver(call: Call) -> Response:
    p = call.params
    store = await _store(call)
    queued = await store.redeliver(p["org_id"], p["endpoint_id"], p["message_id"])
    return model_response(queued, 202)


async def send_test(call: Call) -> Response:
    p = call.params
    store = await _store(call)
    return model_response(await store.send_test(p["org_id"], p["endpoint_id"]), 202)


ROUTES: list[Route] = [
    Route("POST", HOOKS, create_endpoint,
          "Add a webhook endpoint (the answer shows its signing secret, once)", OA, ORG,
          api.WebhookEndpointCreate, api.WebhookEndpointCreated, 201, tag="webhooks"),
    Route("GET", HOOKS, list_endpoints, "List webhook endpoints", OA, ORG,
          response=api.WebhookEndpointList, tag="webhooks"),
    Route("GET", HOOK, get_endpoint, "Get a webhook endpoint", OA, ORG,
          response=api.WebhookEndpoint, tag="webhooks"),
    Route("PATCH", HOOK, update_endpoint,
          "Change a webhook endpoint's URL, event types, description or enabled flag", OA, ORG,
          api.WebhookEndpointUpdate, api.WebhookEndpoint, tag="webhooks"),
    Route("DELETE", HOOK, delete_endpoint, "Delete a webhook endpoint and its deliveries", OA,
          ORG, status=204, tag="webhooks"),
    Route("POST", HOOK + "/rotate-secret", rotate_secret,
          "New signing secret; the previous one signs beside it for `grace_s` seconds", OA, ORG,
          api.WebhookSecretRotate, api.WebhookSecret, tag="webhooks"),
    Route("GET", HOOK + "/attempts", list_attempts,
          "Delivery attempts to the endpoint, newest first (at most 100)", OA, ORG,
          response=api.WebhookAttemptList, tag="webhooks"),
    Route("POST", HOOK + "/messages/{message_id}/redeliver", redeliver,
          "Send a message to the endpoint again (same id, fresh retry schedule)", OA, ORG,
          response=api.WebhookQueued, status=202, tag="webhooks"),
    Route("POST", HOOK + "/test", send_test, "Send a `webhook.test` message to the endpoint",
          OA, ORG, response=api.WebhookQueued, status=202, tag="webhooks"),
]  # fmt: skip
