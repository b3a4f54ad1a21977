"""`wm eval`: a world model measured against the real game the way a player sees it.

    wm eval --checkpoint runs/world-model --out runs/eval
    wm eval --checkpoint runs/world-model --teacher runs/teacher/model \\
            --student-init runs/student-init/model --json > eval.json
    wm eval --quick --checkpoint runs/world-model      # the ablation subset, minutes on a CPU
    # seconds on a CPU (tests/test_eval_bench.py runs this on random weights):
    wm eval --checkpoint runs/wm-tiny --seeds 1 --horizons 1,4 --stability-frames 50 \\
            --idm runs/idm-tiny/model --idm-preset tiny --probes stand,walk --probe-frames 18

Pictures (distill.strips, distill.probes). Each behaviour probe (stand, walk, turn, strafe,
look, mixed) is played by every stream from the same real context; a PNG strip per probe
and stream shows the dream above the game at frames 0, 1, 2, 4, ..., 256, 1000 and the last,
and the mixed probe gives a side-by-side mp4 (dream | game). Per probe: PSNR at 1, 4, 16,
64 frames (means over MSE), realism and IDM scores.

Realism (distill.realism). Each frame's distance to the nearest real view drawn by the game
around its own poses, in features of layout and detail; the game's median distance over the
stream's (1 for the game). The same for degenerate controls made from the game's frames
(flat, tiled wall crop, shuffled patches), so that a collapse reads as one. The long
session is scored per --segment-frames, plotted against time, and called collapsed
("unreal") when its late segments score no higher than the tiled or shuffled control.

One-step. Real context, one generated frame: teacher-forced next-frame PSNR for every
stream, next to repeating the last frame and the tokenizer's reconstruction.

Stage table: real frames, tokenizer, teacher one-step, teacher rollout, init student,
student: IDM forward and yaw accuracy, one-step and @16 PSNR, realism.

Fidelity. World seeds from 1,000,000 on (`EVAL_SEED_START`; collection never trains there).
Each seed's game plays under the explorer policy; every rollout takes the session's
context_length real frames as context and then generates under the same actions as the
game. PSNR (mean over MSE) and SSIM at each step ahead for "baseline" (the last context
frame repeated), "tokenizer", "student", and "teacher" / "student_init" when given.

Worlds. A checkpoint may declare the worlds it was trained on (`WorldSession.worlds`;
--seen-worlds overrides); those are measured apart, from places and trajectories that
training never saw (see distill.probes), and reported under "seen".

Controllability. An inverse-dynamics model (distill.idm), trained on real frame pairs,
reads consecutive frames of each stream and guesses the commanded action.

Counterfactual actions (--response-frames, 0 skips): from a still context every stream plays
none/forward/yaw+/yaw-; the cosine between each action's effect and the game's.

Stability: one long student session (--stability-frames) next to the game: brightness,
contrast, sharpness, colour histograms and realism per segment; the `collapsed` verdict.

Writes eval.json, PNG strips and plots, mp4 and report.md to --out; `--json` prints
eval.json's object on stdout. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from distill.collect import EVAL_SEED_START, Explorer
from distill.distill import parse_worlds
from distill.idm import IDM, IDM_PRESETS, ensure_idm, score
from distill.probes import PROBES, idm_summary, mse, play, psnr_of_mse, start_state
from distill.realism import RealismJudge, controls, realism
from distill.sample import dream_teacher, play_game
from distill.strips import save_side_by_side, save_strip
from worldmodel import checkpoint, flags
from worldmodel.actions import Action, stack
from worldmodel.checkpoint import load_student, load_teacher, load_tokenizer
from worldmodel.game import Game
from worldmodel.metrics import psnr, ssim
from worldmodel.sampling import TeacherConfig
from worldmodel.session import WorldSession, resolve_checkpoint
from worldmodel.tokenizer import Tokenizer, frames_to_tensor, tensor_to_frames

MODELS = ("baseline", "tokenizer", "teacher", "student_init", "student")  # table order


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class EvalConfig:
    checkpoint: str = "default"
    teacher: str | None = None  # teacher checkpoint stem
    student_init: str | None = None  # a world-model folder or a student stem / run folder
    tokenizer: str | None = None  # stem; default: the checkpoint's own tokenizer
    seeds: int = 8
    rollouts: int = 2  # context windows per seed, one horizon apart
    horizons: str = "1,4,16,64"  # frames ahead, comma-separated
    seed_start: int = EVAL_SEED_START
    teacher_steps: int = TeacherConfig.steps
    teacher_cfg: float = TeacherConfig.cfg_scale
    stability_frames: int = 2000
    response_frames: int = 8  # frames per probe action in the counterfactual test; 0: skip it
    idm: str = "runs/idm/model"
    train_idm: bool = False
    idm_preset: str = "default"
    idm_steps: int = 0  # 0: the preset's
    out: str = "runs/eval"
    device: str = "auto"
    threads: int = 0  # torch CPU threads, 0: torch's default
    probes: str = ",".join(PROBES)  # behaviour probes, comma-separated; "" skips them
    probe_worlds: int = 1  # worlds each probe plays in (strips show the first)
    probe_frames: int = 1001  # dreamt frames per probe for the students
    teacher_probe_frames: int = 65  # for the teacher (about a second a frame on a CPU)
    one_step_windows: int = 16  # teacher-forced one-step windows per world
    segment_frames: int = 500  # realism of the long session per this many frames
    video_seconds: float = 20.0  # side-by-side video of the mixed probe
    seen_worlds: str | None = None  # trained-on worlds, "0-199"; default: the checkpoint's own
    quick: bool = False  # the ablation subset: see QUICK
    json: bool = False  # print the result as one JSON object on stdout


PROBE_HORIZONS = (1, 4, 16, 64, 200, 1000)  # frames of each probe its PSNR is reported at

# what --quick changes: the stage table, the stand and walk probes (in unseen and declared worlds),
# 1,000 frames of realism
QUICK = {"seeds": 1, "rollouts": 1, "horizons": "1,4,16", "stability_frames": 1000,
         "response_frames": 0, "probes": "stand,walk", "probe_frames": 65,
         "teacher_probe_frames": 9, "one_step_windows": 8, "teacher_steps": 16,
         "video_seconds": 0.0}


def parse_horizons(text: str) -> list[int]:
    try:
        hs = sorted({int(h) for h in str(text).split(",") if h.strip()})
    except ValueError:
        raise ValueError(f"horizons take comma-separated integers, got {text!r}") from None
    if not hs or hs[0] < 1:
        raise ValueError(f"horizons must be positive frame counts, got {text!r}")
    return hs


# ---------------------------------------------------------------------------- stability

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


# ---------------------------------------------------------------------------- models


def load_session(path: str, tokenizer: Tokenizer, device: str) -> WorldSession:
    """A session from a world-model folder, or from a student stem / run folder (a JSON
    sidecar with "sampler", as `wm distill init|dmd` writes) played with `tokenizer`."""
    p = Path(path)
    if (p / "student.json").is_file():
        return WorldSession.from_checkpoint(p, device)
    stem = p / "model" if (p / "model.json").is_file() else p
    student, meta = load_student(stem, device)
    return WorldSession(tokenizer, student, meta.sampler, name=str(path))


@dataclass
class Rollout:
    seed: int
    index: int  # rollout within the seed
    frames: np.ndarray  # uint8 [ctx + H, S, S, 3]: context, then the real future
    actions: list[Action]  # actions[i] led into frames[i]
    states: list[dict] | None = None  # the game's state() at each frame


def make_rollouts(cfg: EvalConfig, size: int, ctx: int, H: int) -> list[Rollout]:
    """Per seed, one explorer episode cut into `rollouts` windows, each H frames later."""
    out = []
    for seed in range(cfg.seed_start, cfg.seed_start + cfg.seeds):
        ep = play(seed, size, (cfg.rollouts - 1) * H + ctx + H, "mixed", 1, seen=False)
        for r in range(cfg.rollouts):
            s = r * H
            out.append(Rollout(seed, r, ep.frames[s:s + ctx + H], ep.actions[s:s + ctx + H],
                               ep.states[s:s + ctx + H]))
    return out


def stream_rollout(name: str, model, ro: Rollout, ctx: int, tok: Tokenizer,
                   cfg: EvalConfig) -> np.ndarray:
    """The frames stream `name` shows after the rollout's `ctx` real context frames, under
    its actions, seeded by the rollout: uint8 [len(ro.frames) - ctx, S, S, 3]."""
    seed = ro.seed * 1000 + ro.index
    if name == "baseline":
        return np.repeat(ro.frames[ctx - 1:ctx], len(ro.frames) - ctx, axis=0)
    if name == "tokenizer":
        return reconstruct(tok, ro.frames[ctx:])
    if name == "teacher":
        teacher, meta = model
        return dream_teacher(teacher, meta, tok, ro.frames, ro.actions, ctx, cfg.teacher_steps,
                             cfg.teacher_cfg, seed=seed)
    model.reset(ro.frames[:ctx], ro.actions[:ctx], seed=seed)
    return np.stack([model.step(a) for a in ro.actions[ctx:]])


@torch.no_grad()
def reconstruct(tok: Tokenizer, frames: np.ndarray) -> np.ndarray:
    dev = next(tok.parameters()).device
    out = []
    for i in range(0, len(frames), 64):
        x = frames_to_tensor(torch.from_numpy(frames[i:i + 64])).to(dev)
        out.append(tensor_to_frames(tok.decode(tok.encode(x)).float().cpu()).numpy())
    return np.concatenate(out)


# ---------------------------------------------------------------------------- plots, report


def plot_curves(curves: dict[str, list[float]], horizons: list[int], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in MODELS:
        if name in curves:
            y = curves[name]
            ax.plot(np.arange(1, len(y) + 1), y, label=name, lw=1.5,
                    ls="--" if name in ("baseline", "tokenizer") else "-")
    ax.set_xscale("log")
    ax.set_xticks(horizons, [str(h) for h in horizons])
    ax.minorticks_off()
    ax.set_xlabel("frames ahead")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title(f"{metric} against the real game, held-out worlds")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def running_mean(y: np.ndarray, k: int) -> np.ndarray:
    """Centred mean over k frames (fewer at the ends): the trend under the frame noise."""
    ones = np.ones(k)
    return np.convolve(y, ones, mode="same") / np.convolve(np.ones(len(y)), ones, mode="same")


def plot_stability(student: dict, real: dict, ref_hist: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("brightness", "brightness (mean luma)"), ("contrast", "contrast (luma std)"),
              ("sharpness", "sharpness (Laplacian var)"), ("hist", "colour distance to game")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.2 * len(panels)), sharex=True)
    for ax, (key, label) in zip(axes, panels):
        for name, s, colour in (("real game", real, "tab:gray"), ("student", student, "tab:blue")):
            y = hist_distance(s["hist"], ref_hist) if key == "hist" else s[key]
            t = np.arange(1, len(y) + 1)
            ax.plot(t, y, color=colour, lw=0.5, alpha=0.35)
            ax.plot(t, running_mean(y, max(1, len(y) // 50)), color=colour, lw=1.5, label=name)
        if key == "sharpness":
            ax.set_yscale("log")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[-1].set_xlabel("frame")
    fig.suptitle("long session under the explorer policy")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_grid(rows: list[tuple[str, np.ndarray]], path: Path, scale: int = 1) -> None:
    """A PNG with one row of frames per stream; names go in report.md, not in the picture."""
    from PIL import Image

    grid = np.concatenate([np.concatenate(list(f), axis=1) for _, f in rows], axis=0)
    img = Image.fromarray(grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)


def fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def format_stage_table(rows: list[dict], h: int) -> str:
    lines = [f"| stage | IDM forward acc (chance) | IDM yaw sign acc | one-step PSNR | PSNR@{h} | realism |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        chance = f" ({row['forward_chance']:.2f})" if row.get("forward_chance") is not None else ""
        lines.append(f"| {row['stage']} | {fmt(row['forward_acc'])}{chance} | {fmt(row['yaw_sign_acc'])} | "
                     f"{fmt(row['one_step_psnr'], '.2f')} | {fmt(row['psnr16'], '.2f')} | "
                     f"{fmt(row['realism'], '.2f')} |")
    return "\n".join(lines)


def probe_report(probes: dict, tag: str) -> list[str]:
    lines = []
    for probe, v in probes.items():
        lines += [f"**{probe}** (controls' realism: " + ", ".join(f"{n} {x:.2f}" for n, x in v["controls"].items())
                  + ")", "",
                  "| stream | frames | PSNR@1 | @4 | @16 | @64 | @200 | @1000 | realism | IDM forward acc | yaw sign acc | key acc |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for n, row in v["streams"].items():
            ps = row.get("psnr", {})
            lines.append(f"| {n} | {row['frames']} | " + " | ".join(fmt(ps.get(str(h)), ".2f") for h in PROBE_HORIZONS)
                         + f" | {row['realism']:.2f} | {fmt(row['idm']['forward_acc'])} | "
                         f"{fmt(row['idm']['yaw_sign_acc'])} | {fmt(row['idm']['key_acc'])} |")
        strips = [n for n in v["streams"] if n not in ("game", "baseline")]
        lines += ["", " ".join(f"![{probe} {n}](strip_{tag}{probe}_{n}.png)" for n in strips), ""]
    return lines


def write_report(r: dict, rules: CollapseRules, path: Path) -> None:
    hs = [str(h) for h in r["horizons"]]
    names = [n for n in MODELS if n in r["psnr"]]
    lines = [
        f"# Evaluation of `{r['checkpoint']}`", "",
        f"{r['resolution']}px frames on {r['device']}; worlds {r['seeds'][0]}..{r['seeds'][-1]} "
        + (f"(held out: training never uses seeds >= {EVAL_SEED_START})" if r["held_out"] else
           f"(**not held out**: below {EVAL_SEED_START}, possibly trained on)")
        + f", {r['rollouts_per_seed']} "
        f"rollout(s) per world, {r['context']} real context frame(s), explorer-policy actions. "
        f"Checkpoint sha256 {r['checkpoint_hash'][:16]}.", "",
        "## Fidelity: frames ahead of the context, against the real game", "",
        "baseline repeats the last context frame; tokenizer is the real frame encoded and decoded "
        "(the ceiling for any model behind this decoder).", "",
    ]
    for metric, unit in (("psnr", " (dB)"), ("ssim", "")):
        lines += [f"| {metric.upper()}{unit} | " + " | ".join(hs) + " |",
                  "|---" * (len(hs) + 1) + "|"]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(f"{r[metric][n][h]:.3f}" for h in hs) + " |")
        lines.append("")
    lines += ["![PSNR](psnr.png) ![SSIM](ssim.png)", "",
              "First rollout, frames at the horizons (rows: " + ", ".join(["real"] + names[1:])
              + "): ![frames](rollout_frames.png)", ""]
    lines += [
        "## Stage table: where the picture and the controls are lost", "",
        "IDM accuracies on consecutive frames of each stage (the forward key, with the accuracy of "
        "always guessing its commoner state; the sign of commanded turns), pooled for the rollout rows "
        "over the explorer rollouts and the behaviour probes; one-step: real context, one generated frame (teacher-forced, GameNGen's headline "
        f"number), over {r['one_step']['windows']} windows; PSNR@{r['stage_table_horizon']}: the "
        "explorer rollouts above; PSNR means are over MSE. Realism: the game's median distance to "
        "real views near its poses over the stream's (1 = as real as the game; see below).", "",
        format_stage_table(r["stage_table"], r["stage_table_horizon"]), ""]
    ctrl = r["rollout_realism"]
    lines += [f"Realism of the degenerate controls on the same rollouts: flat {ctrl['flat']:.2f}, tiled "
              f"wall crop {ctrl['tiled']:.2f}, shuffled patches {ctrl['shuffled']:.2f}.", ""]
    if "probes" in r:
        lines += ["## Behaviour probes (what a player sees)", "",
                  "Each strip: dream above game, frames 0 (the first dreamt) to the last. Realism per "
                  "probe against views around the game's poses in that probe; the controls are made "
                  "from the game's frames of the probe.", ""]
        lines += probe_report(r["probes"], "")
    if "seen" in r:
        lines += ["## Worlds the checkpoint was trained on", "",
                  f"Worlds {r['worlds']['seen']} of the declared ones, from a random pose (not the spawn "
                  "where every training episode began) and, for the mixed probe, an explorer seeded "
                  f"{EVAL_SEED_START} + world (collection seeds it with the world). One-step PSNR: "
                  + ", ".join(f"{n} {fmt(v['psnr'], '.2f')}" for n, v in r["seen"]["one_step"]["streams"].items()
                              if v["psnr"] is not None) + ".", ""]
        lines += probe_report(r["seen"].get("probes", {}), "seen_")
    idm = r["idm"]
    val = idm["own_val"]
    lines += [
        "## Controllability: an inverse-dynamics model on each stream", "",
        f"IDM `{idm['checkpoint']}`" + (f" (on its own held-out worlds, with partly random actions: key accuracy "
                                         f"{val['key_acc']:.3f}, camera error {val['camera_err']:.3f})"
                                         if val else "") + ". "
        "It reads (frame t-1, frame t) of each stream and guesses action t; key accuracy is "
        "averaged over the six keys, camera error is the mean |yaw, pitch| error (-1..1 scale), "
        "sign accuracy counts commanded turns of |value| >= 0.1. Guessing each key's commoner "
        f"state scores {idm['key_chance']:.3f}.", "",
        "| stream | pairs | key acc | camera err | camera sign acc |", "|---|---|---|---|---|"]
    for n, s in idm["streams"].items():
        sign = "-" if s["camera_sign_acc"] is None else f"{s['camera_sign_acc']:.3f}"
        lines.append(f"| {n} | {s['pairs']} | {s['key_acc']:.3f} | {s['camera_err']:.3f} | {sign} |")
    st = r["stability"]
    verdict = f"collapsed ({', '.join(st['reasons'])})" if st["collapsed"] else "not collapsed"
    lines += [
        "", "real: the game's own frames (the reference); baseline: a picture that never moves "
        "(what ignoring the actions scores); *_long: the long stability session.", "",
        "## Stability: one long session", "",
        f"{st['frames']} frames of the student next to the real game under the same explorer "
        f"actions (world {st['seed']}, "
        + ("trained on, from a random pose with an explorer seeded 1000000 + world" if st.get("seen")
           else "never trained on, from its spawn") + f"). **Verdict: {verdict}.**", "",
        f"In the late window the student's sharpness is {st['sharpness_ratio']:.2f}x the real "
        f"frames' lower level and {st['sharpness_ratio_high']:.2f}x their upper level, its "
        f"contrast {st['contrast_ratio']:.2f}x; colour distance {st['hist_distance']:.3f} (real "
        f"frames: {st['real_hist_distance']:.3f}); pure black/white pixels {st['clipped']:.3f} "
        f"(real {st['real_clipped']:.3f}); longest frozen stretch while turning: "
        f"{st['longest_frozen_run']} frames.", "",
        "Collapse rules (any one is enough):", ""]
    lines += [f"- {d}" for d in rules.describe()]
    sr = st["realism"]
    lines += [f"- **unreal**: the median realism of the last {rules.late_fraction:.0%} of the session's "
              f"{len(sr['mid'])} segments is no higher than that of the tiled wall crop or of the shuffled "
              f"patches (here {st['realism_late']:.2f} against {st['control_realism_late']:.2f}).", "",
              "![realism](realism.png)", ""]
    lines += ["", "![stability](stability.png)", "",
              "Snapshots through the session (top: real game, bottom: student): "
              "![snapshots](stability_frames.png)", ""]
    if "response" in r:
        resp = r["response"]
        lines += [
            "## Counterfactual actions: does an action change the picture the way it changes the game?", "",
            f"From a still context, each stream plays each probe action for {resp['frames']} frames "
            f"from the same seed, in each of {len(resp['worlds'])} world(s). An action's effect is the "
            "rollout under it minus the rollout under no input (which cancels what the rollouts share, "
            "such as blur); the table gives the cosine between the stream's effect and the game's: "
            "1 for the game itself, 0 for a picture that ignores the actions, below 0 for the "
            "wrong way.", "",
            "| stream | " + " | ".join(p for p in resp["probes"][1:]) + " |",
            "|---" * len(resp["probes"]) + "|"]
        for n, v in resp["streams"].items():
            lines.append(f"| {n} | " + " | ".join(f"{v['effect_corr'][p]:+.3f}" for p in resp["probes"][1:]) + " |")
        lines.append("")
    path.write_text("\n".join(lines))


# ---------------------------------------------------------------------------- the run


def fidelity(streams: dict, rollouts: list[Rollout], ctx: int, tok: Tokenizer, cfg: EvalConfig,
             idm_model: IDM):
    """Every stream over every rollout: PSNR and SSIM curves [H] per rollout, the IDM's
    guesses per stream and the commanded actions, and the frames of the first rollout."""
    H = len(rollouts[0].frames) - ctx
    curves = {m: {n: [] for n in streams} for m in ("psnr", "ssim")}
    idm_pred: dict[str, list[np.ndarray]] = {n: [] for n in ["real", *streams]}
    idm_act: list[np.ndarray] = []
    first: dict[str, np.ndarray] = {}
    dist: dict[str, list[np.ndarray]] = {}  # realism distances per stream and control
    for k, ro in enumerate(rollouts):
        real = ro.frames[ctx:]
        shown = {"real": real}
        for name, model in streams.items():
            t0 = time.monotonic()
            gen = stream_rollout(name, model, ro, ctx, tok, cfg)
            curves["psnr"][name].append(psnr(real, gen))
            curves["ssim"][name].append(ssim(real, gen))
            shown[name] = gen
            if name not in ("baseline", "tokenizer"):
                log(f"  world {ro.seed} rollout {ro.index}: {name} {H} frames in "
                    f"{time.monotonic() - t0:.1f}s, PSNR@1 {curves['psnr'][name][-1][0]:.2f} dB")
        if H >= 2:
            # pairs inside each stream only: the first generated frame's predecessor is a real
            # frame, and a real/decoded pair would show the decoder, not the action
            for name, gen in shown.items():
                idm_pred[name].append(idm_model.predict(gen[:-1], gen[1:]))
            idm_act.append(stack(ro.actions[ctx + 1:]))
        judge = RealismJudge.around(ro.seed, real.shape[1], ro.states[ctx:])
        for name, frames in {**shown, **controls(real, ro.seed)}.items():
            dist.setdefault(name, []).append(judge.distance(frames))
        if k == 0:
            first = shown
        log(f"rollout {k + 1}/{len(rollouts)} done")
    d_game = np.concatenate(dist["real"])
    real_score = {n: realism(np.concatenate(d), d_game) for n, d in dist.items()}
    return curves, idm_pred, idm_act, first, real_score


# ---------------------------------------------------------------------------- response

PROBES = {"none": Action(), "forward": Action(forward=True),
          "yaw+": Action(yaw=1.0), "yaw-": Action(yaw=-1.0)}


def effect_corr(model: np.ndarray, model_none: np.ndarray, game: np.ndarray,
                game_none: np.ndarray) -> float:
    """Cosine between what an action changes in the model's frames (its rollout under the
    action minus its rollout under no input) and what it changes in the game's; 0 when
    either change is nothing."""
    d_model = model.astype(np.float64) - model_none
    d_game = game.astype(np.float64) - game_none
    norm = np.linalg.norm(d_model) * np.linalg.norm(d_game)
    return float((d_model * d_game).sum() / norm) if norm > 0 else 0.0


def response(streams: dict, cfg: EvalConfig, size: int, ctx: int, tok: Tokenizer) -> dict:
    """Counterfactual actions: from the same still context and the same seed, each stream plays
    every probe action for `response_frames` frames. The effect of an action is the rollout
    under it minus the rollout under no input, which cancels what all rollouts share (blur,
    drift); `effect_corr` is the cosine between the stream's effect and the game's, in
    -1..1: 1 for the game itself, 0 for a picture that ignores the actions. `psnr[a][b]` is
    the mean PSNR of the stream under probe a against the game under probe b."""
    n, names = cfg.response_frames, list(PROBES)
    script = [Action()] * (ctx - 1)
    worlds = range(cfg.seed_start, cfg.seed_start + cfg.seeds)
    games = {(w, p): play_game(w, size, ctx + n, script + [a] * n) for w in worlds
             for p, a in PROBES.items()}
    out = {}
    for name, model in {"real": None, **streams}.items():
        if name == "tokenizer":
            continue
        psnrs = np.zeros((len(worlds), len(names), len(names)))  # world, played, game
        corr = np.zeros((len(worlds), len(names) - 1))  # world, probe other than none
        for i, w in enumerate(worlds):
            gens = {p: games[w, p][0][ctx:] if name == "real" else
                    stream_rollout(name, model, Rollout(w, 0, *games[w, p]), ctx, tok, cfg)
                    for p in names}
            for j, p in enumerate(names):
                for k, q in enumerate(names):
                    psnrs[i, j, k] = psnr(gens[p], games[w, q][0][ctx:]).mean()
            for j, p in enumerate(names[1:]):
                corr[i, j] = effect_corr(gens[p], gens["none"], games[w, p][0][ctx:],
                                         games[w, "none"][0][ctx:])
        out[name] = {"effect_corr": {p: float(corr[:, j].mean()) for j, p in enumerate(names[1:])},
                     "psnr": {p: {q: float(psnrs[:, j, k].mean()) for k, q in enumerate(names)}
                              for j, p in enumerate(names)}}
        log(f"response: {name} effect correlation "
            + ", ".join(f"{p} {v:+.2f}" for p, v in out[name]["effect_corr"].items()))
    return {"frames": n, "worlds": list(worlds), "probes": names, "streams": out}


# ---------------------------------------------------------------------------- one step, probes


ONE_STEP_PROBES = ("walk", "turn", "mixed")  # the episodes one-step windows come from


def one_step(streams: dict, worlds: list[int], seen: bool, cfg: EvalConfig, size: int, ctx: int,
             tok: Tokenizer, idm_model: IDM) -> dict:
    """Teacher-forced next frame: at `one_step_windows` places per world, shared among a
    walk, a turn and a mixed (explorer) episode so that the IDM sees every kind of input,
    the real `ctx` frames before, one generated frame. Per stream: PSNR (over MSE), the IDM
    on (decoded frame before, generated frame), and realism."""
    stride = 4
    per = -(-cfg.one_step_windows // len(ONE_STEP_PROBES))  # windows per episode
    errs: dict[str, list[np.ndarray]] = {}
    pairs: dict[str, tuple[list, list]] = {}
    dist: dict[str, list[np.ndarray]] = {}
    acts: list[np.ndarray] = []
    for world, kind in ((w, k) for w in worlds for k in ONE_STEP_PROBES):
        n = ctx + stride * per
        ep = play(world, size, n, kind, 1, seen)
        at = list(range(ctx, n, stride))
        target = ep.frames[at]
        recon = reconstruct(tok, ep.frames)
        acts.append(stack([ep.actions[i] for i in at]))
        judge = RealismJudge.around(world, size, [ep.states[i] for i in at])
        shown = {"real": target}
        for name, model in streams.items():
            if name == "baseline":
                gen = ep.frames[[i - 1 for i in at]]
            elif name == "tokenizer":
                gen = recon[at]
            else:
                gen = np.stack([stream_rollout(name, model, Rollout(world, 100 + k, ep.frames[i - ctx:i + 1],
                                                                    ep.actions[i - ctx:i + 1]), ctx, tok, cfg)[0]
                                for k, i in enumerate(at)])
            shown[name] = gen
            errs.setdefault(name, []).append(mse(gen, target))
        for name, gen in shown.items():
            # decoded frames before a decoded frame: a real/decoded pair would show the decoder
            prev = ep.frames[[i - 1 for i in at]] if name in ("real", "baseline") else recon[[i - 1 for i in at]]
            p = pairs.setdefault(name, ([], []))
            p[0].append(idm_model.predict(prev, gen))
            dist.setdefault(name, []).append(judge.distance(gen))
    d_game = np.concatenate(dist["real"])
    act = np.concatenate(acts)
    out = {name: {"psnr": psnr_of_mse(np.concatenate(errs[name])) if name in errs else None,
                  "realism": realism(np.concatenate(dist[name]), d_game),
                  "idm": idm_summary(score(np.concatenate(pairs[name][0]), act))}
           for name in shown}
    log("one-step PSNR: " + ", ".join(f"{n} {v['psnr']:.2f}" for n, v in out.items() if v["psnr"]))
    return {"worlds": worlds, "windows": len(act), "streams": out}


def run_probes(streams: dict, worlds: list[int], seen: bool, cfg: EvalConfig, size: int, ctx: int,
               tok: Tokenizer, idm_model: IDM, out: Path, tag: str) -> dict:
    """Every probe in every world for every stream: PSNR at PROBE_HORIZONS frames (mean over
    MSE), realism, IDM scores; strips of the first world and a video of its mixed probe."""
    names = [p.strip() for p in cfg.probes.split(",") if p.strip()]
    fps = 20
    result: dict = {}
    pooled: dict[str, tuple[list, list]] = {}
    for probe in names:
        n_all = max(cfg.probe_frames, cfg.teacher_probe_frames if "teacher" in streams else 0)
        errs: dict[str, list[np.ndarray]] = {}
        dist: dict[str, list[np.ndarray]] = {}
        ctrl_dist: dict[str, list[np.ndarray]] = {}
        game_dist: dict[str, list[np.ndarray]] = {}
        pairs: dict[str, tuple[list, list]] = {}
        for wi, world in enumerate(worlds):
            ep = play(world, size, ctx + n_all, probe, ctx, seen)
            game = ep.frames[ctx:]
            judge = RealismJudge.around(world, size, ep.states[ctx:])
            d_game = judge.distance(game)
            for name, frames in controls(game, world).items():
                ctrl_dist.setdefault(name, []).append(judge.distance(frames))
            game_dist.setdefault("all", []).append(d_game)
            shown = {"game": game}
            for name, model in streams.items():
                n = cfg.teacher_probe_frames if name == "teacher" else cfg.probe_frames
                t0 = time.monotonic()
                gen = stream_rollout(name, model, Rollout(world, 200, ep.frames[:ctx + n], ep.actions[:ctx + n]),
                                     ctx, tok, cfg)
                shown[name] = gen
                errs.setdefault(name, []).append(mse(gen, game[:n]))
                dist.setdefault(name, []).append(judge.distance(gen))
                game_dist.setdefault(name, []).append(d_game[:n])
                if name not in ("baseline", "tokenizer"):
                    log(f"  probe {tag}{probe} world {world}: {name} {n} frames in {time.monotonic() - t0:.1f}s")
                if wi == 0 and name not in ("baseline",):
                    save_strip(gen, game[:n], out / f"strip_{tag}{probe}_{name}.png",
                               title=f"{name}, probe {probe}, world {world}"
                                     f"{' (trained on)' if seen else ' (never trained on)'}")
                    if probe == "mixed" and cfg.video_seconds > 0 and name != "tokenizer":
                        save_side_by_side(gen, game[:n], out / f"video_{tag}{name}.mp4", fps, cfg.video_seconds)
            for name, gen in shown.items():
                p = pairs.setdefault(name, ([], []))
                p[0].append(idm_model.predict(gen[:-1], gen[1:]))
                p[1].append(stack(ep.actions[ctx + 1:ctx + len(gen)]))
        d_all = np.concatenate(game_dist["all"])
        rows = {"game": {"realism": 1.0, "frames": len(d_all) // len(worlds),
                         "idm": idm_summary(score(np.concatenate(pairs["game"][0]), np.concatenate(pairs["game"][1])))}}
        for name in streams:
            e = np.stack([x[:min(map(len, errs[name]))] for x in errs[name]])  # (worlds, n)
            rows[name] = {
                "frames": e.shape[1],
                "psnr": {str(h): psnr_of_mse(e[:, h - 1]) for h in PROBE_HORIZONS if h <= e.shape[1]},
                "realism": realism(np.concatenate(dist[name]), np.concatenate(game_dist[name])),
                "idm": idm_summary(score(np.concatenate(pairs[name][0]), np.concatenate(pairs[name][1]))),
            }
        result[probe] = {"streams": rows,
                         "controls": {n: realism(np.concatenate(d), d_all) for n, d in ctrl_dist.items()}}
        for name, (pred, act) in pairs.items():  # pooled over the probes for the stage table
            pool = pooled.setdefault("real" if name == "game" else name, ([], []))
            pool[0].extend(pred)
            pool[1].extend(act)
        log(f"probe {tag}{probe}: realism " + ", ".join(f"{n} {v['realism']:.2f}" for n, v in rows.items())
            + " | controls " + ", ".join(f"{n} {v:.2f}" for n, v in result[probe]["controls"].items()))
    return result, pooled


STAGES = (("real frames", "real", None), ("tokenizer recon", "tokenizer", "tokenizer"),
          ("teacher one-step", "teacher", None), ("teacher rollout", None, "teacher"),
          ("init student", "student_init", "student_init"), ("student", "student", "student"),
          ("repeat last frame", "baseline", "baseline"))


def stage_table(step: dict, idm_streams: dict, psnr16: dict, rollout_realism: dict) -> list[dict]:
    """Where picture and control are lost: per stage, IDM forward and yaw accuracy, one-step
    and @16 PSNR, realism. A stage's one-step numbers come from the one-step test, its rollout
    numbers from the explorer rollouts; a row with both shows the rollout's IDM and realism."""
    rows = []
    for label, one, roll in STAGES:
        src = roll if roll is not None else one
        if (one and one not in step["streams"]) or (roll and roll not in idm_streams):
            continue
        if label == "real frames":
            idm, real_score = idm_summary(idm_streams["real"]), 1.0
        elif roll is not None:
            idm, real_score = idm_summary(idm_streams[roll]), rollout_realism.get(roll)
        else:
            idm, real_score = step["streams"][one]["idm"], step["streams"][one]["realism"]
        rows.append({"stage": label, "stream": src,
                     "forward_acc": idm["forward_acc"], "forward_chance": idm["forward_chance"],
                     "yaw_sign_acc": idm["yaw_sign_acc"], "idm_pairs": idm["pairs"],
                     "one_step_psnr": step["streams"][one]["psnr"] if one and one != "real" else None,
                     "psnr16": psnr16.get(roll) if roll else None, "realism": real_score})
    return rows


