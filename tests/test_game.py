import math
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worldmodel.actions import KEYS, Action
from worldmodel.episode import Episode, find_episodes
from worldmodel.game import OBJECT_HALF, Game, GameConfig

FWD = Action(forward=True)
camera = st.floats(-1.0, 1.0, allow_nan=False)
actions = st.builds(Action, **{k: st.booleans() for k in KEYS}, yaw=camera, pitch=camera)
_games: dict[tuple[int, int], Game] = {}


def game(seed=0, size=32) -> Game:
    """A fresh-state game; worlds are cached because building one takes ~50 ms."""
    if (seed, size) not in _games:
        _games[(seed, size)] = Game(seed, size)
    g = _games[(seed, size)]
    g.reset()
    return g


def overlaps(g: Game) -> list:
    """Wall cells and objects that the player's box overlaps (should be none)."""
    x, y = g.position
    r, eps = g.config.radius, 1e-7
    boxes = [
        (cx, cy, cx + 1, cy + 1)
        for cy in range(max(0, int(y) - 2), int(y) + 3)
        for cx in range(max(0, int(x) - 2), int(x) + 3)
        if g.grid[cy, cx]
    ]
    boxes += [
        (ox - OBJECT_HALF, oy - OBJECT_HALF, ox + OBJECT_HALF, oy + OBJECT_HALF)
        for ox, oy, _ in g.objects
    ]
    return [
        b
        for b in boxes
        if x + r > b[0] + eps and x - r < b[2] - eps and y + r > b[1] + eps and y - r < b[3] - eps
    ]


def face_open(g: Game, steps: int = 6) -> None:
    """Turn (from the spawn) to a heading with `steps` free walking steps ahead."""
    start = g.state()
    for yaw in range(0, 60000, 1500):
        g.restore({**start, "yaw_units": yaw})
        blocked = False
        for _ in range(steps):
            g.step(FWD)
            blocked |= g.collided
        g.restore({**start, "yaw_units": yaw})
        if not blocked:
            return
    pytest.skip("no open heading at the spawn")


@pytest.mark.parametrize("size", [32, 64, 128])
def test_frames_are_uint8_square(size):
    g = game(0, size)
    for frame in (g.reset(), g.step(Action(forward=True, yaw=0.3)), g.step(Action())):
        assert frame.dtype == np.uint8 and frame.shape == (size, size, 3)
        assert frame.flags.c_contiguous
    assert frame.std() > 5  # a picture, not a flat colour


def test_same_seed_and_actions_give_same_frames():
    rng = np.random.default_rng(1)
    script = [
        Action(
            forward=bool(rng.random() < 0.7),
            right=bool(rng.random() < 0.2),
            jump=bool(rng.random() < 0.1),
            sprint=bool(rng.random() < 0.3),
            yaw=float(rng.uniform(-1, 1)),
            pitch=float(rng.uniform(-1, 1)),
        )
        for _ in range(60)
    ]
    a, b = Game(3, 48), Game(3, 48)
    assert np.array_equal(a.reset(), b.reset())
    for act in script:
        assert np.array_equal(a.step(act), b.step(act))
    assert a.position == b.position and a.heading == b.heading
    # reset returns to the very same start
    first = a.reset()
    assert np.array_equal(first, Game(3, 48).reset())


def test_seeds_give_different_worlds():
    worlds = [game(s) for s in range(4)]
    frames = [g.reset() for g in worlds]
    for i in range(4):
        for j in range(i + 1, 4):
            gi, gj = worlds[i].grid, worlds[j].grid
            assert gi.shape != gj.shape or not np.array_equal(gi, gj)
            assert not np.array_equal(frames[i], frames[j])
    # palettes differ too: the mean colours of the first frames are not all alike
    means = np.array([f.reshape(-1, 3).mean(0) for f in frames])
    assert np.ptp(means, axis=0).max() > 10


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_map_is_connected_and_spawn_is_free(seed):
    g = game(seed)
    blocked = g.grid > 0
    for ox, oy, _ in g.objects:
        blocked[int(oy), int(ox)] = True  # objects are solid
    n = blocked.shape[0]
    assert blocked[0].all() and blocked[-1].all() and blocked[:, 0].all() and blocked[:, -1].all()
    x, y = g.position
    assert not blocked[int(y), int(x)]
    seen, todo = {(int(x), int(y))}, deque([(int(x), int(y))])
    while todo:
        cx, cy = todo.popleft()
        for nx, ny in ((cx + 1, cy), (cx - 1, cy), (cx, cy + 1), (cx, cy - 1)):
            if 0 <= nx < n and 0 <= ny < n and not blocked[ny, nx] and (nx, ny) not in seen:
                seen.add((nx, ny))
                todo.append((nx, ny))
    assert len(seen) == int((~blocked).sum())
    assert 10 <= len(g.objects) <= 100


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 3), st.lists(actions, min_size=1, max_size=60))
def test_never_inside_walls_or_objects(seed, script):
    g = game(seed)
    for act in script:
        for _ in range(4):  # hold each input a few frames to reach the walls
            g.step(act)
            x, y = g.position
            assert g.grid[int(y), int(x)] == 0
            assert not overlaps(g), (g.position, overlaps(g))


