"""One player's play session, knowing no sockets: driven by the websocket server
(app.server) and by the pygame client's in-process link (app.pygame_client) alike.

    play = Play(world, cfg, encode)             # encode(frame, header) -> what the caller sends
    frames = play.start()                       # the first frame(s)
    play.add_input(msg)                         # protocol.Input, from any thread
    frames = play.tick()                        # one step, with the input gathered since the last
    reply = play.control(msg)                   # Reset / Record / Pause / SideBySide
    saved = play.close()

The session holds the input state, the world and the real game beside it, the recording,
pause and side-by-side, and the pacing (`play.pacer`). Every method except `add_input`
and `pong` runs on one worker thread, one call at a time, so the world, the game and the
recording need no lock. Messages come back as dicts with a "type" (docs/protocol.md).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from app import protocol
from app.config import ServeConfig
from app.recording import Recording
from worldmodel.actions import NOOP, Action
from worldmodel.game import Game

log = logging.getLogger("wm.play")


class World(Protocol):
    """What a play session steps: `WorldSession` (a model's dream) or `GameSession` (the
    real game). Frame t+1 is the result of the action given at step t."""

    @property
    def name(self) -> str: ...
    @property
    def checkpoint_hash(self) -> str: ...
    @property
    def card(self) -> dict[str, Any]: ...
    @property
    def size(self) -> int: ...  # frame side in pixels
    @property
    def fps(self) -> float: ...  # the frame rate the world was made for
    @property
    def context_length(self) -> int: ...  # frames reset() uses
    @property
    def last_timings(self) -> dict[str, float]: ...  # of the last step: model/decode/total ms

    @property
    def sampling(self) -> dict[str, Any]: ...  # what replay must match: {"batch_rows": ...}

    def reset(self, context_frames: np.ndarray, context_actions: Sequence[Action] | None = None,
              seed: int = 0) -> None: ...

    def step(self, action: Action) -> np.ndarray: ...  # uint8 [size, size, 3]


class GameSession:
    """The real procedural game as a `World` (`wm play --game`): to play the ground truth
    and to record training episodes by hand. Context frames are not needed: the game
    restarts from its seed."""

    name = "game"
    checkpoint_hash = ""
    context_length = 1

    def __init__(self, size: int):
        self.size = size
        self.fps = Game.fps
        self.card = {"name": "game", "source": "worldmodel.game.Game", "size": size,
                     "fps": self.fps}
        self.frame_index = 0
        self.last_timings = {"model_ms": 0.0, "decode_ms": 0.0, "total_ms": 0.0}
        self._game: Game | None = None

    @property
    def sampling(self) -> dict[str, Any]:
        return {}  # the game replays from its seed and state alone

    def reset(self, context_frames: Any, context_actions: Any = None, seed: int = 0) -> None:
        self._game = Game(seed, self.size)
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


def load_world(cfg: ServeConfig) -> tuple[Callable[[], World], World]:
    """(factory, first world). A model's worlds are sessions of one `BatchedWorld` of
    cfg.max_sessions rows, so all players of this process share one batched forward per
    denoising step; when cfg.max_sessions is None it is set here to what the device holds at
    the play rate (`device_capacity`, cached in cfg.capacity_cache). Raises
    FileNotFoundError when the checkpoint is missing."""
    if cfg.game:
        factory: Callable[[], World] = lambda: GameSession(cfg.size)  # noqa: E731
        if cfg.max_sessions is None:
            cfg.max_sessions = 2 * (os.cpu_count() or 1)  # the game costs next to nothing
        return factory, factory()
    from worldmodel.scheduler import BatchedWorld, device_capacity
    from worldmodel.session import WorldSession

    template = WorldSession.from_checkpoint(cfg.checkpoint, device=cfg.device)
    if cfg.max_sessions is None:
        cfg.max_sessions, how = device_capacity(template, cfg.fps or template.fps,
                                                cache=cfg.capacity_cache)
        log.info("wm play: --max-sessions %d: %s", cfg.max_sessions, how)
    world = BatchedWorld(template, rows=cfg.max_sessions)
    return world.session, world.session()


def frame_rate(cfg: ServeConfig, world: World) -> float:
    """Frames per second a session plays at: the cap if one is set, else the world's own."""
    return float(cfg.fps or world.fps)


