"""`wm replay REC`: regenerate a recording and check it frame by frame, or export it.

    wm replay recordings/20250101-120000-001                    # exit 0 iff every frame matches
    wm replay recordings/20250101-120000-001 --export out.mp4   # also write a video (or .gif)
    wm replay recordings/20250101-120000-001 --export out.mp4 --no-check   # video only

A dream recording is regenerated with `WorldSession` from its checkpoint (the hash must
match), its context (context.u8 + meta["context"]["actions"]), its seed and its actions; a
recording of the real game (source "game") with `Game` from its seed and start state. A dream
served by `wm play` was one row of a `BatchedWorld`; meta["sampling"]["batch_rows"] says how
many rows its batches had, and the replay runs a world of that many rows, since a session's
frames depend on that shape and on nothing else about its batch mates. Exact equality is
expected on the device it was recorded on.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.recording import load_context
from worldmodel.actions import Action
from worldmodel.episode import ACTIONS, Episode, EpisodeError
from worldmodel.video import export


@dataclass
class ReplayResult:
    frames: int
    matching: int
    max_abs_diff: int
    first_mismatch: int | None

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


def replay(
    path: str | Path, device: str | None = None, checkpoint: str | None = None
) -> ReplayResult:
    """Regenerate every frame of the recording at path and compare it with the recorded one."""
    path = Path(path)
    ep = Episode(path)
    meta = ep.meta
    actions = read_actions_exact(path, len(ep))
    world = None  # the BatchedWorld a served dream is replayed on
    if meta.get("source") == "game":
        from worldmodel.game import Game

        game = Game(int(meta["seed"]), ep.size)
        start = meta.get("start")  # the game's state at frame 0, when not its reset state

        def generate(i: int, action: Action) -> np.ndarray:
            if i > 0:
                return game.step(action)
            return game.restore(start) if start else game.reset()
    else:
        from worldmodel.session import WorldSession

        recorded = meta.get("checkpoint") or {}
        session = WorldSession.from_checkpoint(
            checkpoint or recorded.get("path") or recorded.get("name", "default"),
            device=device or meta.get("device", "cpu"),
        )
        if recorded.get("hash") and session.checkpoint_hash != recorded["hash"]:
            raise EpisodeError(
                f"checkpoint {session.name!r} has hash {session.checkpoint_hash[:12]}, but the "
                f"recording was made with {recorded['hash'][:12]}: pass --checkpoint"
            )
        rows = (meta.get("sampling") or {}).get("batch_rows")
        if rows:
            from worldmodel.scheduler import BatchedWorld

            world = BatchedWorld(session, rows=int(rows))
            session = world.session()
        context, context_actions = load_context(path, meta)
        session.reset(context, context_actions, seed=int(meta["seed"]))

        def generate(i: int, action: Action) -> np.ndarray:
            return session.step(action)

    matching, max_diff, first = 0, 0, None
    try:
        for i, action in enumerate(tqdm(actions, desc="replay", unit="frame", disable=None)):
            frame = generate(i, action)
            diff = int(np.abs(frame.astype(np.int16) - ep.frames[i].astype(np.int16)).max())
            max_diff = max(max_diff, diff)
            if diff == 0:
                matching += 1
            elif first is None:
                first = i
    finally:
        if world is not None:
            world.close()
    return ReplayResult(len(actions), matching, max_diff, first)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recording", type=Path, help="a recording folder")
    p.add_argument(
        "--export", type=Path, metavar="OUT", help="write the frames to OUT.mp4 or OUT.gif"
    )
    p.add_argument("--device", default=None, help="default: the device it was recorded on")
    p.add_argument("--checkpoint", default=None, help="default: the one named in meta.json")
    p.add_argument("--no-check", action="store_true", help="export only; do not regenerate")


def main(args: argparse.Namespace) -> int:
    try:
        ep = Episode(args.recording)
        if args.export:
            out = export(ep.frames, args.export, int(ep.meta["fps"]))
            print(f"wrote {out} ({len(ep)} frames)")
        if args.no_check:
            return 0
        result = replay(args.recording, args.device, args.checkpoint)
    except (EpisodeError, FileNotFoundError, ValueError) as e:
        print(f"wm replay: {e}", file=sys.stderr)
        return 2
    name = args.recording.name
    if result.ok:
        print(f"{name}: all {result.frames} frames match exactly (max abs diff 0)")
        return 0
    print(
        f"{name}: MISMATCH: {result.matching}/{result.frames} frames match exactly; first "
        f"differs at frame {result.first_mismatch}; max abs diff {result.max_abs_diff}"
    )
    return 1
