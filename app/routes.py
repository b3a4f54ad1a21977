"""The HTTP side of `wm play`: the static client (app/web) with its content security policy,
/healthz, the recordings' list and videos, and the checks a websocket handshake at /ws must
pass (token, origin, seed) before it is accepted. Every request must name this server in
its Host header (a loopback name, --host or an --allow-origin host), so that a page whose
domain was rebound to this machine's address cannot reach it."""

from __future__ import annotations

import asyncio
import hmac
import http
import json
import mimetypes
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from app import protocol
from app.config import LOCAL_HOSTS, ServeConfig
from app.recording import VIDEO, ListCache, list_recordings, recording_dir

WEB = Path(__file__).parent / "web"

# The page needs nothing from elsewhere; say so, so an injected resource would not load.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; media-src 'self' blob:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


SEED_RE = re.compile(r"[0-9]{1,10}")  # ASCII digits only: str.isdigit() also takes "²"


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


def text(status: int, body: str, **headers: str) -> Response:
    return response(status, (body + "\n").encode(), "text/plain; charset=utf-8", **headers)


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
        self.hosts = {h.lower().strip("[]") for h in (*LOCAL_HOSTS, cfg.host)}
        self.hosts |= {urlsplit(o).hostname or "" for o in cfg.allow_origin} - {""}
        self._list_cache: ListCache = {}
        self._listing = asyncio.Lock()  # one listing at a time, however often it is asked for

    def token_ok(self, params: dict[str, list[str]]) -> bool:
        if not self.cfg.token:
            return True
        given = params.get("token", [""])[0]
        return hmac.compare_digest(given.encode(), self.cfg.token.encode())

    def host_ok(self, request: Request) -> bool:
        """Host names this server: a rebound domain (evil.example -> 127.0.0.1) does not."""
        try:
            name = urlsplit("//" + request.headers.get("Host", "")).hostname
        except ValueError:
            return False
        return name is not None and name in self.hosts

    def origin_ok(self, request: Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser: nothing to hijack; the token guards it
            return True
        if origin in self.cfg.allow_origin:
            return True
        parts = urlsplit(origin)
        host = request.headers.get("Host", "")
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower() != ""

    async def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        if not self.host_ok(request):
            return text(421, "this server does not answer for that host name")
        if request.method not in ("GET", "HEAD"):
            return text(405, "only GET and HEAD", Allow="GET, HEAD")
        answer = await self.answer(request)
        if answer is not None and request.method == "HEAD":
            answer.body = b""  # Content-Length still tells the size of the GET's body
        return answer

    async def answer(self, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        params = parse_qs(query)
        if path == "/ws":
            if request.method != "GET":
                return text(405, "a websocket handshake is a GET", Allow="GET")
            if not self.token_ok(params):
                return text(401, "missing or wrong token")
            if not self.origin_ok(request):
                return text(403, "origin not allowed")
            if "seed" in params:
                seed = params["seed"][0]
                if not (SEED_RE.fullmatch(seed) and int(seed) <= protocol.MAX_SEED):
                    return text(400, f"seed must be an integer 0..{protocol.MAX_SEED}")
            return None  # go on with the websocket handshake
        if path == "/healthz":
            return json_response(self.health())
        if path == "/recordings" or path.startswith("/recordings/"):
            if not self.token_ok(params):
                return text(401, "missing or wrong token")
            return await self.recordings(path)
        if path in self.static:
            file = self.static[path]
            ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype.endswith("javascript"):
                ctype += "; charset=utf-8"
            return response(200, file.read_bytes(), ctype, Content_Security_Policy=CSP)
        return text(404, "not found")

    async def recordings(self, path: str) -> Response:
        """The list or one video, read on a worker thread: the event loop plays on."""
        if path == "/recordings":
            async with self._listing:
                listed = await asyncio.to_thread(
                    list_recordings, self.cfg.recordings, self._list_cache
                )
            return json_response(listed)
        name = path.removeprefix("/recordings/").removesuffix(".mp4")
        rec = recording_dir(self.cfg.recordings, name) if path.endswith(".mp4") else None
        if rec is None:
            return text(404, "no such recording")
        video = await asyncio.to_thread(_finished_video, rec)
        if video is None:
            return text(409, "recording still in progress or has no video")
        return response(
            200, video, "video/mp4", Content_Disposition=f'attachment; filename="{rec.name}.mp4"'
        )


def _finished_video(rec: Path) -> bytes | None:
    try:
        meta = json.loads((rec / "meta.json").read_text())
        if not meta.get("complete"):
            return None
        return (rec / VIDEO).read_bytes()
    except (OSError, ValueError):
        return None
