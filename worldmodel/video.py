"""Video files from frames: H.264 mp4 that standard players open, or an animated gif.

Frames are scaled up by an integer nearest-neighbour factor so pixels stay crisp. Each
frame may carry its time (seconds from the first), so that a video of frames made at an
uneven or lower rate than planned still plays in real time.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

VIDEO_SIDE = 256  # frames are scaled up to about this many pixels on their shorter side
TIME_BASE = Fraction(1, 1000)  # mp4 timestamps in milliseconds


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    return frame if scale == 1 else frame.repeat(scale, axis=0).repeat(scale, axis=1)


def video_scale(size: int, side: int = VIDEO_SIDE) -> int:
    """Integer factor for a frame side; H.264 in yuv420p needs even sides."""
    scale = max(1, side // size)
    return scale + 1 if (size * scale) % 2 else scale


class VideoWriter:
    """H.264 mp4 (libx264, yuv420p), written frame by frame; frames uint8 [H, W, 3].

    `write(frame, t)` shows the frame at t seconds from the first frame; without t, frames
    are `1 / fps` apart. `fps` is also the nominal rate players report."""

    def __init__(self, path: str | Path, fps: int, height: int, width: int | None = None,
                 side: int = VIDEO_SIDE):
        import av

        width = width or height
        self.scale = video_scale(min(height, width), side)
        if (width * self.scale) % 2:
            self.scale += 1
        self._container = av.open(str(path), "w", options={"movflags": "+faststart"})
        self._stream = self._container.add_stream("libx264", rate=fps)
        self._stream.width, self._stream.height = width * self.scale, height * self.scale
        self._stream.pix_fmt = "yuv420p"
        self._stream.time_base = TIME_BASE
        self._stream.codec_context.time_base = TIME_BASE  # else frames closer than 1 / fps collide
        self._stream.options = {"crf": "18", "preset": "veryfast"}
        # one encoder thread: the model being recorded needs the cores more
        self._stream.codec_context.thread_count = 1
        self.fps = fps
        self.count = 0
        self._last_pts = -1

    def write(self, frame: np.ndarray, t: float | None = None) -> None:
        import av

        if t is None:
            t = self.count / self.fps
        # timestamps must grow: two frames within a millisecond are shown a millisecond apart
        pts = max(round(t / TIME_BASE), self._last_pts + 1)
        video_frame = av.VideoFrame.from_ndarray(upscale(frame, self.scale), format="rgb24")
        video_frame.pts = pts
        video_frame.time_base = TIME_BASE
        self._container.mux(self._stream.encode(video_frame))
        self._last_pts = pts
        self.count += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()
            self._container = None


def export(frames: np.ndarray, out: str | Path, fps: int,
           times: Sequence[float] | None = None) -> Path:
    """Write frames uint8 [T, H, W, 3] as an mp4 (H.264) or a gif, by the suffix of out.
    times[i] (seconds) is when frame i is shown; without them frames are 1 / fps apart."""
    out = Path(out)
    if len(frames) == 0:
        raise ValueError("nothing to export: no frames")
    if times is not None and len(times) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(times)} times")
    suffix = out.suffix.lower()
    h, w = frames[0].shape[:2]
    if suffix == ".mp4":
        writer = VideoWriter(out, fps, h, w)
        try:
            for i, frame in enumerate(frames):
                writer.write(np.asarray(frame), None if times is None else times[i])
        finally:
            writer.close()
    elif suffix == ".gif":
        from PIL import Image

        scale = video_scale(min(h, w))
        images = [Image.fromarray(upscale(np.asarray(f), scale)) for f in frames]
        if times is None:
            durations: int | list[int] = round(1000 / fps)
        else:  # each frame lasts until the next; the last as long as the one before it
            ends = list(times[1:]) + [times[-1] + (times[-1] - times[-2] if len(times) > 1 else 1 / fps)]
            durations = [max(1, round(1000 * (e - s))) for s, e in zip(times, ends, strict=True)]
        images[0].save(out, save_all=True, append_images=images[1:], duration=durations, loop=0)
    else:
        raise ValueError(f"cannot export to {out.name}: use .mp4 or .gif")
    return out


def read_video(path: str | Path) -> np.ndarray:
    """Every frame of a video file as uint8 [T, H, W, 3]."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
