"""An APSIS One emulator on 127.0.0.1 that behaves as the export documentation says.

OAuth2 client credentials; reference endpoints (sections, attributes, tags, events); POST an export request
(validated: attributes/tags limits, start_at with events, three-month window; 429 when injected); the poll URL
answers 404 while "processing", then 200 streaming a generated export (gzip when asked), 410 once expired or
unknown, and 503 / 429 when injected. Exports are generated to disk and streamed, so they can be large.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pendulum

from loaders.sandbox.http_server import Emulator, JsonHandler, LocalServer

SECTION = "com.apsis1.sections.main"
ATTRIBUTES = [
    ("email", "Email", "string"),
    ("phone", "Phone", "string"),
    ("first_name", "First name", "string"),
    ("customer_id", "Customer id", "string"),
    ("city", "City", "string"),
    ("zip", "Zip code", "string"),
    ("loyalty_points", "Loyalty points", "number"),
    ("opted_in", "Opted in", "boolean"),
]
TAGS = [("vip", "VIP"), ("newsletter", "Newsletter"), ("churn_risk", "Churn risk")]
EVENTS = [("email_opened", "Email opened"), ("purchase", "Purchase")]
CITIES = ("Stockholm", "Malmo", "Gothenburg", "Uppsala", "Lund")


@dataclass
class Export:
    id: str
    body: dict[str, Any]
    path: Path
    created: float
    polls: int = 0


@dataclass
class ApsisState:
    client_id: str
    client_secret: str
    workdir: Path
    profiles: int = 40
    events_per_profile: int = 3
    customer_id_base: int = 900_000
    polls_until_ready: int = 2
    token_ttl: float = 3600.0
    export_ttl: float = 86_400.0
    wrap_profiles: bool = False
    poll_field: str = "poll_url"
    inject_poll: list[int] = field(default_factory=list)  # answered to the next polls, in order
    inject_request: list[int] = field(default_factory=list)  # answered to the next export requests
    revoke_on_poll: int = 0  # when the Nth poll arrives, every token issued so far stops working (401)
    tokens: dict[str, float] = field(default_factory=dict)
    exports: dict[str, Export] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    polls: list[tuple[int, str]] = field(default_factory=list)  # (status, Accept-Encoding)
    token_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def revoke_tokens(self) -> None:
        """Every token issued so far stops working (the client must fetch a new one on 401)."""
        self.tokens.clear()


def _when(value: str) -> pendulum.DateTime:
    return pendulum.instance(datetime.fromisoformat(value.replace("Z", "+00:00")))


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def write_export(path: Path, body: dict[str, Any], state: ApsisState) -> None:
    """Generate the export file for a request, profile by profile (streamed to disk)."""
    attrs = set(body.get("attributes") or [])
    tags = set(body.get("tags") or [])
    events = set(body.get("events") or [])
    start = _when(body["start_at"]) if body.get("start_at") else None
    end = _when(body["end_at"]) if body.get("end_at") else (start.add(weeks=1) if start else None)
    span = (end - start).total_seconds() if start and end else 0
    with path.open("w", encoding="utf-8") as f:
        f.write('{"profiles": {' if state.wrap_profiles else "{")
        for i in range(state.profiles):
            values = {
                "email": f"customer{i}@example.com",
                "phone": f"+1555{i:07d}",
                "first_name": f"Name{i}",
                "customer_id": str(state.customer_id_base + i),
                "city": CITIES[i % len(CITIES)],
                "zip": f"{10000 + i % 90000}",
                "loyalty_points": (i * 37) % 1000 + 0.5,
                "opted_in": i % 3 != 0,
            }
            attributes: dict[str, Any] = {a: {"value": values[a]} for a, _, _ in ATTRIBUTES if a in attrs}
            for n, (tag, _) in enumerate(TAGS):
                if tag in tags and i % (n + 2) == 0:
                    attributes[tag] = {"value": None}
            section: dict[str, Any] = {"attributes": attributes}
            if events and start is not None:
                section["events"] = []
                for k in range(state.events_per_profile):
                    kind = EVENTS[k % len(EVENTS)][0]
                    if kind not in events:
                        continue
                    created = start.add(seconds=int(span * ((i * 7 + k * 13) % 97) / 97))
                    event = {
                        "correlationId": f"c-{i}-{k}-{body.get('start_at')}",
                        "typeId": f"{kind}_v1",
                        "sourceEventTime": 0 if k == 2 else _ms(created) - 1500,
                        "createdAt": _ms(created),
                        "data": {"campaign": f"camp{k}", "value": k * 10},
                    }
                    section["events"].append(event)
                    if i % 4 == 0 and k == 0:  # a retry: the same event sent again, received later
                        section["events"].append({**event, "createdAt": _ms(created) + 60_000})
            profile = {"sections": {SECTION: section}}
            f.write(("," if i else "") + json.dumps(f"profile-{i:07d}") + ":" + json.dumps(profile))
        f.write("}" + (', "metadata": {"generated": "sandbox"}}' if state.wrap_profiles else ""))


def _validate_export(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    attrs, tags = body.get("attributes") or [], body.get("tags") or []
    if not attrs and not tags:
        return "at least one attribute or tag is required"
    if len(attrs) > 75 or len(tags) > 25:
        return "at most 75 attributes and 25 tags"
    if body.get("events") and not body.get("start_at"):
        return "start_at is mandatory when events are requested"
    if body.get("start_at") and body.get("end_at"):
        start, end = _when(body["start_at"]), _when(body["end_at"])
        if end > start.add(months=3):
            return "maximum export time window for events is three months"
    return None


def make_handler(state: ApsisState) -> type[JsonHandler]:
    class Handler(JsonHandler):
        def _authorized(self) -> bool:
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            with state.lock:
                expires = state.tokens.get(token)
            if expires is None or expires < time.time():
                self.send_json(401, {"title": "Unauthorized"})
                return False
            return True

        def do_POST(self) -> None:
            if self.path == "/oauth/token":
                body = self.read_json() or {}
                state.token_requests += 1
                if (
                    body.get("grant_type") != "client_credentials"
                    or body.get("client_id") != state.client_id
                    or body.get("client_secret") != state.client_secret
                ):
                    self.send_json(401, {"error": "invalid_client"})
                    return
                token = secrets.token_urlsafe(24)
                with state.lock:
                    state.tokens[token] = time.time() + state.token_ttl
                self.send_json(200, {"access_token": token, "expires_in": state.token_ttl, "token_type": "Bearer"})
                return
            if self.path == "/audience/profiles/exports":
                if not self._authorized():
                    return
                body = self.read_json()
                if state.inject_request:
                    self.send_json(state.inject_request.pop(0), {"title": "injected"})
                    return
                problem = _validate_export(body)
                if problem:
                    self.send_json(400, {"title": "Bad Request", "detail": problem})
                    return
                export = Export(uuid.uuid4().hex, body, state.workdir / f"{uuid.uuid4().hex}.json", time.time())
                write_export(export.path, body, state)
                with state.lock:
                    state.requests.append(body)
                    state.exports[export.id] = export
                url = (
                    f"http://{self.headers['Host']}/audience/profiles/exports/{export.id}/file"  # as the client saw us
                )
                self.send_json(201, {state.poll_field: url} if state.poll_field else {"message": f"poll {url}"})
                return
            self.send_json(404, {"title": "Not Found"})

        def do_GET(self) -> None:
            if state.revoke_on_poll and self.path.endswith("/file"):
                with state.lock:
                    if len(state.polls) + 1 == state.revoke_on_poll:
                        state.revoke_on_poll = 0
                        state.revoke_tokens()
            if not self._authorized():
                return
            parts = self.path.strip("/").split("/")
            if self.path == "/audience/sections":
                self.send_json(200, {"items": [{"discriminator": SECTION, "name": "Main section"}]})
            elif len(parts) == 4 and parts[:2] == ["audience", "sections"]:
                kind = parts[3]
                items = {
                    "attributes": [{"discriminator": a, "name": n, "type": t} for a, n, t in ATTRIBUTES],
                    "tags": [{"discriminator": t, "name": n} for t, n in TAGS],
                    "events": [{"discriminator": e, "name": n, "versions": [{"id": f"{e}_v1"}]} for e, n in EVENTS],
                }.get(kind)
                self.send_json(200, {"items": items}) if items is not None else self.send_json(404, {})
            elif len(parts) == 5 and parts[:3] == ["audience", "profiles", "exports"] and parts[4] == "file":
                self._poll(parts[3])
            else:
                self.send_json(404, {"title": "Not Found"})

        def _poll(self, export_id: str) -> None:
            encoding = self.headers.get("Accept-Encoding", "")
            with state.lock:
                export = state.exports.get(export_id)
                injected = state.inject_poll.pop(0) if state.inject_poll else None
                if export is not None:
                    export.polls += 1
            if injected is not None:
                status = injected
            elif export is None or time.time() - export.created > state.export_ttl:
                status = 410
            elif export.polls <= state.polls_until_ready:
                status = 404
            else:
                status = 200
            state.polls.append((status, encoding))
            if status != 200 or export is None:
                self.send_json(
                    status,
                    {"title": "not ready" if status == 404 else "error"},
                    {"Retry-After": "1"} if status == 429 else None,
                )
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            use_gzip = "gzip" in encoding
            if use_gzip:
                self.send_header("Content-Encoding", "gzip")
            else:
                self.send_header("Content-Length", str(export.path.stat().st_size))
            self.end_headers()
            compressor = zlib.compressobj(6, zlib.DEFLATED, 31) if use_gzip else None
            with export.path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    self.wfile.write(compressor.compress(chunk) if compressor else chunk)
            if compressor:
                self.wfile.write(compressor.flush())
            self.close_connection = True

    return Handler


class ApsisEmulator(Emulator):
    def __init__(
        self, workdir: Path, client_id: str = "sandbox-client", client_secret: str | None = None, **options: Any
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.state = ApsisState(client_id, client_secret or secrets.token_urlsafe(16), workdir, **options)
        self.server = LocalServer(make_handler(self.state))

    def env(self) -> dict[str, str]:
        """The dlt configuration of the apsis source for this emulator."""
        return {
            "SOURCES__APSIS__BASE_URL": self.server.base_url,
            "SOURCES__APSIS__CLIENT_ID": self.state.client_id,
            "SOURCES__APSIS__CLIENT_SECRET": self.state.client_secret,
        }


__all__ = ["ApsisEmulator", "ApsisState", "write_export"]
