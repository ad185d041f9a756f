"""An APSIS One emulator on 127.0.0.1 that behaves as the export documentation says.

OAuth2 client credentials; reference endpoints (sections, attributes, tags, events); POST an export request
(validated: attributes/tags limits, start_at with events, three-month window; 429 when injected); the poll URL
answers 404 while "processing", then 200 streaming a generated export (gzip when asked), 410 once expired or
unknown, and 503 / 429 when injected. Exports are generated to disk and streamed, so they can be large.

For the hostile cases: more attributes and tags than one export may hold, raw profiles added verbatim to the file,
a body trickled slowly, and a second host (`DownloadHost`, http or https) that serves the files without
authentication as a presigned storage URL does, reached from the export answer or by a redirect of the poll URL;
it records every request it gets, so a test can check that no token reached it.
"""

from __future__ import annotations

import json
import secrets
import ssl
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

FILE_PATH = "/audience/profiles/exports/{id}/file"

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
    ready: threading.Event = field(default_factory=threading.Event)  # the file is written ("processed")


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
    extra_attributes: int = 0  # attributes attr_000... listed and exported beside ATTRIBUTES
    extra_tags: int = 0  # tags tag_000... beside TAGS
    inject_profiles: dict[str, Any] = field(default_factory=dict)  # written into every export as they are
    download_base: str = ""  # the export answer points at this host (a DownloadHost) instead of the poll URL
    redirect_base: str = ""  # a ready poll URL answers 307 to this host instead of the file
    trickle_seconds: float = 0.0  # the file is sent in 4 KiB pieces this far apart
    downloads: list[dict[str, str]] = field(default_factory=list)  # what a DownloadHost received: path, headers
    tokens: dict[str, float] = field(default_factory=dict)
    exports: dict[str, Export] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    polls: list[tuple[int, str]] = field(default_factory=list)  # (status, Accept-Encoding)
    token_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def revoke_tokens(self) -> None:
        """Every token issued so far stops working (the client must fetch a new one on 401)."""
        self.tokens.clear()

    def attributes(self) -> list[tuple[str, str, str]]:
        return [*ATTRIBUTES, *((f"attr_{n:03d}", f"Attribute {n}", "string") for n in range(self.extra_attributes))]

    def tags(self) -> list[tuple[str, str]]:
        return [*TAGS, *((f"tag_{n:03d}", f"Tag {n}") for n in range(self.extra_tags))]


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
            values.update({f"attr_{n:03d}": f"{n}-{i}" for n in range(state.extra_attributes)})
            attributes: dict[str, Any] = {a: {"value": values[a]} for a, _, _ in state.attributes() if a in attrs}
            for n, (tag, _) in enumerate(state.tags()):
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
        for n, (key, value) in enumerate(state.inject_profiles.items()):
            f.write(("," if n or state.profiles else "") + json.dumps(key) + ":" + json.dumps(value))
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


def send_export(handler: JsonHandler, export: Export, state: ApsisState) -> None:
    """A 200 streaming the export file: gzip when the request accepts it (no length then), else plain."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    use_gzip = "gzip" in handler.headers.get("Accept-Encoding", "")
    if use_gzip:
        handler.send_header("Content-Encoding", "gzip")
    else:
        handler.send_header("Content-Length", str(export.path.stat().st_size))
    handler.end_headers()
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31) if use_gzip else None
    piece = 4096 if state.trickle_seconds else 1 << 20
    with export.path.open("rb") as f:
        while chunk := f.read(piece):
            handler.wfile.write(compressor.compress(chunk) if compressor else chunk)
            if state.trickle_seconds:
                handler.wfile.flush()
                time.sleep(state.trickle_seconds)
    if compressor:
        handler.wfile.write(compressor.flush())
    handler.close_connection = True


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
                with state.lock:
                    state.requests.append(body)
                    state.exports[export.id] = export

                def process() -> None:
                    write_export(export.path, body, state)
                    export.ready.set()

                # a small export is ready at once (tests count polls); a large one is still "processing" (404) when
                # the answer goes out, as APSIS does, rather than holding the request past a client's read timeout
                writer = threading.Thread(target=process, name=f"export-{export.id}", daemon=True)
                writer.start()
                writer.join(timeout=5)
                base = state.download_base or f"http://{self.headers['Host']}"  # as the client saw us
                url = base + FILE_PATH.format(id=export.id)
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
                    "attributes": [{"discriminator": a, "name": n, "type": t} for a, n, t in state.attributes()],
                    "tags": [{"discriminator": t, "name": n} for t, n in state.tags()],
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
            elif export.polls <= state.polls_until_ready or not export.ready.is_set():
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
            if state.redirect_base:
                self.send_response(307)
                self.send_header("Location", state.redirect_base + FILE_PATH.format(id=export.id))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            send_export(self, export, state)

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


class DownloadHost(Emulator):
    """Another host serving an emulator's export files without authentication, as a presigned storage URL does.
    Over https with an SSL context (the caller's certificate), else plain http. It records the path and headers of
    every request in state.downloads."""

    def __init__(self, state: ApsisState, context: ssl.SSLContext | None = None) -> None:
        class Handler(JsonHandler):
            def do_GET(self) -> None:
                with state.lock:
                    state.downloads.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
                    parts = self.path.strip("/").split("/")
                    export = state.exports.get(parts[3]) if len(parts) == 5 else None
                if export is None or not export.ready.is_set():
                    self.send_json(404, {"title": "Not Found"})
                    return
                send_export(self, export, state)

        self.server = LocalServer(Handler)
        self.scheme = "http"
        if context is not None:
            self.server.httpd.socket = context.wrap_socket(self.server.httpd.socket, server_side=True)
            self.scheme = "https"

    @property
    def base_url(self) -> str:
        return self.server.base_url.replace("http://", f"{self.scheme}://", 1)


__all__ = ["ApsisEmulator", "ApsisState", "DownloadHost", "write_export"]
