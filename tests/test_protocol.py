"""The wire protocol's pure functions: parsing (friendly and hostile input), the input
accumulator, the frame header."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import protocol
from app.protocol import (
    INPUT_KEYS,
    MAX_MESSAGE_BYTES,
    Input,
    InputAccumulator,
    Ping,
    ProtocolError,
    Record,
    Reset,
    parse_message,
)
from worldmodel.actions import Action

FAST = settings(max_examples=100, deadline=None)

key_lists = st.lists(st.sampled_from(INPUT_KEYS), unique=True)
mouse = st.floats(-protocol.MAX_MOUSE_PX, protocol.MAX_MOUSE_PX, allow_nan=False)
inputs = st.builds(
    lambda seq, keys, dx, dy: {"type": "input", "seq": seq, "keys": keys, "dx": dx, "dy": dy},
    st.integers(0, protocol.MAX_SEQ),
    key_lists,
    mouse,
    mouse,
)


def accepts_or_rejects(data) -> None:
    """Whatever comes in, the parser returns a message or raises ProtocolError."""
    try:
        msg = parse_message(data)
    except ProtocolError as e:
        assert str(e) and e.code
    else:
        assert isinstance(msg, (Input, Reset, Record, protocol.Pause, protocol.SideBySide,
                                protocol.Resync, Ping))


# ---------------------------------------------------------------- valid messages


@FAST
@given(inputs)
def test_valid_input_round_trips(d):
    msg = parse_message(json.dumps(d))
    assert msg == Input(seq=d["seq"], keys=frozenset(d["keys"]), dx=d["dx"], dy=d["dy"])


def test_every_message_type_parses():
    assert parse_message('{"type":"input","seq":1}') == Input(seq=1, keys=frozenset())
    assert parse_message(b'{"type":"reset"}') == Reset(seed=None)
    assert parse_message('{"type":"reset","seed":42}') == Reset(seed=42)
    assert parse_message('{"type":"record","on":true}') == Record(on=True)
    assert parse_message('{"type":"pause","on":false}') == protocol.Pause(on=False)
    assert parse_message('{"type":"resync"}') == protocol.Resync()
    assert parse_message('{"type":"side_by_side","on":true}') == protocol.SideBySide(on=True)
    assert parse_message('{"type":"ping","t":12.5}') == Ping(t=12.5)
    assert parse_message('{"type":"ping"}') == Ping(t=None)


# ---------------------------------------------------------------- hostile messages


@FAST
@given(st.binary(max_size=MAX_MESSAGE_BYTES + 64))
def test_random_bytes_never_crash(data):
    accepts_or_rejects(data)


@FAST
@given(st.text(max_size=600))
def test_random_text_never_crashes(text):
    accepts_or_rejects(text)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@FAST
@given(
    st.sampled_from(protocol.MESSAGE_TYPES + ("nope", "")),
    st.dictionaries(
        st.sampled_from(["seq", "keys", "dx", "dy", "seed", "on", "t", "extra"]), json_values
    ),
)
def test_random_fields_never_crash(kind, fields):
    accepts_or_rejects(json.dumps({"type": kind, **fields}))


@FAST
@given(json_values)
def test_random_json_never_crashes(value):
    accepts_or_rejects(json.dumps(value))


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"input","seq":1,"dx":NaN}',
        '{"type":"input","seq":1,"dx":Infinity}',
        '{"type":"input","seq":1,"dy":-Infinity}',
        '{"type":"input","seq":1,"dx":1e999}',
        '{"type":"ping","t":NaN}',
        '{"type":"input","seq":' + "9" * 4000 + "}",  # a huge integer
        '{"type":"input","seq":' + "9" * 5000 + "}",  # beyond Python's digit limit
        '{"type":"input","seq":4294967296}',
        '{"type":"input","seq":-1}',
        '{"type":"input","seq":1.5}',
        '{"type":"input","seq":"1"}',
        '{"type":"input","seq":true}',
        '{"type":"input"}',
        '{"type":"input","seq":1,"keys":"forward"}',
        '{"type":"input","seq":1,"keys":[1]}',
        '{"type":"input","seq":1,"keys":["fly"]}',
        '{"type":"input","seq":1,"keys":{"forward":true}}',
        '{"type":"input","seq":1,"keys":' + json.dumps(list(INPUT_KEYS) * 2) + "}",
        '{"type":"input","seq":1,"dx":"3"}',
        '{"type":"input","seq":1,"dx":1e300}',
        '{"type":"input","seq":1,"yaw":0.5}',  # unknown field
        '{"type":"reset","seed":-3}',
        '{"type":"reset","seed":2147483648}',
        '{"type":"reset","seed":null}',
        '{"type":"record"}',
        '{"type":"record","on":1}',
        '{"type":"pause","on":"true"}',
        '{"type":"ping","x":1}',
        '{"type":"teleport"}',
        '{"type":["input"]}',
        '{"type":null}',
        '{"seq":1}',
        "[]",
        '"input"',
        "42",
        "null",
        "",
        "{",
        "[" * 2000 + "]" * 2000,  # deep nesting that fits the size limit
        '{"a":' * 1000 + "1" + "}" * 1000,
        "[" * 100_000,  # deep nesting that does not
        '{"type":"input","seq":1,"pad":"' + "x" * MAX_MESSAGE_BYTES + '"}',
        "\ud800",  # a lone surrogate
    ],
)
def test_hostile_messages_are_rejected(text):
    with pytest.raises(ProtocolError):
        parse_message(text)


def test_bytes_that_are_not_utf8_are_rejected():
    with pytest.raises(ProtocolError, match="UTF-8"):
        parse_message(b'{"type":"ping"}\xff')


def test_unknown_type_has_its_own_code():
    with pytest.raises(ProtocolError) as e:
        parse_message('{"type":"teleport"}')
    assert e.value.code == "unknown_type"


def test_size_limit_counts_bytes_not_characters():
    text = '{"type":"ping","t":1,"x":"' + "é" * (MAX_MESSAGE_BYTES // 2) + '"}'
    assert len(text) < MAX_MESSAGE_BYTES < len(text.encode())
    with pytest.raises(ProtocolError) as e:
        parse_message(text)
    assert e.value.code == "too_big"


# ---------------------------------------------------------------- input accumulator


def acc() -> InputAccumulator:
    return InputAccumulator(mouse_px_per_unit=100.0, arrow_rate=0.5)


def test_no_input_is_noop():
    assert acc().take() == (Action(), 0)


def test_tap_between_frames_is_not_lost():
    a = acc()
    a.add(Input(seq=1, keys=frozenset({"jump"})))
    a.add(Input(seq=2, keys=frozenset()))
    action, seq = a.take()
    assert action.jump and seq == 2
    assert not a.take()[0].jump  # released: the next frame has no jump


def test_held_keys_stay_held():
    a = acc()
    a.add(Input(seq=1, keys=frozenset({"forward", "sprint"})))
    for _ in range(3):
        action, _ = a.take()
        assert action.forward and action.sprint and not action.back


def test_mouse_accumulates_and_clips():
    a = acc()
    a.add(Input(seq=1, keys=frozenset(), dx=30, dy=-20))
    a.add(Input(seq=2, keys=frozenset(), dx=20, dy=0))
    action, _ = a.take()
    assert action.yaw == pytest.approx(0.5)
    assert action.pitch == pytest.approx(0.2)  # mouse up looks up
    assert a.take()[0].yaw == 0.0  # deltas are consumed
    a.add(Input(seq=3, keys=frozenset(), dx=10_000, dy=10_000))
    action, _ = a.take()
    assert action.yaw == 1.0 and action.pitch == -1.0


def test_arrow_keys_turn_and_look():
    a = acc()
    a.add(Input(seq=1, keys=frozenset({"turn_left", "look_up"})))
    action, _ = a.take()
    assert action.yaw == -0.5 and action.pitch == 0.5
    a.add(Input(seq=2, keys=frozenset({"turn_left", "turn_right"})))
    assert a.take()[0].yaw == 0.0


@FAST
@given(st.lists(inputs, max_size=20))
def test_accumulator_always_gives_a_valid_action(msgs):
    a = acc()
    for d in msgs:
        a.add(parse_message(json.dumps(d)))
        if d["seq"] % 3 == 0:
            action, _ = a.take()
            assert -1 <= action.yaw <= 1 and -1 <= action.pitch <= 1
    action, seq = a.take()
    assert isinstance(action, Action)
    assert seq == (msgs[-1]["seq"] if msgs else 0)


# ---------------------------------------------------------------- frame header


@FAST
@given(
    st.binary(max_size=64),
    st.integers(0, protocol.MAX_SEQ),
    st.integers(0, protocol.MAX_SEQ),
    st.floats(0, 1e6, allow_nan=False, width=32),
    st.floats(0, 4e12, allow_nan=False),
    st.sampled_from([protocol.STREAM_DREAM, protocol.STREAM_GAME]),
    st.booleans(),
)
def test_frame_header_round_trips(jpeg, frame, seq, gen_ms, server_ms, stream, recording):
    data = protocol.encode_frame(
        jpeg,
        frame=frame,
        seq=seq,
        gen_ms=gen_ms,
        server_ms=server_ms,
        stream=stream,
        flags=protocol.FLAG_RECORDING if recording else 0,
    )
    assert len(data) == protocol.FRAME_HEADER.size + len(jpeg) == 24 + len(jpeg)
    header, body = protocol.decode_frame(data)
    assert body == jpeg
    assert header == {
        "stream": stream,
        "recording": recording,
        "frame": frame,
        "seq": seq,
        "gen_ms": gen_ms,
        "server_ms": server_ms,
    }


def test_frame_header_layout_is_as_documented():
    data = protocol.encode_frame(b"JPEG", frame=7, seq=9, gen_ms=1.5, server_ms=2.0, stream=1)
    assert data[:4] == bytes([1, 1, 0, 0])  # version, stream, flags, reserved
    assert int.from_bytes(data[4:8], "little") == 7
    assert int.from_bytes(data[8:12], "little") == 9
    assert data[24:] == b"JPEG"


def test_server_messages_are_strict_json():
    assert json.loads(protocol.error("bad_message", "nope")) == {
        "type": "error",
        "code": "bad_message",
        "error": "nope",
    }
    with pytest.raises(ValueError):
        protocol.dumps("pong", t=math.nan)
