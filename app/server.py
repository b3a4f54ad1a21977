"""`wm play`: serve the world model (or, with --game, the real game) to the browser client.

One asyncio websockets server. Plain HTTP GETs are answered by app.routes (the static
client, /healthz, the recordings); the websocket at /ws is a play session (app.play,
docs/protocol.md). Each connection runs three tasks, cancelled together when any of them
ends:

    receive   JSON messages -> validated (app.protocol) -> the session's input / controls;
              read no faster than twice the rate limit, so a flood waits in TCP buffers
              (the client's sends block) instead of costing the event loop
    produce   at the session's pace (Play.pacer): step the world on the connection's own
              worker thread (a model's step waits there for the batched tick that carries
              it: every player is a session of one BatchedWorld, app.play.load_world), put
              the encoded frames into the slot
    send      slot -> websocket; the slot holds only the newest frames, so a slow client
              skips frames instead of building a backlog, and sending never blocks a step
    watch     ping the client: while it answers no ping (it reads nothing) no frame is
              generated, and a session with no message and no answer for a while ends

The session (the world, the game beside it and the recording) is touched only on the worker
thread, one call at a time, so none of it needs a lock.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import random
import signal
import sys
import threading
import time
import webbrowser
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from app import protocol, scale
from app.config import LOCAL_HOSTS, ServeConfig
from app.play import Play, Reply, World, frame_rate, load_world
from app.routes import Routes
from worldmodel.flags import add_config_arguments, config_from_args

log = logging.getLogger("wm.play")

PING_EVERY_S = 1.0  # how often the watch task asks the client for a pong
CLOSE_TIMEOUT_S = 5.0
FLOOD_SHARE = 0.9  # a second with reads at this share of the read cap counts as a flood  # for a closing handshake; a client that reads nothing is cut off

# close codes besides the standard ones (docs/protocol.md)
CLOSE_FLOOD = 1008  # policy violation: far over the message rate limit
CLOSE_IDLE = 4408  # no message and no pong for --idle-timeout seconds


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    # 4:4:4: chroma subsampling smears colour edges that nearest-neighbour scaling shows
    Image.fromarray(frame).save(buf, "JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def jpeg_encoder(quality: int) -> Callable[[np.ndarray, dict[str, Any]], bytes]:
    """A play session's frames as binary frame messages (docs/protocol.md)."""

    def encode(frame: np.ndarray, header: dict[str, Any]) -> bytes:
        return protocol.encode_frame(
            encode_jpeg(frame, quality),
            frame=header["frame"],
            seq=header["seq"],
            gen_ms=header["gen_ms"],
            server_ms=header["server_ms"],
            stream=header["stream"],
            flags=protocol.FLAG_RECORDING if header["recording"] else 0,
        )

    return encode


def dumps(msg: dict[str, Any]) -> str:
    """A session's message (a dict with a "type") as JSON text."""
    fields = dict(msg)
    return protocol.dumps(fields.pop("type"), **fields)


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
    """Token bucket: `rate` messages per second on average, bursts of up to `rate` (at
    least one)."""

    def __init__(self, rate: float):
        self.rate = rate
        self.burst = max(1.0, rate)
        self.tokens = self.burst
        self.last = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now

    def allow(self) -> bool:
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait(self) -> float:
        """Seconds until a token is there (0: one is)."""
        self._refill()
        return max(0.0, (1 - self.tokens) / self.rate)


@dataclass
class Close(Exception):
    """Ends a connection: `message` (JSON text) is sent if the client still reads, then
    the close frame."""

    code: int
    reason: str
    message: str


class WorldPool:
    """Loaded worlds waiting for players. Loading a checkpoint takes a while, so a world is
    kept for the next player rather than thrown away; at most `limit` exist at once."""

    def __init__(self, factory: Callable[[], World], limit: int, first: World):
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

    async def take(self) -> World:
        if self._idle:
            return self._idle.pop()
        return await asyncio.to_thread(self.factory)

    def give_back(self, world: World | None) -> None:
        """Return a reservation, with its world if that world is idle and reusable."""
        self.in_use -= 1
        if world is not None:
            self._idle.append(world)


