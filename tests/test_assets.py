"""The shipped default: what `make play` loads, and what its model card's `wm eval` needs."""

import numpy as np
import pytest

from distill.eval import load_session
from distill.idm import load_idm
from worldmodel import checkpoint
from worldmodel.actions import Action
from worldmodel.checkpoint import load_teacher
from worldmodel.game import Game
from worldmodel.model import DiTConfig
from worldmodel.session import ASSETS, WorldSession

DEFAULT = ASSETS / "default"
EVAL = DEFAULT / "eval"

pytestmark = pytest.mark.skipif(not (DEFAULT / "student.json").is_file(),
                                reason="no default checkpoint is shipped")


def test_play_files_are_small():
    play = [DEFAULT / f"{n}.{e}" for n in ("student", "tokenizer") for e in ("safetensors", "json")]
    assert sum(p.stat().st_size for p in play) < 100 * 2**20


def test_the_default_plays_and_follows_its_seed():
    session = WorldSession.from_checkpoint("default")
    game = Game(seed=1_000_000, size=session.size)
    context = [game.reset()] + [game.step(Action(forward=True)) for _ in range(3)]
    runs = []
    for _ in range(2):
        session.reset(context, seed=3)
        runs.append(np.stack([session.step(Action(yaw=1.0)) for _ in range(3)]))
    assert runs[0].shape == (3, session.size, session.size, 3) and runs[0].dtype == np.uint8
    np.testing.assert_array_equal(runs[0], runs[1])


def test_the_eval_files_match_the_default():
    student = checkpoint.load(DEFAULT / "student")[1]
    teacher, meta = load_teacher(EVAL / "teacher")
    assert meta.mode == "bidirectional" and meta.model == DiTConfig(**student["model"])
    session = WorldSession.from_checkpoint("default")
    init = load_session(str(EVAL / "student-init"), session.tokenizer, "cpu")
    assert init.size == session.size
    idm, _ = load_idm(EVAL / "idm")
    assert idm.cfg.frame_size == session.size  # `wm eval` refuses an IDM of another size
