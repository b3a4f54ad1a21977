"""The play session without sockets (app.play), and the flags of the app's commands."""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytest

from app import protocol, server, studio
from app.config import ServeConfig
from app.play import GameSession, Pacer, Play
from worldmodel.actions import Action
from worldmodel.episode import Episode
from worldmodel.game import Game


def raw(frame, header):
    return header, frame


def game_play(tmp_path, **cfg) -> Play:
    return Play(GameSession(32), ServeConfig(game=True, recordings=tmp_path, **cfg), raw, seed=3)


def inp(seq: int, *keys: str, dx: float = 0.0) -> protocol.Input:
    return protocol.Input(seq=seq, keys=frozenset(keys), dx=dx, dy=0.0)


def test_play_steps_the_world_with_the_input_gathered_since_the_last_frame(tmp_path):
    play = game_play(tmp_path)
    ((header, first),) = play.start()
    game = Game(3, 32)
    assert np.array_equal(first, game.reset()) and header["frame"] == 0
    play.add_input(inp(1, "forward"))
    play.add_input(inp(2, "forward", "jump", dx=30.0))  # a tap between frames still counts
    ((header, frame),) = play.tick()
    assert header["seq"] == 2 and header["frame"] == 1
    expected = game.step(Action(forward=True, jump=True, yaw=30.0 / play.cfg.mouse_px_per_unit))
    assert np.array_equal(frame, expected)
    assert play.state() == {"type": "state", "seed": 3, "paused": False, "side_by_side": False,
                            "recording": None, "frame": 1}


def test_play_controls_pause_record_reset_and_side_by_side(tmp_path):
    play = game_play(tmp_path)
    play.start()
    reply = play.control(protocol.Pause(on=True))
    assert reply.frames is None and reply.messages[-1]["paused"] and play.paused
    play.add_input(inp(1, "forward"))  # ignored while paused
    play.control(protocol.Pause(on=False))
    assert play.inputs.take()[0] == protocol.InputAccumulator(60, 0.5).take()[0]

    state = play.control(protocol.Record(on=True)).messages[-1]
    name = state["recording"]
    assert name and play.tick()[0][0]["recording"]
    saved, state = play.control(protocol.Reset(seed=9)).messages  # a new world ends it
    assert saved == {"type": "saved", "name": name, "frames": 2}
    assert state["seed"] == 9 and state["recording"] is None and state["frame"] == 0
    assert Episode(tmp_path / name).meta["complete"]

    (error,) = play.control(protocol.SideBySide(on=True)).messages
    assert error["code"] == "unsupported" and not play.side_by_side  # the game has no dream
    with pytest.raises(TypeError):
        play.control(inp(1))
    assert play.close() is None


def test_pacer_caps_the_rate_and_does_not_burst_after_a_stall():
    pacer = Pacer(fps=10)
    pacer.ticked()
    assert 0.09 < pacer.wait() <= 0.1
    pacer.deadline = time.monotonic() - 5  # a step that took five seconds
    pacer.ticked()
    assert pacer.wait() == 0.0  # the next frame is due now,
    pacer.ticked()
    assert 0.09 < pacer.wait() <= 0.1  # and the one after a period later: no catching up


def parse(add_arguments, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_play_flags_build_the_serve_config():
    cfg = server.config_from_args(ServeConfig, parse(server.add_arguments))
    assert cfg == ServeConfig()
    cfg = server.config_from_args(ServeConfig, parse(
        server.add_arguments, "--fps", "12.5", "--allow-origin", "http://a", "--allow-origin",
        "http://b", "--device", "cuda", "--no-record-video", "--token", "t"))
    assert cfg.fps == 12.5 and cfg.allow_origin == ("http://a", "http://b")
    assert cfg.max_sessions is None  # measured by load_world, not fixed by the flag's default
    assert not cfg.record_video and cfg.token == "t"
    ui = studio.config_from_args(studio.StudioConfig, parse(studio.add_arguments, "--port", "1"))
    assert ui == studio.StudioConfig(port=1)
