"""Many players, one forward: the steps of all live sessions on a device, batched.

    world = BatchedWorld.from_checkpoint("default", device="cpu", rows=8, group=4)
    session = world.session()          # the WorldSession door; SessionsFull when all rows are taken
    session.reset(context_frames, context_actions=None, seed=0)
    frame = session.step(Action())     # blocks until the tick that carries it
    future = session.submit(Action())  # or: submit now, frame = future.result() later
    session.close()                    # frees the row for the next player
    world.close()

A server keeps one thread per player calling `session.step(action)`, as with `WorldSession`.
One scheduler thread gathers the pending steps and runs them as one tick: the student's
denoising passes over a group of rows at once (`StudentSampler` on a `SlotKVCache`), then one
decode. Each session owns a row: its KV cache slot, seed stream, frame index, window and
sinks. The `rows` of a world (the sessions it holds) come in groups of `group` rows (all of
them by default); a tick runs each group that has a step pending, so a few players on a big
world pay for the groups they are in, not for every row.

When a tick runs: as soon as every session that is playing has a step pending, or
`max_wait_s` after the oldest pending step or the end of the last tick, whichever is later
(so that the players of that tick have time to ask again, rather than steps left over from
it running alone and the batch splitting in two for good). A session that got its
last frame more than `idle_s` ago and has not asked for the next (paused, or its player gone
quiet) is not waited for, so it holds nobody back; a slow one costs the others at most
`max_wait_s` a tick.

Replay stays exact. A group always runs all its rows, the idle ones included, with a mask on
every attention call, so its shapes never depend on who is playing; rows do not interact, so
a session's frames depend only on its own inputs and on the group size. That number is the
session's `sampling["batch_rows"]`: a replay on a world of that many rows regenerates the
frames bit for bit on the same device (tests/test_scheduler.py checks it on CPU SDPA; on
CUDA it needs kernels chosen by shape alone and deterministic in the forward pass, which
the test's GPU case checks but which has not run on a GPU yet: until it has, say "within
tolerance" there). The per-row masks make "auto" attention resolve to SDPA on CUDA too
(flash-attn takes no mask). The unbatched `WorldSession` runs other shapes,
so its frames agree with a batched session's within float tolerance, not bit for bit.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodel.actions import Action
from worldmodel.model import SlotKVCache
from worldmodel.sampling import StudentSampler
from worldmodel.session import WorldSession
from worldmodel.tokenizer import tensor_to_frames


class SessionsFull(RuntimeError):
    """Every row of the world is taken: the clear "busy" answer for one more player."""


@dataclass
class _Request:
    session: BatchedSession
    action: Action
    future: Future
    submitted: float = field(default_factory=time.perf_counter)


class BatchedWorld:
    """All sessions of one model on one device, stepped together in ticks."""

    def __init__(self, template: WorldSession, rows: int = 4, group: int | None = None, *,
                 max_wait_s: float | None = None, idle_s: float = 0.25):
        """template: a loaded WorldSession whose tokenizer, student and sampler settings the
        rows share (`from_checkpoint` makes one). rows: sessions held; group: rows run as one
        batch (rows by default; it must divide rows). max_wait_s defaults to half a frame."""
        group = rows if group is None else group
        if rows < 1 or group < 1 or rows % group:
            raise ValueError(f"need rows >= 1 and a group size that divides them, got {rows}, {group}")
        self.template = template
        self.rows, self.group = rows, group
        self.max_wait_s = 0.5 / template.fps if max_wait_s is None else max_wait_s
        self.idle_s = idle_s
        model = template.model
        p = next(model.parameters())
        cfg = template.sampler.cfg
        self.samplers = [  # one per group, each with a cache of its own
            StudentSampler(model, cfg, fuse_write=template.sampler.fuse_write,
                           cache=SlotKVCache(model.cfg, group, cfg.window, cfg.sinks,
                                             p.device, p.dtype))
            for _ in range(rows // group)]
        self._free = list(range(rows))
        self._sessions: dict[int, BatchedSession] = {}
        self._pending: dict[int, _Request] = {}
        self._cond = threading.Condition()
        self._model_lock = threading.Lock()  # a tick and a reset never run at once
        self._closed = False
        # ticks run, their CPU time on the scheduler thread, steps they carried
        self.ticks, self.cpu_s, self.steps_done = 0, 0.0, 0
        self._tick_end = 0.0
        self._thread = threading.Thread(target=self._run, name="wm-scheduler", daemon=True)
        self._thread.start()

    @classmethod
    def from_checkpoint(cls, path_or_name: str | Path = "default", device: str = "cpu",
                        rows: int = 4, **kwargs) -> BatchedWorld:
        return cls(WorldSession.from_checkpoint(path_or_name, device=device), rows, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.template.device

    @property
    def in_use(self) -> int:
        return len(self._sessions)

    def session(self) -> BatchedSession:
        """A new session on a free row. Raises SessionsFull when there is none."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the world is closed")
            if not self._free:
                raise SessionsFull(f"all {self.rows} sessions of this device are in use")
            row = self._free.pop(0)
            s = BatchedSession(self, row)
            self._sessions[row] = s
            return s

    def close(self) -> None:
        """Stop the scheduler; steps still pending fail with RuntimeError."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(30)

    def __enter__(self) -> BatchedWorld:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ called by sessions

    def _release(self, session: BatchedSession) -> None:
        with self._cond:
            if self._sessions.get(session.row) is session:
                del self._sessions[session.row]
                req = self._pending.pop(session.row, None)
                if req is not None:
                    req.future.set_exception(RuntimeError("session closed"))
                self._free.append(session.row)
                self._free.sort()
                self._cond.notify_all()

    def _prefill(self, session: BatchedSession, z: torch.Tensor, a: torch.Tensor) -> None:
        with self._model_lock:
            g, r = divmod(session.row, self.group)
            self.samplers[g].prefill(z, a, row=r)

    def _submit(self, session: BatchedSession, action: Action) -> Future:
        fut: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the world is closed")
            if session.row in self._pending:
                raise RuntimeError("this session already has a step pending")
            self._pending[session.row] = _Request(session, action, fut)
            self._cond.notify_all()
        return fut

    # ------------------------------------------------------------ the scheduler thread

    def _everyone_in(self, now: float) -> bool:
        """Every session that is playing (got a frame within idle_s, so may ask again any
        moment) has a step pending. Counted from the frame, not from the last request: a
        tick longer than idle_s must not make every player look idle."""
        for row, s in self._sessions.items():
            if row in self._pending or s.last_frame_at is None:
                continue
            if now - s.last_frame_at < self.idle_s:
                return False
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    for req in self._pending.values():
                        req.future.set_exception(RuntimeError("the world is closed"))
                    self._pending.clear()
                    return
                deadline = max(min(r.submitted for r in self._pending.values()),
                               self._tick_end) + self.max_wait_s
                while not (all_in := self._everyone_in(time.perf_counter())) and not self._closed:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch, self._pending = self._pending, {}
            if batch:
                self._tick(batch, all_in)

    @torch.no_grad()
    def _tick(self, batch: dict[int, _Request], all_in: bool = True) -> None:
        """all_in: the tick waited until every playing session was in, not for max_wait_s."""
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            with self._model_lock:
                frames, t1 = self._generate(batch)
        except BaseException as e:  # every waiting player hears of it, none hangs
            for req in batch.values():
                req.future.set_exception(e)
            return
        t2, cpu = time.perf_counter(), time.thread_time() - c0
        self._tick_end = t2
        self.ticks += 1
        self.cpu_s += cpu
        self.steps_done += len(batch)
        for row, req in batch.items():
            req.session._deliver(req, list(frames[row]), {
                "model_ms": (t1 - t0) * 1e3, "decode_ms": (t2 - t1) * 1e3,
                "tick_cpu_ms": cpu * 1e3, "wait_ms": (t0 - req.submitted) * 1e3,
                "batch": len(batch), "rows": self.group, "all_in": all_in})

    def _generate(self, batch: dict[int, _Request]) -> tuple[dict[int, np.ndarray], float]:
        """One tick: each stepped row's (chunk, H, W, 3) uint8 frames, and the time the
        model finished."""
        cfg = self.template.sampler.cfg
        dev = self.device
        dim = self.template.model.cfg.action_dim
        G = self.group
        latents = {}
        for g in sorted({row // G for row in batch}):
            acts = torch.zeros(G, cfg.chunk, dim)
            gens: list[torch.Generator | None] = [None] * G
            for row in range(g * G, (g + 1) * G):
                if row in batch:  # a chunk's frames share the action
                    acts[row - g * G] = torch.from_numpy(batch[row].action.to_vector())
                    gens[row - g * G] = batch[row].session._generator
            active = [g * G + r in batch for r in range(G)]
            latents[g] = self.samplers[g].step(acts.to(dev), gens, rows=active)  # (G, chunk, C, h, w)
        t1 = time.perf_counter()
        out = {}
        for g, z in latents.items():
            # every row of the group is decoded, idle ones too: a fixed shape, as in the passes
            x = tensor_to_frames(self.template.tokenizer.decode(z.flatten(0, 1)).float().cpu())
            frames = x.numpy().reshape(G, cfg.chunk, *x.shape[1:])
            out |= {g * G + r: frames[r] for r in range(G) if g * G + r in batch}
        return out, t1


class BatchedSession:
    """One player's row of a `BatchedWorld`, with WorldSession's door: `reset`, `step`, and
    the attributes a server reads (size, name, checkpoint_hash, context_length, fps, card,
    worlds, threads, frame_index, last_timings)."""

    def __init__(self, world: BatchedWorld, row: int):
        t = world.template
        self.world, self.row = world, row
        self.size, self.name, self.checkpoint_hash = t.size, t.name, t.checkpoint_hash
        self.context_length, self.fps, self.card = t.context_length, t.fps, t.card
        self.worlds = t.worlds
        self.tokenizer, self.model = t.tokenizer, t.model
        self.frame_index = 0
        self.last_timings: dict[str, float] = {}
        self.last_frame_at: float | None = None  # when a tick last delivered to this session
        self._generator = torch.Generator(device=t.device)
        self._queue: list[np.ndarray] = []  # frames of a chunk not yet handed out
        self._started = False
        self._closed = False

    @property
    def device(self) -> torch.device:
        return self.world.device

    @property
    def threads(self) -> int | None:
        return self.world.template.threads

    @property
    def sampling(self) -> dict[str, Any]:
        """What a replay must match to regenerate this session's frames exactly."""
        return {"batch_rows": self.world.group,
                "fuse_write": self.world.samplers[0].fuse_write}

    def reset(self, context_frames, context_actions=None, seed: int = 0) -> None:
        """As `WorldSession.reset`; runs between ticks, touching only this session's row."""
        self._check_open()
        z, a = self.world.template.encode_context(context_frames, context_actions)
        self.world._prefill(self, z, a)
        self._generator.manual_seed(int(seed))
        self.frame_index = 0
        self._queue = []
        self.last_frame_at = None
        self._started = True

    def submit(self, action: Action) -> Future:
        """Ask for the next frame; the future's result is what `step` returns."""
        if not isinstance(action, Action):
            raise TypeError(f"step() takes an Action, got {type(action).__name__}")
        self._check_open()
        if not self._started:
            raise RuntimeError("call reset() with context frames before step()")
        if self._queue:  # the rest of a chunk: no tick needed
            fut: Future = Future()
            self._hand_out(fut, self._queue, {"model_ms": 0.0, "decode_ms": 0.0,
                                              "wait_ms": 0.0, "batch": 0, "rows": self.world.group})
            return fut
        return self.world._submit(self, action)

    def step(self, action: Action) -> np.ndarray:
        """The next frame, uint8 [size, size, 3], as the result of `action`."""
        t0 = time.perf_counter()
        frame = self.submit(action).result()
        self.last_timings["total_ms"] = (time.perf_counter() - t0) * 1e3
        return frame

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.world._release(self)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this session is closed")

    def _deliver(self, req: _Request, frames: list[np.ndarray], timings: dict) -> None:
        self.last_frame_at = time.perf_counter()
        self._hand_out(req.future, frames, timings)

    def _hand_out(self, fut: Future, frames: list[np.ndarray], timings: dict) -> None:
        frame = frames.pop(0)
        self._queue = frames
        self.frame_index += 1
        self.last_timings = dict(timings)
        fut.set_result(frame)


