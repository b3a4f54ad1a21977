"""`wm pygame`: play the world model in a desktop window, from a `wm play` server or in-process.

    wm pygame                                        # a `wm play` on this machine
    wm pygame --url ws://host:8765/ws --token T      # another one
    wm pygame --local --checkpoint runs/student      # the model in this process, no server

The controls and the HUD are the browser client's (docs/protocol.md): W A S D move, the
mouse looks once the window is clicked (Esc lets it go; Esc again quits), arrow keys look,
Space jumps, Shift sprints, R records, N starts a new world, P pauses, G shows the real game
beside the dream. The HUD shows frames per second, input-to-frame latency (median of the
last 30), generation time, round trip, the frame index and the model.

The window talks to a `Link`: protocol messages go out, frames and JSON messages come in.
`RemoteLink` runs a websockets client on its own event loop in a background thread;
`LocalLink` steps a `WorldSession` on a worker thread through the play session the server
drives too (`app.play.Play`), so that local recordings are made, and replay, exactly as the
server's. Either way the pygame
loop never waits on the network or the model: each link keeps only the newest frame of each
stream, and the window shows that one.

Headless smoke run (quits after 20 frames; --script plays `wm sample`'s script syntax):

    SDL_VIDEODRIVER=dummy wm pygame --local --checkpoint C --frames 20 --script forward:20
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import queue
import statistics
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
from PIL import Image
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from app import protocol
from app.config import ServeConfig
from app.game_window import WINDOW
from app.play import Play, Reply, World, load_world
from worldmodel.actions import KEYS, Action, parse_script
from worldmodel.flags import add_config_arguments, config_from_args

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
import pygame  # noqa: E402  (after the variable that silences its banner)

DEFAULT_URL = f"ws://127.0.0.1:{ServeConfig.port}/ws"
UI_HZ = 60  # window refresh and input sampling
PUMP_S = 0.016  # input changes go out at most this often (as the browser)
HEARTBEAT_S = 0.05  # and unchanged input this often, so latency is always measured
PING_S = 2.0
HUD_S = 0.25  # the HUD is redrawn at least this often without new frames
LATENCY_SAMPLES = 30
TOAST_S = 3.5
BAR = 28  # top bar: model and REC
FOOT = 22  # bottom bar: the keys
GAP = 12  # between the dream and the real game
DISPLAY_MARGIN = 64  # px of the display's height the window leaves to its title and a task bar
OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 30.0  # a local link finishes its step and finalises the recording's video

WHITE, DIM, BLACK = (235, 238, 242), (123, 135, 148), (0, 0, 0)
REC_RED = (230, 30, 30)  # wm game's REC dot
DREAM_GREEN, GAME_ORANGE = (94, 230, 176), (255, 180, 84)  # the browser's tags

# held key -> input name (hello.keys)
KEYMAP = {
    pygame.K_w: "forward",
    pygame.K_s: "back",
    pygame.K_a: "left",
    pygame.K_d: "right",
    pygame.K_SPACE: "jump",
    pygame.K_LSHIFT: "sprint",
    pygame.K_RSHIFT: "sprint",
    pygame.K_LEFT: "turn_left",
    pygame.K_RIGHT: "turn_right",
    pygame.K_UP: "look_up",
    pygame.K_DOWN: "look_down",
}
# the bottom bar shows as many as fit
HINTS = (
    "WASD move",
    "mouse/arrows look",
    "Space jump",
    "Shift sprint",
    "R record",
    "N new world",
    "P pause",
    "G side by side",
    "Esc release",
)


# ------------------------------------------------------------------ links


class Link:
    """What the window talks to. `send` never blocks; `frames` returns the newest frame of
    each stream since the last call (older ones are dropped); `messages` the JSON messages
    in order. A link that ends says so with a message of its own: {"type": "closed"}."""

    network = True  # whether a round trip is worth measuring (RTT in the HUD)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames: dict[int, tuple[dict[str, Any], Any]] = {}
        self._inbox: deque[dict[str, Any]] = deque()

    def _put_frame(self, header: dict[str, Any], image: Any) -> None:
        with self._lock:
            self._frames[header["stream"]] = (header, image)

    def _put_message(self, msg: dict[str, Any]) -> None:
        self._inbox.append(msg)

    def frames(self) -> dict[int, tuple[dict[str, Any], np.ndarray]]:
        with self._lock:
            out, self._frames = self._frames, {}
        # decoded here, so that only the frames that are shown are decoded
        return {
            s: (h, img if isinstance(img, np.ndarray) else decode_jpeg(img))
            for s, (h, img) in out.items()
        }

    def messages(self) -> list[dict[str, Any]]:
        out = []
        while self._inbox:
            out.append(self._inbox.popleft())
        return out

    def send(self, kind: str, **fields: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def decode_jpeg(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def with_query(url: str, **params: Any) -> str:
    """url with the given query parameters set (those that are not None)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update({k: str(v) for k, v in params.items() if v is not None})
    return urlunsplit(parts._replace(query=urlencode(query)))


