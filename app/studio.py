"""`wm ui`: a gradio studio for recordings, replays, dreams and the model card.

    wm ui --recordings recordings --checkpoint runs/student      # http://127.0.0.1:7860

Four tabs:

    Recordings   the recordings `wm play` and `wm pygame --local` made: video and meta.json
    Replay       regenerate one as `wm replay` does and compare it frame by frame
    Dream        the model and the real game under the same scripted actions, with PSNR
    Model        the checkpoint's card (card.md / card.json, or its student config) and
                 its measurements (eval.json, or those its card.json records)

The work is done by plain functions (`recording_rows`, `recording_view`, `verify_recording`,
`dream_clip`, `model_card`); `build_app` only wires them to gradio. The page binds to
127.0.0.1 unless --host says otherwise, loads nothing from elsewhere, sends no analytics
and makes no share link.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.config import LOCAL_HOSTS
from app.recording import VIDEO, frame_times, list_recordings, recording_dir
from app.replay import replay
from worldmodel.actions import NOOP, Action, parse_script
from worldmodel.episode import Episode, EpisodeError
from worldmodel.flags import add_config_arguments, config_from_args
from worldmodel.game import Game
from worldmodel.metrics import psnr
from worldmodel.session import WorldSession, resolve_checkpoint
from worldmodel.video import export

# before gradio is imported: it reads this once, and would otherwise call home
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
import gradio as gr  # noqa: E402

DEFAULT_SCRIPT = "forward:20,yaw=0.5:10,forward+sprint:20,yaw=-0.5:10,idle:5"


@dataclass
class StudioConfig:
    recordings: Path = Path("recordings")
    checkpoint: str = "default"
    host: str = "127.0.0.1"
    port: int = 7860
    device: str = "cpu"
    max_dream_frames: int = 600  # a dream runs on the request's thread

    def __post_init__(self) -> None:
        self.recordings = Path(self.recordings)


# ------------------------------------------------------------------ recordings


RECORDING_COLUMNS = ["name", "source", "frames", "seconds", "started", "complete"]


def recording_rows(root: str | Path) -> list[list[Any]]:
    """One row per recording under root, newest first (columns: RECORDING_COLUMNS)."""
    rows = []
    for r in list_recordings(root):
        seconds = round(r["frames"] / r["fps"], 1) if r["fps"] else None
        rows.append([r["name"], r["source"], r["frames"], seconds, r["started"], r["complete"]])
    return rows


def _recording(root: str | Path, name: str) -> Path:
    path = recording_dir(root, name)
    if path is None:
        raise ValueError(f"no recording named {name!r} in {root}")
    return path


def recording_view(root: str | Path, name: str, scratch: str | Path) -> tuple[str | None, dict]:
    """(video file, meta.json) of one recording. A recording still in progress, or one whose
    process died, has no finished mp4: its raw frames are exported to scratch instead."""
    path = _recording(root, name)
    ep = Episode(path)
    if ep.meta.get("complete") and (path / VIDEO).is_file():
        return str(path / VIDEO), ep.meta
    if len(ep) == 0:
        return None, ep.meta
    out = Path(tempfile.mkdtemp(dir=scratch)) / f"{name}.mp4"
    times = frame_times(path, len(ep))
    return str(export(ep.frames, out, int(ep.meta["fps"]), times)), ep.meta


def verify_recording(root: str | Path, name: str, fallback: str | None = None) -> dict[str, Any]:
    """Regenerate a recording as `wm replay` does (the checkpoint and device in its meta.json)
    and compare every frame with the recorded one. If that checkpoint is not where it was,
    `fallback` is tried: replay checks that its hash is the recorded one."""
    path = _recording(root, name)
    try:
        result = replay(path)
    except FileNotFoundError:
        if fallback is None:
            raise
        result = replay(path, checkpoint=fallback)
    return {
        "recording": name,
        "ok": result.ok,
        "frames": result.frames,
        "matching": result.matching,
        "max_abs_diff": result.max_abs_diff,
        "first_mismatch": result.first_mismatch,
    }


def verify_text(report: dict[str, Any]) -> str:
    if report["ok"]:
        return (
            f"**{report['recording']}: all {report['frames']} frames match exactly** "
            "(max abs diff 0)"
        )
    return (
        f"**{report['recording']}: MISMATCH**: {report['matching']}/{report['frames']} "
        f"frames match exactly; first differs at frame {report['first_mismatch']}; "
        f"max abs diff {report['max_abs_diff']}"
    )


# ------------------------------------------------------------------ dreams


class Worlds:
    """Loaded world models by (checkpoint, device), one user at a time each: a dream resets
    the session, so two requests must not share it at once."""

    def __init__(self) -> None:
        self._worlds: dict[tuple[str, str], tuple[Any, threading.Lock]] = {}
        self._lock = threading.Lock()

    def get(self, checkpoint: str, device: str) -> tuple[WorldSession, threading.Lock]:
        with self._lock:
            key = (str(checkpoint), device)
            if key not in self._worlds:
                world = WorldSession.from_checkpoint(checkpoint, device=device)
                self._worlds[key] = (world, threading.Lock())
            return self._worlds[key]


@dataclass
class Dream:
    """The real game and the model's dream under the same actions, frame for frame."""

    seed: int
    actions: list[Action]
    context: np.ndarray  # (K, S, S, 3) what both start from
    real: np.ndarray  # (T, S, S, 3) the game
    dream: np.ndarray  # (T, S, S, 3) the model
    psnr: np.ndarray  # (T,) dB, dream against the game
    psnr_repeat_last: np.ndarray  # (T,) dB, the last context frame held still: the baseline

    def side_by_side(self) -> np.ndarray:
        """(K + T, S, 2S, 3): the game on the left, the dream on the right, as `wm sample`."""
        real = np.concatenate([self.context, self.real])
        dream = np.concatenate([self.context, self.dream])
        return np.concatenate([real, dream], axis=2)

    def summary(self) -> str:
        ahead = ", ".join(
            f"{h} ahead {self.psnr[h - 1]:.2f} dB" for h in (1, 4, 16) if h <= len(self.psnr)
        )
        return (
            f"**{len(self.psnr)} frames**, world seed {self.seed}: mean PSNR "
            f"**{self.psnr.mean():.2f} dB** (last context frame held still: "
            f"{self.psnr_repeat_last.mean():.2f} dB); {ahead}"
        )


