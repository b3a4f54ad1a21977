"""Shared by the serving tests: a real server on a free port and websocket helpers."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from app import protocol
from app.config import ServeConfig
from app.play import World, load_world
from app.server import PlayServer

TIMEOUT = 30.0  # generous: two shared cores, and other tests may run beside these


class ServerThread:
    """A PlayServer on its own event loop in a background thread."""

    def __init__(self, cfg: ServeConfig, factory: Callable[[], World] | None = None,
                 first: World | None = None):
        if factory is None:
            factory, first = load_world(cfg)
        self.server = PlayServer(cfg, factory, first if first is not None else factory())
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._stop = self._loop.create_future()
        self._loop.run_until_complete(self.server.serve(self._stop, lambda _: self._ready.set()))

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(TIMEOUT):
            raise RuntimeError("server did not start")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(
                lambda: self._stop.done() or self._stop.set_result(None)
            )
            self._thread.join(TIMEOUT)

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_server(recordings: Path, checkpoint: Path | None = None, **cfg: Any) -> ServerThread:
    """A server on 127.0.0.1 and a free port, serving checkpoint (or the game if None)."""
    config = ServeConfig(
        port=0,
        checkpoint=str(checkpoint) if checkpoint is not None else "default",
        game=checkpoint is None,
        size=cfg.pop("size", 32),
        recordings=recordings,
        max_sessions=cfg.pop("max_sessions", 2),  # fixed, not measured: the tests count on it
        **cfg,
    )
    return ServerThread(config).__enter__()


def ws_url(server: ServerThread, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return server.url.replace("http://", "ws://") + "/ws" + (f"?{query}" if query else "")


def open_ws(server: ServerThread, origin: str | None = None, **params: Any) -> ClientConnection:
    return connect(ws_url(server, **params), origin=origin, open_timeout=TIMEOUT, proxy=None)


def recv_until(
    ws: ClientConnection, want: Callable[[Any], bool], timeout: float = TIMEOUT
) -> tuple[Any, list[Any]]:
    """Receive until want(message) holds; returns it and everything received before it.
    Text messages come back parsed; frames as (header, jpeg)."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no wanted message in {timeout} s; got {summary(seen)}")
        raw = ws.recv(timeout=left)
        msg = json.loads(raw) if isinstance(raw, str) else protocol.decode_frame(raw)
        if want(msg):
            return msg, seen
        seen.append(msg)


def is_frame(msg: Any, stream: int = protocol.STREAM_DREAM) -> bool:
    return isinstance(msg, tuple) and msg[0]["stream"] == stream


def is_type(kind: str) -> Callable[[Any], bool]:
    return lambda msg: isinstance(msg, dict) and msg.get("type") == kind


def frames(ws: ClientConnection, n: int, timeout: float = TIMEOUT) -> list[tuple[dict, bytes]]:
    """The next n dream frames, skipping anything else."""
    return [recv_until(ws, is_frame, timeout)[0] for _ in range(n)]


def send(ws: ClientConnection, **msg: Any) -> None:
    ws.send(json.dumps(msg))


def wait_for(cond: Callable[[], Any], timeout: float = TIMEOUT, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def summary(msgs: list[Any]) -> str:
    kinds = [m.get("type") if isinstance(m, dict) else "frame" for m in msgs]
    return ", ".join(kinds[-10:]) or "nothing"
