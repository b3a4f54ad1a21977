"""Recordings of play: an episode folder (worldmodel.episode) plus a video and the context.

    recordings/20250101-120000-001/     name made by the server, never by a client
        meta.json       episode meta + checkpoint name/hash, seed, context, settings, timings
        actions.jsonl   line i: the action that led into frame i, and "ms" to generate it
        frames.u8       raw uint8 frames, appended and flushed every frame
        context.u8      dream recordings: the frames the model was reset with (actions in meta)
        video.mp4       H.264, scaled up with nearest-neighbour; finalised on close

Frames and actions are flushed every frame, so a disconnect or a crash loses at most the
last frame. The mp4 is only readable once closed; after a crash `wm replay REC --export`
rebuilds it from the raw frames. A recording of the real game (source "game") is a
training episode like those `wm collect` writes; it starts at the frame on screen when
recording began, with the game's state there in meta["start"] (`Game.state()`).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from worldmodel.actions import Action
from worldmodel.episode import FRAMES, META, EpisodeError, EpisodeWriter, is_episode
from worldmodel.video import VideoWriter

CONTEXT = "context.u8"
VIDEO = "video.mp4"
NAME_RE = re.compile(r"\d{8}-\d{6}-\d{3,6}")
_counter = itertools.count(1)


def new_recording_dir(root: str | Path) -> Path:
    """Create and return a fresh folder under root named by time and a process-wide counter."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    while True:
        path = root / f"{stamp}-{next(_counter) % 1_000_000:03d}"
        try:
            path.mkdir()
            return path
        except FileExistsError:  # another server process on the same folder
            continue


def recording_dir(root: str | Path, name: str) -> Path | None:
    """The folder of a recording named by the server, or None: the only way a name that came
    from a client is turned into a path."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return None
    path = Path(root) / name
    return path if is_episode(path) else None


class Recording:
    """One recorded session, written as it is played.

    `context_frames` / `context_actions` are what a dream session was reset with; they go
    to context.u8 and meta["context"] so that `wm replay` can regenerate every frame.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        size: int,
        fps: int,
        source: str,
        seed: int,
        context_frames: np.ndarray | None = None,
        context_actions: list[Action] | None = None,
        video: bool = True,
        **meta: Any,
    ):
        self.path = new_recording_dir(root)
        self.name = self.path.name
        if context_frames is not None:
            context_frames = np.ascontiguousarray(context_frames, dtype=np.uint8)
            with open(self.path / CONTEXT, "wb") as f:
                f.write(context_frames.tobytes())
                f.flush()
                os.fsync(f.fileno())
            actions = context_actions or [Action()] * len(context_frames)
            meta["context"] = {
                "file": CONTEXT,
                "frames": len(context_frames),
                "actions": [a.to_dict() for a in actions],
            }
        self._started = time.time()
        self._ms: list[float] = []
        self.episode = EpisodeWriter(
            self.path,
            size,
            fps,
            source=source,
            seed=seed,
            policy="human",
            video=VIDEO if video else None,
            started=_iso(self._started),
            **meta,
        )
        self.video = VideoWriter(self.path / VIDEO, fps, size) if video else None

    @property
    def count(self) -> int:
        return self.episode.count

    @property
    def nbytes(self) -> int:
        """Bytes the recording takes on disk so far."""
        return _folder_bytes(self.path)

    def append(self, frame: np.ndarray, action: Action, ms: float | None = None) -> None:
        extra = {} if ms is None else {"ms": round(float(ms), 2)}
        self.episode.append(frame, action, **extra)
        if ms is not None:
            self._ms.append(float(ms))
        if self.video is not None:
            self.video.write(frame)

    def close(self) -> None:
        """Finalise the video and meta.json; safe to call twice."""
        try:
            if self.video is not None:
                self.video.close()
        finally:
            timings = {}
            if self._ms:
                ms = np.asarray(self._ms)
                timings = {
                    "mean_ms": round(float(ms.mean()), 2),
                    "p50_ms": round(float(np.percentile(ms, 50)), 2),
                    "p95_ms": round(float(np.percentile(ms, 95)), 2),
                    "max_ms": round(float(ms.max()), 2),
                }
            self.episode.close(
                ended=_iso(time.time()),
                duration_s=round(time.time() - self._started, 3),
                timings=timings,
            )


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def load_context(path: str | Path, meta: dict[str, Any]) -> tuple[np.ndarray, list[Action]]:
    """(frames uint8 [K, S, S, 3], actions) a dream recording was reset with."""
    ctx = meta.get("context")
    if not ctx:
        raise EpisodeError(f"{path}: no context in meta.json (not a dream recording)")
    size = int(meta["size"])
    raw = np.fromfile(Path(path) / ctx["file"], dtype=np.uint8)
    frames = raw.reshape(-1, size, size, 3)
    if len(frames) != ctx["frames"]:
        raise EpisodeError(
            f"{path}: {CONTEXT} holds {len(frames)} frames, meta says {ctx['frames']}"
        )
    return frames, [Action.from_dict(a) for a in ctx["actions"]]


def _folder_bytes(path: Path) -> int:
    with os.scandir(path) as entries:
        return sum(e.stat().st_size for e in entries if e.is_file(follow_symlinks=False))


def recordings_usage(root: str | Path) -> tuple[int, int]:
    """(recordings, bytes they take) under root: one stat per file, nothing parsed."""
    try:
        with os.scandir(root) as entries:
            dirs = [e.path for e in entries if NAME_RE.fullmatch(e.name) and e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return 0, 0
    return len(dirs), sum(_folder_bytes(Path(d)) for d in dirs)


# name -> (meta.json mtime, frames.u8 size, summary): a listing parses only what changed
ListCache = dict[str, tuple[int, int, dict[str, Any]]]


def list_recordings(root: str | Path, cache: ListCache | None = None) -> list[dict[str, Any]]:
    """Summaries of the recordings under root, newest first, from each one's meta.json and
    the size of its frames (nothing else is read; with a cache, only changed metas are)."""
    root = Path(root)
    cache = {} if cache is None else cache
    try:
        names = sorted((n for n in os.listdir(root) if NAME_RE.fullmatch(n)), reverse=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in names:
        path = root / name
        try:
            mtime = (path / META).stat().st_mtime_ns
            frames_bytes = (path / FRAMES).stat().st_size
            hit = cache.get(name)
            if hit is not None and hit[:2] == (mtime, frames_bytes):
                out.append(hit[2])
                continue
            meta = json.loads((path / META).read_text())
            size = int(meta["size"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        complete = bool(meta.get("complete"))
        summary = {
            "name": name,
            "source": meta.get("source"),
            "frames": meta.get("frames") if complete else frames_bytes // (size * size * 3),
            "fps": meta.get("fps"),
            "size": size,
            "started": meta.get("started"),
            "complete": complete,
            "video": complete and (path / VIDEO).is_file(),
        }
        cache[name] = (mtime, frames_bytes, summary)
        out.append(summary)
    for name in set(cache) - set(names):
        del cache[name]
    return out
