"""One player's play session, knowing no sockets: driven by the websocket server
(app.server) and by the pygame client's in-process link (app.pygame_client) alike.

    play = Play(world, cfg, encode)             # encode(frame, header) -> what the caller sends
    frames = play.start()                       # the first frame(s)
    play.add_input(msg)                         # protocol.Input, from any thread
    frames = play.tick()                        # one step, with the input gathered since the last
    reply = play.control(msg)                   # Reset / Record / Pause / SideBySide / Resync
    messages = play.take_messages()             # what tick() had to say (slow, a recording ended)
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
from app.recording import Recording, recordings_usage
from worldmodel.actions import NOOP, Action
from worldmodel.game import Game

log = logging.getLogger("wm.play")
SLOW_WINDOW_S = 1.0  # the slow notice judges the frame rate of the last second
SLOW_SHARE = 0.9  # it is given below this share of the target rate
SLOW_RECOVERED = 0.95  # and withdrawn at this share or above
MB = 1024 * 1024


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
    def worlds(self) -> list[int] | None: ...  # game seeds it knows; None: any
    @property
    def last_timings(self) -> dict[str, float]: ...  # of the last step: model/decode/total ms
    @property
    def threads(self) -> int | None: ...  # CPU threads its frames depend on (kept for replay)

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
    threads = None  # numpy, the same on any number of threads
    worlds = None

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
    from worldmodel.session import WorldSession, freeze_heap

    template = WorldSession.from_checkpoint(cfg.checkpoint, device=cfg.device)
    if cfg.max_sessions is None:
        # at least 2: a reload holds the old session for a moment while the new one starts
        cfg.max_sessions, how = device_capacity(template, cfg.fps or template.fps, floor=2,
                                                cache=cfg.capacity_cache)
        log.info("wm play: --max-sessions %d: %s", cfg.max_sessions, how)
    world = BatchedWorld(template, rows=cfg.max_sessions)
    first = world.session()
    freeze_heap()
    return world.session, first


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
        self.seed = seed if seed is not None else self.random_seed()
        self.frame = 0  # frames since the world began (recording does not restart the count)
        # the last context_length frames and the actions that led into them, on screen and
        # in the real game beside it: what a recording or a resync restarts the dream from
        self.history: deque[tuple[np.ndarray, Action]] = deque(maxlen=world.context_length)
        self.game_history: deque[tuple[np.ndarray, Action]] = deque(maxlen=world.context_length)
        self.last_game_frame: np.ndarray | None = None
        self._ticks: deque[float] = deque()  # time.monotonic() when each recent step ended
        self._judge_after = 0.0  # time.monotonic() from which a full window has been seen
        self.slow = False  # steps take longer than the frame period: below the target rate
        self._slow_logged = False
        self.recordings_made = 0
        self.recorded_bytes = 0  # by this session's closed recordings
        self._recording_budget = 0  # bytes the open recording may still take
        self._messages: list[dict[str, Any]] = []  # from tick, for take_messages

    # ------------------------------------------------------------ messages

    def hello(self, **extra: Any) -> dict[str, Any]:
        world = self.world
        return {"type": "hello", "protocol": protocol.PROTOCOL_VERSION,
                "mode": "dream" if self.dream else "game", "model": world.name,
                "checkpoint_hash": world.checkpoint_hash, "size": world.size, "fps": self.fps,
                "context_length": world.context_length, "side_by_side": self.dream,
                "worlds": world.worlds,
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

    def random_seed(self) -> int:
        """A new world: one of the model's own when it declares any, else any seed."""
        worlds = self.world.worlds
        return random.choice(worlds) if worlds else random.randrange(protocol.MAX_SEED)

    def control(self, msg: protocol.Message) -> Reply:
        """Reset, Record, Pause, SideBySide or Resync; answered with a state message (and
        `saved` when a recording ends)."""
        reply = Reply()
        if isinstance(msg, protocol.Reset):
            seed = msg.seed if msg.seed is not None else self.random_seed()
            reply.messages += self._stop_recording()
            self._clear_inputs()
            reply.frames = self.reset(seed)
        elif isinstance(msg, protocol.Record):
            if msg.on:
                reply.messages += self._start_recording()
            else:
                reply.messages += self._stop_recording()
        elif isinstance(msg, protocol.Pause):
            self.paused = msg.on
            self._clear_inputs()
            self.pacer.restart()
            self._clear_ticks()  # the pause is not a slow step
        elif isinstance(msg, protocol.SideBySide):
            if msg.on and not self.dream:
                return Reply(messages=[{"type": "error", "code": "unsupported",
                                        "error": "side-by-side needs a model; this is --game"}])
            if msg.on and not self.side_by_side:
                reply.frames = self.game_frame()
            self.side_by_side = msg.on
        elif isinstance(msg, protocol.Resync):
            if not self.side_by_side:
                return Reply(messages=[{"type": "error", "code": "unsupported",
                                        "error": "resync needs side-by-side mode (G)"}])
            reply.frames = self.resync()
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
        for history in (self.history, self.game_history):
            history.clear()
            history.extend(zip(frames, actions, strict=True))
        self._clear_ticks()
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
            self._record(frame, action, ms)
        out = [self._encode(frame, seq=seq, ms=ms)]
        if self.game is not None:
            t0 = time.perf_counter()
            self.last_game_frame = self.game.step(action)
            self.game_history.append((self.last_game_frame, action))
            game_ms = (time.perf_counter() - t0) * 1000
            if self.side_by_side:
                out.append(self._encode(self.last_game_frame, seq=seq, ms=game_ms,
                                        stream=protocol.STREAM_GAME))
        self._judge_pace()
        return out

    def _clear_ticks(self) -> None:
        self._ticks.clear()
        self._judge_after = time.monotonic() + SLOW_WINDOW_S

    def _judge_pace(self) -> None:
        """Say when the session makes frames below its target rate (the model, decoding,
        encoding, the game beside it, or a machine too busy to run them), and when that
        is over. Judged on the frames of the last second played, pauses left out."""
        now = time.monotonic()
        self._ticks.append(now)
        while len(self._ticks) > 2 and now - self._ticks[0] > SLOW_WINDOW_S:
            self._ticks.popleft()
        if now < self._judge_after or len(self._ticks) < 2:
            return
        rate = (len(self._ticks) - 1) / (now - self._ticks[0])
        if self.slow == (rate < self.fps * (SLOW_RECOVERED if self.slow else SLOW_SHARE)):
            return
        self.slow = not self.slow
        fps = round(rate, 1)
        self._messages.append({"type": "slow", "on": self.slow, "fps": fps,
                              "target_fps": self.fps})
        if self.slow and not self._slow_logged:
            self._slow_logged = True
            log.warning("%s makes %.1f frames/s, below the target %g: the session plays slower",
                        self.world.name, fps, self.fps)

    def resync(self) -> list[Any]:
        """Restart the dream from the real game: its last context_length frames and the
        actions that led into them become the model's context, so dream and game go on
        from the same place. A recording notes it, so that replay does the same."""
        frames = np.stack([f for f, _ in self.game_history])
        actions = [a for _, a in self.game_history]
        self.world.reset(frames, actions, seed=self.seed)
        self.history.clear()
        self.history.extend(self.game_history)
        if self.recording is not None:
            self.recording.resync(frames, actions, self.seed)
        self._clear_ticks()
        return [self._encode(frames[-1]), *self.game_frame()]

    def take_messages(self) -> list[dict[str, Any]]:
        """Messages that arose during tick (the slow notice, a recording that ended), oldest first."""
        out, self._messages = self._messages, []
        return out

    def game_frame(self) -> list[Any]:
        if self.last_game_frame is None:
            return []
        return [self._encode(self.last_game_frame, stream=protocol.STREAM_GAME)]

    # ------------------------------------------------------------ recording

    def _start_recording(self) -> list[dict[str, Any]]:
        """start_recording within the caps, answered with an error if refused or failed."""
        if self.recording is not None:
            return []
        cfg = self.cfg
        count, used = recordings_usage(cfg.recordings)
        budget = min(cfg.max_session_recording_mb * MB - self.recorded_bytes,
                     cfg.max_recordings_mb * MB - used)
        full = None
        if self.recordings_made >= cfg.max_session_recordings:
            full = f"this session made its {cfg.max_session_recordings} recordings"
        elif count >= cfg.max_recordings:
            full = f"the server keeps at most {cfg.max_recordings} recordings"
        elif budget <= 0:
            full = "the recordings' space is used up"
        if full is not None:
            return [_error("recording_full", f"cannot record: {full}")]
        try:
            self.start_recording()
        except OSError as e:  # the folder is not writable, the disk is full...
            log.error("could not start a recording in %s: %s", cfg.recordings, e)
            return [_error("recording_failed", "could not start a recording (see the server log)")]
        self.recordings_made += 1
        self._recording_budget = budget
        return []

    def _record(self, frame: np.ndarray, action: Action, ms: float) -> None:
        rec = self.recording
        try:
            rec.append(frame, action, ms)
            full = rec.nbytes >= self._recording_budget
        except OSError as e:
            log.error("recording %s failed: %s", rec.name, e)
            self._messages.append(_error("recording_failed",
                                         "a write failed; the recording was closed (see the server log)"))  # fmt: skip
            full = False
        else:
            if not full:
                return
            self._messages.append(_error("recording_full",
                                         "the recording reached its size limit and was closed"))  # fmt: skip
        self._messages += self._stop_recording()
        self._messages.append(self.state())

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
                threads=self.world.threads,
                sampling=self.world.sampling,  # the batch shape replay must run
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
        try:
            rec.close()
        except OSError as e:  # what was flushed stays readable; the mp4 may not be
            log.error("recording %s could not be closed: %s", rec.name, e)
        self.recorded_bytes += rec.nbytes
        return {"name": rec.name, "frames": rec.count}

    def close(self) -> dict[str, Any] | None:
        """End the session: the recording, if any, is closed; returns what `saved` says."""
        return self.stop_recording()


def _error(code: str, text: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "error": text}