def test_long_random_walk_keeps_clear_of_walls():
    g = game(5)
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(1500):
        g.step(
            Action(
                forward=True,
                sprint=True,
                left=bool(rng.random() < 0.3),
                yaw=float(rng.uniform(-0.3, 0.3)),
            )
        )
        hits += g.collided
        assert not overlaps(g)
    assert hits > 20  # it did push against walls and objects


def test_walking_into_a_wall_stops_and_sets_collided():
    g = game(0)
    r, quarter = g.config.radius, 60000 // 4  # heading units for 90 degrees
    walls = 0
    for seed in (0, 1, 2):
        for k in range(4):  # walk along +x, +y, -x, -y from the spawn
            g = game(seed)
            g.restore({**g.state(), "yaw_units": k * quarter})
            axis, sign = k % 2, 1 if k < 2 else -1
            start = g.position
            for _ in range(400):
                g.step(FWD)
                if g.collided:
                    break
            assert g.collided
            pos = g.position
            assert abs(pos[1 - axis] - start[1 - axis]) < 1e-9  # a straight push slides nowhere
            g.step(FWD)
            assert g.collided and g.position == pos
            edge = pos[axis] + sign * r  # the player's leading edge touches what stopped it
            if abs(edge - round(edge)) < 1e-9:
                cell = [int(pos[0]), int(pos[1])]
                cell[axis] = round(edge) - (sign < 0)
                assert g.grid[cell[1], cell[0]] > 0
                walls += 1
            else:
                assert any(abs(o[axis] - sign * OBJECT_HALF - edge) < 1e-9 for o in g.objects)
            g.step(Action())
            assert not g.collided
    assert walls >= 4


@pytest.mark.parametrize("n", [1, 5, 17, 45])
@pytest.mark.parametrize("yaw", [1.0, 0.37, 0.0123])
def test_turn_left_then_right_is_exact(n, yaw):
    g = game(2)
    for _ in range(3):
        g.step(Action(forward=True, yaw=0.2))
    before = g.step(Action())
    for _ in range(n):
        g.step(Action(yaw=-yaw))
    assert n * yaw < 0.01 or not np.array_equal(g.step(Action()), before)
    for _ in range(n):
        after = g.step(Action(yaw=yaw))
    assert np.array_equal(after, before)


def test_full_turn_returns_the_same_frame():
    g = game(1)
    before = g.reset()
    turns = round(360 / g.config.max_turn_deg)
    for _ in range(turns):
        frame = g.step(Action(yaw=1.0))
    assert np.array_equal(frame, before)


def test_positive_yaw_turns_right():
    g = game(0)
    h = g.heading
    g.step(Action(yaw=0.5))
    assert (g.heading - h) % (2 * math.pi) == pytest.approx(math.radians(g.config.max_turn_deg) / 2)


@pytest.mark.parametrize("n", [1, 4, 9])
def test_pitch_up_then_down_is_exact(n):
    g = game(3)
    before = g.step(Action())
    for _ in range(n):
        up = g.step(Action(pitch=0.8))
    assert g.pitch > 0 and not np.array_equal(up, before)
    for _ in range(n):
        after = g.step(Action(pitch=-0.8))
    assert np.array_equal(after, before) and g.pitch == 0


def test_pitch_is_clamped():
    g = game(3)
    for _ in range(200):
        g.step(Action(pitch=1.0))
    unit = g.config.pitch_speed / g.config.input_steps
    assert g.config.max_pitch - unit < g.pitch <= g.config.max_pitch
    for _ in range(400):
        g.step(Action(pitch=-1.0))
    assert -g.config.max_pitch <= g.pitch < -g.config.max_pitch + unit


def test_forward_changes_the_frame_and_back_returns():
    g = game(4, 64)
    face_open(g)
    start, before = g.position, g.step(Action())
    for _ in range(5):
        moved = g.step(FWD)
    assert not np.array_equal(moved, before)
    assert math.dist(g.position, start) == pytest.approx(5 * g.config.move_speed)
    for _ in range(5):
        back = g.step(Action(back=True))
    assert math.dist(g.position, start) < 1e-9
    assert np.mean(np.any(back != before, axis=-1)) < 0.02  # float drift may flip a few pixels


