"""An emulator of ASAPP's File Exporter API on 127.0.0.1, serving an export tree (loaders/sandbox/exports.py) from
disk as it is at each request.

Requests are checked against the published OpenAPI spec (loaders/asapp_sftp/transports/file_exporter_openapi.yml)
by openapi-core, and the API headers against the configured id and secret. getfeedfile answers a presigned URL on a
second server (the "store", another port: another host to the client) that expires after url_ttl seconds (then
403, as S3 answers). The store records the headers of every download, so a test can check that no API header
reached it. On demand it injects what a real service may answer: 401, 429 with Retry-After, 5xx, and an expired
URL ("expire": the next download answers 403)."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest

from loaders.asapp_sftp.transports.file_exporter import API, SPEC_PATH
from loaders.sandbox.http_server import Emulator, JsonHandler, LocalServer
from loaders.yaml_load import safe_load

SUCCESS = "_SUCCESS"


@dataclass
class FileExporterState:
    root: Path
    api_id: str
    api_secret: str
    url_ttl: float = 300.0  # seconds a presigned URL stays valid
    list_success: bool = True  # listfeedfiles names the _SUCCESS flags (the API documents none)
    inject: list[int | str] = field(default_factory=list)  # the next API answers: a status, or "expire"
    retry_after: str = "0"  # of an injected 429
    key: bytes = field(default_factory=lambda: uuid.uuid4().bytes)  # signs the presigned URLs
    calls: list[str] = field(default_factory=list)  # operations answered, in order
    invalid_requests: list[str] = field(default_factory=list)
    download_headers: list[dict[str, str]] = field(default_factory=list)  # what the store saw, per download
    expire_next: int = 0  # downloads to answer 403 (an injected "expire")
    lock: threading.Lock = field(default_factory=threading.Lock)


def _error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"requestId": uuid.uuid4().hex, "message": message, "code": f"{status}-01"}}


def _openapi() -> OpenAPI:
    document = copy.deepcopy(safe_load(SPEC_PATH.read_text(encoding="utf-8")))
    document["servers"] = [{"url": "/"}]  # validate whatever host we are reached at
    return OpenAPI.from_dict(document)


class _Tree:
    """The export tree as the API shows it; a name that would leave the root is not found."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def folder(self, *parts: str) -> Path | None:
        path = self.root.joinpath(*parts).resolve()
        inside = path == self.root or self.root in path.parents
        return path if inside and path.is_dir() else None

    def names(self, folder: Path | None, prefix: str = "", dirs: bool = True) -> list[str]:
        if folder is None:
            return []
        found = [
            p.name.removeprefix(prefix)
            for p in sorted(folder.iterdir())
            if p.is_dir() == dirs and p.name.startswith(prefix) and not p.name.startswith(".")
        ]
        return found


