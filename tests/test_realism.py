"""The realism measure, the probes and the strips on small cases."""

from __future__ import annotations

import numpy as np
import pytest

from distill.probes import mse, play, psnr_of_mse
from distill.realism import RealismConfig, RealismJudge, box_blur, controls, realism, standable
from distill.strips import save_strip, strip_indices
from worldmodel.game import Game


def walked(seen: bool):
    """The game walked in world 1,000,002 at 64 px, the size the shipped default plays (where a
    blur a sixteenth of the side wide is 4 px); its judge, a bank of views around its own
    poses; and the game frames' distances to that bank."""
    ep = play(1_000_002, 64, 120, "mixed", 1, seen=seen)
    judge = RealismJudge.around(ep.world, 64, ep.states, RealismConfig(world_views=64))
    return ep, judge, judge.distance(ep.frames)


@pytest.fixture(scope="module")
def unseen_walk():
    return walked(seen=False)


def test_real_frames_rank_above_every_degenerate_control(unseen_walk):
    # the frames scored are other frames than the bank's, never identical; the second walk
    # is another start with another policy seed
    for ep, judge, d_game in (unseen_walk, walked(seen=True)):
        scores = {n: realism(judge.distance(f), d_game) for n, f in controls(ep.frames).items()}
        assert realism(d_game, d_game) == 1.0
        assert max(scores.values()) < 0.9, scores  # each control clearly below the game


def test_blur_lowers_realism_the_wider_it_is(unseen_walk):
    # a dream that keeps the right place but loses its detail is not as real as the game: the
    # gradient features are squared, so spreading an edge over k pixels divides its energy by k
    ep, judge, d_game = unseen_walk
    scores = [realism(judge.distance(box_blur(ep.frames, k)), d_game) for k in (2, 4, 8)]
    assert scores[0] > scores[1] > scores[2], scores
    assert scores[1] < 0.55 and scores[2] < 0.35, scores  # absolute gradients: 0.65 and 0.37


def test_controls_are_what_they_say():
    frames = play(1_000_003, 32, 3, "stand", 1, seen=False).frames
    c = controls(frames)
    assert (c["flat"] == c["flat"][:, :1, :1]).all()  # one colour per frame
    assert (c["tiled"][:, :8, :8] == c["tiled"][:, 8:16, 8:16]).all()  # a repeating tile
    assert sorted(c["shuffled"].reshape(-1, 3).tolist()) == sorted(frames.reshape(-1, 3).tolist())
    assert not (c["shuffled"] == frames).all()
    b = c["blurred"].astype(int)  # a 2 px box at 32 px: each pixel the mean of a 2 x 2 block
    x = frames.astype(int)
    assert np.abs(b[:, 1:, 1:] - (x[:, :-1, :-1] + x[:, :-1, 1:] + x[:, 1:, :-1] + x[:, 1:, 1:]) / 4).max() <= 0.5


def test_bank_views_stand_where_a_player_can():
    game = Game(5, 32)
    r = game.config.radius
    assert standable(game, *game.position)
    cy, cx = next((y, x) for y, x in np.argwhere(game.grid == 0) if game.grid[y, x - 1] != 0)
    assert standable(game, cx + 0.5, cy + 0.5)
    assert not standable(game, cx + r / 2, cy + 0.5)  # nearer the wall on its left than r


def test_psnr_mean_is_over_mse():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1] = 255  # one frame all wrong (MSE 1), one exact (MSE 0)
    assert np.allclose(mse(a, b), [0.0, 1.0])
    # mean MSE 0.5 -> 3.01 dB; the mean over dB would be (100 + 0) / 2
    assert abs(psnr_of_mse(mse(a, b)) - 10 * np.log10(2)) < 1e-9


def test_strip_frames_and_picture(tmp_path):
    assert strip_indices(3000) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 1000, 2999]
    assert strip_indices(20) == [0, 1, 2, 4, 8, 16, 19]
    assert strip_indices(17) == [0, 1, 2, 4, 8, 16]
    frames = play(1_000_000, 32, 20, "walk", 1, seen=False).frames
    save_strip(frames[::-1], frames, tmp_path / "s.png", title="t")
    from PIL import Image

    img = Image.open(tmp_path / "s.png")
    assert img.width > 7 * 96 and img.height > 2 * 96  # seven columns, two rows, scaled up