def evaluate(cfg: EvalConfig) -> dict:
    t_start = time.monotonic()
    if cfg.quick:
        cfg = replace(cfg, **QUICK)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else (
        "cpu" if cfg.device == "auto" else cfg.device)
    horizons = parse_horizons(cfg.horizons)
    if cfg.seeds < 1 or cfg.rollouts < 1 or cfg.stability_frames < 2 or cfg.response_frames < 0:
        raise ValueError("need --seeds >= 1, --rollouts >= 1, --stability-frames >= 2 and "
                         "--response-frames >= 0")
    if cfg.seed_start < EVAL_SEED_START:
        log(f"warning: worlds below {EVAL_SEED_START} may be in the training data")
    H = horizons[-1]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    folder = resolve_checkpoint(cfg.checkpoint)
    session = WorldSession.from_checkpoint(folder, device)
    tok = load_tokenizer(cfg.tokenizer, device)[0] if cfg.tokenizer else session.tokenizer
    size, ctx = session.size, session.context_length
    if tok.cfg.frame_size != size:
        raise ValueError(f"tokenizer makes {tok.cfg.frame_size}px frames, the checkpoint {size}px")
    log(f"eval {folder}: {size}px, {cfg.seeds} world(s) x {cfg.rollouts} rollout(s), context "
        f"{ctx}, horizons {horizons}, on {device}")

    streams: dict[str, object] = {"baseline": None, "tokenizer": None}
    sources = {"baseline": "last context frame repeated",
               "tokenizer": cfg.tokenizer or str(folder / "tokenizer")}
    if cfg.teacher:
        teacher, tmeta = load_teacher(cfg.teacher, device)
        streams["teacher"] = (teacher, tmeta)
        sources["teacher"] = f"{cfg.teacher} ({cfg.teacher_steps} steps, cfg {cfg.teacher_cfg})"
        if tmeta.tokenizer_hash and cfg.tokenizer is None and tmeta.tokenizer_hash != \
                checkpoint.file_hash(folder / "tokenizer.safetensors"):
            log("warning: the teacher was trained on another tokenizer's latents than the "
                "checkpoint's; pass --tokenizer to use its own")
    if cfg.student_init:
        streams["student_init"] = load_session(cfg.student_init, tok, device)
        sources["student_init"] = cfg.student_init
    streams["student"] = session
    sources["student"] = str(folder)

    overrides = {"steps": cfg.idm_steps} if cfg.idm_steps else {}
    idm_model, idm_meta = ensure_idm(cfg.idm, size, cfg.idm_preset, cfg.train_idm, device, log,
                                     **overrides)

    rollouts = make_rollouts(cfg, size, ctx, H)
    curves, idm_pred, idm_act, first, rollout_realism = fidelity(streams, rollouts, ctx, tok, cfg,
                                                                  idm_model)

    result: dict = {
        "checkpoint": str(folder), "checkpoint_hash": session.checkpoint_hash,
        "resolution": size, "device": device, "context": ctx, "horizons": horizons,
        "seeds": list(range(cfg.seed_start, cfg.seed_start + cfg.seeds)),
        "held_out": cfg.seed_start >= EVAL_SEED_START, "rollouts_per_seed": cfg.rollouts,
        "models": sources,
    }
    for metric in ("psnr", "ssim"):
        result[metric] = {}
        result[f"{metric}_std"] = {}
        for name, per in curves[metric].items():
            arr = np.stack(per)  # (rollouts, H)
            # PSNR: the mean over MSE (10^(-dB/10) is each frame's MSE), not over dB
            result[metric][name] = {str(h): psnr_of_mse(10 ** (-arr[:, h - 1] / 10)) if metric == "psnr"
                                    else float(arr[:, h - 1].mean()) for h in horizons}
            result[f"{metric}_std"][name] = {str(h): float(arr[:, h - 1].std()) for h in horizons}
    result["curves"] = {m: {n: np.stack(v).mean(0).round(4).tolist() for n, v in c.items()}
                        for m, c in curves.items()}
    plot_curves(result["curves"]["psnr"], horizons, out / "psnr.png", "PSNR (dB)")
    plot_curves(result["curves"]["ssim"], horizons, out / "ssim.png", "SSIM")
    cols = [h - 1 for h in horizons]
    rows = ["real"] + [m for m in MODELS if m in first and m != "baseline"]
    save_grid([(n, first[n][cols]) for n in rows], out / "rollout_frames.png",
              scale=max(1, 128 // size))

    if cfg.response_frames:
        result["response"] = response(streams, cfg, size, ctx, tok)

    result["rollout_realism"] = rollout_realism
    unseen = list(range(cfg.seed_start, cfg.seed_start + cfg.seeds))
    declared = parse_worlds(cfg.seen_worlds) if cfg.seen_worlds else session.worlds
    result["worlds"] = {"declared": declared, "unseen": unseen,
                        "seen": (declared or [])[:cfg.seeds]}
    result["one_step"] = one_step(streams, unseen, False, cfg, size, ctx, tok, idm_model)
    probe_worlds = unseen[:cfg.probe_worlds]
    if cfg.probes:
        result["probes"], probe_pairs = run_probes(streams, probe_worlds, False, cfg, size, ctx, tok,
                                                   idm_model, out, "")
    if declared:
        seen = result["worlds"]["seen"]
        result["seen"] = {"one_step": one_step(streams, seen, True, cfg, size, ctx, tok, idm_model)}
        if cfg.probes:
            result["seen"]["probes"] = run_probes(streams, seen[:cfg.probe_worlds], True, cfg, size, ctx,
                                                  tok, idm_model, out, "seen_")[0]

    rules = CollapseRules()
    # the long session plays where the checkpoint is meant to be played: its first declared
    # world when it declares any, else the first world never trained on
    stab_world, stab_seen = (result["worlds"]["seen"][0], True) if declared else (unseen[0], False)
    stab, long_pairs = stability(session, cfg, ctx, idm_model, rules, out, stab_world, stab_seen)
    result["stability"] = stab

    scores = {n: score(np.concatenate(p), np.concatenate(idm_act)) for n, p in idm_pred.items() if p}
    scores |= {f"{n}_long": score(p, a) for n, (p, a) in long_pairs.items()}
    # the rollouts' pairs when the horizons give any, else the long session's
    real, student = (scores["real"], scores["student"]) if "real" in scores else (
        scores["real_long"], scores["student_long"])
    result["idm"] = {
        "real_key_acc": real["key_acc"], "student_key_acc": student["key_acc"],
        "real_camera_err": real["camera_err"], "student_camera_err": student["camera_err"],
        "real_camera_sign_acc": real["camera_sign_acc"],
        "student_camera_sign_acc": student["camera_sign_acc"],
        "key_chance": real["key_chance"], "checkpoint": cfg.idm,
        "own_val": idm_meta.get("val", {}), "streams": scores,
    }
    h16 = "16" if "16" in result["psnr"].get("student", {}) else str(horizons[-1])
    result["stage_table_horizon"] = int(h16)
    # the stage table's rollout rows pool the explorer rollouts with the behaviour probes: the
    # explorer alone holds forward nearly always, where "always forward" would score 1.0
    pooled = {n: (list(p), list(idm_act)) for n, p in idm_pred.items() if p}
    for n, (p, a) in (probe_pairs if cfg.probes else {}).items():
        pool = pooled.setdefault(n, ([], []))
        pool[0].extend(p)
        pool[1].extend(a)
    stage_scores = {n: score(np.concatenate(p), np.concatenate(a)) for n, (p, a) in pooled.items() if p}
    result["stage_table"] = stage_table(result["one_step"], stage_scores,
                                        {n: v[h16] for n, v in result["psnr"].items()}, rollout_realism)
    result["settings"] = {k: (list(v) if isinstance(v, tuple) else v)
                          for k, v in asdict(cfg).items()}
    result["time_s"] = round(time.monotonic() - t_start, 1)
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    write_report(result, rules, out / "report.md")
    log(f"wrote {out / 'eval.json'}, {out / 'report.md'} and plots ({result['time_s']:.0f}s)")
    return result


def segment_realism(world: int, size: int, real: np.ndarray, model: np.ndarray, states: list[dict],
                    segment: int) -> dict:
    """Realism of the model's frames and of the degenerate controls per `segment` frames,
    each against a bank of real views around the game's poses in that segment."""
    out: dict[str, list] = {"mid": [], "student": [], "flat": [], "tiled": [], "shuffled": []}
    for a in range(0, len(real), segment):
        b = min(len(real), a + segment)
        if b - a < 2:
            continue
        judge = RealismJudge.around(world, size, states[a:b], seed=a)
        d_game = judge.distance(real[a:b])
        out["mid"].append((a + b) / 2)
        out["student"].append(realism(judge.distance(model[a:b]), d_game))
        for name, frames in controls(real[a:b], a).items():
            out[name].append(realism(judge.distance(frames), d_game))
    return out


def plot_realism(segs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.axhline(1.0, color="tab:gray", lw=1.5, label="real game")
    for name, style in (("student", dict(color="tab:blue", lw=2, marker="o", ms=3)),
                        ("tiled", dict(color="tab:red", ls="--")), ("shuffled", dict(color="tab:orange", ls="--")),
                        ("flat", dict(color="tab:brown", ls=":"))):
        ax.plot(segs["mid"], segs[name], label=name if name == "student" else f"control: {name}", **style)
    ax.set_xlabel("frame")
    ax.set_ylabel("realism (game = 1)")
    ax.set_ylim(0, max(1.2, max(max(v) for k, v in segs.items() if k != "mid" and v) * 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("realism per segment of the long session")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def stability(session: WorldSession, cfg: EvalConfig, ctx: int, idm_model: IDM,
              rules: CollapseRules, out: Path, seed: int, seen: bool):
    """The student for `stability_frames` frames next to the game under the explorer, in world
    `seed`. In a trained-on world (seen) it starts from a random pose with an explorer seeded
    apart from collection's, as the mixed probe does; elsewhere from the spawn."""
    from tqdm import tqdm

    n = cfg.stability_frames
    game = Game(seed, session.size)
    player = Explorer(EVAL_SEED_START + seed if seen else seed)
    frames, actions = [game.restore(start_state(game, seed)) if seen else game.reset()], [Action()]
    for _ in range(ctx - 1):
        a = player.act(game)
        frames.append(game.step(a))
        actions.append(a)
    session.reset(np.stack(frames), actions, seed=seed)
    real_s, model_s = FrameStats(), FrameStats()
    states: list[dict] = []
    kept: dict[str, list[np.ndarray]] = {"real": [], "student": []}
    yaw = np.zeros(n)
    snap_at = set(np.linspace(0, n - 1, 8).astype(int).tolist())
    snaps: dict[str, list[np.ndarray]] = {"real": [], "student": []}
    pairs = {"real": ([], []), "student": ([], [])}  # predictions, actions
    buf = {"real": [], "student": []}
    prev = {"real": None, "student": None}
    buf_act: list[np.ndarray] = []

    def flush():
        if not buf_act:
            return
        for name in ("real", "student"):
            p, c = zip(*buf[name])
            pairs[name][0].append(idm_model.predict(np.stack(p), np.stack(c)))
            pairs[name][1].append(np.stack(buf_act))
            buf[name].clear()
        buf_act.clear()

    for t in tqdm(range(n), desc="stability", unit="frame", file=sys.stderr, mininterval=2):
        a = player.act(game)
        shown = {"real": game.step(a), "student": session.step(a)}
        yaw[t] = a.yaw
        states.append(game.state())
        kept["real"].append(shown["real"])
        kept["student"].append(shown["student"])
        real_s.add(shown["real"])
        model_s.add(shown["student"])
        for name, f in shown.items():
            if prev[name] is not None:
                buf[name].append((prev[name], f))
            prev[name] = f
            if t in snap_at:
                snaps[name].append(f)
        if t > 0:
            buf_act.append(a.to_vector())
        if len(buf_act) >= 256:
            flush()
    flush()
    real, student = real_s.arrays(), model_s.arrays()
    verdict = collapse_verdict(student, real, yaw, rules)
    segs = segment_realism(seed, session.size, np.stack(kept["real"]), np.stack(kept["student"]),
                           states, cfg.segment_frames)
    late = [i for i, m in enumerate(segs["mid"]) if m >= n * (1 - rules.late_fraction)] or [len(segs["mid"]) - 1]
    verdict["realism_late"] = float(np.median([segs["student"][i] for i in late]))
    verdict["control_realism_late"] = float(max(np.median([segs[c][i] for i in late])
                                                for c in ("tiled", "shuffled")))
    if verdict["realism_late"] <= verdict["control_realism_late"]:
        verdict["reasons"].append("unreal")
        verdict["collapsed"] = True
    plot_realism(segs, out / "realism.png")
    ref_hist = real["hist"].mean(0)
    plot_stability(student, real, ref_hist, out / "stability.png")
    save_grid([("real", np.stack(snaps["real"])), ("student", np.stack(snaps["student"]))],
              out / "stability_frames.png", scale=max(1, 128 // session.size))

    def summary(s):
        return {k: float(np.nanmedian(s[k])) for k in ("brightness", "contrast", "sharpness")} | {
            "hist_distance": float(np.median(hist_distance(s["hist"], ref_hist)))}

    result = {"frames": n, "seed": seed, "seen": seen, **verdict, "rules": asdict(rules), "realism": segs,
              "median": {"student": summary(student), "real": summary(real)},
              "curves": {name: {k: s[k].round(3).tolist() for k in ("brightness", "contrast", "sharpness")}
                         | {"hist_distance": hist_distance(s["hist"], ref_hist).round(4).tolist()}
                         for name, s in (("student", student), ("real", real))}}
    long_pairs = {name: (np.concatenate(p), np.concatenate(a))
                  for name, (p, a) in pairs.items() if p}
    log(f"stability: {n} frames, {'collapsed: ' + ', '.join(verdict['reasons']) if verdict['collapsed'] else 'not collapsed'}")
    return result, long_pairs


HELPS = {
    "checkpoint": "world-model folder (or name under assets/)",
    "teacher": "teacher checkpoint stem (runs/teacher/model)",
    "student_init": "the initialised student: a world-model folder or runs/student-init/model",
    "tokenizer": "tokenizer stem (default: the checkpoint's)",
    "seeds": f"worlds never trained on, from --seed-start (>= {EVAL_SEED_START})",
    "rollouts": "explorer context windows per world",
    "horizons": "frames ahead to report, comma-separated",
    "stability_frames": "frames of the long student session",
    "response_frames": "frames per probe action (none, forward, yaw+, yaw-) in the "
                       "counterfactual test; 0 skips it",
    "idm": "inverse-dynamics model stem (trained there if absent)",
    "train_idm": "train the IDM even if one exists",
    "idm_steps": "IDM training steps (0: the preset's)",
    "out": "folder for eval.json, report.md, strips and plots",
    "threads": "torch CPU threads (0: torch's default)",
    "probes": f"behaviour probes, comma-separated, of {','.join(PROBES)}",
    "seen_worlds": "worlds the checkpoint was trained on, as 0-199 or 3,5 (default: the "
                   "worlds its student.json declares)",
    "json": "print the result as one JSON object on stdout",
    "quick": "the ablation subset in minutes: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_config_arguments(p, EvalConfig(), helps=HELPS,
                               choices={"device": ["auto", "cpu", "cuda"], "idm_preset": sorted(IDM_PRESETS)})


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    return flags.config_from_args(EvalConfig, args)


def main(args: argparse.Namespace) -> int:
    try:
        r = evaluate(config_from_args(args))
    except ValueError as e:
        raise SystemExit(f"wm eval: {e}") from None
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"stage table ({len(r['seeds'])} world(s) never trained on)")
    print(format_stage_table(r["stage_table"], r["stage_table_horizon"]))
    hs = [str(h) for h in r["horizons"]]
    print(f"PSNR (dB) at {', '.join(hs)} frames ahead ({len(r['seeds'])} held-out worlds)")
    for n in MODELS:
        if n in r["psnr"]:
            print(f"  {n:<13}" + "".join(f"{r['psnr'][n][h]:>8.2f}" for h in hs))
    i = r["idm"]
    print(f"IDM key accuracy: real {i['real_key_acc']:.3f}, student {i['student_key_acc']:.3f} "
          f"(chance {i['key_chance']:.3f}); camera error: real {i['real_camera_err']:.3f}, "
          f"student {i['student_camera_err']:.3f}")
    for where, probes in (("never trained on", r.get("probes", {})),
                          ("trained on", r.get("seen", {}).get("probes", {}))):
        for probe, pr in probes.items():
            rows = {n: row for n, row in pr["streams"].items() if "psnr" in row and n != "tokenizer"}
            hs = "/".join(rows["student"]["psnr"])
            print(f"probe {probe} ({where}), PSNR@{hs} and realism: " + "; ".join(
                f"{n} {'/'.join(f'{v:.1f}' for v in row['psnr'].values())} ({row['realism']:.2f})"
                for n, row in rows.items()))
    s = r["stability"]
    print(f"stability over {s['frames']} frames: "
          + ("collapsed (" + ", ".join(s["reasons"]) + ")" if s["collapsed"] else "not collapsed"))
    print(f"realism over the long session, late window: student {s['realism_late']:.2f}, best "
          f"wallpaper/shuffled control {s['control_realism_late']:.2f} (game 1.00)")
    print(f"report: {Path(args.out) / 'report.md'}; {r['time_s']:.0f} s")
    return 0