def dream_clip(world: WorldSession, script: str, seed: int, max_frames: int = 10_000) -> Dream:
    """Play `script` (`wm sample --script` syntax) in the real game and in the world model.

    Both start as `wm play` starts a world: the game's reset frame and frames of no input,
    context_length in all, are the model's context; then each action steps both."""
    actions = parse_script(script)
    if not actions:
        raise ValueError("the script has no actions; e.g. forward:20,yaw=0.5:10")
    if len(actions) > max_frames:
        raise ValueError(f"the script makes {len(actions)} frames; at most {max_frames}")
    game = Game(seed, world.size)
    context = [game.reset()] + [game.step(NOOP) for _ in range(world.context_length - 1)]
    world.reset(np.stack(context), [NOOP] * len(context), seed=seed)
    real, dream = [], []
    for a in actions:
        dream.append(world.step(a))
        real.append(game.step(a))
    real_arr, dream_arr = np.stack(real), np.stack(dream)
    held = np.repeat(context[-1][None], len(real), axis=0)
    return Dream(
        seed,
        actions,
        np.stack(context),
        real_arr,
        dream_arr,
        psnr(real_arr, dream_arr),
        psnr(real_arr, held),
    )


def psnr_table(d: Dream):
    """Long-format table for a line plot: frame, dB, series."""
    import pandas as pd

    n = np.arange(1, len(d.psnr) + 1)
    return pd.DataFrame({
        "frame": np.concatenate([n, n]),
        "psnr_db": np.concatenate([d.psnr, d.psnr_repeat_last]).astype(float),
        "series": ["dream"] * len(n) + ["last context frame held"] * len(n),
    })  # fmt: skip