class RemoteLink(Link):
    """A `wm play` session over a websocket, on an event loop in a background thread."""

    _CLOSE = None  # in the outbox: close the connection

    def __init__(self, url: str):
        super().__init__()
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._thread = threading.Thread(target=self._main, name="wm-pygame-net", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self._loop.run_until_complete(self._run())
        finally:
            self._loop.close()

    async def _run(self) -> None:
        reason = "connection closed"
        try:
            async with connect(
                self.url,
                compression=None,  # frames are JPEG already
                proxy=None,
                open_timeout=OPEN_TIMEOUT,
            ) as ws:
                sender = asyncio.create_task(self._send_loop(ws))
                try:
                    async for data in ws:
                        if isinstance(data, bytes):
                            self._put_frame(*protocol.decode_frame(data))
                        else:
                            self._put_message(json.loads(data))
                finally:
                    sender.cancel()
                reason = ws.close_reason or reason
        except InvalidStatus as e:
            body = e.response.body.decode(errors="replace").strip() if e.response.body else ""
            reason = f"HTTP {e.response.status_code}" + (f": {body}" if body else "")
        except ConnectionClosed as e:
            reason = (e.rcvd.reason if e.rcvd else "") or "the server went away"
        # ValueError: a message that is not JSON, or a frame header of another protocol version
        except (OSError, TimeoutError, WebSocketException, ValueError) as e:
            reason = str(e) or type(e).__name__
        self._put_message({"type": "closed", "reason": reason})

    async def _send_loop(self, ws) -> None:
        while True:
            text = await self._outbox.get()
            if text is self._CLOSE:
                await ws.close()
                return
            await ws.send(text)

    def _enqueue(self, item: str | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._outbox.put_nowait, item)
        except RuntimeError:  # the loop has ended: the connection is gone
            pass

    def send(self, kind: str, **fields: Any) -> None:
        self._enqueue(protocol.dumps(kind, **fields))

    def close(self) -> None:
        self._enqueue(self._CLOSE)
        self._thread.join(CLOSE_TIMEOUT)


def raw_frame(frame: np.ndarray, header: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    """A play session's frames as they are: (header, frame), no JPEG in between."""
    return header, frame


class LocalLink(Link):
    """A world in this process, stepped on a worker thread at the session's fps.

    Messages are parsed and validated by `app.protocol` as the server does, and answered by
    the same `Play` (hello, state, saved, pong, error), so the window cannot tell the
    difference. `Play` (the world, the game beside it, the recording) is touched only by the
    worker, except its input, which the window's thread adds."""

    _CLOSE = object()
    network = False

    def __init__(self, world: World, cfg: ServeConfig, seed: int | None = None):
        super().__init__()
        self.play = Play(world, cfg, raw_frame, seed)
        self._controls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="wm-pygame-model", daemon=True)
        self._thread.start()

    def send(self, kind: str, **fields: Any) -> None:
        try:
            msg = protocol.parse_message(protocol.dumps(kind, **fields))
        except protocol.ProtocolError as e:
            self._put_message({"type": "error", "code": e.code, "error": str(e)})
            return
        if isinstance(msg, protocol.Input):
            self.play.add_input(msg)
        elif isinstance(msg, protocol.Ping):
            self._put_message(self.play.pong(msg))
        else:
            self._controls.put(msg)

    def close(self) -> None:
        self._controls.put(self._CLOSE)
        self._thread.join(CLOSE_TIMEOUT)

    # ------------------------------------------------------------ worker thread

    def _emit(self, items: list[tuple[dict[str, Any], np.ndarray]]) -> None:
        for header, frame in items:
            self._put_frame(header, frame)

    def _deliver(self, reply: Reply) -> None:
        if reply.frames is not None:
            self._emit(reply.frames)
        for msg in reply.messages:
            self._put_message(msg)

    def _run(self) -> None:
        play = self.play
        reason = "closed"
        try:
            self._put_message(play.hello())
            self._emit(play.start())
            self._put_message(play.state())
            while True:
                wait = None if play.paused else play.pacer.wait()
                try:
                    msg = self._controls.get(timeout=wait)
                except queue.Empty:
                    self._emit(play.tick())
                    for m in play.take_messages():
                        self._put_message(m)
                    play.pacer.ticked()
                    continue
                if msg is self._CLOSE:
                    break
                self._deliver(play.control(msg))
        except Exception as e:  # the window shows it; the recording is still closed below
            reason = f"model error: {e}"
            self._put_message({"type": "error", "code": "internal", "error": reason})
        finally:
            info = play.close()
            if info is not None:
                self._put_message({"type": "saved", **info})
            self._put_message({"type": "closed", "reason": reason})


# ------------------------------------------------------------------ the window


def fit_scale(size: int, views: int, scale: int, display: tuple[int, int]) -> int:
    """The largest integer scale up to `scale` at which `views` frames side by side, with
    the bars, fit on the display (leaving room for the window's title and a task bar)."""
    width, height = display
    while scale > 1 and (views * size * scale + (views - 1) * GAP > width
                         or BAR + size * scale + FOOT + DISPLAY_MARGIN > height):
        scale -= 1
    return scale


def _surface(frame: np.ndarray) -> pygame.Surface:
    return pygame.surfarray.make_surface(np.ascontiguousarray(frame.swapaxes(0, 1)))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


class Window:
    """The pygame window: input out, the newest frames and the HUD in. One per link."""

    def __init__(self, link: Link, scale: int | None, script: list[Action] | None):
        self.link = link
        self.scale_arg = scale
        self.script = script  # scripted input (--frames); None: the keyboard and mouse
        self.mouse_px = ServeConfig.mouse_px_per_unit  # docs/protocol.md: 60 px per unit
        self.font = pygame.font.Font(None, 20)
        self.big = pygame.font.Font(None, 32)
        self.small = pygame.font.Font(None, 17)
        self.screen = pygame.display.set_mode((WINDOW, BAR + WINDOW + FOOT))
        self.side = WINDOW
        self.hello: dict[str, Any] | None = None
        self.state: dict[str, Any] = {"paused": False, "side_by_side": False, "recording": None}
        self.closed: str | None = None
        self.busy: str | None = None
        self.dream: pygame.Surface | None = None
        self.game: pygame.Surface | None = None
        self.shown = 0  # dream frames shown
        self.frame = 0
        self.gen_ms: float | None = None
        self.rtt_ms: float | None = None
        self.latency_ms: float | None = None
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.draw_times: deque[float] = deque()
        self.sent_at: dict[int, float] = {}
        self.last_seq = 0
        self.seq = 0
        self.pressed: set[str] = set()  # down at some moment since the last input sent: taps count
        self.mouse = [0.0, 0.0]
        self.last_keys: tuple[str, ...] = ()
        self.last_send = self.last_ping = 0.0
        self.recording_since = 0.0
        self.toast: tuple[str, float] | None = None
        self.grabbed = False
        self.started = False  # a key or a click since the window opened

    # ------------------------------------------------------------ incoming

    def poll(self) -> bool:
        """Take in messages and the newest frames; True if a new dream frame arrived."""
        for msg in self.link.messages():
            self._on_message(msg)
        new = False
        now = time.perf_counter()
        for stream, (header, frame) in self.link.frames().items():
            if stream == protocol.STREAM_GAME:
                self.game = _surface(frame)
                continue
            new = True
            self.dream = _surface(frame)
            self.shown += 1
            self.frame = header["frame"]
            self.gen_ms = header["gen_ms"]
            self.draw_times.append(now)
            # input-to-frame latency: from sending an input to showing the first frame made with it
            if header["seq"] > self.last_seq:
                t0 = self.sent_at.get(header["seq"])
                if t0 is not None:
                    self.latencies.append((now - t0) * 1000)
                    self.latency_ms = statistics.median(self.latencies)
                self.last_seq = header["seq"]
                self.sent_at = {s: t for s, t in self.sent_at.items() if s > header["seq"]}
        while self.draw_times and now - self.draw_times[0] > 1.0:
            self.draw_times.popleft()
        return new

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "hello":
            self.hello = msg
            self._resize()
        elif kind == "state":
            if msg["recording"] and not self.state.get("recording"):
                self.recording_since = time.monotonic()
            resize = msg["side_by_side"] != self.state.get("side_by_side")
            self.state = msg
            if resize:
                self._resize()
        elif kind == "saved":
            self.say(f"saved recording {msg['name']} ({msg['frames']} frames)")
            print(f"wm pygame: saved recording {msg['name']} ({msg['frames']} frames)", flush=True)
        elif kind == "pong":
            if isinstance(msg.get("t"), (int, float)):
                self.rtt_ms = time.perf_counter() * 1000 - msg["t"]
        elif kind == "slow" and msg.get("on"):
            self.say(f"slow: {msg['fps']:.1f} frames/s, below the target {msg['target_fps']:g}")
        elif kind == "busy":
            self.busy = msg.get("error", "server busy")
        elif kind == "error":
            print(f"wm pygame: server: {msg.get('error')}", file=sys.stderr, flush=True)
            self.say(str(msg.get("error")))
        elif kind == "closed":
            self.closed = self.busy or msg.get("reason") or "connection closed"
            self.set_grab(False)

    def _resize(self) -> None:
        size = self.hello["size"] if self.hello else WINDOW
        n = 2 if self.state.get("side_by_side") else 1
        scale = fit_scale(size, n, self.scale_arg or max(1, WINDOW // size),
                          pygame.display.get_desktop_sizes()[0])
        self.side = size * scale
        self.screen = pygame.display.set_mode(
            (n * self.side + (n - 1) * GAP, BAR + self.side + FOOT)
        )

    # ------------------------------------------------------------ outgoing

    def set_grab(self, on: bool) -> None:
        self.grabbed = on
        self.started = self.started or on
        pygame.event.set_grab(on)
        pygame.mouse.set_visible(not on)
        pygame.mouse.get_rel()  # drop the motion gathered before

    def say(self, text: str) -> None:
        self.toast = (text, time.monotonic() + TOAST_S)

    def control(self, key: int) -> None:
        """R N P G: the browser's buttons."""
        if self.hello is None or self.closed:
            return
        if key == pygame.K_r:
            self.link.send("record", on=not self.state.get("recording"))
        elif key == pygame.K_n:
            self.link.send("reset")
        elif key == pygame.K_p:
            self.link.send("pause", on=not self.state.get("paused"))
        elif key == pygame.K_g:
            if self.hello.get("side_by_side"):
                self.link.send("side_by_side", on=not self.state.get("side_by_side"))
            else:
                self.say("side by side needs a model: this server plays the real game")

    def _held(self, new_frame: bool) -> tuple[str, ...]:
        """Keys held now (and tapped since the last input sent); adds the mouse movement."""
        if self.script is not None:
            a = self.script[self.shown % len(self.script)]
            if new_frame:  # a scripted turn is one frame's worth of mouse movement a frame
                self.mouse[0] += a.yaw * self.mouse_px
                self.mouse[1] -= a.pitch * self.mouse_px
            return tuple(k for k in KEYS if getattr(a, k))
        pressed = pygame.key.get_pressed()
        keys = {name for key, name in KEYMAP.items() if pressed[key]} | self.pressed
        if self.grabbed:
            dx, dy = pygame.mouse.get_rel()
            self.mouse[0] += dx
            self.mouse[1] += dy
        return tuple(sorted(keys))

    def pump(self, new_frame: bool) -> None:
        """Send the input when it changed (at most every PUMP_S) or every HEARTBEAT_S."""
        if self.hello is None or self.closed or self.state.get("paused"):
            return
        now = time.perf_counter()
        if self.link.network and now - self.last_ping >= PING_S:
            self.link.send("ping", t=now * 1000)
            self.last_ping = now
        keys = self._held(new_frame)
        dx, dy = self.mouse
        changed = keys != self.last_keys or dx or dy
        since = now - self.last_send
        if not (changed and since >= PUMP_S) and since < HEARTBEAT_S:
            return
        self.seq = self.seq % protocol.MAX_SEQ + 1
        fields: dict[str, Any] = {"seq": self.seq, "keys": list(keys)}
        if dx:
            fields["dx"] = float(np.clip(dx, -protocol.MAX_MOUSE_PX, protocol.MAX_MOUSE_PX))
        if dy:
            fields["dy"] = float(np.clip(dy, -protocol.MAX_MOUSE_PX, protocol.MAX_MOUSE_PX))
        self.link.send("input", **fields)
        self.sent_at[self.seq] = now
        self.pressed.clear()
        self.mouse = [0.0, 0.0]
        self.last_keys, self.last_send = keys, now

    # ------------------------------------------------------------ drawing

    def _text(self, text: str, pos: tuple[int, int], color=WHITE, font=None, bg=None) -> int:
        """Draw text; returns its width."""
        surf = (font or self.font).render(text, True, color, bg)
        self.screen.blit(surf, pos)
        return surf.get_width()

    def _view(self, surface: pygame.Surface | None, x: int, tag: str, color) -> None:
        side = self.side
        if surface is None:
            pygame.draw.rect(self.screen, (16, 20, 26), (x, BAR, side, side))
        else:
            # nearest neighbour: every model pixel stays a crisp square
            self.screen.blit(pygame.transform.scale(surface, (side, side)), (x, BAR))
        label = self.font.render(tag, True, BLACK, color)
        self.screen.blit(label, (x + 4, BAR + side - label.get_height() - 4))

    def _hud(self) -> None:
        n = len(self.draw_times)
        fps = (n - 1) / (self.draw_times[-1] - self.draw_times[0]) if n > 1 else 0.0
        if n and time.perf_counter() - self.draw_times[-1] > 1.0:
            fps = 0.0
        rows = [
            ("FPS", f"{fps:.1f}"),
            ("LAT", _ms(self.latency_ms)),
            ("GEN", _ms(self.gen_ms)),
            ("RTT", _ms(self.rtt_ms)),
            ("FRM", str(self.frame)),
        ]
        box = pygame.Surface((108, 8 + 17 * len(rows)), pygame.SRCALPHA)
        box.fill((0, 0, 0, 160))
        self.screen.blit(box, (6, BAR + 6))
        for i, (k, v) in enumerate(rows):
            y = BAR + 10 + 17 * i
            self._text(k, (12, y), DIM)
            self._text(v, (48, y))

    def draw(self) -> None:
        width = self.screen.get_width()
        self.screen.fill((7, 9, 12))
        # top bar: the model; REC at the right
        if self.hello is None:
            top = "connecting..."
        elif self.hello.get("mode") == "game":
            top = f"real game  {self.hello['size']}x{self.hello['size']}  {self.hello['fps']:g} fps"
        else:
            top = (
                f"model {self.hello['model']}  {self.hello['size']}x{self.hello['size']}  "
                f"{self.hello['fps']:g} fps  seed {self.state.get('seed', '-')}"
            )
        self._text(top, (8, 7), DIM if self.hello is None else WHITE)
        if self.state.get("recording"):
            s = int(time.monotonic() - self.recording_since)
            label = f"REC {s // 60}:{s % 60:02d}"
            w = self.font.size(label)[0]
            pygame.draw.circle(self.screen, REC_RED, (width - w - 20, BAR // 2), 6)
            self._text(label, (width - w - 8, 7), REC_RED)
        game_mode = self.hello is not None and self.hello.get("mode") == "game"
        self._view(
            self.dream,
            0,
            "REAL GAME" if game_mode else "DREAM",
            GAME_ORANGE if game_mode else DREAM_GREEN,
        )
        if self.state.get("side_by_side"):
            self._view(self.game, self.side + GAP, "REAL GAME", GAME_ORANGE)
        self._hud()
        if self.closed:
            title = "Server busy" if self.busy else "Disconnected"
            self._banner(title, f"{self.closed}  -  Enter reconnects, Esc quits")
        elif self.hello is None:
            self._banner("Connecting...", "")
        elif self.state.get("paused"):
            self._banner("PAUSED", "P resumes")
        elif not self.started and self.script is None:
            self._banner("Click to look with the mouse", "WASD to move  -  Esc releases the mouse")
        if self.toast is not None:
            text, until = self.toast
            if time.monotonic() < until:
                self._text(text, (8, BAR + self.side - 44), WHITE, bg=BLACK)
            else:
                self.toast = None
        x = 8
        for hint in HINTS:
            w = self.small.size(hint)[0]
            if x + w > width - 8:
                break
            x += self._text(hint, (x, BAR + self.side + 5), DIM, font=self.small) + 12
        pygame.display.flip()

    def _banner(self, title: str, text: str) -> None:
        side = self.side
        box = pygame.Surface((side, 64), pygame.SRCALPHA)
        box.fill((0, 0, 0, 180))
        y = BAR + side // 2 - 32
        self.screen.blit(box, (0, y))
        t = self.big.render(title, True, WHITE)
        self.screen.blit(t, ((side - t.get_width()) // 2, y + 8))
        s = self.font.render(text[:90], True, DIM)
        self.screen.blit(s, ((side - s.get_width()) // 2, y + 40))


# ------------------------------------------------------------------ CLI


@dataclass
class PygameConfig:
    """`wm pygame`; the flags' help (HELPS) says what each field means."""

    url: str = DEFAULT_URL
    token: str | None = None
    seed: int | None = None
    local: bool = False
    checkpoint: str = "default"
    device: str = "cpu"
    recordings: Path = Path("recordings")
    scale: int | None = None
    record: bool = False
    frames: int | None = None
    script: str | None = None
    screenshot: Path | None = None


HELPS = {
    "url": "the server's websocket URL",
    "token": "access token of the server (wm play --token)",
    "seed": "the first world's seed; random when not given",
    "local": "run the model in this process",
    "checkpoint": "with --local: checkpoint name or folder",
    "device": "with --local",
    "recordings": "with --local: folder for recordings",
    "scale": f"window pixels per frame pixel; about {WINDOW} px when not given",
    "record": "start recording at once",
    "frames": "quit after showing this many frames, with scripted input (smoke tests)",
    "script": "with --frames: input as 'forward+sprint:20,yaw=0.5:10,idle:5' (one action per "
              "frame shown, the script repeated); no input when not given",
    "screenshot": "save the window here on exit",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, PygameConfig(), helps=HELPS)


def open_link(cfg: PygameConfig) -> Link:
    """The link cfg asks for. Raises FileNotFoundError for a missing --local checkpoint."""
    if not cfg.local:
        return RemoteLink(with_query(cfg.url, token=cfg.token, seed=cfg.seed))
    serve = ServeConfig(
        checkpoint=cfg.checkpoint, device=cfg.device, recordings=cfg.recordings, max_sessions=1
    )
    _, world = load_world(serve)
    return LocalLink(world, serve, seed=cfg.seed)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(PygameConfig, args)
    if cfg.frames is not None and cfg.frames < 0:
        raise SystemExit("wm pygame: --frames must be >= 0")
    if cfg.scale is not None and cfg.scale < 1:
        raise SystemExit("wm pygame: --scale must be >= 1")
    if cfg.seed is not None and not 0 <= cfg.seed <= protocol.MAX_SEED:
        raise SystemExit(f"wm pygame: --seed must be within 0..{protocol.MAX_SEED}")
    try:
        script = parse_script(cfg.script) if cfg.script else None
    except ValueError as e:
        raise SystemExit(f"wm pygame: --script: {e}") from None
    if cfg.frames is not None:
        script = script or [Action()]
    elif script is not None:
        raise SystemExit("wm pygame: --script plays only with --frames")
    if cfg.local and cfg.device == "cpu":
        import torch

        # the model's thread beside the window's: leave the window a core
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))

    pygame.display.init()  # not pygame.init(): no sound, so no audio device is needed
    pygame.font.init()
    link: Link | None = None
    try:
        pygame.display.set_caption("wm pygame")
        try:
            link = open_link(cfg)
        except FileNotFoundError as e:
            print(f"wm pygame: {e}", file=sys.stderr)
            return 1
        win = Window(link, cfg.scale, script)
        clock = pygame.time.Clock()
        asked_to_record, running, code = False, True, 0
        next_draw = 0.0
        while running:
            for event in pygame.event.get():
                if event.type == pygame.QUIT:
                    running = False
                elif event.type == pygame.MOUSEBUTTONDOWN and not win.grabbed and not win.closed:
                    win.set_grab(True)
                elif event.type == pygame.KEYDOWN:
                    if event.key == pygame.K_ESCAPE:
                        if win.grabbed:
                            win.set_grab(False)
                        else:
                            running = False
                    elif event.key == pygame.K_RETURN and win.closed:
                        link.close()
                        link = open_link(cfg)
                        win = Window(link, cfg.scale, script)
                        asked_to_record = False
                    elif event.key in KEYMAP:
                        win.pressed.add(KEYMAP[event.key])
                        win.started = True
                    else:
                        win.control(event.key)
            new = win.poll()
            if cfg.record and not asked_to_record and win.hello is not None:
                link.send("record", on=True)
                asked_to_record = True
            win.pump(new)
            now = time.monotonic()
            if new or now >= next_draw:
                win.draw()
                next_draw = now + HUD_S
            if cfg.frames is not None:
                if win.shown >= cfg.frames:
                    running = False
                elif win.closed:
                    print(f"wm pygame: {win.closed}", file=sys.stderr)
                    running, code = False, 1
            clock.tick(UI_HZ)
        if cfg.screenshot is not None:
            cfg.screenshot.parent.mkdir(parents=True, exist_ok=True)
            pygame.image.save(win.screen, str(cfg.screenshot))
        return code
    finally:
        if link is not None:
            link.close()
        pygame.quit()