class Connection:
    """One player on one websocket."""

    def __init__(self, server: PlayServer, ws: ServerConnection, world: World, seed: int):
        self.server = server
        self.cfg = server.cfg
        self.ws = ws
        self.play = Play(world, self.cfg, jpeg_encoder(self.cfg.jpeg_quality), seed)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="wm-play")
        self.limiter = RateLimiter(self.cfg.rate_limit)
        self.reads = RateLimiter(2 * self.cfg.rate_limit)  # read at most this fast
        self.resets = RateLimiter(self.cfg.reset_rate)  # resets and record starts
        self.slot = LatestSlot()
        self.running = asyncio.Event()  # set while not paused: wakes the producer
        self.running.set()
        self.reading = asyncio.Event()  # set while the client answers pings
        self.reading.set()
        self.last_message = self.last_read = time.monotonic()
        self._last_rate_error = 0.0
        self._window = (time.monotonic(), 0)  # (start, messages read since)
        self._flood_s = 0  # seconds in a row spent reading at (nearly) the cap
        self.close_with: Close | None = None  # why the server ended the connection

    async def _call(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _hello(self) -> str:
        return dumps(self.play.hello(
            header_bytes=protocol.FRAME_HEADER.size,
            max_message_bytes=protocol.MAX_MESSAGE_BYTES,
            rate_limit=self.cfg.rate_limit,
        ))  # fmt: skip

    async def run(self) -> bool:
        """Serve until the client leaves; True when the world is idle and can be reused."""
        tasks: list[asyncio.Task] = []
        reusable = False
        try:
            await self.ws.send(self._hello())
            self.slot.put(await self._call(self.play.start))
            await self.ws.send(dumps(self.play.state()))
            tasks = [
                asyncio.create_task(self._receive(), name="receive"),
                asyncio.create_task(self._produce(), name="produce"),
                asyncio.create_task(self._send_frames(), name="send"),
                asyncio.create_task(self._watch(), name="watch"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if isinstance(exc, Close):
                    self.close_with = exc
                elif exc is not None and not isinstance(exc, ConnectionClosed):
                    log.error("session failed in %s", task.get_name(), exc_info=exc)
                    self.close_with = Close(1011, "server error", protocol.error(
                        "internal", "server error (see the server log)"))  # fmt: skip
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

    async def close(self) -> None:
        """Send close_with's message and close frame; cut off a client that reads nothing."""
        end = self.close_with
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.ws.send(end.message)
                await self.ws.close(end.code, end.reason)
        except (TimeoutError, ConnectionClosed):
            self.ws.transport.abort()

    async def _throttle(self) -> None:
        """Wait while the read budget is empty: nothing is read meanwhile, so the client's
        TCP buffers fill and its sends block. A client that keeps the reads at the cap
        (twice the rate limit) for flood_close_s seconds in a row is closed."""
        now = time.monotonic()
        start, reads = self._window
        if now - start >= 1.0:
            at_cap = reads >= FLOOD_SHARE * self.reads.rate * (now - start)
            self._flood_s = self._flood_s + 1 if at_cap else 0
            self._window = (now, 0)
            if self._flood_s >= self.cfg.flood_close_s:
                rate = self.cfg.rate_limit
                raise Close(CLOSE_FLOOD, "rate limit exceeded", protocol.error(
                    "rate_limited", f"over {2 * rate:g} messages/s for "
                    f"{self.cfg.flood_close_s:g} s (the limit is {rate:g}): closing"))  # fmt: skip
        while (wait := self.reads.wait()) > 0:
            await asyncio.sleep(wait)
        self.reads.allow()
        start, reads = self._window
        self._window = (start, reads + 1)

    async def _rate_error(self, what: str) -> None:
        now = time.monotonic()
        if now - self._last_rate_error >= 1.0:  # one error a second, not one per message
            self._last_rate_error = now
            await self.ws.send(protocol.error("rate_limited", what))

    async def _receive(self) -> None:
        while True:
            await self._throttle()
            data = await self.ws.recv()
            self.last_message = time.monotonic()
            if not self.limiter.allow():
                await self._rate_error(
                    f"more than {self.cfg.rate_limit:g} messages/s: messages dropped"
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
            self.play.add_input(msg)
        elif isinstance(msg, protocol.Ping):
            await self.ws.send(dumps(self.play.pong(msg)))
        else:
            costly = isinstance(msg, protocol.Reset) or (isinstance(msg, protocol.Record) and msg.on)
            if costly and not self.resets.allow():  # each starts the model afresh
                await self._rate_error(
                    f"more than {self.cfg.reset_rate:g} resets or record starts/s: dropped"
                )
                return
            await self._deliver(await self._call(self.play.control, msg))

    async def _deliver(self, reply: Reply) -> None:
        if reply.frames is not None:
            self.slot.put(reply.frames)
        if self.play.paused:
            self.running.clear()
        else:
            self.running.set()
        for msg in reply.messages:
            if msg["type"] == "saved":
                log.info("recording %s saved: %d frames", msg["name"], msg["frames"])
            await self.ws.send(dumps(msg))

    async def _produce(self) -> None:
        pacer = self.play.pacer
        while True:
            await self.running.wait()
            await self.reading.wait()
            self.slot.put(await self._call(self.play.tick))
            pacer.ticked()
            for msg in self.play.take_messages():
                await self.ws.send(dumps(msg))
            await asyncio.sleep(pacer.wait())

    async def _watch(self) -> None:
        cfg = self.cfg
        while True:
            sent = time.monotonic()
            pong = asyncio.ensure_future(self._ping())
            try:
                while not pong.done():
                    await asyncio.wait([pong], timeout=min(cfg.read_stall_s, PING_EVERY_S) / 2)
                    now = time.monotonic()
                    if not pong.done() and now - sent >= cfg.read_stall_s:
                        self.reading.clear()  # it reads nothing: stop generating for it
                    if now - max(self.last_message, self.last_read) >= cfg.idle_timeout:
                        raise Close(CLOSE_IDLE, "idle", protocol.error(
                            "idle", f"no message and no reads for {cfg.idle_timeout:g} s: "
                            "session closed"))  # fmt: skip
            finally:
                pong.cancel()
            pong.result()
            self.last_read = time.monotonic()
            if not self.reading.is_set():
                self.play.pacer.restart()
                self.reading.set()
            await asyncio.sleep(PING_EVERY_S)

    async def _ping(self) -> None:
        answered = await self.ws.ping()
        await answered

    async def _send_frames(self) -> None:
        while True:
            for message in await self.slot.get():
                await self.ws.send(message)


class PlayServer:
    """The server's state: configuration, the world pool and the HTTP routes."""

    def __init__(self, cfg: ServeConfig, factory: Callable[[], World], first_world: World):
        self.cfg = cfg
        if cfg.max_sessions is None:  # load_world measures it; a world made elsewhere must say
            raise ValueError("max_sessions must be set when the worlds do not come from load_world")
        self.pool = WorldPool(factory, cfg.max_sessions, first_world)
        self.fps = frame_rate(cfg, first_world)
        self.started = time.time()
        self.routes = Routes(cfg, self.health)
        self.port: int | None = None

    def health(self) -> dict[str, Any]:
        world = self.pool.first
        return {
            "ok": True,
            "mode": "game" if self.cfg.game else "dream",
            "model": world.name,
            "size": world.size,
            "fps": self.fps,
            "sessions": self.pool.in_use,
            "max_sessions": self.pool.limit,
            "uptime_s": round(time.time() - self.started, 1),
        }

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
        conn = None
        peer = ws.remote_address[0] if ws.remote_address else "?"
        try:
            world = await self.pool.take()
            params = parse_qs(urlsplit(ws.request.path).query)
            seed = int(params["seed"][0]) if "seed" in params else random.randrange(protocol.MAX_SEED)
            log.info("session from %s (%d/%d)", peer, self.pool.in_use, self.pool.limit)
            conn = Connection(self, ws, world, seed)
            reusable = await conn.run()
        finally:
            self.pool.give_back(world if reusable else None)
            why = f": {conn.close_with.reason}" if conn and conn.close_with else ""
            log.info("session from %s ended%s (%d/%d)", peer, why, self.pool.in_use,
                     self.pool.limit)  # fmt: skip
        if conn.close_with is not None:  # after the slot is free: it may take a while
            await conn.close()

    async def serve(self, stop: asyncio.Future, ready: Callable[[int], None] | None = None) -> None:
        """Serve until `stop` is done; then close every session and its recording."""
        async with serve(
            self.handler,
            self.cfg.host,
            self.cfg.port,
            process_request=self.routes,
            compression=None,  # frames are JPEG already
            max_size=protocol.MAX_MESSAGE_BYTES,
            max_queue=4,  # messages read ahead of the receive task: a flood waits in TCP
            server_header=None,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            if ready is not None:
                ready(self.port)
            await stop
        # leaving the block closed every connection (1001) and waited for the handlers,
        # which closed their recordings


# ------------------------------------------------------------------- CLI

HELPS = {
    "host": "address to bind; this machine only unless told",
    "port": "0 picks a free port",
    "checkpoint": "checkpoint name or folder",
    "game": "serve the real game, not a model",
    "size": "frame side with --game",
    "token": "access token the page URL must carry",
    "max_sessions": "sessions at once; default: what the device holds at the play rate "
    "(measured at start-up, then cached)",
    "capacity_cache": "where that measurement is kept",
    "recordings": "recordings folder",
    "fps": "frame rate cap; the world's own when not given",
    "allow_origin": "also accept websocket connections from pages at this origin",
    "jpeg_quality": "JPEG quality of the frames sent",
    "rate_limit": "client messages per second",
    "mouse_px_per_unit": "mouse pixels in one frame that make a full-speed turn",
    "arrow_rate": "yaw/pitch per frame while an arrow key is held",
    "record_video": "write video.mp4 beside each recording",
    "threads": "torch threads on CPU; every core when not given",
    "reset_rate": "resets and record starts per second a client may ask for",
    "flood_close_s": "close a client sending over twice the rate limit for this long (s)",
    "read_stall_s": "stop generating for a client that answers no ping for this long (s)",
    "idle_timeout": "end a session with no message and no reads for this long (s)",
    "max_session_recordings": "recordings one session may make",
    "max_session_recording_mb": "megabytes one session may record",
    "max_recordings": "recordings the folder may hold; no more are started beyond it",
    "max_recordings_mb": "megabytes the recordings folder may hold",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, ServeConfig(), helps=HELPS)
    # resolved at start-up when not given (app.play.load_world, ServeConfig)
    p.set_defaults(max_sessions=None, threads=None)
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    scale.add_arguments(p)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per session is ours
    if args.fps is not None and not 0 < args.fps <= 240:
        print("wm play: --fps must be within (0, 240]", file=sys.stderr)
        return 2
    if args.max_sessions is not None and args.max_sessions < 1:
        print("wm play: --max-sessions must be at least 1", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(ServeConfig, args)
    except ValueError as e:
        print(f"wm play: {e}", file=sys.stderr)
        return 2
    if args.workers:
        return scale.main(cfg, args.workers, args.nginx_dir)
    if not cfg.game and cfg.device == "cpu":
        import torch

        # every session steps on the scheduler's one thread (worldmodel.scheduler)
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
