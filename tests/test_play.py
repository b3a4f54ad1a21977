"""The play session without sockets (app.play), and the flags of the app's commands."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pytest

from app import game_window, protocol, pygame_client, replay, server, studio
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


def test_client_replay_and_game_flags_build_their_configs():
    cfg = pygame_client.config_from_args(pygame_client.PygameConfig, parse(
        pygame_client.add_arguments, "--local", "--seed", "4", "--frames", "3"))
    assert cfg == pygame_client.PygameConfig(local=True, seed=4, frames=3)
    args = parse(replay.add_arguments, "rec", "--no-check", "--export", "out.gif")
    cfg = replay.config_from_args(replay.ReplayConfig, args)
    assert cfg == replay.ReplayConfig(export=Path("out.gif"), check=False)
    assert args.recording == Path("rec")
    cfg = game_window.config_from_args(game_window.GameWindowConfig, parse(
        game_window.add_arguments, "--size", "32", "--record"))
    assert cfg == game_window.GameWindowConfig(size=32, record=True)


def test_a_checkpoint_declares_the_worlds_it_was_trained_on(tmp_path):
    import json

    from worldmodel.session import WorldSession, make_random_checkpoint

    folder = make_random_checkpoint(tmp_path / "tiny")
    assert WorldSession.from_checkpoint(folder).worlds is None  # any procedural world
    meta = json.loads((folder / "student.json").read_text())
    (folder / "student.json").write_text(json.dumps(meta | {"worlds": [5, 11]}))
    assert WorldSession.from_checkpoint(folder).worlds == [5, 11]


def test_a_new_world_is_one_of_the_models_own_when_it_declares_them(tmp_path):
    class FixedWorlds(GameSession):
        worlds = [5, 11]

    cfg = ServeConfig(game=True, recordings=tmp_path)
    seeds = set()
    for _ in range(12):
        play = Play(FixedWorlds(32), cfg, raw)
        play.start()
        seeds.add(play.seed)
        play.control(protocol.Reset(seed=None))
        seeds.add(play.seed)
    assert seeds == {5, 11}
    play.control(protocol.Reset(seed=42))  # a typed seed is still taken as it is
    assert play.seed == 42


def video_times(path) -> list[float]:
    import av

    with av.open(str(path)) as container:
        return [float(f.time) for f in container.decode(video=0)]


def test_a_recording_plays_in_real_time_at_the_rate_it_was_made(tmp_path):
    """Frames made at 10 per second by a 20 fps world (and two closer than 1 / 20 s): the
    video and the listing keep their times."""
    from app.recording import Recording, list_recordings
    from app.replay import add_arguments, main
    from worldmodel.video import read_video

    rec = Recording(tmp_path, size=16, fps=20, source="game", seed=0)
    for i in range(7):
        rec.append(np.full((16, 16, 3), 30 * i, np.uint8), Action(), ms=1.0)
        time.sleep(0.01 if i == 0 else 0.1)
    rec.close()
    times = video_times(rec.path / "video.mp4")
    assert len(times) == 7 and times[0] == 0.0 and 0.005 < times[1] < 0.04
    assert 0.5 <= times[-1] < 0.6  # at 20 fps it would be 0.3
    (listed,) = list_recordings(tmp_path)
    assert 0.55 <= listed["duration_s"] < 0.72  # not 7 / 20 = 0.35
    # the export plays as the recording did
    out = tmp_path / "export.mp4"
    assert main(parse(add_arguments, str(rec.path), "--export", str(out), "--no-check")) == 0
    assert video_times(out) == pytest.approx(times, abs=0.002)
    assert len(read_video(out)) == 7


def test_resync_restarts_the_dream_from_the_game_and_replays_exactly(checkpoint, tmp_path):
    from app.replay import read_actions_exact, replay
    from worldmodel.actions import NOOP
    from worldmodel.session import WorldSession

    world = WorldSession.from_checkpoint(checkpoint)
    resets = []
    reset = world.reset
    world.reset = lambda f, a=None, seed=0: (resets.append((f, a, seed)), reset(f, a, seed))[1]
    cfg = ServeConfig(checkpoint=str(checkpoint), recordings=tmp_path, record_video=False)
    play = Play(world, cfg, raw, seed=5)
    play.start()
    (error,) = play.control(protocol.Resync()).messages
    assert error["code"] == "unsupported"  # the game is not on screen
    play.control(protocol.SideBySide(on=True))
    play.control(protocol.Record(on=True))
    for move in [inp(1, "forward"), inp(2, "forward", dx=30.0), inp(3, "left")]:
        play.add_input(move)
        play.tick()
    reply = play.control(protocol.Resync())
    for move in [inp(4, "right", dx=-20.0), inp(5, "forward"), inp(6)]:
        play.add_input(move)
        play.tick()
    name = play.close()["name"]

    # the real game, from scratch: its reset frame, context frames of no input, the moves
    actions = read_actions_exact(tmp_path / name, 6)
    game = Game(5, world.size)
    k = world.context_length
    played = [game.reset()] + [game.step(NOOP) for _ in range(k - 1)]
    played += [game.step(a) for a in actions[:3]]
    frames, context_actions, seed = resets[-1]
    np.testing.assert_array_equal(frames, np.stack(played[-k:]))
    assert context_actions == ([NOOP] * k + actions[:3])[-k:] and seed == 5
    (dream, _), (shown_game, _) = [(f, h) for h, f in reply.frames]
    np.testing.assert_array_equal(dream, played[-1])  # the dream restarts where the game is
    np.testing.assert_array_equal(shown_game, played[-1])
    assert Episode(tmp_path / name).meta["resyncs"] == 1
    assert replay(tmp_path / name).ok


class ThrottledGame(GameSession):
    """The real game, made to take `delay` seconds a step."""

    delay = 0.0

    def step(self, action):
        time.sleep(self.delay)
        return super().step(action)


def test_play_says_when_it_cannot_keep_up(tmp_path, caplog):
    world = ThrottledGame(32)
    play = Play(world, ServeConfig(game=True, recordings=tmp_path), raw, seed=1)
    play.start()
    period = 1 / play.fps
    world.delay = period * 1.6
    with caplog.at_level("WARNING", logger="wm.play"):
        notices = []
        for _ in range(round(play.fps) + 2):
            play.tick()
            notices += play.take_messages()
    assert len(notices) == 1 and notices[0]["type"] == "slow" and notices[0]["on"]
    assert notices[0]["target_fps"] == play.fps
    assert play.fps / 1.6 * 0.8 < notices[0]["fps"] < play.fps / 1.6 * 1.05
    world.delay = 0.0
    for _ in range(round(play.fps * 1.5)):  # faster than the target: the pacer caps it
        play.tick()
        notices += play.take_messages()
        time.sleep(period * 0.8)
    assert [n["on"] for n in notices] == [True, False] and not play.slow
    assert sum("below the target" in r.message for r in caplog.records) == 1
