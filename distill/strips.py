"""Pictures before numbers: strips of dream frames above the game's, and a side-by-side video.

    save_strip(dream, game, "runs/eval/strip_student_stand.png", title="student: stand")
    save_side_by_side(dream, game, "runs/eval/student_mixed.mp4", fps=20, seconds=20)

A strip shows the frames at STRIP_FRAMES (0 is the first dreamt frame, right after the
real context) and the session's last frame, frames beyond the session left out, each
scaled up by nearest neighbour, with the frame index over each column and the row names
at the left.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worldmodel.video import VideoWriter, upscale

STRIP_FRAMES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 1000)
STRIP_SIDE = 96  # each frame is scaled up to about this many pixels
LABEL_W, HEAD_H = 44, 14


def strip_indices(n: int) -> list[int]:
    """The frames a strip shows of a session of n frames: STRIP_FRAMES below n, then n - 1."""
    idx = [i for i in STRIP_FRAMES if i < n]
    return idx + ([n - 1] if n and idx[-1] != n - 1 else [])


def save_strip(dream: np.ndarray, game: np.ndarray, path: str | Path, title: str = "",
               names: tuple[str, str] = ("dream", "game")) -> list[int]:
    """dream, game uint8 [T, S, S, 3] (the same T) -> a labelled PNG; returns the frames shown."""
    from PIL import Image, ImageDraw

    n, s = len(dream), dream.shape[1]
    idx = strip_indices(n)
    k = max(1, STRIP_SIDE // s)
    side = s * k
    pad = 2
    top = HEAD_H * (2 if title else 1)
    img = Image.new("RGB", (LABEL_W + len(idx) * (side + pad), top + 2 * (side + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((2, 1), title, fill=(0, 0, 0))
    for r, (name, frames) in enumerate(zip(names, (dream, game))):
        y = top + r * (side + pad)
        draw.text((2, y + side // 2 - 5), name, fill=(0, 0, 0))
        for c, t in enumerate(idx):
            x = LABEL_W + c * (side + pad)
            img.paste(Image.fromarray(upscale(frames[t], k)), (x, y))
            if r == 0:
                draw.text((x + 2, top - HEAD_H + 2), str(t), fill=(0, 0, 0))
    img.save(path)
    return idx


def save_side_by_side(dream: np.ndarray, game: np.ndarray, path: str | Path, fps: int,
                      seconds: float = 20.0) -> int:
    """An mp4 of dream | game, the first `seconds` (or all frames); returns the frame count."""
    n = min(len(dream), int(round(fps * seconds)))
    s = dream.shape[1]
    gap = np.full((s, max(1, s // 32), 3), 255, np.uint8)
    writer = VideoWriter(path, fps, s, 2 * s + gap.shape[1])
    try:
        for t in range(n):
            writer.write(np.concatenate([dream[t], gap, game[t]], axis=1))
    finally:
        writer.close()
    return n
