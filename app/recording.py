"""Recordings of play: an episode folder (worldmodel.episode) plus a video and the context.

    recordings/20250101-120000-001/     name made by the server, never by a client
        meta.json       episode meta + checkpoint name/hash, seed, context, settings, timings
        actions.jsonl   line i: the action that led into frame i, "ms" to generate it and
                        "t", when it was shown (seconds from the recording's first frame)
        frames.u8       raw uint8 frames, appended and flushed every frame
        context.u8      dream recordings: the frames the model was reset with (actions in meta)
        resync.u8       dream recordings: the real game's frames each resync restarted it from
                        (actions.jsonl's line for the next frame says where and with what)
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
RESYNC = "resync.u8"
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
        self._clock0: float | None = None  # time.monotonic() of the first frame
        self._last_t: float | None = None  # the last frame's time from the first
        self.fps = fps
        self._ms: list[float] = []
        self._resync: dict[str, Any] | None = None  # noted on the next frame's line
        self._resync_frames = 0  # frames in resync.u8
        self.resyncs = 0
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
        """Frame and the action that led into it, stamped with the time it is shown, so
        that the video plays at the rate the session ran at, not at the nominal fps."""
        now = time.monotonic()
        if self._clock0 is None:
            self._clock0 = now
        t = round(now - self._clock0, 4)
        self._last_t = t
        extra: dict[str, Any] = {"t": t} if ms is None else {"ms": round(float(ms), 2), "t": t}
        if self._resync is not None:
            extra["resync"], self._resync = self._resync, None
        self.episode.append(frame, action, **extra)
        if ms is not None:
            self._ms.append(float(ms))
        if self.video is not None:
            self.video.write(frame, t)

    def resync(self, frames: np.ndarray, actions: list[Action], seed: int) -> None:
        """The model was reset with `frames` and `actions` (and the generator with seed)
        before the next frame: the frames go to resync.u8, flushed, and the next frame's
        line in actions.jsonl says so, so that replay resets there too."""
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        with open(self.path / RESYNC, "ab") as f:
            f.write(frames.tobytes())
            f.flush()
            os.fsync(f.fileno())
        self._resync = {"offset": self._resync_frames, "frames": len(frames),
                        "actions": [a.to_dict() for a in actions], "seed": int(seed)}
        self._resync_frames += len(frames)
        self.resyncs += 1

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
                plays_s=round(duration(self._last_t, self.count, self.fps), 2),
                timings=timings,
                resyncs=self.resyncs,
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


def load_resyncs(path: str | Path, meta: dict[str, Any]
                 ) -> dict[int, tuple[np.ndarray, list[Action], int]]:
    """frame index -> (frames, actions, seed) the model was reset with just before that
    frame was made (the resyncs of a dream recording)."""
    out = {}
    raw = None
    with open(Path(path) / "actions.jsonl") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            entry = json.loads(line)
            note = entry.get("resync")
            if note is None:
                continue
            if raw is None:
                size = int(meta["size"])
                raw = np.fromfile(Path(path) / RESYNC, dtype=np.uint8).reshape(-1, size, size, 3)
            frames = raw[note["offset"]:note["offset"] + note["frames"]]
            if len(frames) != note["frames"]:
                raise EpisodeError(f"{path}: {RESYNC} ends before the resync of frame {entry['frame']}")
            out[int(entry["frame"])] = (frames, [Action.from_dict(a) for a in note["actions"]],
                                        int(note["seed"]))
    return out


def frame_times(path: str | Path, n: int) -> list[float] | None:
    """When each of the first n frames was shown (seconds from the first), or None for a
    recording made before frames carried their time."""
    times = []
    with open(Path(path) / "actions.jsonl") as f:
        for line in f:
            if len(times) == n or not line.endswith("\n"):
                break
            t = json.loads(line).get("t")
            if t is None:
                return None
            times.append(float(t))
    return times if len(times) == n else None


def duration(last_t: float | None, frames: int, fps: float) -> float:
    """How long a recording plays: the time of its last frame (its first at 0) plus one
    frame's mean period; frames / fps where frames carry no time."""
    if not frames:
        return 0.0
    if last_t is None or frames < 2:
        return frames / fps
    return last_t + last_t / (frames - 1)


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
            "duration_s": meta.get("plays_s") if complete else round(
                frames_bytes / (size * size * 3) / meta["fps"], 2),
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
