"""The wire protocol between `wm play` and its clients, as pure functions (docs/protocol.md).

Client -> server: small JSON text messages, parsed and validated field by field by
`parse_message`, which raises `ProtocolError` for anything it does not accept: the server
answers with an error message and the session lives on. Server -> client: binary frame
messages (`FRAME_HEADER` + JPEG) and JSON text messages built by the helpers at the end.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from worldmodel.actions import KEYS, Action

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 4096  # an input message is ~100 bytes; larger ones close the connection
MAX_SEQ = 2**32 - 1  # sequence numbers travel back in a u32 header field
MAX_SEED = 2**31 - 1
MAX_MOUSE_PX = 100_000.0  # per message; far beyond any real mouse, small enough to add safely
MAX_CLIENT_TIME = 1e15  # ping timestamps: milliseconds, epoch or performance.now()

# Held keys a client may report: the action's keys plus four that turn the camera.
TURN_KEYS = ("turn_left", "turn_right", "look_up", "look_down")
INPUT_KEYS = KEYS + TURN_KEYS

# Binary frame header, little-endian, 24 bytes, then the JPEG bytes (docs/protocol.md).
FRAME_HEADER = struct.Struct("<BBBxIIfd")
STREAM_DREAM = 0  # the session's own frames (the model's dream, or the game with --game)
STREAM_GAME = 1  # the real game stepped alongside, in side-by-side mode
FLAG_RECORDING = 1


class ProtocolError(ValueError):
    """A client message that is not valid; `code` is a short machine-readable reason."""

    def __init__(self, message: str, code: str = "bad_message"):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- client -> server


@dataclass(frozen=True)
class Input:
    """Held keys and the mouse movement (CSS pixels) since the client's previous input."""

    seq: int
    keys: frozenset[str]
    dx: float = 0.0
    dy: float = 0.0


@dataclass(frozen=True)
class Reset:
    """A new world; seed None asks the server to pick one."""

    seed: int | None = None


@dataclass(frozen=True)
class Record:
    on: bool


@dataclass(frozen=True)
class Pause:
    on: bool


@dataclass(frozen=True)
class SideBySide:
    on: bool


@dataclass(frozen=True)
class Resync:
    """Side-by-side mode: restart the dream from the real game's last frames."""


@dataclass(frozen=True)
class Ping:
    t: float | None = None


Message = Input | Reset | Record | Pause | SideBySide | Resync | Ping


def _reject_constant(name: str) -> None:
    raise ProtocolError(f"{name} is not allowed in messages")


def _int(d: dict, name: str, lo: int, hi: int, required: bool = True) -> int | None:
    if name not in d:
        if required:
            raise ProtocolError(f"missing field {name!r}")
        return None
    v = d[name]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"{name} must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ProtocolError(f"{name} must be within {lo}..{hi}")
    return v


