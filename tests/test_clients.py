"""The pygame client (headless, against a real server and in-process) and the gradio studio's
functions, on a tiny untrained checkpoint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from app import pygame_client, studio
from app.recording import list_recordings
from app.replay import replay
from tests.play_helpers import (
    frames,
    is_frame,
    is_type,
    open_ws,
    recv_until,
    send,
    start_server,
    wait_for,
    ws_url,
)
from worldmodel import cli
from worldmodel.actions import FIELDS
from worldmodel.episode import Episode
from worldmodel.session import WorldSession

# as `wm play` sets them: on two busy cores, more threads make every step wait
pytestmark = pytest.mark.usefixtures("serve_threads")


@pytest.fixture(scope="module")
def srv(checkpoint, tmp_path_factory):
    s = start_server(tmp_path_factory.mktemp("srv") / "recordings", checkpoint)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def recording(srv):
    """(recordings folder, name) of a dream recording the server made, with some input."""
    with open_ws(srv, seed=7) as ws:
        frames(ws, 2)
        send(ws, type="record", on=True)
        recv_until(ws, lambda m: is_type("state")(m) and m["recording"])
        send(ws, type="input", seq=1, keys=["forward"], dx=20.0)
        recv_until(ws, lambda m: is_frame(m) and m[0]["seq"] >= 1)
        frames(ws, 2)
        send(ws, type="record", on=False)
        saved, _ = recv_until(ws, is_type("saved"))
    return srv.server.cfg.recordings, saved["name"]


def sessions(srv) -> int:
    return srv.server.pool.in_use


def pygame_args(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    pygame_client.add_arguments(parser)
    return parser.parse_args(list(argv))


# ---------------------------------------------------------------- pygame client


def test_pygame_client_plays_against_the_server(srv, tmp_path):
    root = srv.server.cfg.recordings
    before = {r["name"] for r in list_recordings(root)}
    shot = tmp_path / "window.png"
    args = pygame_args(
        "--url",
        ws_url(srv),
        "--seed",
        "5",
        "--frames",
        "12",
        "--record",
        "--script",
        "forward+sprint:4,yaw=0.5:4",
        "--screenshot",
        str(shot),
    )
    assert pygame_client.main(args) == 0
    wait_for(lambda: sessions(srv) == 0, what="the session to end")  # it left cleanly

    new = [r for r in list_recordings(root) if r["name"] not in before]
    assert len(new) == 1 and new[0]["source"] == "dream"
    rec = root / new[0]["name"]
    wait_for(lambda: Episode(rec).meta.get("complete"), what="the recording to close")
    ep = Episode(rec)
    assert ep.meta["seed"] == 5 and len(ep) >= 5
    # the scripted keys and turns reached the server's actions
    assert ep.actions[:, FIELDS.index("forward")].any()
    assert ep.actions[:, FIELDS.index("sprint")].any()
    assert (ep.actions[:, FIELDS.index("yaw")] > 0).any()
    window = Image.open(shot)
    size = srv.server.pool.first.size
    side = size * max(1, pygame_client.WINDOW // size)
    assert window.size == (side, pygame_client.BAR + side + pygame_client.FOOT)


def test_pygame_client_local_records_what_replays(checkpoint, tmp_path):
    root = tmp_path / "recordings"
    code = cli.main(
        [
            "pygame",
            "--local",
            "--checkpoint",
            str(checkpoint),
            "--recordings",
            str(root),
            "--frames",
            "8",
            "--record",
            "--seed",
            "4",
            "--script",
            "forward:2,yaw=-0.5:2",
        ]
    )
    assert code == 0
    (rec,) = list_recordings(root)
    assert rec["complete"] and rec["source"] == "dream" and rec["frames"] >= 6
    result = replay(root / rec["name"])
    assert result.ok and result.frames == rec["frames"]


def test_pygame_client_exits_when_the_server_cannot_be_reached(capsys):
    args = pygame_args("--url", "ws://127.0.0.1:1/ws", "--frames", "3")
    assert pygame_client.main(args) == 1
    assert "wm pygame:" in capsys.readouterr().err


def test_pygame_client_url_carries_token_and_seed():
    url = pygame_client.with_query("ws://127.0.0.1:8765/ws", token="t k", seed=3)
    assert url == "ws://127.0.0.1:8765/ws?token=t+k&seed=3"
    assert pygame_client.with_query("ws://h/ws?seed=1", token=None) == "ws://h/ws?seed=1"


# ---------------------------------------------------------------- studio


def test_studio_builds_and_browses_recordings(recording, tmp_path):
    root, name = recording
    cfg = studio.StudioConfig(recordings=root)
    assert cfg.host == "127.0.0.1"
    assert isinstance(studio.build_app(cfg), studio.gr.Blocks)
    rows = studio.recording_rows(root)
    assert name in [row[0] for row in rows]
    row = next(r for r in rows if r[0] == name)
    assert dict(zip(studio.RECORDING_COLUMNS, row))["complete"] is True
    video, meta = studio.recording_view(root, name, tmp_path)
    assert video.endswith("video.mp4") and meta["source"] == "dream" and meta["complete"]
    with pytest.raises(ValueError, match="no recording"):
        studio.recording_view(root, "../../etc", tmp_path)


def test_studio_replay_verifies_a_recording(recording, checkpoint, tmp_path):
    report = studio.verify_recording(*recording)
    assert report["ok"] and report["frames"] >= 3 and report["matching"] == report["frames"]
    assert report["max_abs_diff"] == 0
    assert "match exactly" in studio.verify_text(report)
    # the checkpoint has moved since: the studio's own one is tried (its hash is checked)
    root, name = recording
    moved = shutil.copytree(root / name, tmp_path / name)
    meta = json.loads((moved / "meta.json").read_text())
    meta["checkpoint"]["path"] = str(tmp_path / "gone")
    (moved / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError):
        studio.verify_recording(tmp_path, name)
    assert studio.verify_recording(tmp_path, name, fallback=str(checkpoint))["ok"]


def test_studio_dream_next_to_the_game(checkpoint):
    world = WorldSession.from_checkpoint(checkpoint)
    d = studio.dream_clip(world, "forward:3,yaw=0.5:2", seed=1)
    s = world.size
    assert d.real.shape == d.dream.shape == (5, s, s, 3) and d.dream.dtype == np.uint8
    assert d.psnr.shape == d.psnr_repeat_last.shape == (5,) and np.isfinite(d.psnr).all()
    assert d.context.shape == (world.context_length, s, s, 3)
    assert d.side_by_side().shape == (world.context_length + 5, s, 2 * s, 3)
    assert len(studio.psnr_table(d)) == 10 and "mean PSNR" in d.summary()
    again = studio.dream_clip(world, "forward:3,yaw=0.5:2", seed=1)
    assert np.array_equal(d.dream, again.dream)  # seeded
    for bad in ("", "fly:2", "forward:20"):
        with pytest.raises(ValueError):
            studio.dream_clip(world, bad, seed=1, max_frames=10)


def test_studio_model_card(checkpoint, tmp_path):
    folder = shutil.copytree(checkpoint, tmp_path / "model")
    card = studio.model_card(folder)
    assert "student" in card.markdown and card.details["model"]["dim"] > 0
    assert "wm eval" in card.metrics["note"]  # where the measurements would come from
    (folder / "card.md").write_text("# Tiny world\n\nRandom weights, for tests.\n")
    (folder / "card.json").write_text(json.dumps({"name": "tiny", "fps": 20}))
    (folder / "eval.json").write_text(json.dumps({"psnr_1": 12.5}))
    card = studio.model_card(folder)
    assert card.markdown.startswith("# Tiny world") and card.details == {"name": "tiny", "fps": 20}
    assert card.metrics == {"psnr_1": 12.5}
    with pytest.raises(FileNotFoundError):
        studio.model_card(tmp_path / "nothing")
    # the shipped default has no eval.json: its card's measurements are shown
    shipped = studio.model_card("default")
    assert shipped.metrics["eval"]["psnr"]["student"] and "wm eval" in shipped.metrics["eval_command"]


def test_pygame_side_by_side_fits_the_display():
    """The dummy display is 1024 x 768: two 512 px views and the gap would run off it."""
    import pygame

    pygame.display.init()
    pygame.font.init()
    try:
        width, height = pygame.display.get_desktop_sizes()[0]
        win = pygame_client.Window(link=None, scale=None, script=None)
        win._on_message({"type": "hello", "size": 64})
        assert win.side == 512
        win._on_message({"type": "state", "side_by_side": True, "recording": None})
        w, h = win.screen.get_size()
        assert w <= width and h <= height and win.side % 64 == 0 and win.side >= 384
        win._on_message({"type": "state", "side_by_side": False, "recording": None})
        assert win.side == 512
    finally:
        pygame.quit()
    assert pygame_client.fit_scale(64, 2, 8, (1920, 1080)) == 8
    assert pygame_client.fit_scale(64, 2, 8, (1024, 768)) == 7
    assert pygame_client.fit_scale(64, 1, 8, (800, 600)) == 7  # 50 + 448 + 64 <= 600