def lockstep_fps(template: WorldSession, rows: int, ticks: int = 20, warmup: int = 3) -> float:
    """Frames/s each of `rows` players gets when all of them play on a world of `rows` rows:
    every session submits, then all wait, `ticks` times after `warmup` ticks."""
    from worldmodel.bench import game_clip, script

    ctx, ctx_actions = game_clip(template.size, template.context_length, 0)
    acts = script(warmup + ticks)
    with BatchedWorld(template, rows, max_wait_s=10.0, idle_s=10.0) as world:
        sessions = [world.session() for _ in range(rows)]
        for i, s in enumerate(sessions):
            s.reset(ctx, ctx_actions, seed=i)
        t0 = 0.0
        for k in range(warmup + ticks):
            if k == warmup:
                t0 = time.perf_counter()
            for f in [s.submit(acts[k]) for s in sessions]:
                f.result()
        return ticks / (time.perf_counter() - t0)


def sessions_at_rate(template: WorldSession, target_fps: float | None = None,
                     max_rows: int = 64, ticks: int = 20) -> tuple[int, dict[int, float]]:
    """How many sessions this device holds with each getting `target_fps` (the model's
    frame rate by default): the largest row count whose ticks keep that pace, from a
    doubling search and then a bisection, measured here and now. Returns the count (0 if
    not even one session keeps the pace) and the frames/s per player at each count tried."""
    target = float(template.fps if target_fps is None else target_fps)
    tried: dict[int, float] = {}
    good, bad = 0, max_rows + 1
    rows = 1
    while rows <= max_rows:
        tried[rows] = lockstep_fps(template, rows, ticks)
        if tried[rows] < target:
            bad = rows
            break
        good = rows
        rows *= 2
    if bad == max_rows + 1 and good < max_rows:  # the doubling jumped past max_rows
        tried[max_rows] = lockstep_fps(template, max_rows, ticks)
        good, bad = (max_rows, bad) if tried[max_rows] >= target else (good, max_rows)
    while bad - good > 1:
        mid = (good + bad) // 2
        tried[mid] = lockstep_fps(template, mid, ticks)
        good, bad = (mid, bad) if tried[mid] >= target else (good, mid)
    return good, dict(sorted(tried.items()))