def _number(d: dict, name: str, limit: float, default: float | None) -> float | None:
    if name not in d:
        return default
    v = d[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ProtocolError(f"{name} must be a number, got {type(v).__name__}")
    if not -limit <= v <= limit:  # also false for NaN
        raise ProtocolError(f"{name} must be a finite number within ±{limit:g}")
    return float(v)


def _bool(d: dict, name: str) -> bool:
    if name not in d:
        raise ProtocolError(f"missing field {name!r}")
    v = d[name]
    if not isinstance(v, bool):
        raise ProtocolError(f"{name} must be true or false, got {type(v).__name__}")
    return v


def _keys(d: dict) -> frozenset[str]:
    v = d.get("keys", [])
    if not isinstance(v, list):
        raise ProtocolError(f"keys must be a list of key names, got {type(v).__name__}")
    if len(v) > len(INPUT_KEYS):
        raise ProtocolError(f"keys lists at most {len(INPUT_KEYS)} names")
    for k in v:
        if not isinstance(k, str) or k not in INPUT_KEYS:
            shown = k if isinstance(k, str) and len(k) <= 20 else type(k).__name__
            raise ProtocolError(f"unknown key {shown!r}; known: {', '.join(INPUT_KEYS)}")
    return frozenset(v)


# type -> (fields it may carry, parser)
_PARSERS: dict[str, tuple[frozenset[str], Any]] = {
    "input": (
        frozenset({"seq", "keys", "dx", "dy"}),
        lambda d: Input(
            seq=_int(d, "seq", 0, MAX_SEQ),
            keys=_keys(d),
            dx=_number(d, "dx", MAX_MOUSE_PX, 0.0),
            dy=_number(d, "dy", MAX_MOUSE_PX, 0.0),
        ),
    ),
    "reset": (frozenset({"seed"}), lambda d: Reset(seed=_int(d, "seed", 0, MAX_SEED, False))),
    "record": (frozenset({"on"}), lambda d: Record(on=_bool(d, "on"))),
    "pause": (frozenset({"on"}), lambda d: Pause(on=_bool(d, "on"))),
    "side_by_side": (frozenset({"on"}), lambda d: SideBySide(on=_bool(d, "on"))),
    "resync": (frozenset(), lambda d: Resync()),
    "ping": (frozenset({"t"}), lambda d: Ping(t=_number(d, "t", MAX_CLIENT_TIME, None))),
}
MESSAGE_TYPES = tuple(_PARSERS)


def parse_message(data: str | bytes) -> Message:
    """One client message -> a typed message. Raises ProtocolError for anything else:
    oversized, not UTF-8, not JSON, NaN/Infinity, not an object, unknown type or field,
    wrong types, out-of-range numbers."""
    too_big = ProtocolError(f"message larger than {MAX_MESSAGE_BYTES} bytes", "too_big")
    if len(data) > MAX_MESSAGE_BYTES:  # a str has at least as many bytes as characters
        raise too_big
    if isinstance(data, str):
        if len(data.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
            raise too_big
    else:
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("message is not UTF-8 text") from None
    try:
        d = json.loads(data, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError, int digit limit, deep nesting
        raise ProtocolError(f"message is not valid JSON: {str(e)[:80]}") from None
    if not isinstance(d, dict):
        raise ProtocolError(f"message must be a JSON object, got {type(d).__name__}")
    kind = d.get("type")
    if not isinstance(kind, str) or kind not in _PARSERS:
        shown = kind if isinstance(kind, str) and len(kind) <= 20 else type(kind).__name__
        raise ProtocolError(
            f"unknown message type {shown!r}; known: {', '.join(MESSAGE_TYPES)}", "unknown_type"
        )
    allowed, parse = _PARSERS[kind]
    unknown = set(d) - allowed - {"type"}
    if unknown:
        names = ", ".join(sorted(repr(k[:20]) for k in unknown)[:5])
        raise ProtocolError(f"unknown field(s) for {kind}: {names}")
    return parse(d)


class InputAccumulator:
    """Folds the input messages that arrive between two frames into one Action.

    A key counts as held for a frame if it was held at any moment since the previous frame,
    so a tap shorter than a frame (a jump) is not lost. Mouse movement is summed and turned
    into yaw/pitch at `mouse_px_per_unit` pixels per unit; movement beyond the largest turn
    per frame is dropped rather than carried into later frames, which would feel like lag.
    """

    def __init__(self, mouse_px_per_unit: float, arrow_rate: float):
        self.mouse_px_per_unit = mouse_px_per_unit
        self.arrow_rate = arrow_rate
        self.clear()

    def clear(self) -> None:
        self.held: frozenset[str] = frozenset()
        self._seen: set[str] = set()
        self._dx = self._dy = 0.0
        self.seq = 0

    def add(self, msg: Input) -> None:
        self.held = msg.keys
        self._seen |= msg.keys
        self._dx += msg.dx
        self._dy += msg.dy
        self.seq = msg.seq

    def take(self) -> tuple[Action, int]:
        """The action for the next frame and the seq of the last input folded into it."""
        k = self._seen | self.held
        turn = ("turn_right" in k) - ("turn_left" in k)
        look = ("look_up" in k) - ("look_down" in k)
        # screen y grows downwards, pitch grows upwards
        yaw = self._dx / self.mouse_px_per_unit + turn * self.arrow_rate
        pitch = -self._dy / self.mouse_px_per_unit + look * self.arrow_rate
        action = Action(
            **{name: name in k for name in KEYS},
            yaw=float(np.clip(yaw, -1.0, 1.0)),
            pitch=float(np.clip(pitch, -1.0, 1.0)),
        )
        self._seen = set(self.held)
        self._dx = self._dy = 0.0
        return action, self.seq


# ---------------------------------------------------------------- server -> client


def encode_frame(
    jpeg: bytes,
    *,
    frame: int,
    seq: int,
    gen_ms: float,
    server_ms: float,
    stream: int = STREAM_DREAM,
    flags: int = 0,
) -> bytes:
    """A binary frame message: FRAME_HEADER then the JPEG bytes."""
    gen_ms = gen_ms if math.isfinite(gen_ms) else 0.0
    header = FRAME_HEADER.pack(
        PROTOCOL_VERSION, stream, flags, frame & MAX_SEQ, seq & MAX_SEQ, gen_ms, server_ms
    )
    return header + jpeg


def decode_frame(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(header fields, JPEG bytes) of a binary frame message."""
    if len(data) < FRAME_HEADER.size:
        raise ProtocolError("frame message shorter than its header")
    version, stream, flags, frame, seq, gen_ms, server_ms = FRAME_HEADER.unpack_from(data)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported frame header version {version}")
    header = {
        "stream": stream,
        "recording": bool(flags & FLAG_RECORDING),
        "frame": frame,
        "seq": seq,
        "gen_ms": gen_ms,
        "server_ms": server_ms,
    }
    return header, bytes(data[FRAME_HEADER.size :])


def dumps(kind: str, **fields: Any) -> str:
    """A JSON text message of the given type."""
    return json.dumps({"type": kind, **fields}, separators=(",", ":"), allow_nan=False)


def error(code: str, message: str) -> str:
    return dumps("error", code=code, error=message)
