"""`wm replay REC`: regenerate a recording and check it frame by frame, or export it.

    wm replay recordings/20250101-120000-001                    # exit 0 iff every frame matches
    wm replay recordings/20250101-120000-001 --export out.mp4   # also write a video (or .gif)
    wm replay recordings/20250101-120000-001 --export out.mp4 --no-check   # video only

A dream recording is regenerated with `WorldSession` from its checkpoint (the hash must
match), its context (context.u8 + meta["context"]["actions"]), its seed and its actions; a
recording of the real game (source "game") with `Game` from its seed and start state. A
resync in the recording (the player restarted the dream from the real game's frames) is
redone before the frame it preceded. Exact equality is expected on the device it was
recorded on; on CPU also with the torch thread count it was recorded with
(meta["threads"]), which replay sets for the time it runs and reports. A dream served by `wm play` was one row of a
`BatchedWorld`; meta["sampling"]["batch_rows"] says how many rows its batches had, and the
replay runs a world of that many rows, since a session's frames depend on that shape and on
nothing else about its batch mates; meta["sampling"]["fuse_write"] whether the cache writes
rode with the next frame's first step (the same frames up to rounding), which the replay
does the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.recording import frame_times, load_context, load_resyncs
from worldmodel.actions import Action
from worldmodel.episode import ACTIONS, Episode, EpisodeError
from worldmodel.flags import add_config_arguments, config_from_args
from worldmodel.video import export


@dataclass
class ReplayResult:
    frames: int
    matching: int
    max_abs_diff: int
    first_mismatch: int | None
    threads: int | None = None  # torch CPU threads the frames were regenerated with
    recorded_threads: int | None = None  # and those the recording says it was made with

    @property
    def ok(self) -> bool:
        return self.matching == self.frames


def read_actions_exact(path: Path, n: int) -> list[Action]:
    """The first n actions as recorded. Not via the float32 action vectors: the game rounds
    camera input itself, and a float32 round trip could move a value across that rounding."""
    actions = []
    with open(path / ACTIONS) as f:
        for line in f:
            if len(actions) == n or not line.endswith("\n"):
                break
            actions.append(Action.from_dict(json.loads(line)["action"]))
    return actions


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's CPU thread count set to n (None: left as it is) for the block."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def replay(
    path: str | Path, device: str | None = None, checkpoint: str | None = None
) -> ReplayResult:
    """Regenerate every frame of the recording at path and compare it with the recorded one.
    A dream on CPU is regenerated with the torch thread count it was recorded with."""
    path = Path(path)
    ep = Episode(path)
    actions = read_actions_exact(path, len(ep))
    recorded_threads = ep.meta.get("threads")
    with contextlib.ExitStack() as stack:
        if ep.meta.get("source") == "game":
            generate, threads = _game(ep), None
        else:
            session = _session(ep, device, checkpoint)
            if session.threads is not None:
                stack.enter_context(torch_threads(recorded_threads))
            threads = session.threads
            rows = (ep.meta.get("sampling") or {}).get("batch_rows")
            if rows:  # a served dream: one row of a batch of this many
                from worldmodel.scheduler import BatchedWorld

                world = BatchedWorld(session, rows=int(rows))
                stack.callback(world.close)
                session = world.session()
            context, context_actions = load_context(path, ep.meta)
            session.reset(context, context_actions, seed=int(ep.meta["seed"]))
            resyncs = load_resyncs(path, ep.meta)  # where the player restarted from the game

            def generate(i: int, action: Action) -> np.ndarray:
                if i in resyncs:
                    frames, acts, seed = resyncs[i]
                    session.reset(frames, acts, seed=seed)
                return session.step(action)
        matching, max_diff, first = 0, 0, None
        for i, action in enumerate(tqdm(actions, desc="replay", unit="frame", disable=None)):
            frame = generate(i, action)
            diff = int(np.abs(frame.astype(np.int16) - ep.frames[i].astype(np.int16)).max())
            max_diff = max(max_diff, diff)
            if diff == 0:
                matching += 1
            elif first is None:
                first = i
    return ReplayResult(len(actions), matching, max_diff, first, threads, recorded_threads)


def _game(ep: Episode) -> Callable[[int, Action], np.ndarray]:
    from worldmodel.game import Game

    game = Game(int(ep.meta["seed"]), ep.size)
    start = ep.meta.get("start")  # the game's state at frame 0, when not its reset state

    def generate(i: int, action: Action) -> np.ndarray:
        if i > 0:
            return game.step(action)
        return game.restore(start) if start else game.reset()

    return generate


def _session(ep: Episode, device: str | None, checkpoint: str | None):
    """The recording's WorldSession: its checkpoint (the hash checked) on its device."""
    from worldmodel.session import WorldSession

    recorded = ep.meta.get("checkpoint") or {}
    session = WorldSession.from_checkpoint(
        checkpoint or recorded.get("path") or recorded.get("name", "default"),
        device=device or ep.meta.get("device", "cpu"),
    )
    if recorded.get("hash") and session.checkpoint_hash != recorded["hash"]:
        raise EpisodeError(
            f"checkpoint {session.name!r} has hash {session.checkpoint_hash[:12]}, but the "
            f"recording was made with {recorded['hash'][:12]}: pass --checkpoint"
        )
    fused = (ep.meta.get("sampling") or {}).get("fuse_write")
    if fused is None:  # recorded before it was written down: only samplers without sinks fused
        fused = session.sampler.fuse_write and session.sampler.cfg.sinks == 0
    session.sampler.fuse_write = bool(fused)
    return session


@dataclass
class ReplayConfig:
    export: Path | None = None  # write the frames to this .mp4 or .gif
    device: str | None = None  # None: the device it was recorded on
    checkpoint: str | None = None  # None: the one named in meta.json
    check: bool = True  # regenerate and compare; off: export only


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recording", type=Path, help="a recording folder")
    add_config_arguments(p, ReplayConfig(), helps={
        "export": "write the frames to this .mp4 or .gif",
        "device": "the device it was recorded on when not given",
        "checkpoint": "the one named in meta.json when not given",
        "check": "regenerate every frame and compare (--no-check: export only)",
    })  # fmt: skip


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(ReplayConfig, args)
    try:
        ep = Episode(args.recording)
        if cfg.export:
            times = frame_times(args.recording, len(ep))
            out = export(ep.frames, cfg.export, int(ep.meta["fps"]), times)
            print(f"wrote {out} ({len(ep)} frames)")
        if not cfg.check:
            return 0
        result = replay(args.recording, cfg.device, cfg.checkpoint)
    except (EpisodeError, FileNotFoundError, ValueError) as e:
        print(f"wm replay: {e}", file=sys.stderr)
        return 2
    name = args.recording.name
    if result.threads is not None:
        if result.recorded_threads:
            print(f"{name}: replayed with {result.threads} torch threads, as recorded")
        else:  # made before recordings kept it
            print(f"{name}: replayed with {result.threads} torch threads; the recording does not "
                  "say how many made it, and on CPU another count can change the frames")
    if result.ok:
        print(f"{name}: all {result.frames} frames match exactly (max abs diff 0)")
        return 0
    print(
        f"{name}: MISMATCH: {result.matching}/{result.frames} frames match exactly; first "
        f"differs at frame {result.first_mismatch}; max abs diff {result.max_abs_diff}"
    )
    return 1
