"""Video files from frames: H.264 mp4 that standard players open, or an animated gif.

Frames are scaled up by an integer nearest-neighbour factor so pixels stay crisp.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

VIDEO_SIDE = 256  # frames are scaled up to about this many pixels on their shorter side


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    return frame if scale == 1 else frame.repeat(scale, axis=0).repeat(scale, axis=1)


def video_scale(size: int, side: int = VIDEO_SIDE) -> int:
    """Integer factor for a frame side; H.264 in yuv420p needs even sides."""
    scale = max(1, side // size)
    return scale + 1 if (size * scale) % 2 else scale


class VideoWriter:
    """H.264 mp4 (libx264, yuv420p), written frame by frame; frames uint8 [H, W, 3]."""

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
        self._stream.time_base = Fraction(1, fps)
        self._stream.options = {"crf": "18", "preset": "veryfast"}
        # one encoder thread: the model being recorded needs the cores more
        self._stream.codec_context.thread_count = 1
        self.count = 0

    def write(self, frame: np.ndarray) -> None:
        import av

        video_frame = av.VideoFrame.from_ndarray(upscale(frame, self.scale), format="rgb24")
        video_frame.pts = self.count
        self._container.mux(self._stream.encode(video_frame))
        self.count += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()
            self._container = None


def export(frames: np.ndarray, out: str | Path, fps: int) -> Path:
    """Write frames uint8 [T, H, W, 3] as an mp4 (H.264) or a gif, by the suffix of out."""
    out = Path(out)
    if len(frames) == 0:
        raise ValueError("nothing to export: no frames")
    suffix = out.suffix.lower()
    h, w = frames[0].shape[:2]
    if suffix == ".mp4":
        writer = VideoWriter(out, fps, h, w)
        try:
            for frame in frames:
                writer.write(np.asarray(frame))
        finally:
            writer.close()
    elif suffix == ".gif":
        from PIL import Image

        scale = video_scale(min(h, w))
        images = [Image.fromarray(upscale(np.asarray(f), scale)) for f in frames]
        images[0].save(out, save_all=True, append_images=images[1:],
                       duration=round(1000 / fps), loop=0)
    else:
        raise ValueError(f"cannot export to {out.name}: use .mp4 or .gif")
    return out


def read_video(path: str | Path) -> np.ndarray:
    """Every frame of a video file as uint8 [T, H, W, 3]."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