def capacity_cache_key(template: WorldSession, target_fps: float) -> str:
    """What a measured capacity depends on: the network, the device, the threads, the pace."""
    dev = template.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    return f"{template.checkpoint_hash[:16]}|{dev.type}|{name}|torch {torch.__version__}|{target_fps:g}fps"


def device_capacity(template: WorldSession, target_fps: float | None = None, *,
                    floor: int = 1, ceiling: int | None = None, cache: Path | None = None,
                    ticks: int = 10) -> tuple[int, str]:
    """Sessions to serve on this device: `sessions_at_rate`, kept within [floor, ceiling]
    (ceiling: 16 on CPU, 64 on an accelerator), read from `cache` (a JSON file) when this
    checkpoint, device and pace were measured before. Returns the count and how it was
    found, for the log."""
    target = float(template.fps if target_fps is None else target_fps)
    ceiling = (16 if template.device.type == "cpu" else 64) if ceiling is None else ceiling
    key = capacity_cache_key(template, target)
    known: dict[str, Any] = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}
    if isinstance(known.get(key), dict):
        held, how = int(known[key]["sessions"]), f"measured before ({cache})"
    else:
        held, tried = sessions_at_rate(template, target, max_rows=ceiling, ticks=ticks)
        rates = ", ".join(f"{n}: {fps:.1f}" for n, fps in tried.items())
        how = f"measured now (frames/s per player at each count: {rates})"
        if cache is not None:
            known[key] = {"sessions": held, "fps_per_player": tried}
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(".tmp")
                tmp.write_text(json.dumps(known, indent=1))
                tmp.replace(cache)
            except OSError:
                pass  # a cache that cannot be written costs a measurement next time
    chosen = min(max(held, floor), ceiling)
    return chosen, f"{held} sessions keep {target:g} frames/s each, {how}; serving {chosen}"
