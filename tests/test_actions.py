import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worldmodel.actions import ACTION_DIM, FIELDS, KEYS, Action, ActionError

camera = st.floats(-1.0, 1.0, allow_nan=False)
actions = st.builds(Action, **{k: st.booleans() for k in KEYS}, yaw=camera, pitch=camera)


@given(actions)
def test_vector_round_trip(a):
    v = a.to_vector()
    assert v.shape == (ACTION_DIM,) and v.dtype == np.float32
    b = Action.from_vector(v)
    assert [getattr(b, k) for k in KEYS] == [getattr(a, k) for k in KEYS]
    assert b.yaw == pytest.approx(a.yaw, abs=1e-7) and b.pitch == pytest.approx(a.pitch, abs=1e-7)


@given(actions)
def test_json_round_trip(a):
    assert Action.from_json(a.to_json()) == a
    assert Action.from_dict(json.loads(a.to_json())) == a


def test_noop_and_partial_dicts():
    assert Action().is_noop and Action.from_dict({}) == Action()
    assert Action.from_dict({"forward": True}) == Action(forward=True)
    assert Action().to_vector().sum() == 0
    assert list(FIELDS) == ["forward", "back", "left", "right", "jump", "sprint", "yaw", "pitch"]


@pytest.mark.parametrize("bad, message", [
    ({"yaw": math.nan}, "finite"),
    ({"pitch": math.inf}, "finite"),
    ({"yaw": 1.5}, "within -1..1"),
    ({"pitch": -1.0001}, "within -1..1"),
    ({"jump": 1}, "must be a bool"),
    ({"forward": "yes"}, "must be a bool"),
    ({"yaw": "0.5"}, "must be a number"),
    ({"yaw": True}, "must be a number"),
    ({"crouch": True}, "unknown action field"),
])
def test_bad_fields_are_rejected_clearly(bad, message):
    with pytest.raises(ActionError, match=message):
        Action.from_dict(bad)


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", '"forward"', "null", "1e999"])
def test_bad_json_is_rejected(text):
    with pytest.raises(ActionError):
        Action.from_json(text)


def test_from_vector_rejects_bad_vectors():
    with pytest.raises(ActionError, match="8 values"):
        Action.from_vector(np.zeros(5))
    with pytest.raises(ActionError, match="NaN"):
        Action.from_vector(np.full(ACTION_DIM, np.nan))
    # a model's slight overshoot is clipped, not rejected
    assert Action.from_vector([0, 0, 0, 0, 0, 0, 1.2, -1.3]).yaw == 1.0
