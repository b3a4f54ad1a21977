"""The action space shared by the game, the model, the data and the clients.

An action is what the player does during one frame: which keys are held and how far the
camera turns. `Action()` is "no input". As a vector (the model's conditioning and the
on-disk format) it is float32 of length `ACTION_DIM`, keys as 0/1 then yaw, pitch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

KEYS = ("forward", "back", "left", "right", "jump", "sprint")
CAMERA = ("yaw", "pitch")
FIELDS = KEYS + CAMERA
ACTION_DIM = len(FIELDS)


class ActionError(ValueError):
    """An action that is not valid: unknown field, wrong type, NaN or out of range."""


@dataclass(frozen=True)
class Action:
    """One frame of input. Camera values are per-frame deltas in -1..1 (positive yaw turns
    right, positive pitch looks up); the game maps 1.0 to its largest turn per frame."""

    forward: bool = False
    back: bool = False
    left: bool = False
    right: bool = False
    jump: bool = False
    sprint: bool = False
    yaw: float = 0.0
    pitch: float = 0.0

    def __post_init__(self) -> None:
        for k in KEYS:
            v = getattr(self, k)
            if not isinstance(v, (bool, np.bool_)):
                raise ActionError(f"{k} must be a bool, got {type(v).__name__}")
            object.__setattr__(self, k, bool(v))
        for k in CAMERA:
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise ActionError(f"{k} must be a number, got {type(v).__name__}")
            v = float(v)
            if not math.isfinite(v):
                raise ActionError(f"{k} must be finite, got {v}")
            if not -1.0 <= v <= 1.0:
                raise ActionError(f"{k} must be within -1..1, got {v}")
            object.__setattr__(self, k, v)

    def to_vector(self) -> np.ndarray:
        """float32 [ACTION_DIM]: keys as 0/1, then yaw, pitch."""
        return np.array([float(getattr(self, k)) for k in FIELDS], dtype=np.float32)

    @classmethod
    def from_vector(cls, vec: Any) -> Action:
        """Inverse of `to_vector`. Keys are thresholded at 0.5, camera values clipped to -1..1
        (a model's prediction can overshoot slightly); NaN and wrong lengths are errors."""
        v = np.asarray(vec, dtype=np.float64).reshape(-1)
        if v.shape[0] != ACTION_DIM:
            raise ActionError(f"action vector must have {ACTION_DIM} values, got {v.shape[0]}")
        if not np.all(np.isfinite(v)):
            raise ActionError("action vector contains NaN or infinity")
        keys = {k: bool(v[i] > 0.5) for i, k in enumerate(KEYS)}
        cam = {k: float(np.clip(v[len(KEYS) + i], -1.0, 1.0)) for i, k in enumerate(CAMERA)}
        return cls(**keys, **cam)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> Action:
        """Parse a JSON object. Missing fields mean "not pressed" / 0; unknown fields are errors."""
        if not isinstance(d, dict):
            raise ActionError(f"action must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - set(FIELDS)
        if unknown:
            raise ActionError(f"unknown action field(s): {', '.join(sorted(map(str, unknown)))}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Action:
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ActionError(f"action is not valid JSON: {e}") from None
        return cls.from_dict(d)

    @property
    def is_noop(self) -> bool:
        return self == Action()


NOOP = Action()


def stack(actions: list[Action]) -> np.ndarray:
    """float32 [T, ACTION_DIM] for a list of actions."""
    if not actions:
        return np.zeros((0, ACTION_DIM), dtype=np.float32)
    return np.stack([a.to_vector() for a in actions])


def parse_script(script: str) -> list[Action]:
    """"forward+sprint:20,yaw=0.5:10,idle:5" -> actions. Each item is keys joined by '+'
    (or yaw=/pitch= values) and a frame count after ':'."""
    actions: list[Action] = []
    for item in filter(None, (s.strip() for s in script.split(","))):
        spec, _, count = item.partition(":")
        values: dict[str, object] = {}
        for part in spec.split("+"):
            if part == "idle":
                continue
            if "=" in part:
                name, value = part.split("=", 1)
                values[name] = float(value)
            elif part in KEYS:
                values[part] = True
            else:
                raise ValueError(f"unknown action {part!r} in script item {item!r}")
        actions += [Action.from_dict(values)] * int(count or 1)
    return actions


assert tuple(f.name for f in fields(Action)) == FIELDS
