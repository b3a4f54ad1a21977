"""Exact replay with the shipped default, the model people play (a random tiny checkpoint
cannot show rounding that depends on memory layout or thread count): recordings made
through the real server with a websocket client, and through `wm pygame --local`'s link,
replay frame for frame, also when the recording starts after frames of play."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app.config import ServeConfig
from app.play import load_world
from app.pygame_client import LocalLink
from app.replay import replay
from tests.play_helpers import (
    TIMEOUT,
    is_frame,
    is_type,
    open_ws,
    recv_until,
    send,
    start_server,
    wait_for,
)
from worldmodel import cli
from worldmodel.actions import Action
from worldmodel.episode import Episode
from worldmodel.game import Game
from worldmodel.session import ASSETS, WorldSession
from worldmodel.tokenizer import frames_to_tensor

DEFAULT = ASSETS / "default"

pytestmark = [
    pytest.mark.skipif(not (DEFAULT / "student.json").is_file(),
                       reason="no default checkpoint is shipped"),
    pytest.mark.usefixtures("serve_threads"),  # as `wm play` sets them
    pytest.mark.slow,
]

# what a player does between two frames: walk, turn with the mouse, strafe, jump
MOVES = [(["forward"], 9.0), (["forward", "sprint"], 0.0), (["left"], -14.0), (["jump"], 3.0)]


def planar_views(frames: np.ndarray) -> np.ndarray:
    """The same frames as views of channel planes (strides (S*S*3, S, 1, S*S)): the layout
    of frames that come out of the tokenizer's decoder without a copy."""
    planes = np.ascontiguousarray(frames.transpose(0, 3, 1, 2))
    return planes.transpose(0, 2, 3, 1)


def test_the_default_does_not_depend_on_the_memory_layout_of_its_inputs():
    session = WorldSession.from_checkpoint("default")
    game = Game(7, session.size)
    context = np.stack([game.reset()] + [game.step(Action(forward=True)) for _ in range(3)])
    strided = planar_views(context)
    assert np.array_equal(strided, context) and not strided.flags.c_contiguous
    runs = []
    for frames in (context, strided):
        session.reset(frames, seed=2)
        runs.append(np.stack([session.step(Action(forward=True, yaw=0.3 * (i % 3 - 1)))
                              for i in range(12)]))
    np.testing.assert_array_equal(runs[0], runs[1])

    tok = session.tokenizer
    x = frames_to_tensor(torch.from_numpy(context))  # channels-last strides
    with torch.no_grad():
        z = tok.encode(x)
        assert torch.equal(tok.encode(x.contiguous()), z)
        zt = z.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, other strides
        assert torch.equal(tok.decode(zt), tok.decode(z))


def play(ws, frames: int, seq: int) -> int:
    """Send input for `frames` frames, each time waiting for the frame that carries it."""
    for i in range(frames):
        keys, dx = MOVES[i % len(MOVES)]
        seq += 1
        send(ws, type="input", seq=seq, keys=keys, dx=dx)
        recv_until(ws, lambda m, seq=seq: is_frame(m) and m[0]["seq"] >= seq)
    return seq


def record(ws, frames: int, seq: int) -> tuple[str, int]:
    send(ws, type="record", on=True)
    recv_until(ws, lambda m: is_type("state")(m) and m["recording"])
    seq = play(ws, frames, seq)
    send(ws, type="record", on=False)
    saved, _ = recv_until(ws, is_type("saved"))
    return saved["name"], seq


def assert_replays(path) -> None:
    result = replay(path)
    assert result.ok, result
    assert result.frames == len(Episode(path)) >= 10


def test_server_recordings_of_the_default_replay_exactly(tmp_path):
    root = tmp_path / "recordings"
    srv = start_server(root, DEFAULT)
    try:
        with open_ws(srv, seed=11) as ws:
            json.loads(ws.recv(timeout=TIMEOUT))  # hello
            seq = play(ws, 1, 0)
            first, seq = record(ws, 12, seq)  # from the first frames
            seq = play(ws, 20, seq)
            later, seq = record(ws, 14, seq)  # after frames of play
    finally:
        srv.stop()
    assert Episode(root / later).meta["start_frame"] >= 20
    for name in (first, later):
        assert_replays(root / name)

    # the thread count the recording was made with, whatever this process runs with now
    recorded = Episode(root / later).meta["threads"]
    before = torch.get_num_threads()
    torch.set_num_threads(recorded + 2)
    try:
        result = replay(root / later)
        assert torch.get_num_threads() == recorded + 2  # and put back afterwards
    finally:
        torch.set_num_threads(before)
    assert result.ok and result.threads == result.recorded_threads == recorded


def test_pygame_local_recordings_of_the_default_replay_exactly(tmp_path):
    root = tmp_path / "cli"
    code = cli.main(["pygame", "--local", "--checkpoint", "default", "--recordings", str(root),
                     "--frames", "14", "--record", "--seed", "4",
                     "--script", "forward:3,yaw=0.5:3,left+jump:2,forward+sprint:3"])
    assert code == 0
    (rec,) = list(root.iterdir())
    assert_replays(rec)

    # the same link, with a recording started after frames of play
    root = tmp_path / "link"
    cfg = ServeConfig(checkpoint="default", recordings=root, max_sessions=1)
    link = LocalLink(load_world(cfg)[1], cfg, seed=6)
    shown = 0

    def frames_with(n: int) -> None:
        nonlocal shown
        for i in range(n):
            keys, dx = MOVES[i % len(MOVES)]
            link.send("input", seq=shown + 1, keys=keys, dx=dx)
            wait_for(lambda n=shown: any(h["seq"] > n for h, _ in link.frames().values()),
                     what="a frame with the input")
            shown += 1

    try:
        frames_with(18)
        link.send("record", on=True)
        wait_message(link, lambda m: m["type"] == "state" and m["recording"])
        frames_with(12)
        link.send("record", on=False)
        name = wait_message(link, lambda m: m["type"] == "saved")["name"]
    finally:
        link.close()
    assert Episode(root / name).meta["start_frame"] >= 18
    assert_replays(root / name)


def wait_message(link: LocalLink, want) -> dict:
    seen: list[dict] = []

    def got():
        seen.extend(link.messages())
        assert not [m for m in seen if m["type"] == "error"], seen
        return next((m for m in seen if want(m)), None)

    return wait_for(got, what="a message")


def test_replay_writes_the_cache_as_the_recording_did(tmp_path):
    """A recording says whether each frame's cache write rode with the next frame's first
    step; one made before it said so, with the default's sinks, wrote it in a pass of its
    own, and so does its replay."""
    from app.replay import _session

    root = tmp_path / "cli"
    # frames shown before the record request lands are not recorded: 14 leave room for them
    code = cli.main(["pygame", "--local", "--checkpoint", "default", "--recordings", str(root),
                     "--frames", "14", "--record", "--seed", "5", "--script", "forward:6,yaw=0.5:8"])
    assert code == 0
    (rec,) = list(root.iterdir())
    meta = json.loads((rec / "meta.json").read_text())
    assert meta["sampling"]["fuse_write"] is True
    assert_replays(rec)
    for recorded, expected in ((False, False), (True, True), (None, False)):
        meta["sampling"].pop("fuse_write", None)
        if recorded is not None:
            meta["sampling"]["fuse_write"] = recorded
        (rec / "meta.json").write_text(json.dumps(meta))
        assert _session(Episode(rec), None, None).sampler.fuse_write is expected
