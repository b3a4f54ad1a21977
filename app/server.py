"""`wm play`: serve the world model (or, with --game, the real game) to the browser client.

One asyncio websockets server. Plain HTTP GETs get the static client (app/web), /healthz
and the recordings; the websocket at /ws is a play session (docs/protocol.md). Each
connection runs three tasks, cancelled together when any of them ends:

    receive   JSON messages -> validated (app.protocol) -> input accumulator / controls
    produce   at the model's pace, capped at the fps: take the action, step the world on the
              connection's own worker thread, put the encoded frames into the slot
    send      slot -> websocket; the slot holds only the newest frames, so a slow client
              skips frames instead of building a backlog, and sending never blocks a step

The world, the game beside it and the recording are touched only on the worker thread, one
call at a time, so none of them needs a lock.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import http
import io
import json
import logging
import mimetypes
import os
import random
import signal
import sys
import threading
import time
import webbrowser
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from app import protocol
from app.recording import VIDEO, Recording, list_recordings, recording_dir
from worldmodel.actions import NOOP, Action

log = logging.getLogger("wm.play")
WEB = Path(__file__).parent / "web"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8765  # 0 picks a free port
    checkpoint: str = "default"
    device: str = "cpu"
    game: bool = False  # serve the real game instead of a model
    size: int = 64  # frame side of the real game with --game
    token: str | None = None
    max_sessions: int | None = None  # None: 2 on CPU, 4 on an accelerator
    recordings: Path = Path("recordings")
    fps: float | None = None  # cap on frames per second; None: the model's training fps
    allow_origins: tuple[str, ...] = ()  # besides the server's own origin
    jpeg_quality: int = 90
    rate_limit: float = 120.0  # client messages per second, with a burst of the same size
    mouse_px_per_unit: float = 60.0  # mouse pixels in one frame that make a full-speed turn
    arrow_rate: float = 0.5  # yaw/pitch while an arrow key is held
    record_video: bool = True
    threads: int | None = None  # torch threads on CPU; None: the cores shared among sessions

    def __post_init__(self) -> None:
        if self.max_sessions is None:
            self.max_sessions = 2 if self.device == "cpu" else 4
        if self.threads is None:
            self.threads = max(1, (os.cpu_count() or 1) // self.max_sessions)
        self.recordings = Path(self.recordings)


class GameSession:
    """The real procedural game behind WorldSession's interface (`wm play --game`): to play
    the ground truth and to record training episodes by hand. Context frames are not
    needed: the game restarts from its seed."""

    name = "game"
    checkpoint_hash = ""
    context_length = 1

    def __init__(self, size: int):
        from worldmodel.game import Game

        self._game_cls = Game
        self.size = size
        self.fps = Game.fps
        self.card = {
            "name": "game",
            "source": "worldmodel.game.Game",
            "size": size,
            "fps": self.fps,
        }
        self.frame_index = 0
        self.last_timings = {"model_ms": 0.0, "decode_ms": 0.0, "total_ms": 0.0}
        self._game = None

    def reset(self, context_frames: Any, context_actions: Any = None, seed: int = 0) -> None:
        self._game = self._game_cls(seed, self.size)
        self._game.reset()
        self.frame_index = 0

    def state(self) -> dict[str, Any]:
        """The game's state, from which `Game.restore` continues exactly."""
        return self._game.state()

    def step(self, action: Action) -> np.ndarray:
        t0 = time.perf_counter()
        frame = self._game.step(action)
        ms = (time.perf_counter() - t0) * 1000
        self.last_timings = {"model_ms": ms, "decode_ms": 0.0, "total_ms": ms}
        self.frame_index += 1
        return frame


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    # 4:4:4: chroma subsampling smears colour edges that nearest-neighbour scaling shows
    Image.fromarray(frame).save(buf, "JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


class Play:
    """One player's world. Every method runs on the connection's worker thread."""

    def __init__(self, world: Any, cfg: ServeConfig, checkpoint_meta: dict[str, Any]):
        self.world = world
        self.cfg = cfg
        self.checkpoint_meta = checkpoint_meta
        self.dream = not isinstance(world, GameSession)
        self.game = None  # the real game beside the dream
        self.recording: Recording | None = None
        self.seed = 0
        self.frame = 0  # frames since the world began (recording does not restart the count)
        self.history: deque[tuple[np.ndarray, Action]] = deque(maxlen=world.context_length)
        self.last_game_frame: np.ndarray | None = None

    def _encode(self, frame, *, seq=0, ms=0.0, stream=protocol.STREAM_DREAM) -> bytes:
        flags = protocol.FLAG_RECORDING if self.recording is not None else 0
        return protocol.encode_frame(
            encode_jpeg(frame, self.cfg.jpeg_quality),
            frame=self.frame,
            seq=seq,
            gen_ms=ms,
            server_ms=time.time() * 1000,
            stream=stream,
            flags=flags,
        )

    def _new_world(self, seed: int) -> np.ndarray:
        """Start the world from seed: context frames from the real game (its reset frame,
        then frames of no input) start the model, and the same game runs on beside it.
        Returns the frame on screen now."""
        from worldmodel.game import Game

        self.seed = seed
        game = Game(seed, self.world.size)
        frames = [game.reset()]
        frames += [game.step(NOOP) for _ in range(self.world.context_length - 1)]
        actions = [NOOP] * len(frames)
        self.world.reset(np.stack(frames), actions, seed=seed)
        self.game = game if self.dream else None
        self.last_game_frame = frames[-1] if self.dream else None
        self.history.clear()
        self.history.extend(zip(frames, actions, strict=True))
        self.frame = 0
        return frames[-1]

    def reset(self, seed: int, side_by_side: bool) -> list[bytes]:
        frame = self._new_world(seed)
        out = [self._encode(frame)]
        if side_by_side and self.game is not None:
            out.append(self._encode(frame, stream=protocol.STREAM_GAME))
        return out

    def tick(self, action: Action, seq: int, side_by_side: bool) -> list[bytes]:
        frame = self.world.step(action)
        ms = float(self.world.last_timings.get("total_ms", 0.0))
        self.frame += 1
        self.history.append((frame, action))
        if self.recording is not None:
            self.recording.append(frame, action, ms)
        out = [self._encode(frame, seq=seq, ms=ms)]
        if self.game is not None:
            t0 = time.perf_counter()
            self.last_game_frame = self.game.step(action)
            game_ms = (time.perf_counter() - t0) * 1000
            if side_by_side:
                out.append(
                    self._encode(
                        self.last_game_frame, seq=seq, ms=game_ms, stream=protocol.STREAM_GAME
                    )
                )
        return out

    def game_frame(self) -> list[bytes]:
        if self.last_game_frame is None:
            return []
        return [self._encode(self.last_game_frame, stream=protocol.STREAM_GAME)]

    def start_recording(self) -> None:
        """Start recording from the frame on screen now.

        A dream is re-anchored there: the model is reset with its last context_length frames
        and their actions, which the recording keeps, so that replay can regenerate every
        recorded frame from them. The real game records its state (`Game.state()`) with the
        frame on screen as frame 0, as the pygame window does.
        """
        if self.recording is not None:
            return
        common = dict(
            size=self.world.size,
            fps=int(self.world.fps),
            seed=self.seed,
            video=self.cfg.record_video,
            start_frame=self.frame,
            settings={"fps_cap": self.cfg.fps, "jpeg_quality": self.cfg.jpeg_quality},
        )
        if self.dream:
            frames = np.stack([f for f, _ in self.history])
            actions = [a for _, a in self.history]
            self.world.reset(frames, actions, seed=self.seed)
            self.recording = Recording(
                self.cfg.recordings,
                source="dream",
                context_frames=frames,
                context_actions=actions,
                checkpoint=self.checkpoint_meta,
                device=self.cfg.device,
                card=self.world.card,
                **common,
            )
        else:
            frame, action = self.history[-1]
            self.recording = Recording(
                self.cfg.recordings, source="game", start=self.world.state(), **common
            )
            self.recording.append(frame, action)

    def stop_recording(self) -> dict[str, Any] | None:
        rec, self.recording = self.recording, None
        if rec is None:
            return None
        rec.close()
        return {"name": rec.name, "frames": rec.count}

    def close(self) -> None:
        self.stop_recording()


class LatestSlot:
    """Holds only the newest item: a slow reader gets the latest, never a queue."""

    def __init__(self) -> None:
        self._item: Any = None
        self._ready = asyncio.Event()

    def put(self, item: Any) -> None:
        self._item = item
        self._ready.set()

    async def get(self) -> Any:
        await self._ready.wait()
        self._ready.clear()
        item, self._item = self._item, None
        return item


class RateLimiter:
    """Token bucket: `rate` messages per second on average, bursts of up to `rate`."""

    def __init__(self, rate: float):
        self.rate = rate
        self.tokens = rate
        self.last = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class WorldPool:
    """Loaded worlds waiting for players. Loading a checkpoint takes a while, so a world is
    kept for the next player rather than thrown away; at most `limit` exist at once."""

    def __init__(self, factory: Callable[[], Any], limit: int, first: Any):
        self.factory = factory
        self.limit = limit
        self.first = first  # metadata (name, size, fps) comes from here
        self._idle = [first]
        self.in_use = 0

    def reserve(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    async def take(self) -> Any:
        if self._idle:
            return self._idle.pop()
        return await asyncio.to_thread(self.factory)

    def give_back(self, world: Any | None) -> None:
        """Return a reservation, with its world if that world is idle and reusable."""
        self.in_use -= 1
        if world is not None:
            self._idle.append(world)


class Connection:
    """One player on one websocket."""

    def __init__(self, server: PlayServer, ws: ServerConnection, world: Any, seed: int):
        self.server = server
        self.cfg = server.cfg
        self.ws = ws
        self.seed = seed
        self.play = Play(world, self.cfg, server.checkpoint_meta)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="wm-play")
        self.inputs = protocol.InputAccumulator(self.cfg.mouse_px_per_unit, self.cfg.arrow_rate)
        self.limiter = RateLimiter(self.cfg.rate_limit)
        self.slot = LatestSlot()
        self.running = asyncio.Event()
        self.running.set()
        self.side_by_side = False
        self._last_rate_error = 0.0

    async def _call(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _hello(self) -> str:
        world = self.play.world
        return protocol.dumps(
            "hello",
            protocol=protocol.PROTOCOL_VERSION,
            mode="dream" if self.play.dream else "game",
            model=world.name,
            checkpoint_hash=world.checkpoint_hash,
            size=world.size,
            fps=self.server.fps,
            context_length=world.context_length,
            side_by_side=self.play.dream,
            header_bytes=protocol.FRAME_HEADER.size,
            max_message_bytes=protocol.MAX_MESSAGE_BYTES,
            rate_limit=self.cfg.rate_limit,
            keys=list(protocol.INPUT_KEYS),
        )

    async def run(self) -> bool:
        """Serve until the client leaves; True when the world is idle and can be reused."""
        tasks: list[asyncio.Task] = []
        reusable = False
        try:
            await self.ws.send(self._hello())
            self.slot.put(await self._call(self.play.reset, self.seed, False))
            await self._send_state()
            tasks = [
                asyncio.create_task(self._receive(), name="receive"),
                asyncio.create_task(self._produce(self.server.fps), name="produce"),
                asyncio.create_task(self._send_frames(), name="send"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None and not isinstance(exc, ConnectionClosed):
                    log.error("session failed in %s", task.get_name(), exc_info=exc)
                    await self._try_send(protocol.error("internal", f"server error: {exc}"))
                    await self.ws.close(1011, "server error")
        except ConnectionClosed:
            pass  # the client left while the session was starting
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # queued behind a step that may still be running, never beside it
            closing = asyncio.get_running_loop().run_in_executor(self.executor, self.play.close)
            self.executor.shutdown(wait=False)
            await asyncio.shield(closing)
            reusable = True
        return reusable

    async def _try_send(self, message: str | bytes) -> None:
        try:
            await self.ws.send(message)
        except ConnectionClosed:
            pass

    async def _send_state(self) -> None:
        rec = self.play.recording
        await self.ws.send(
            protocol.dumps(
                "state",
                seed=self.play.seed,
                paused=not self.running.is_set(),
                side_by_side=self.side_by_side,
                recording=rec.name if rec is not None else None,
                frame=self.play.frame,
            )
        )

    async def _receive(self) -> None:
        async for data in self.ws:
            if not self.limiter.allow():
                now = time.monotonic()
                if now - self._last_rate_error >= 1.0:  # one error a second, not one per message
                    self._last_rate_error = now
                    await self.ws.send(
                        protocol.error(
                            "rate_limited",
                            f"more than {self.cfg.rate_limit:g} messages/s: messages dropped",
                        )
                    )
                continue
            try:
                msg = protocol.parse_message(data)
            except protocol.ProtocolError as e:
                await self.ws.send(protocol.error(e.code, str(e)))
                continue
            await self._handle(msg)

    async def _handle(self, msg: protocol.Message) -> None:
        if isinstance(msg, protocol.Input):
            if self.running.is_set():
                self.inputs.add(msg)
        elif isinstance(msg, protocol.Ping):
            await self.ws.send(protocol.dumps("pong", t=msg.t, server_ms=time.time() * 1000))
        elif isinstance(msg, protocol.Reset):
            seed = msg.seed if msg.seed is not None else random.randrange(protocol.MAX_SEED)
            await self._stopped_recording(await self._call(self.play.stop_recording))
            self.inputs.clear()
            self.slot.put(await self._call(self.play.reset, seed, self.side_by_side))
            await self._send_state()
        elif isinstance(msg, protocol.Record):
            if msg.on:
                await self._call(self.play.start_recording)
            else:
                await self._stopped_recording(await self._call(self.play.stop_recording))
            await self._send_state()
        elif isinstance(msg, protocol.Pause):
            if msg.on:
                self.running.clear()
            else:
                self.running.set()
            self.inputs.clear()
            await self._send_state()
        elif isinstance(msg, protocol.SideBySide):
            if msg.on and not self.play.dream:
                await self.ws.send(
                    protocol.error("unsupported", "side-by-side needs a model; this is --game")
                )
                return
            if msg.on and not self.side_by_side:
                self.slot.put(await self._call(self.play.game_frame))
            self.side_by_side = msg.on
            await self._send_state()

    async def _stopped_recording(self, info: dict[str, Any] | None) -> None:
        if info is not None:
            log.info("recording %s saved: %d frames", info["name"], info["frames"])
            await self.ws.send(protocol.dumps("saved", **info))

    async def _produce(self, fps: float) -> None:
        period = 1.0 / fps
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            if not self.running.is_set():
                await self.running.wait()
                deadline = loop.time()
            action, seq = self.inputs.take()
            self.slot.put(await self._call(self.play.tick, action, seq, self.side_by_side))
            # behind schedule: carry on at the model's pace, no burst to catch up
            deadline = max(deadline + period, loop.time())
            await asyncio.sleep(deadline - loop.time())

    async def _send_frames(self) -> None:
        while True:
            for message in await self.slot.get():
                await self.ws.send(message)


def _response(status: int, body: bytes, content_type: str, **headers: str) -> Response:
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


def _text(status: int, text: str) -> Response:
    return _response(status, (text + "\n").encode(), "text/plain; charset=utf-8")


def _json(obj: Any, status: int = 200) -> Response:
    return _response(status, json.dumps(obj).encode(), "application/json")


# The page needs nothing from elsewhere; say so, so an injected resource would not load.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; media-src 'self' blob:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


class PlayServer:
    """The server's state: configuration, the world pool and the static files."""

    def __init__(self, cfg: ServeConfig, factory: Callable[[], Any], first_world: Any):
        self.cfg = cfg
        self.pool = WorldPool(factory, cfg.max_sessions, first_world)
        self.fps = float(cfg.fps or first_world.fps)
        self.started = time.time()
        path = Path(cfg.checkpoint)
        self.checkpoint_meta = {
            "name": first_world.name,
            "hash": first_world.checkpoint_hash,
            "path": str(path.resolve()) if path.exists() else cfg.checkpoint,
        }
        self.static = {f"/{p.name}": p for p in WEB.iterdir() if p.is_file()}
        self.static["/"] = WEB / "index.html"
        self.port: int | None = None

    # ------------------------------------------------------------------ HTTP

    def _token_ok(self, params: dict[str, list[str]]) -> bool:
        if not self.cfg.token:
            return True
        given = params.get("token", [""])[0]
        return hmac.compare_digest(given.encode(), self.cfg.token.encode())

    def _origin_ok(self, request: Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser: nothing to hijack; the token guards it
            return True
        if origin in self.cfg.allow_origins:
            return True
        host = request.headers.get("Host", "")
        return urlsplit(origin).netloc.lower() == host.lower() and host != ""

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        params = parse_qs(query)
        if path == "/ws":
            if not self._token_ok(params):
                return _text(401, "missing or wrong token")
            if not self._origin_ok(request):
                return _text(403, "origin not allowed")
            if "seed" in params:
                seed = params["seed"][0]
                if not (seed.isdigit() and int(seed) <= protocol.MAX_SEED):
                    return _text(400, f"seed must be an integer 0..{protocol.MAX_SEED}")
            return None  # go on with the websocket handshake
        if path == "/healthz":
            return _json(self.health())
        if path == "/recordings" or path.startswith("/recordings/"):
            if not self._token_ok(params):
                return _text(401, "missing or wrong token")
            return self._recordings(path)
        if path in self.static:
            file = self.static[path]
            ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype.endswith("javascript"):
                ctype += "; charset=utf-8"
            return _response(200, file.read_bytes(), ctype, Content_Security_Policy=CSP)
        return _text(404, "not found")

    def _recordings(self, path: str) -> Response:
        if path == "/recordings":
            return _json(list_recordings(self.cfg.recordings))
        name = path.removeprefix("/recordings/").removesuffix(".mp4")
        rec = recording_dir(self.cfg.recordings, name) if path.endswith(".mp4") else None
        if rec is None:
            return _text(404, "no such recording")
        meta = json.loads((rec / "meta.json").read_text())
        if not meta.get("complete") or not (rec / VIDEO).is_file():
            return _text(409, "recording still in progress or has no video")
        return _response(
            200,
            (rec / VIDEO).read_bytes(),
            "video/mp4",
            Content_Disposition=f'attachment; filename="{rec.name}.mp4"',
        )

    def health(self) -> dict[str, Any]:
        world = self.pool.first
        return {
            "ok": True,
            "mode": "game" if isinstance(world, GameSession) else "dream",
            "model": world.name,
            "size": world.size,
            "fps": self.fps,
            "sessions": self.pool.in_use,
            "max_sessions": self.pool.limit,
            "uptime_s": round(time.time() - self.started, 1),
        }

    # ------------------------------------------------------------- websocket

    async def handler(self, ws: ServerConnection) -> None:
        if not self.pool.reserve():
            await ws.send(
                protocol.dumps(
                    "busy",
                    error=f"server busy: all {self.pool.limit} sessions are in use; try again later",
                    max_sessions=self.pool.limit,
                )
            )
            await ws.close(1013, "server busy")  # 1013: try again later
            return
        world = None
        reusable = False
        peer = ws.remote_address[0] if ws.remote_address else "?"
        try:
            world = await self.pool.take()
            params = parse_qs(urlsplit(ws.request.path).query)
            seed = int(params["seed"][0]) if "seed" in params else random.randrange(2**31 - 1)
            log.info("session from %s (%d/%d)", peer, self.pool.in_use, self.pool.limit)
            reusable = await Connection(self, ws, world, seed).run()
        finally:
            self.pool.give_back(world if reusable else None)
            log.info("session from %s ended (%d/%d)", peer, self.pool.in_use, self.pool.limit)

    async def serve(self, stop: asyncio.Future, ready: Callable[[int], None] | None = None) -> None:
        """Serve until `stop` is done; then close every session and its recording."""
        async with serve(
            self.handler,
            self.cfg.host,
            self.cfg.port,
            process_request=self.process_request,
            compression=None,  # frames are JPEG already
            max_size=protocol.MAX_MESSAGE_BYTES,
            server_header=None,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            if ready is not None:
                ready(self.port)
            await stop
        # leaving the block closed every connection (1001) and waited for the handlers,
        # which closed their recordings


def load_world(cfg: ServeConfig) -> tuple[Callable[[], Any], Any]:
    """(factory, first world). Raises FileNotFoundError when the checkpoint is missing."""
    if cfg.game:
        factory = lambda: GameSession(cfg.size)  # noqa: E731
    else:
        from worldmodel.session import WorldSession

        factory = lambda: WorldSession.from_checkpoint(cfg.checkpoint, device=cfg.device)  # noqa: E731
    return factory, factory()


class ServerThread:
    """A PlayServer on its own event loop in a background thread (tests, notebooks)."""

    def __init__(self, cfg: ServeConfig, factory: Callable[[], Any] | None = None, first=None):
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
        if not self._ready.wait(30):
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
            self._thread.join(30)

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ServeConfig()
    p.add_argument("--host", default=d.host, help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=d.port, help="0 picks a free port")
    p.add_argument("--checkpoint", default=d.checkpoint, help="checkpoint name or folder")
    p.add_argument("--device", default=d.device)
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--game", action="store_true", help="serve the real game, not a model")
    p.add_argument("--size", type=int, default=d.size, help="frame side with --game")
    p.add_argument("--token", default=None, help="access token the page URL must carry")
    p.add_argument("--max-sessions", type=int, default=None, help="default: 2 on CPU, else 4")
    p.add_argument("--recordings", type=Path, default=d.recordings, help="recordings folder")
    p.add_argument("--fps", type=float, default=None, help="frame rate cap (default: model's)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads on CPU (default: cores / max sessions)",
    )
    p.add_argument(
        "--allow-origin", action="append", default=[], metavar="ORIGIN",
        help="also accept websocket connections from pages at this origin (repeatable)",
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per session is ours
    if args.fps is not None and not 0 < args.fps <= 240:
        print("wm play: --fps must be within (0, 240]", file=sys.stderr)
        return 2
    if args.max_sessions is not None and args.max_sessions < 1:
        print("wm play: --max-sessions must be at least 1", file=sys.stderr)
        return 2
    cfg = ServeConfig(
        host=args.host,
        port=args.port,
        checkpoint=args.checkpoint,
        device=args.device,
        game=args.game,
        size=args.size,
        token=args.token,
        max_sessions=args.max_sessions,
        recordings=args.recordings,
        fps=args.fps,
        allow_origins=tuple(args.allow_origin),
        threads=args.threads,
    )
    if not cfg.game and cfg.device == "cpu":
        import torch

        # each session steps on its own thread; more torch threads than cores in all makes
        # every step wait on the others (measured on 2 busy cores: median 2x, tail 10x slower)
        torch.set_num_threads(cfg.threads)
    try:
        factory, first = load_world(cfg)
    except FileNotFoundError as e:
        if cfg.checkpoint == "default":
            print(
                "wm play: no default checkpoint is shipped yet. Train one (see "
                "docs/train-your-own.md) and pass it with --checkpoint PATH, or play the "
                "real game with --game.",
                file=sys.stderr,
            )
        else:
            print(f"wm play: {e}", file=sys.stderr)
        return 1
    if cfg.host not in LOCAL_HOSTS:
        print(
            f"wm play: warning: listening on {cfg.host}: anyone who can reach this machine can "
            "play and download recordings" + ("" if cfg.token else "; consider --token"),
            file=sys.stderr,
        )
    server = PlayServer(cfg, factory, first)

    def ready(port: int) -> None:
        host = cfg.host if cfg.host not in ("0.0.0.0", "::") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        url = f"http://{host}:{port}/" + (f"?token={cfg.token}" if cfg.token else "")
        mode = "the real game" if cfg.game else f"model {first.name!r}"
        print(f"wm play: serving {mode} at {url}", flush=True)
        if not args.no_browser:
            threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        await server.serve(stop, ready)

    asyncio.run(run())
    print("wm play: stopped", flush=True)
    return 0