# ------------------------------------------------------------------ model card


@dataclass
class ModelCard:
    folder: Path
    markdown: str  # card.md, or a heading and a note that there is none
    details: dict[str, Any]  # card.json, or the student's config and sampler settings
    metrics: dict[str, Any] = field(default_factory=dict)  # what was measured, or where to


def model_card(checkpoint: str | Path) -> ModelCard:
    """The card of a checkpoint folder (or name under assets/)."""
    folder = resolve_checkpoint(checkpoint)
    student = json.loads((folder / "student.json").read_text())
    if (folder / "card.json").is_file():
        details = json.loads((folder / "card.json").read_text())
    else:
        details = {k: student[k] for k in ("kind", "model", "sampler", "fps") if k in student}
    if (folder / "card.md").is_file():
        markdown = (folder / "card.md").read_text()
    else:
        markdown = f"# {folder.name}\n\nNo `card.md` in `{folder}`; below: " + (
            "its `card.json`."
            if (folder / "card.json").is_file()
            else "the student's configuration (`student.json`)."
        )
    return ModelCard(folder, markdown, details, measurements(folder, details))


def measurements(folder: Path, card: dict[str, Any]) -> dict[str, Any]:
    """eval.json if the folder has one; else the measurements its card.json records (wm
    eval and wm bench, with the commands that made them); else how to make them."""
    if (folder / "eval.json").is_file():
        return json.loads((folder / "eval.json").read_text())
    found = {k: card[k] for k in ("eval", "eval_command", "bench", "bench_command") if k in card}
    if found:
        return {"source": f"{folder / 'card.json'}", **found}
    return {"note": f"nothing measured in {folder}: `wm eval --checkpoint {folder} --json > "
                    f"{folder / 'eval.json'}` measures it, and the studio shows the result here"}


# ------------------------------------------------------------------ the app


