"""An emulator of ASAPP's Metadata Ingestion API (many-customer-metadata) on 127.0.0.1.

Requests are validated against ASAPP's published OpenAPI spec: openapi-core checks the request (path, method,
headers, content type, body shape with its first item) unless its method, path and headers are those of a request it
passed before, and the whole body, every item, is always checked against the
spec's request body schema by jsonschema-rs (openapi-core alone takes ~100 ms for a full batch of 1000 items,
which would cap the emulator at ~10 requests/s, far below the API's spike limit of 100). Items it
rejects (the configured customers) come back in a 200 partial success, as the documentation shows; a batch whose
items are all rejected gets 400. Results echo the submitted eventIds, or (answer_style "uuid") carry ids the
service computes, in the items' order, as the spec's example does.

On demand it answers what a real service or the proxies before it may: a status (429 with Retry-After, 5xx, 400
refusing the whole batch), an HTML page with 200 ("html"), a 307 to another host ("redirect"), 413 for a batch of
more than max_items, and a whole-batch 400 for any batch holding a poison customer. Every request is recorded with
the time it arrived; every item acknowledged in a readable answer is counted in `acknowledged`.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import jsonschema_rs
import orjson
import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest

from loaders.asapp_metadata.schema import json_schema, request_body_schema, spec
from loaders.asapp_metadata.settings import ENDPOINT
from loaders.sandbox.http_server import Emulator, JsonHandler, LocalServer


@dataclass
class ApiState:
    api_id: str
    api_secret: str
    reject_customers: set[str] = field(default_factory=set)  # items for them fail (partial success)
    poison_customers: set[str] = field(default_factory=set)  # a batch holding one is refused whole (400)
    answer_style: str = "echo"  # or "uuid": results carry ids the service computes, in the items' order
    inject: list[int | str] = field(default_factory=list)  # next answers: a status, "html", "redirect", "short"
    retry_after: str | None = None  # the Retry-After of an injected 429
    redirect_to: str = ""  # where an injected "redirect" points
    max_items: int | None = None  # a larger batch gets 413
    answer_delay: float = 0.0  # seconds each answer takes (a slow API)
    received: list[tuple[float, int, list[str]]] = field(default_factory=list)  # (time, status, event ids)
    persisted: dict[str, dict[str, Any]] = field(default_factory=dict)  # eventId -> item
    acknowledged: Counter[str] = field(default_factory=Counter)  # eventId -> times answered as accepted
    invalid_requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _openapi() -> OpenAPI:
    document = copy.deepcopy(spec())
    document["servers"] = [{"url": "/"}]  # validate whatever host we are reached at
    return OpenAPI.from_dict(document)


def _body_check() -> Any:
    return jsonschema_rs.validator_for(json_schema(request_body_schema()), validate_formats=True)


def make_handler(state: ApiState) -> type[JsonHandler]:
    openapi = _openapi()
    check_body = _body_check()
    # Requests openapi-core found nothing wrong with, by everything it checks but the body (method, path, headers):
    # the body is checked whole by jsonschema-rs on every request, so a request like one of these needs only that.
    # openapi-core took ~4 ms a request, about half the emulator's time per batch.
    conforming: set[tuple[Any, ...]] = set()

    class Handler(JsonHandler):
        # keep-alive, as the real API: a connection (and a server thread) per request took CPU from the client
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            # what a server's rate limit counts: when a request came, not when it was answered
            arrived = time.monotonic()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                document = orjson.loads(raw or b"null")
            except orjson.JSONDecodeError:
                document = None
            try:
                ids = [i.get("eventId") for i in document.get("items") or []]
            except AttributeError:
                ids = []
            status, body, headers = self._answer(raw, document, ids)
            with state.lock:
                state.received.append((arrived, status, ids))
            if state.answer_delay:
                time.sleep(state.answer_delay)
            if isinstance(body, bytes):
                self.send_response(status)
                for name, value in {"Content-Type": "text/html", "Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_json(status, body, headers)

        def _answer(self, raw: bytes, document: Any, ids: list[Any]) -> tuple[int, Any, dict[str, str]]:
            status, body = self._checked(raw, document, ids)
            if status == 429 and state.retry_after is not None:
                return status, body, {"Retry-After": state.retry_after}
            if status == 307:
                return status, b"", {"Location": state.redirect_to + ENDPOINT}
            return status, body, {}

        def _checked(self, raw: bytes, document: Any, ids: list[Any]) -> tuple[int, Any]:
            if self.path != ENDPOINT:
                return 404, {"error": {"requestId": uuid.uuid4().hex, "message": "Not Found", "code": "404-01"}}
            if (
                self.headers.get("asapp-api-id") != state.api_id
                or self.headers.get("asapp-api-secret") != state.api_secret
            ):
                return 401, {"error": {"requestId": uuid.uuid4().hex, "message": "Unauthorized", "code": "401-01"}}
            with state.lock:
                injected = state.inject.pop(0) if state.inject else None
            if injected == "html":  # a proxy's page: nothing persisted
                return 200, b"<html><body>Service temporarily unavailable</body></html>"
            if injected == "redirect":
                return 307, b""
            if injected == 400:  # the whole batch refused, no item named
                return 400, {"errorCount": 1, "results": [{"eventId": "", "error": "FAIL_BAD_PARAMS: injected"}]}
            if isinstance(injected, int):  # "short" (a 200 whose results leave out the last item) falls through
                return injected, {
                    "error": {"requestId": uuid.uuid4().hex, "message": "injected", "code": f"{injected}-01"}
                }
            signature = (
                self.command,
                self.path,
                *sorted((k.lower(), v) for k, v in self.headers.items() if k.lower() != "content-length"),
            )
            errors = [] if signature in conforming else self._spec_errors(raw, document)
            if not errors:
                conforming.add(signature)
            if not errors and not check_body.is_valid(document):
                errors += [
                    f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in check_body.iter_errors(document)
                ]
            if errors:
                detail = "; ".join(errors)[:500]
                state.invalid_requests.append(detail)
                return 400, {"errorCount": 1, "results": [{"eventId": "", "error": f"FAIL_BAD_PARAMS: {detail}"}]}
            if state.max_items is not None and len(ids) > state.max_items:
                return 413, {"error": {"requestId": uuid.uuid4().hex, "message": "too large", "code": "413-01"}}
            if {i["externalCustomerId"] for i in document["items"]} & state.poison_customers:
                return 400, {"errorCount": 1, "results": [{"eventId": "", "error": "FAIL_BAD_PARAMS: bad request"}]}
            results = []
            accepted = {}
            for item in document["items"]:
                event_id = item.get("eventId") or str(uuid.uuid1())
                answered_id = str(uuid.uuid1()) if state.answer_style == "uuid" else event_id
                if item["externalCustomerId"] in state.reject_customers:
                    results.append({"eventId": answered_id, "error": "FAIL_BAD_PARAMS: ERROR: customer is unknown"})
                else:
                    accepted[event_id] = item
                    results.append({"eventId": answered_id, "error": ""})
            with state.lock:
                state.persisted.update(accepted)
                reported = {r["eventId"] for r in results}
                state.acknowledged.update(i for i in accepted if i in reported or state.answer_style == "uuid")
            if injected == "short":
                results.pop()
            error_count = sum(1 for r in results if r["error"])
            return (400 if error_count == len(results) else 200), {"errorCount": error_count, "results": results}

        def _spec_errors(self, raw: bytes, document: Any) -> list[str]:
            """What openapi-core finds wrong with the request (the body with its first item only)."""
            shape = raw
            if isinstance(document, dict) and isinstance(document.get("items"), list) and document["items"]:
                shape = orjson.dumps({**document, "items": document["items"][:1]})
            request = requests.Request(
                "POST", f"http://{self.headers['Host']}{self.path}", data=shape, headers=dict(self.headers.items())
            ).prepare()
            return [
                str(getattr(e, "schema_errors", None) or e)
                for e in openapi.iter_request_errors(RequestsOpenAPIRequest(request))
            ]

    return Handler


class AsappApiEmulator(Emulator):
    def __init__(self, api_id: str = "sandbox-api-id", api_secret: str | None = None, **options: Any) -> None:
        self.state = ApiState(api_id, api_secret or uuid.uuid4().hex, **options)
        self.server = LocalServer(make_handler(self.state))

    def env(self) -> dict[str, str]:
        return {
            "ASAPP_API__BASE_URL": self.server.base_url,
            "ASAPP_API__API_ID": self.state.api_id,
            "ASAPP_API__API_SECRET": self.state.api_secret,
        }
