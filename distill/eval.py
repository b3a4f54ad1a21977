"""`wm eval`: a world model measured against the real game, on worlds it never trained on.

    wm eval --checkpoint runs/world-model --out runs/eval
    wm eval --checkpoint runs/world-model --teacher runs/teacher/model \\
            --student-init runs/student-init/model --json > eval.json
    # seconds on a CPU (tests/test_eval_bench.py runs this on random weights):
    wm eval --checkpoint runs/wm-tiny --seeds 1 --horizons 1,4 --stability-frames 50 \\
            --idm runs/idm-tiny/model --idm-preset tiny

Fidelity. World seeds from 1,000,000 on (`EVAL_SEED_START`; collection never trains there).
Each seed's game plays under the explorer policy; every rollout takes the session's
context_length real frames as context and then generates under the same actions as the
game. PSNR and SSIM against the game at each step ahead, averaged over seeds and rollouts,
for: "baseline" (repeat the last context frame), "tokenizer" (the real frame encoded and
decoded: the ceiling of any model behind this decoder), "student" (the checkpoint), and
"teacher" / "student_init" when given. A model not given is absent from the output.

Controllability. An inverse-dynamics model (distill.idm), trained on real frame pairs,
reads consecutive frames of each stream and guesses the commanded action. Its score on
real frames is the reference; on the student's frames it says whether the pictures move
as the actions say. Loaded from --idm, or trained there first if absent (or --train-idm).

Counterfactual actions (--response-frames, 0 skips). From a still context, every stream plays
each probe action (none, forward, yaw+1, yaw-1) from the same seed, and each rollout is
compared with its rollout under no input: the cosine between that effect and the game's own
says whether walking and turning change the picture the way they change the game.

Stability. One long student session (--stability-frames) next to the real game under the
same explorer actions: per-frame brightness, contrast, sharpness and colour-histogram
distance, plotted against time, and a `collapsed` verdict from the rules in CollapseRules
(written out in report.md).

Writes eval.json, PNG plots and report.md to --out; `--json` prints eval.json's object on
stdout. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from distill.collect import EVAL_SEED_START, Explorer
from distill.idm import IDM, IDM_PRESETS, ensure_idm, score
from distill.sample import dream_teacher, play_game
from worldmodel import checkpoint
from worldmodel.actions import Action, stack
from worldmodel.checkpoint import load_student, load_teacher, load_tokenizer
from worldmodel.flags import add_config_arguments, config_from_args
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
    horizons: tuple[int, ...] = (1, 4, 16, 64)
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
    json: bool = False  # print the result as one JSON object on stdout


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


def make_rollouts(cfg: EvalConfig, size: int, ctx: int, H: int) -> list[Rollout]:
    """Per seed, one explorer episode cut into `rollouts` windows, each H frames later."""
    out = []
    for seed in range(cfg.seed_start, cfg.seed_start + cfg.seeds):
        frames, actions = play_game(seed, size, (cfg.rollouts - 1) * H + ctx + H)
        for r in range(cfg.rollouts):
            s = r * H
            out.append(Rollout(seed, r, frames[s:s + ctx + H], actions[s:s + ctx + H]))
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
        f"actions (world {st['seed']}). **Verdict: {verdict}.**", "",
        f"In the late window the student's sharpness is {st['sharpness_ratio']:.2f}x the real "
        f"frames' lower level and {st['sharpness_ratio_high']:.2f}x their upper level, its "
        f"contrast {st['contrast_ratio']:.2f}x; colour distance {st['hist_distance']:.3f} (real "
        f"frames: {st['real_hist_distance']:.3f}); pure black/white pixels {st['clipped']:.3f} "
        f"(real {st['real_clipped']:.3f}); longest frozen stretch while turning: "
        f"{st['longest_frozen_run']} frames.", "",
        "Collapse rules (any one is enough):", ""]
    lines += [f"- {d}" for d in rules.describe()]
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
        if k == 0:
            first = shown
        log(f"rollout {k + 1}/{len(rollouts)} done")
    return curves, idm_pred, idm_act, first


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


def evaluate(cfg: EvalConfig) -> dict:
    t_start = time.monotonic()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else (
        "cpu" if cfg.device == "auto" else cfg.device)
    horizons = sorted(set(cfg.horizons))
    if not horizons or horizons[0] < 1:
        raise ValueError(f"horizons must be positive frame counts, got {cfg.horizons}")
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
    curves, idm_pred, idm_act, first = fidelity(streams, rollouts, ctx, tok, cfg, idm_model)

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
            result[metric][name] = {str(h): float(arr[:, h - 1].mean()) for h in horizons}
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

    rules = CollapseRules()
    stab, long_pairs = stability(session, cfg, ctx, idm_model, rules, out)
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
    result["settings"] = {k: (list(v) if isinstance(v, tuple) else v)
                          for k, v in asdict(cfg).items()}
    result["time_s"] = round(time.monotonic() - t_start, 1)
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    write_report(result, rules, out / "report.md")
    log(f"wrote {out / 'eval.json'}, {out / 'report.md'} and plots ({result['time_s']:.0f}s)")
    return result


def stability(session: WorldSession, cfg: EvalConfig, ctx: int, idm_model: IDM,
              rules: CollapseRules, out: Path):
    """The student for `stability_frames` frames next to the game under the explorer."""
    from tqdm import tqdm

    seed, n = cfg.seed_start, cfg.stability_frames
    game, player = Game(seed, session.size), Explorer(seed)
    frames, actions = [game.reset()], [Action()]
    for _ in range(ctx - 1):
        a = player.act(game)
        frames.append(game.step(a))
        actions.append(a)
    session.reset(np.stack(frames), actions, seed=seed)
    real_s, model_s = FrameStats(), FrameStats()
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
    ref_hist = real["hist"].mean(0)
    plot_stability(student, real, ref_hist, out / "stability.png")
    save_grid([("real", np.stack(snaps["real"])), ("student", np.stack(snaps["student"]))],
              out / "stability_frames.png", scale=max(1, 128 // session.size))

    def summary(s):
        return {k: float(np.nanmedian(s[k])) for k in ("brightness", "contrast", "sharpness")} | {
            "hist_distance": float(np.median(hist_distance(s["hist"], ref_hist)))}

    result = {"frames": n, "seed": seed, **verdict, "rules": asdict(rules),
              "median": {"student": summary(student), "real": summary(real)},
              "curves": {name: {k: s[k].round(3).tolist() for k in ("brightness", "contrast", "sharpness")}
                         | {"hist_distance": hist_distance(s["hist"], ref_hist).round(4).tolist()}
                         for name, s in (("student", student), ("real", real))}}
    long_pairs = {name: (np.concatenate(p), np.concatenate(a))
                  for name, (p, a) in pairs.items() if p}
    log(f"stability: {n} frames, {'collapsed: ' + ', '.join(verdict['reasons']) if verdict['collapsed'] else 'not collapsed'}")
    return result, long_pairs


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, EvalConfig(), choices={
        "idm_preset": sorted(IDM_PRESETS), "device": ["auto", "cpu", "cuda"]}, helps={
        "checkpoint": "world-model folder (or name under assets/)",
        "teacher": "teacher checkpoint stem (runs/teacher/model)",
        "student_init": "the initialised student: a world-model folder or runs/student-init/model",
        "tokenizer": "tokenizer stem (default: the checkpoint's)",
        "seeds": f"held-out worlds from {EVAL_SEED_START}",
        "rollouts": "context windows per world", "horizons": "frames ahead to report",
        "response_frames": "frames per probe action (none, forward, yaw+, yaw-) in the "
                           "counterfactual test; 0 skips it",
        "idm": "inverse-dynamics model stem (trained there if absent)",
        "train_idm": "train the IDM even if one exists", "idm_steps": "IDM training steps (0: preset)",
        "out": "folder for eval.json, report.md and plots", "threads": "torch CPU threads (0: default)",
        "json": "print the result as one JSON object on stdout"})


def main(args: argparse.Namespace) -> int:
    r = evaluate(config_from_args(EvalConfig, args))
    if args.json:
        print(json.dumps(r))
        return 0
    hs = [str(h) for h in r["horizons"]]
    print(f"PSNR (dB) at {', '.join(hs)} frames ahead ({len(r['seeds'])} held-out worlds)")
    for n in MODELS:
        if n in r["psnr"]:
            print(f"  {n:<13}" + "".join(f"{r['psnr'][n][h]:>8.2f}" for h in hs))
    i = r["idm"]
    print(f"IDM key accuracy: real {i['real_key_acc']:.3f}, student {i['student_key_acc']:.3f} "
          f"(chance {i['key_chance']:.3f}); camera error: real {i['real_camera_err']:.3f}, "
          f"student {i['student_camera_err']:.3f}")
    s = r["stability"]
    print(f"stability over {s['frames']} frames: "
          + ("collapsed (" + ", ".join(s["reasons"]) + ")" if s["collapsed"] else "not collapsed"))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
