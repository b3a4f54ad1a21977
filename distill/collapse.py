"""Collapse rules over a long session: per-frame brightness, contrast, sharpness and colour
histograms, and the verdict `wm eval` gives from them (with realism, distill.realism)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HIST_LEVELS = 4  # per channel: 4^3 = 64 colour bins


def luma(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., H, W) in 0..255."""
    return frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


class FrameStats:
    """Per-frame picture statistics of a stream of uint8 [S, S, 3] frames."""

    KEYS = ("brightness", "contrast", "sharpness", "clipped", "change")

    def __init__(self):
        self.rows: dict[str, list[float]] = {k: [] for k in self.KEYS}
        self.hists: list[np.ndarray] = []
        self._prev: np.ndarray | None = None

    def add(self, frame: np.ndarray) -> None:
        y = luma(frame)
        lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
        self.rows["brightness"].append(float(y.mean()))
        self.rows["contrast"].append(float(y.std()))
        self.rows["sharpness"].append(float(lap.var()))  # variance of the Laplacian
        self.rows["clipped"].append(float(((frame <= 5).all(-1) | (frame >= 250).all(-1)).mean()))
        f16 = frame.astype(np.int16)
        self.rows["change"].append(float(np.abs(f16 - self._prev).mean())
                                   if self._prev is not None else float("nan"))
        self._prev = f16
        q = (frame // (256 // HIST_LEVELS)).astype(np.int64)
        idx = (q[..., 0] * HIST_LEVELS + q[..., 1]) * HIST_LEVELS + q[..., 2]
        self.hists.append(np.bincount(idx.ravel(), minlength=HIST_LEVELS**3) / idx.size)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {k: np.asarray(v, np.float64) for k, v in self.rows.items()}
        out["hist"] = np.asarray(self.hists).reshape(-1, HIST_LEVELS**3)
        return out


def sequence_stats(frames) -> dict[str, np.ndarray]:
    s = FrameStats()
    for f in frames:
        s.add(np.asarray(f))
    return s.arrays()


def hist_distance(hists: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Total-variation distance (0 same colours, 1 none shared) of each histogram [T, B]
    to one reference histogram [B]."""
    return 0.5 * np.abs(hists - reference[None]).sum(-1)


@dataclass(frozen=True)
class CollapseRules:
    """When a long session counts as collapsed. Level rules look at the late window (the
    last `late_fraction` of the session) against the real game's frames under the same
    actions; the frozen rule looks at the whole session. The real game itself dips: facing
    a wall up close, a 150-frame stretch can have a tenth of the session's sharpness, and
    twice it in a busy room. So the reference for "too low" is the lower of the real median
    over the session and over the same late window, for "too high" the higher of the two."""

    late_fraction: float = 0.25
    min_sharpness_ratio: float = 0.25  # blurred: median Laplacian variance below this x real
    max_sharpness_ratio: float = 10.0  # noisy: above this x real (the picture turned to noise)
    min_contrast_ratio: float = 0.25  # flat: median luma std below this x real (constant colour)
    max_clipped: float = 0.5  # saturated: median share of pure black/white pixels above this...
    clipped_margin: float = 0.3  # ...and above the real frames' share by this much
    max_hist_distance: float = 0.9  # off-palette: median colour distance to the game above this
    frozen_frames: int = 100  # frozen: this many consecutive unchanged frames...
    frozen_change: float = 0.5  # ...(mean |difference| to the previous frame below this, 0..255)
    frozen_turning: float = 0.25  # ...while at least this share of them were commanded to turn
    turning_yaw: float = 0.1  # |yaw| from which a commanded action turns the camera visibly

    def describe(self) -> list[str]:
        late = f"the last {self.late_fraction:.0%} of the session"
        real = ("the real frames' level (the lower of their median over the session and over "
                "the same window; the higher of the two for an upper bound)")
        return [
            f"**blurred**: median sharpness (variance of the luma Laplacian) over {late} is below "
            f"{self.min_sharpness_ratio:.0%} of {real}.",
            f"**noisy**: that median sharpness is above {self.max_sharpness_ratio:g}x the real "
            "frames' level (the picture dissolved into noise).",
            f"**flat**: median contrast (luma standard deviation) over {late} is below "
            f"{self.min_contrast_ratio:.0%} of the real frames' level (saturation to one colour).",
            f"**saturated**: over {late}, the median share of pure black or white pixels (all "
            f"channels <= 5 or >= 250) is above {self.max_clipped:.0%} and "
            f"{self.clipped_margin:.0%} above the real frames'.",
            f"**off-palette**: median colour-histogram distance (total variation over "
            f"{HIST_LEVELS ** 3} RGB bins, against all real frames of the session pooled) over "
            f"{late} is above {self.max_hist_distance}.",
            f"**frozen**: at least {self.frozen_frames} consecutive frames each differ from the "
            f"previous by less than {self.frozen_change} (mean absolute difference, 0..255) while "
            f"at least {self.frozen_turning:.0%} of the actions in that stretch turn the camera "
            f"(|yaw| >= {self.turning_yaw}), which always moves the game's picture.",
        ]


def longest_frozen_run(change: np.ndarray, yaw: np.ndarray, rules: CollapseRules) -> int:
    """Length of the longest stretch of unchanged frames during which the actions turned."""
    still = np.nan_to_num(change, nan=np.inf) < rules.frozen_change
    best, start = 0, None
    for t in range(len(still) + 1):
        if t < len(still) and still[t]:
            start = t if start is None else start
            continue
        if start is not None:
            turning = (np.abs(yaw[start:t]) >= rules.turning_yaw).mean()
            if turning >= rules.frozen_turning:
                best = max(best, t - start)
            start = None
    return best


def collapse_verdict(stats: dict[str, np.ndarray], real: dict[str, np.ndarray], yaw,
                     rules: CollapseRules = CollapseRules()) -> dict:
    """Judge a stream by `rules`. stats: `sequence_stats` of the model's frames; real: the
    same of real game frames (the reference levels; their late window is their last frames,
    as many as the model's, so the same times when both ran side by side); yaw [T]: the
    commanded yaw that led into each of the model's frames. Returns collapsed, the reasons
    and the numbers behind them."""
    T = len(stats["brightness"])
    late = slice(T - max(1, int(round(T * rules.late_fraction))), T)
    real_late = slice(max(0, late.start - T + len(real["brightness"])), len(real["brightness"]))

    def level(key: str, pick) -> float:  # the real frames' median, whole session or late window
        return max(pick(np.median(real[key]), np.median(real[key][real_late])), 1e-6)

    ref_hist = real["hist"].mean(0)
    sharp = float(np.median(stats["sharpness"][late]))
    m = {
        "sharpness_ratio": sharp / level("sharpness", min),
        "sharpness_ratio_high": sharp / level("sharpness", max),
        "contrast_ratio": float(np.median(stats["contrast"][late])) / level("contrast", min),
        "clipped": float(np.median(stats["clipped"][late])),
        "real_clipped": float(np.median(real["clipped"])),
        "hist_distance": float(np.median(hist_distance(stats["hist"][late], ref_hist))),
        "real_hist_distance": float(np.median(hist_distance(real["hist"], ref_hist))),
        "longest_frozen_run": longest_frozen_run(stats["change"], np.asarray(yaw, np.float64), rules),
    }
    reasons = []
    if m["sharpness_ratio"] < rules.min_sharpness_ratio:
        reasons.append("blurred")
    if m["sharpness_ratio_high"] > rules.max_sharpness_ratio:
        reasons.append("noisy")
    if m["contrast_ratio"] < rules.min_contrast_ratio:
        reasons.append("flat")
    if m["clipped"] > rules.max_clipped and m["clipped"] > m["real_clipped"] + rules.clipped_margin:
        reasons.append("saturated")
    if m["hist_distance"] > rules.max_hist_distance:
        reasons.append("off-palette")
    if m["longest_frozen_run"] >= rules.frozen_frames:
        reasons.append("frozen")
    return {"collapsed": bool(reasons), "reasons": reasons, **m}