class Pacer:
    """At most `fps` frames a second. Behind schedule, it carries on at the model's pace:
    no burst to catch up."""

    def __init__(self, fps: float):
        self.period = 1.0 / fps
        self.restart()

    def restart(self) -> None:
        """The next frame is due now (after a pause)."""
        self.deadline = time.monotonic()

    def wait(self) -> float:
        """Seconds until the next frame is due."""
        return max(0.0, self.deadline - time.monotonic())

    def ticked(self) -> None:
        self.deadline = max(self.deadline + self.period, time.monotonic())

    def held(self, seconds: float) -> None:
        """The frame due now started `seconds` late, held back to run in one batch with
        other players' steps that then came: count the next from then, so that the players'
        steps keep arriving together instead of each at a phase of its own. (Not after a
        wait that ran out on a slow player: that would slow this one down as well.)"""
        self.deadline += seconds


# (frame, header) -> the message that carries it; the header as protocol.decode_frame gives it
Encoder = Callable[[np.ndarray, dict[str, Any]], Any]


@dataclass
class Reply:
    """What a control message produced: frames to show (None: keep the current ones) and
    JSON messages to send, in order."""

    frames: list[Any] | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)


class Play:
    """One player's session on one world."""

    def __init__(self, world: World, cfg: ServeConfig, encode: Encoder, seed: int | None = None):
        self.world = world
        self.cfg = cfg
        self.encode = encode
        self.fps = frame_rate(cfg, world)
        self.pacer = Pacer(self.fps)
        path = Path(cfg.checkpoint)
        self.checkpoint_meta = {
            "name": world.name,
            "hash": world.checkpoint_hash,
            "path": str(path.resolve()) if path.exists() else cfg.checkpoint,
        }
        self.dream = not isinstance(world, GameSession)
        self.inputs = protocol.InputAccumulator(cfg.mouse_px_per_unit, cfg.arrow_rate)
        self._inputs_lock = threading.Lock()  # inputs arrive on another thread than ticks
        self.paused = False
        self.side_by_side = False
        self.game: Game | None = None  # the real game beside the dream
        self.recording: Recording | None = None
        self.seed = seed if seed is not None else random.randrange(protocol.MAX_SEED)
        self.frame = 0  # frames since the world began (recording does not restart the count)
        self.history: deque[tuple[np.ndarray, Action]] = deque(maxlen=world.context_length)
        self.last_game_frame: np.ndarray | None = None

    # ------------------------------------------------------------ messages

    def hello(self, **extra: Any) -> dict[str, Any]:
        world = self.world
        return {"type": "hello", "protocol": protocol.PROTOCOL_VERSION,
                "mode": "dream" if self.dream else "game", "model": world.name,
                "checkpoint_hash": world.checkpoint_hash, "size": world.size, "fps": self.fps,
                "context_length": world.context_length, "side_by_side": self.dream,
                **extra, "keys": list(protocol.INPUT_KEYS)}

    def state(self) -> dict[str, Any]:
        rec = self.recording
        return {"type": "state", "seed": self.seed, "paused": self.paused,
                "side_by_side": self.side_by_side,
                "recording": rec.name if rec is not None else None, "frame": self.frame}

    def pong(self, msg: protocol.Ping) -> dict[str, Any]:
        return {"type": "pong", "t": msg.t, "server_ms": time.time() * 1000}

    def add_input(self, msg: protocol.Input) -> None:
        """Fold an input message into the next frame's action (ignored while paused)."""
        if not self.paused:
            with self._inputs_lock:
                self.inputs.add(msg)

    def _clear_inputs(self) -> None:
        with self._inputs_lock:
            self.inputs.clear()

    def control(self, msg: protocol.Message) -> Reply:
        """Reset, Record, Pause or SideBySide; answered with a state message (and `saved`
        when a recording ends)."""
        reply = Reply()
        if isinstance(msg, protocol.Reset):
            seed = msg.seed if msg.seed is not None else random.randrange(protocol.MAX_SEED)
            reply.messages += self._stop_recording()
            self._clear_inputs()
            reply.frames = self.reset(seed)
        elif isinstance(msg, protocol.Record):
            if msg.on:
                self.start_recording()
            else:
                reply.messages += self._stop_recording()
        elif isinstance(msg, protocol.Pause):
            self.paused = msg.on
            self._clear_inputs()
            self.pacer.restart()
        elif isinstance(msg, protocol.SideBySide):
            if msg.on and not self.dream:
                return Reply(messages=[{"type": "error", "code": "unsupported",
                                        "error": "side-by-side needs a model; this is --game"}])
            if msg.on and not self.side_by_side:
                reply.frames = self.game_frame()
            self.side_by_side = msg.on
        else:
            raise TypeError(f"not a control message: {type(msg).__name__}")
        reply.messages.append(self.state())
        return reply

    # ------------------------------------------------------------ frames

    def _encode(self, frame: np.ndarray, *, seq: int = 0, ms: float = 0.0,
                stream: int = protocol.STREAM_DREAM) -> Any:
        header = {"stream": stream, "recording": self.recording is not None,
                  "frame": self.frame, "seq": seq, "gen_ms": ms, "server_ms": time.time() * 1000}
        return self.encode(frame, header)

    def _new_world(self, seed: int) -> np.ndarray:
        """Start the world from seed: context frames from the real game (its reset frame,
        then frames of no input) start the model, and the same game runs on beside it.
        Returns the frame on screen now."""
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

    def start(self) -> list[Any]:
        """The session's first world, from its seed."""
        return self.reset(self.seed)

    def reset(self, seed: int) -> list[Any]:
        frame = self._new_world(seed)
        out = [self._encode(frame)]
        if self.side_by_side and self.game is not None:
            out.append(self._encode(frame, stream=protocol.STREAM_GAME))
        return out

    def tick(self) -> list[Any]:
        """One step with the input gathered since the last: the frame, and the real game's
        beside it in side-by-side mode."""
        with self._inputs_lock:
            action, seq = self.inputs.take()
        frame = self.world.step(action)
        ms = float(self.world.last_timings.get("total_ms", 0.0))
        timings = self.world.last_timings
        if timings.get("all_in"):  # held back for batch mates who came, not for a slow one
            self.pacer.held(float(timings.get("wait_ms", 0.0)) / 1000)
        self.frame += 1
        self.history.append((frame, action))
        if self.recording is not None:
            self.recording.append(frame, action, ms)
        out = [self._encode(frame, seq=seq, ms=ms)]
        if self.game is not None:
            t0 = time.perf_counter()
            self.last_game_frame = self.game.step(action)
            game_ms = (time.perf_counter() - t0) * 1000
            if self.side_by_side:
                out.append(self._encode(self.last_game_frame, seq=seq, ms=game_ms,
                                        stream=protocol.STREAM_GAME))
        return out

    def game_frame(self) -> list[Any]:
        if self.last_game_frame is None:
            return []
        return [self._encode(self.last_game_frame, stream=protocol.STREAM_GAME)]

    # ------------------------------------------------------------ recording

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
                sampling=self.world.sampling,  # the batch shape replay must run
                card=self.world.card,
                **common,
            )
        else:
            frame, action = self.history[-1]
            self.recording = Recording(
                self.cfg.recordings, source="game", start=self.world.state(), **common
            )
            self.recording.append(frame, action)

    def _stop_recording(self) -> list[dict[str, Any]]:
        info = self.stop_recording()
        return [] if info is None else [{"type": "saved", **info}]

    def stop_recording(self) -> dict[str, Any] | None:
        rec, self.recording = self.recording, None
        if rec is None:
            return None
        rec.close()
        return {"name": rec.name, "frames": rec.count}

    def close(self) -> dict[str, Any] | None:
        """End the session: the recording, if any, is closed; returns what `saved` says."""
        return self.stop_recording()
