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
64, 200 and 1000 frames (means over MSE), realism and IDM scores.

Realism (distill.realism). Each frame's distance to the nearest real view drawn by the game
around its own poses, in features of layout and detail; the game's median distance over the
stream's (1 for the game). The same for degenerate controls made from the game's frames
(flat, tiled wall crop, shuffled patches, blurred view), so that a collapse reads as one.
The long session is scored per --segment-frames, plotted against time, and called collapsed
("unreal") when its late segments score no higher than the tiled, shuffled or blurred
control.

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
contrast, sharpness, colour histograms and realism per segment; the `collapsed` verdict
(its rules: distill.collapse).

Writes eval.json, PNG strips and plots, mp4 and report.md (distill.eval_report) to --out; `--json` prints
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

from distill.collapse import CollapseRules, FrameStats, collapse_verdict, hist_distance
from distill.collect import EVAL_SEED_START
from distill.distill import parse_worlds
from distill.eval_report import (
    MODELS,
    PROBE_HORIZONS,
    format_stage_table,
    plot_curves,
    plot_realism,
    plot_stability,
    save_grid,
    write_report,
)
from distill.idm import IDM, IDM_PRESETS, ensure_idm, score
from distill.probes import PROBES, first_frame, idm_summary, mse, play, policy, psnr_of_mse
from distill.realism import BAR_CONTROLS, CONTROLS, RealismJudge, controls, realism
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


def pool_pairs(into: dict[str, tuple[list, list]], pairs: dict[str, tuple[list, list]]) -> dict:
    """Add each stream's IDM guesses and commanded actions (lists of arrays) to `into`."""
    for name, (pred, act) in pairs.items():
        pool = into.setdefault(name, ([], []))
        pool[0].extend(pred)
        pool[1].extend(act)
    return into


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
        pool_pairs(pooled, {"real" if n == "game" else n: p for n, p in pairs.items()})
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
    probe_pairs: dict[str, tuple[list, list]] = {}  # IDM guesses and actions per stream
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
    pooled = pool_pairs({}, {n: (p, idm_act) for n, p in idm_pred.items() if p})
    pool_pairs(pooled, probe_pairs)
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
    out: dict[str, list] = {"mid": [], "student": [], **{c: [] for c in CONTROLS}}
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


def stability(session: WorldSession, cfg: EvalConfig, ctx: int, idm_model: IDM,
              rules: CollapseRules, out: Path, seed: int, seen: bool):
    """The student for `stability_frames` frames next to the game under the explorer, in world
    `seed`. In a trained-on world (seen) it starts from a random pose with an explorer seeded
    apart from collection's, as the mixed probe does; elsewhere from the spawn."""
    from tqdm import tqdm

    n = cfg.stability_frames
    game = Game(seed, session.size)
    player = policy("mixed", seed, seen)  # the explorer, seeded as the mixed probe's
    frames, actions = [first_frame(game, seed, seen)], [Action()]
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
                                                for c in BAR_CONTROLS))
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
          f"tiled/shuffled/blurred control {s['control_realism_late']:.2f} (game 1.00)")
    print(f"report: {Path(args.out) / 'report.md'}; {r['time_s']:.0f} s")
    return 0
