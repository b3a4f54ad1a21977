"""The HTTP side of `wm play`: the static client (app/web) with its content security policy,
/healthz, the recordings' list and videos, and the checks a websocket handshake at /ws must
pass (token, origin, seed) before it is accepted."""

from __future__ import annotations

import hmac
import http
import json
import mimetypes
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from app import protocol
from app.config import ServeConfig
from app.recording import VIDEO, list_recordings, recording_dir

WEB = Path(__file__).parent / "web"

# The page needs nothing from elsewhere; say so, so an injected resource would not load.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; media-src 'self' blob:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def response(status: int, body: bytes, content_type: str, **headers: str) -> Response:
    h = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Connection", "close"),
        ]
    )
    for k, v in headers.items():
        h[k.replace("_", "-")] = v
    return Response(status, http.HTTPStatus(status).phrase, h, body)


def text(status: int, body: str) -> Response:
    return response(status, (body + "\n").encode(), "text/plain; charset=utf-8")


def json_response(obj: Any, status: int = 200) -> Response:
    return response(status, json.dumps(obj).encode(), "application/json")


class Routes:
    """`process_request` of the websockets server: an HTTP answer, or None to go on with
    the websocket handshake. `health` gives /healthz its body."""

    def __init__(self, cfg: ServeConfig, health: Callable[[], dict[str, Any]]):
        self.cfg = cfg
        self.health = health
        self.static = {f"/{p.name}": p for p in WEB.iterdir() if p.is_file()}
        self.static["/"] = WEB / "index.html"

    def token_ok(self, params: dict[str, list[str]]) -> bool:
        if not self.cfg.token:
            return True
        given = params.get("token", [""])[0]
        return hmac.compare_digest(given.encode(), self.cfg.token.encode())

    def origin_ok(self, request: Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser: nothing to hijack; the token guards it
            return True
        if origin in self.cfg.allow_origin:
            return True
        host = request.headers.get("Host", "")
        return urlsplit(origin).netloc.lower() == host.lower() and host != ""

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        params = parse_qs(query)
        if path == "/ws":
            if not self.token_ok(params):
                return text(401, "missing or wrong token")
            if not self.origin_ok(request):
                return text(403, "origin not allowed")
            if "seed" in params:
                seed = params["seed"][0]
                if not (seed.isdigit() and int(seed) <= protocol.MAX_SEED):
                    return text(400, f"seed must be an integer 0..{protocol.MAX_SEED}")
            return None  # go on with the websocket handshake
        if path == "/healthz":
            return json_response(self.health())
        if path == "/recordings" or path.startswith("/recordings/"):
            if not self.token_ok(params):
                return text(401, "missing or wrong token")
            return self.recordings(path)
        if path in self.static:
            file = self.static[path]
            ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype.endswith("javascript"):
                ctype += "; charset=utf-8"
            return response(200, file.read_bytes(), ctype, Content_Security_Policy=CSP)
        return text(404, "not found")

    def recordings(self, path: str) -> Response:
        if path == "/recordings":
            return json_response(list_recordings(self.cfg.recordings))
        name = path.removeprefix("/recordings/").removesuffix(".mp4")
        rec = recording_dir(self.cfg.recordings, name) if path.endswith(".mp4") else None
        if rec is None:
            return text(404, "no such recording")
        meta = json.loads((rec / "meta.json").read_text())
        if not meta.get("complete") or not (rec / VIDEO).is_file():
            return text(409, "recording still in progress or has no video")
        return response(
            200,
            (rec / VIDEO).read_bytes(),
            "video/mp4",
            Content_Disposition=f'attachment; filename="{rec.name}.mp4"',
        )