def make_api_handler(state: FileExporterState, store: LocalServer) -> type[JsonHandler]:
    openapi = _openapi()
    tree = _Tree(state.root)

    class Handler(JsonHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            status, body, headers = self._answer(raw)
            self.send_json(status, body, headers)

        def _answer(self, raw: bytes) -> tuple[int, Any, dict[str, str]]:
            if not self.path.startswith(API):
                return 404, _error(404, "Not Found"), {}
            operation = self.path.removeprefix(API)
            request = requests.Request(
                "POST", f"http://{self.headers['Host']}{self.path}", data=raw, headers=dict(self.headers.items())
            ).prepare()
            errors = [
                str(getattr(e, "schema_errors", None) or e)
                for e in openapi.iter_request_errors(RequestsOpenAPIRequest(request))
            ]
            if self.headers.get("asapp-api-id") != state.api_id or self.headers.get("asapp-api-secret") != (
                state.api_secret
            ):
                return 401, _error(401, "Unauthorized"), {}
            with state.lock:
                injected = state.inject.pop(0) if state.inject else None
                if injected == "expire":
                    state.expire_next += 1
            if isinstance(injected, int):
                headers = {"Retry-After": state.retry_after} if injected == 429 else {}
                return injected, _error(injected, "injected"), headers
            if errors:
                state.invalid_requests.append(f"{operation}: {'; '.join(errors)[:500]}")
                return 400, _error(400, "Bad request"), {}
            body = json.loads(raw or b"{}")
            with state.lock:
                state.calls.append(operation)
            return self._listing(operation, body)

        def _listing(self, operation: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
            feed = body.get("feed", "")
            version = f"version={body.get('version', '')}"
            fmt = f"format={body.get('format', '')}"
            day = f"dt={body.get('date', '')}"
            if operation == "listfeeds":
                return 200, {"feeds": tree.names(tree.folder())}, {}
            if operation == "listfeedversions":
                folder = tree.folder(feed) if feed else None
                return self._found(folder, {"feed": feed, "versions": tree.names(folder, "version=")})
            if operation == "listfeedformats":
                folder = tree.folder(feed, version)
                formats = tree.names(folder, "format=")
                return self._found(folder, {"feed": feed, "version": body["version"], "formats": formats})
            if operation == "listfeeddates":
                folder = tree.folder(feed, version, fmt)
                return self._found(folder, {**body, "dates": tree.names(folder, "dt=")})
            if operation == "listfeedintervals":
                folder = tree.folder(feed, version, fmt, day)
                intervals = [
                    f"{hr}/{mi}"
                    for hr in tree.names(folder)
                    for mi in tree.names(tree.folder(feed, version, fmt, day, hr))
                ]
                return self._found(folder, {**body, "intervals": intervals})
            interval = str(body.get("interval", "")).split("/")
            folder = tree.folder(feed, version, fmt, day, *interval)
            if operation == "listfeedfiles":
                files = [n for n in tree.names(folder, dirs=False) if state.list_success or n != SUCCESS]
                return self._found(folder, {**body, "files": files})
            if operation == "getfeedfile":
                name = str(body.get("fileName", ""))
                path = folder / name if folder is not None and "/" not in name else None
                if path is None or not path.is_file():
                    return 404, _error(404, "Not Found"), {}
                relative = path.relative_to(tree.root).as_posix()
                return 200, {**body, "url": _presign(state, store.base_url, relative)}, {}
            return 404, _error(404, "Not Found"), {}

        @staticmethod
        def _found(what: Any, answer: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
            return (200, answer, {}) if what else (404, _error(404, "Not Found"), {})

    return Handler


def _signature(state: FileExporterState, path: str, expires: str) -> str:
    return hmac.new(state.key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def _presign(state: FileExporterState, base_url: str, relative: str) -> str:
    expires = str(int(time.time() + state.url_ttl))
    return f"{base_url}/{quote(relative)}?X-Expires={expires}&X-Signature={_signature(state, relative, expires)}"


def make_store_handler(state: FileExporterState) -> type[BaseHTTPRequestHandler]:
    root = state.root.resolve()

    class Store(JsonHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            with state.lock:
                state.download_headers.append({k.lower(): v for k, v in self.headers.items()})
                expired_now = state.expire_next > 0
                state.expire_next = max(0, state.expire_next - 1)
            url = urlsplit(self.path)
            relative = unquote(url.path.lstrip("/"))
            query = parse_qs(url.query)
            expires = (query.get("X-Expires") or ["0"])[0]
            signature = (query.get("X-Signature") or [""])[0]
            valid = hmac.compare_digest(signature, _signature(state, relative, expires))
            if expired_now or not valid or not expires.isdigit() or int(expires) < time.time():
                self.send_json(403, {"Code": "AccessDenied", "Message": "Request has expired"})
                return
            path = (root / relative).resolve()
            if root not in path.parents or not path.is_file():
                self.send_json(404, {"Code": "NoSuchKey"})
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Store


class FileExporterEmulator(Emulator):
    def __init__(self, root: Path, api_id: str = "sandbox-api-id", api_secret: str | None = None, **options: Any):
        self.state = FileExporterState(root, api_id, api_secret or uuid.uuid4().hex, **options)
        self.store = LocalServer(make_store_handler(self.state))
        self.server = LocalServer(make_api_handler(self.state, self.store))

    def start(self) -> str:
        self.store.start()
        return self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.store.stop()

    def env(self) -> dict[str, str]:
        """The File Exporter transport's settings for this emulator (and short retry waits)."""
        return {
            "SOURCES__ASAPP_FILE_EXPORTER__BASE_URL": self.server.base_url,
            "SOURCES__ASAPP_FILE_EXPORTER__API_ID": self.state.api_id,
            "SOURCES__ASAPP_FILE_EXPORTER__API_SECRET": self.state.api_secret,
            "SOURCES__ASAPP_FILE_EXPORTER__RETRY_WAIT_SECONDS": "0.05",
        }
