"""Episodes on disk: the one format for training data and for recordings of play.

An episode is a folder:

    meta.json       {"format": 1, "size": S, "fps": F, "seed": ..., "source": ..., ...}
    actions.jsonl   line i: {"frame": i, "action": {...Action fields...}, ...extra}
    frames.u8       raw uint8 frames [T, S, S, 3], appended frame by frame

Line i of actions.jsonl is the action that led into frame i (line 0 is no input for a
fresh game). Both files are appended and flushed every frame, so a crash loses at most
the frame being written: a reader counts only frames present in both files. See
docs/data.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from worldmodel.actions import ACTION_DIM, Action

FORMAT_VERSION = 1
META = "meta.json"
ACTIONS = "actions.jsonl"
FRAMES = "frames.u8"


class EpisodeError(ValueError):
    """A folder that is not a readable episode."""


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so that a crash leaves either the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class EpisodeWriter:
    """Appends frames and actions to an episode folder, flushing both every frame."""

    def __init__(self, path: str | Path, size: int, fps: int, **meta: Any):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.meta = {"format": FORMAT_VERSION, "size": size, "fps": fps, "frames": 0, **meta}
        write_json_atomic(self.path / META, self.meta)
        self._frames = open(self.path / FRAMES, "wb")
        self._actions = open(self.path / ACTIONS, "w")
        self.count = 0

    def append(self, frame: np.ndarray, action: Action, **extra: Any) -> None:
        if frame.shape != (self.size, self.size, 3) or frame.dtype != np.uint8:
            raise EpisodeError(
                f"frame must be uint8 [{self.size}, {self.size}, 3], got {frame.dtype} {frame.shape}"
            )
        # frames first: a reader trusts a frame only once its action line exists too
        self._frames.write(np.ascontiguousarray(frame).tobytes())
        self._frames.flush()
        line = {"frame": self.count, "action": action.to_dict(), **extra}
        self._actions.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._actions.flush()
        self.count += 1

    def close(self, **meta: Any) -> None:
        """Finish the episode; extra keyword arguments are merged into meta.json."""
        if self._frames.closed:
            return
        failed = []
        for f in (self._frames, self._actions):  # both, and the meta, even if a write failed
            try:
                f.close()
            except OSError as e:
                failed.append(e)
        self.meta.update(meta, frames=self.count, complete=True)
        write_json_atomic(self.path / META, self.meta)
        if failed:
            raise failed[0]

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        raise EpisodeError(f"{path} is not an episode: no {META}") from None
    except json.JSONDecodeError as e:
        raise EpisodeError(f"{path / META} is not valid JSON: {e}") from None
    if meta.get("format") != FORMAT_VERSION:
        raise EpisodeError(f"{path}: unsupported episode format {meta.get('format')!r}")
    return meta


def read_actions(path: str | Path) -> np.ndarray:
    """float32 [T, ACTION_DIM] from actions.jsonl, stopping at a torn last line."""
    rows = []
    with open(Path(path) / ACTIONS) as f:
        for line in f:
            if not line.endswith("\n"):
                break  # written partly when the process died
            rows.append(Action.from_dict(json.loads(line)["action"]).to_vector())
    return np.stack(rows) if rows else np.zeros((0, ACTION_DIM), np.float32)


class Episode:
    """Read access to one episode. Frames are memory-mapped, never loaded whole."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = read_meta(self.path)
        self.size = int(self.meta["size"])
        self.actions = read_actions(self.path)
        frame_bytes = self.size * self.size * 3
        n_frames = (self.path / FRAMES).stat().st_size // frame_bytes
        self.length = min(n_frames, len(self.actions))
        self.actions = self.actions[: self.length]
        self._frames: np.memmap | None = None

    @property
    def frames(self) -> np.ndarray:
        """uint8 [T, S, S, 3], memory-mapped on first use (so each worker maps its own)."""
        if self._frames is None:
            if self.length == 0:
                return np.zeros((0, self.size, self.size, 3), np.uint8)
            self._frames = np.memmap(
                self.path / FRAMES, np.uint8, "r", shape=(self.length, self.size, self.size, 3)
            )
        return self._frames

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_frames"] = None  # memmaps do not travel to DataLoader workers
        return state


def is_episode(path: Path) -> bool:
    return (path / META).is_file() and (path / FRAMES).is_file()


def find_episodes(root: str | Path) -> list[Path]:
    """Every episode folder at or below root, in sorted order."""
    root = Path(root)
    if not root.exists():
        raise EpisodeError(f"no such dataset: {root}")
    if is_episode(root):
        return [root]
    return sorted(p.parent for p in root.rglob(META) if is_episode(p.parent))