def _shown(fn):
    """Errors a user can act on become gradio messages, not tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            return fn(*args)
        except (ValueError, FileNotFoundError, EpisodeError) as e:
            raise gr.Error(str(e)) from None

    return wrapper


def build_app(cfg: StudioConfig) -> gr.Blocks:
    """The studio's gr.Blocks, not launched."""
    worlds = Worlds()
    scratch = tempfile.mkdtemp(prefix="wm-studio-")  # videos made on request

    def names() -> list[str]:
        return [r["name"] for r in list_recordings(cfg.recordings)]

    def refresh(current: str | None):
        choices = names()
        value = current if current in choices else (choices[0] if choices else None)
        rows = recording_rows(cfg.recordings)
        return (
            gr.Dataframe(value=rows),
            gr.Dropdown(choices=choices, value=value),
            gr.Dropdown(choices=choices, value=value),
        )

    @_shown
    def show(name: str | None):
        if not name:
            return None, None
        return recording_view(cfg.recordings, name, scratch)

    def pick(evt: gr.SelectData):
        return evt.row_value[0] if evt.row_value else None

    @_shown
    def verify(name: str | None):
        if not name:
            raise ValueError("pick a recording first")
        report = verify_recording(cfg.recordings, name, fallback=cfg.checkpoint)
        return verify_text(report), report

    @_shown
    def dream(script: str, seed: float | None):
        world, lock = worlds.get(cfg.checkpoint, cfg.device)
        with lock:
            d = dream_clip(world, script, int(seed or 0), cfg.max_dream_frames)
        out = Path(tempfile.mkdtemp(dir=scratch)) / "dream.mp4"
        export(d.side_by_side(), out, int(world.fps))
        return str(out), psnr_table(d), d.summary()

    def card():
        try:
            c = model_card(cfg.checkpoint)
        except FileNotFoundError as e:
            return f"# No checkpoint\n\n{e}", None, None
        return c.markdown, c.details, c.metrics

    with gr.Blocks(title="World model studio", analytics_enabled=False) as app:
        gr.Markdown(
            f"# World model studio\ncheckpoint `{cfg.checkpoint}` · recordings "
            f"`{cfg.recordings}` · device `{cfg.device}`"
        )
        with gr.Tab("Recordings"):
            table = gr.Dataframe(
                headers=RECORDING_COLUMNS, interactive=False, label="recordings (click a row)"
            )
            with gr.Row():
                chosen = gr.Dropdown(label="recording", scale=4)
                refresh_btn = gr.Button("Refresh", scale=1)
            with gr.Row():
                video = gr.Video(label="video", interactive=False, loop=True, autoplay=True)
                meta = gr.JSON(label="meta.json", open=True)
        with gr.Tab("Replay"):
            gr.Markdown(
                "Regenerate every frame of a recording as `wm replay` does (its "
                "checkpoint, context, seed and actions) and compare it with the "
                "recorded frame. Exact on the device it was recorded on."
            )
            to_verify = gr.Dropdown(label="recording")
            verify_btn = gr.Button("Replay and compare", variant="primary")
            verdict = gr.Markdown()
            report = gr.JSON(label="result")
        with gr.Tab("Dream"):
            gr.Markdown(
                "The real game and the model under the same actions. The script is "
                "`wm sample --script`'s: items `keys:frames` with keys joined by `+` "
                "(forward back left right jump sprint), `yaw=v` / `pitch=v` in -1..1, "
                "or `idle`."
            )
            with gr.Row():
                script = gr.Textbox(value=DEFAULT_SCRIPT, label="actions", scale=4)
                seed = gr.Number(value=0, precision=0, minimum=0, label="world seed", scale=1)
            dream_btn = gr.Button("Dream", variant="primary")
            dream_video = gr.Video(
                label="real game (left) · dream (right)",
                interactive=False,
                loop=True,
                autoplay=True,
            )
            plot = gr.LinePlot(
                x="frame", y="psnr_db", color="series", label="PSNR per frame", y_title="PSNR (dB)"
            )
            dream_summary = gr.Markdown()
        with gr.Tab("Model"):
            card_md = gr.Markdown()
            with gr.Row():
                details = gr.JSON(label="card / configuration", open=True)
                metrics = gr.JSON(label="measurements (eval.json, or the card's)", open=True)

        listing = [table, chosen, to_verify]
        app.load(refresh, chosen, listing, api_name="recordings")
        app.load(card, None, [card_md, details, metrics], api_name="card")
        refresh_btn.click(refresh, chosen, listing, api_visibility="private")
        table.select(pick, None, chosen, api_visibility="private")
        chosen.change(show, chosen, [video, meta], api_name="recording")
        verify_btn.click(verify, to_verify, [verdict, report], api_name="verify")
        dream_btn.click(dream, [script, seed], [dream_video, plot, dream_summary], api_name="dream")
    return app


# ------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, StudioConfig(), helps={
        "recordings": "recordings folder",
        "checkpoint": "checkpoint name or folder",
        "host": "address to bind; this machine only unless told",
        "device": "for dreams (replays use the recorded one)",
        "max_dream_frames": "longest dream one request may ask for",
    })  # fmt: skip


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(StudioConfig, args)
    if cfg.host not in LOCAL_HOSTS:
        print(
            f"wm ui: warning: listening on {cfg.host}: anyone who can reach this machine can "
            "see the recordings and run the model",
            file=sys.stderr,
        )
    app = build_app(cfg)
    app.launch(
        server_name=cfg.host,
        server_port=cfg.port,
        share=False,
        inbrowser=False,
        ssr_mode=False,  # no Node server beside this one
        mcp_server=False,
        allowed_paths=[str(cfg.recordings.resolve())],  # the recordings' videos
    )
    return 0