def test_jump_goes_up_and_lands():
    g = game(0)
    cfg = g.config
    ground = g.step(Action())
    assert g.height == cfg.eye_height and g.on_ground
    heights, frames = [], []
    for _ in range(cfg.jump_frames):
        frames.append(g.step(Action(jump=True)))  # held: no second jump starts mid-air
        heights.append(g.height)
    peak = int(np.argmax(heights))
    assert 0 < peak < cfg.jump_frames - 1
    assert heights[peak] == pytest.approx(cfg.eye_height + cfg.jump_height)
    assert np.all(np.diff(heights[: peak + 1]) > 0) and np.all(np.diff(heights[peak:]) < 0)
    assert heights[-1] == cfg.eye_height and g.on_ground
    assert not np.array_equal(frames[peak], ground)
    g.step(Action())
    assert g.height == cfg.eye_height  # it lands and stays without the key


def test_sprint_covers_more_ground():
    g = game(4)
    face_open(g, steps=10)
    start = g.state()
    for _ in range(5):
        g.step(FWD)
    walked = math.dist(g.position, (start["x"], start["y"]))
    g.restore(start)
    for _ in range(5):
        g.step(Action(forward=True, sprint=True))
    sprinted = math.dist(g.position, (start["x"], start["y"]))
    assert sprinted > 1.5 * walked > 0


def test_diagonal_is_no_faster():
    g = game(4)
    face_open(g, steps=10)
    x, y = g.position
    g.step(Action(forward=True, right=True))
    if not g.collided:
        assert math.dist(g.position, (x, y)) == pytest.approx(g.config.move_speed)


def test_restore_replays_exactly():
    g = game(6)
    for _ in range(7):
        g.step(Action(forward=True, yaw=0.4, jump=True))
    state, frame = g.state(), g.step(Action())
    later = [g.step(Action(right=True, pitch=0.3)) for _ in range(5)]
    g2 = Game(6, 32)
    g2.restore(state)
    assert np.array_equal(g2.step(Action()), frame)
    assert all(np.array_equal(g2.step(Action(right=True, pitch=0.3)), f) for f in later)


@pytest.mark.parametrize(
    "args, error, words",
    [
        ((1.5, 64), TypeError, "seed"),
        (("0", 64), TypeError, "seed"),
        ((True, 64), TypeError, "seed"),
        ((-1, 64), ValueError, "seed"),
        ((0, 64.0), TypeError, "size"),
        ((0, 8), ValueError, "size"),
        ((0, 15), ValueError, "size"),
        ((0, "64"), TypeError, "size"),
    ],
)
def test_bad_arguments_are_clear_errors(args, error, words):
    with pytest.raises(error, match=words):
        Game(*args)


def test_bad_step_and_config_are_clear_errors():
    g = game(0)
    for bad in ("forward", None, {"forward": True}, np.zeros(8)):
        with pytest.raises(TypeError, match="Action"):
            g.step(bad)
    with pytest.raises(TypeError, match="GameConfig"):
        Game(0, 32, config={"move_speed": 1})
    with pytest.raises(ValueError, match="radius"):
        GameConfig(radius=0.6)


def test_game_window_records_an_episode(tmp_path, monkeypatch):
    pytest.importorskip("pygame")
    from worldmodel import cli

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    assert (
        cli.main(
            [
                "game",
                "--size",
                "32",
                "--seed",
                "2",
                "--frames",
                "6",
                "--record",
                "--recordings",
                str(tmp_path),
            ]
        )
        == 0
    )
    (path,) = find_episodes(tmp_path)
    ep = Episode(path)
    assert len(ep) == 7  # the first frame, then one per step
    assert ep.meta["seed"] == 2 and ep.meta["fps"] == Game.fps and ep.meta["source"] == "game"
    assert ep.meta["policy"] == "human"
    assert ep.meta["complete"] and np.all(ep.actions == 0)
    g = Game(2, 32)
    assert np.array_equal(g.restore(ep.meta["start"]), ep.frames[0])
    for t in range(1, len(ep)):
        assert np.array_equal(g.step(Action.from_vector(ep.actions[t])), ep.frames[t])


def test_wall_depths_facing_a_flat_wall():
    """Half a cell in front of a flat wall face, every ray meets it at depth 0.5 (the depth
    is measured along the view direction, so a flat wall square-on is the same everywhere)."""
    g = game(0)
    free = g.grid == 0
    cy, cx = next((y, x) for y, x in np.argwhere(free)
                  if not free[y, x + 1] and free[y - 1, x] and free[y + 1, x])
    g.restore({"x": cx + 0.5, "y": cy + 0.5, "yaw_units": 0, "pitch_units": 0, "jump_t": 0})
    assert np.allclose(g.wall_depths(16), 0.5)
    # a quarter turn away (facing +y is heading pi/2) the wall is no longer straight ahead
    g.restore({"x": cx + 0.5, "y": cy + 0.5, "yaw_units": 15000, "pitch_units": 0, "jump_t": 0})
    assert np.median(g.wall_depths(16)) > 0.5
