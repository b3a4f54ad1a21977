"""`wm eval`'s plots and report.md, from the result it writes to eval.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.collapse import CollapseRules, hist_distance
from distill.collect import EVAL_SEED_START

MODELS = ("baseline", "tokenizer", "teacher", "student_init", "student")  # table order
PROBE_HORIZONS = (1, 4, 16, 64, 200, 1000)  # frames of each probe its PSNR is reported at


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
    named = {"flat": "flat", "tiled": "tiled wall crop", "shuffled": "shuffled patches", "blurred": "blurred view"}
    lines += ["Realism of the degenerate controls on the same rollouts: "
              + ", ".join(f"{label} {ctrl[n]:.2f}" for n, label in named.items() if n in ctrl) + ".", ""]
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
              f"{len(sr['mid'])} segments is no higher than that of the tiled wall crop, the shuffled "
              f"patches or the blurred view (here {st['realism_late']:.2f} against {st['control_realism_late']:.2f}).", "",
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


def plot_realism(segs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.axhline(1.0, color="tab:gray", lw=1.5, label="real game")
    for name, style in (("student", dict(color="tab:blue", lw=2, marker="o", ms=3)),
                        ("tiled", dict(color="tab:red", ls="--")), ("shuffled", dict(color="tab:orange", ls="--")),
                        ("blurred", dict(color="tab:purple", ls="--")),
                        ("flat", dict(color="tab:brown", ls=":"))):
        if name not in segs:  # a result from before the blurred control
            continue
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
