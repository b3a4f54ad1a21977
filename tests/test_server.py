"""`wm play` end to end: a real server on a free port, real websocket clients, a tiny
untrained checkpoint (its frames depend on context and actions)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app import protocol, server
from app.replay import replay
from tests.play_helpers import (
    TIMEOUT,
    frames,
    is_frame,
    is_type,
    open_ws,
    recv_until,
    send,
    start_server,
    wait_for,
)
from worldmodel import cli
from worldmodel.episode import Episode
from worldmodel.session import WorldSession

ROOT = Path(__file__).resolve().parent.parent


# as `wm play` sets them: on two busy cores, more threads make every step wait
pytestmark = pytest.mark.usefixtures("serve_threads")


@pytest.fixture(scope="module")
def size(checkpoint):
    return WorldSession.from_checkpoint(checkpoint).size


@pytest.fixture
def srv(checkpoint, tmp_path):
    s = start_server(tmp_path / "recordings", checkpoint)
    yield s
    s.stop()


def get(srv, path: str, **headers: str):
    req = urllib.request.Request(srv.url + path, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def sessions(srv) -> int:
    return json.loads(get(srv, "/healthz")[2])["sessions"]


def start_recording(ws) -> str:
    send(ws, type="record", on=True)
    state, _ = recv_until(ws, lambda m: is_type("state")(m) and m["recording"])
    return state["recording"]


def mp4_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        return sum(1 for _ in container.decode(stream))


# ---------------------------------------------------------------- HTTP


def test_healthz_and_static_files(srv):
    status, headers, body = get(srv, "/healthz")
    health = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert health["ok"] and health["mode"] == "dream" and health["max_sessions"] == 2
    status, headers, body = get(srv, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"app.js" in body and "default-src 'none'" in headers["Content-Security-Policy"]
    assert get(srv, "/app.js")[1]["Content-Type"].startswith("text/javascript")
    assert get(srv, "/style.css")[1]["Content-Type"].startswith("text/css")
    for path in ("/nope", "/../server.py", "/%2e%2e/server.py", "/recordings/..%2fx.mp4"):
        assert get(srv, path)[0] == 404
    assert get(srv, "/ws")[0] == 426  # a plain GET on the websocket: upgrade required


# ---------------------------------------------------------------- play


def test_frames_arrive(srv, size):
    with open_ws(srv, seed=3) as ws:
        hello = json.loads(ws.recv(timeout=TIMEOUT))
        assert hello["type"] == "hello" and hello["mode"] == "dream"
        assert hello["size"] == size and hello["header_bytes"] == protocol.FRAME_HEADER.size
        got = frames(ws, 4)
        assert [h["frame"] for h, _ in got] == [0, 1, 2, 3]  # 0 is the last context frame
        for header, jpeg in got:
            assert decode(jpeg).shape == (size, size, 3)
            assert header["stream"] == protocol.STREAM_DREAM and not header["recording"]
            assert header["gen_ms"] >= 0 and abs(header["server_ms"] - time.time() * 1e3) < 60e3


def test_input_changes_what_is_generated(srv):
    with open_ws(srv, seed=11) as ws:
        still = {h["frame"]: decode(j) for h, j in frames(ws, 12)}
    with open_ws(srv, seed=11) as ws:
        send(ws, type="input", seq=1, keys=["forward", "turn_right"], dx=40.0)
        (header, jpeg), before = recv_until(ws, lambda m: is_frame(m) and m[0]["seq"] >= 1)
    assert header["frame"] in still, "the input took too long to arrive"
    # same checkpoint, seed and (no) input: the same frames; with input: different ones
    for h, j in filter(is_frame, before):
        assert np.array_equal(decode(j), still[h["frame"]])
    assert np.abs(decode(jpeg).astype(int) - still[header["frame"]]).max() > 10


def test_several_clients_and_the_cap(srv):
    with open_ws(srv) as a, open_ws(srv) as b:
        frames(a, 3)
        frames(b, 3)
        assert sessions(srv) == 2
        with open_ws(srv) as c:
            busy = json.loads(c.recv(timeout=TIMEOUT))
            assert busy["type"] == "busy" and "busy" in busy["error"]
            with pytest.raises(ConnectionClosed) as closed:
                c.recv(timeout=TIMEOUT)
            assert closed.value.rcvd.code == 1013 and closed.value.rcvd.reason == "server busy"
        frames(a, 2)  # the others play on
    wait_for(lambda: sessions(srv) == 0, what="sessions to end")
    with open_ws(srv) as d:
        frames(d, 1)  # a freed slot serves again


def test_malformed_messages_get_errors_and_the_session_lives_on(srv):
    bad = [
        "not json",
        b"\xff\xfe",
        "[]",
        '{"type":"warp"}',
        '{"type":"input","seq":-1}',
        '{"type":"input","seq":1,"dx":NaN}',
        '{"type":"input","seq":1,"dx":1e999}',
        '{"type":"input","seq":1,"keys":["forward"],"god_mode":true}',
        '{"type":"reset","seed":"x"}',
        "[" * 2000 + "]" * 2000,
    ]
    with open_ws(srv) as ws:
        frames(ws, 1)
        for message in bad:
            ws.send(message)
            error, _ = recv_until(ws, is_type("error"))
            assert error["code"] in ("bad_message", "unknown_type") and error["error"]
        send(ws, type="ping", t=5.0)
        pong, _ = recv_until(ws, is_type("pong"))
        assert pong["t"] == 5.0
        frames(ws, 2)


def test_rate_limit_answers_with_an_error_not_a_disconnect(srv):
    with open_ws(srv) as ws:
        frames(ws, 1)
        for i in range(400):
            send(ws, type="input", seq=i + 1, keys=[])
        error, _ = recv_until(ws, is_type("error"))
        assert error["code"] == "rate_limited"
        time.sleep(1.1)
        send(ws, type="ping")
        recv_until(ws, is_type("pong"))


def test_oversized_message_closes_the_connection(srv):
    with open_ws(srv) as ws:
        ws.send("x" * (protocol.MAX_MESSAGE_BYTES + 1))
        with pytest.raises(ConnectionClosed) as closed:
            recv_until(ws, lambda m: False)
        assert closed.value.rcvd.code == 1009


def test_pause_reset_and_side_by_side(srv, size):
    with open_ws(srv, seed=1) as ws:
        frames(ws, 2)
        send(ws, type="pause", on=True)
        recv_until(ws, lambda m: is_type("state")(m) and m["paused"])
        time.sleep(0.3)
        with pytest.raises(TimeoutError):  # whatever was in flight has arrived by now
            while True:
                recv_until(ws, is_frame, timeout=0.6)
        send(ws, type="reset", seed=99)
        state, _ = recv_until(ws, is_type("state"))
        assert state["seed"] == 99 and state["frame"] == 0 and state["paused"]
        send(ws, type="pause", on=False)
        send(ws, type="side_by_side", on=True)
        recv_until(ws, lambda m: is_type("state")(m) and m["side_by_side"])
        (header, jpeg), _ = recv_until(ws, lambda m: is_frame(m, protocol.STREAM_GAME))
        assert decode(jpeg).shape == (size, size, 3)


def test_disconnect_mid_recording_leaves_a_valid_recording_that_replays(
    srv, tmp_path, size, capsys
):
    with open_ws(srv, seed=5) as ws:
        frames(ws, 3)
        name = start_recording(ws)
        for i, key in enumerate(["forward", "turn_left", "jump", "sprint", "right"]):
            send(ws, type="input", seq=i + 1, keys=[key], dx=7.0 * i)
            recv_until(ws, lambda m, i=i: is_frame(m) and m[0]["seq"] > i and m[0]["recording"])
        ws.close_socket()  # gone without a closing handshake
    wait_for(lambda: sessions(srv) == 0, what="the session to end")

    rec = tmp_path / "recordings" / name
    ep = Episode(rec)
    assert ep.meta["complete"] and ep.meta["source"] == "dream" and ep.meta["policy"] == "human"
    assert ep.meta["checkpoint"]["hash"] == srv.server.pool.first.checkpoint_hash
    assert ep.meta["context"]["frames"] == srv.server.pool.first.context_length
    assert len(ep) >= 5 and ep.frames.shape[1:] == (size, size, 3)
    assert ep.actions[:, :6].any()  # the keys reached the recording
    assert mp4_frames(rec / "video.mp4") == len(ep)
    assert get(srv, "/recordings")[2].decode().count(name) == 1
    status, headers, body = get(srv, f"/recordings/{name}.mp4")
    assert status == 200 and headers["Content-Type"] == "video/mp4" and body[4:8] == b"ftyp"

    result = replay(rec)
    assert result.ok and result.frames == len(ep) and result.max_abs_diff == 0
    gif = tmp_path / "out.gif"
    assert cli.main(["replay", str(rec), "--export", str(gif), "--no-check"]) == 0
    assert Image.open(gif).n_frames == len(ep)

    # a changed frame is caught
    tampered = tmp_path / "tampered"
    shutil.copytree(rec, tampered)
    with open(tampered / "frames.u8", "r+b") as f:
        f.seek(2 * size * size * 3 + 5)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x80]))
    capsys.readouterr()
    assert cli.main(["replay", str(tampered)]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "first differs at frame 2" in out


def test_token_and_origin_checks(checkpoint, tmp_path):
    srv = start_server(
        tmp_path / "rec", checkpoint, token="s3cret", allow_origin=("http://friend.example",)
    )
    try:
        for params in ({}, {"token": "wrong"}):
            with pytest.raises(InvalidStatus) as e:
                open_ws(srv, **params)
            assert e.value.response.status_code == 401
        with open_ws(srv, token="s3cret") as ws:  # no Origin: not a browser
            frames(ws, 1)
        own = srv.url  # the page's own origin
        for origin, ok in ((own, True), ("http://friend.example", True), ("http://evil.example", False), (own.replace("127.0.0.1", "localhost"), False)):  # fmt: skip
            if ok:
                with open_ws(srv, origin=origin, token="s3cret") as ws:
                    frames(ws, 1)
            else:
                with pytest.raises(InvalidStatus) as e:
                    open_ws(srv, origin=origin, token="s3cret")
                assert e.value.response.status_code == 403
        assert get(srv, "/recordings")[0] == 401
        assert get(srv, "/recordings/20250101-000000-001.mp4")[0] == 401
        assert get(srv, "/recordings?token=s3cret")[:3:2] == (200, b"[]")
        assert get(srv, "/recordings/20250101-000000-001.mp4?token=s3cret")[0] == 404
        assert get(srv, "/healthz")[0] == 200
    finally:
        srv.stop()


def test_game_mode_records_a_training_episode(tmp_path):
    srv = start_server(tmp_path / "rec", None, size=32)
    try:
        with open_ws(srv, seed=8) as ws:
            hello = json.loads(ws.recv(timeout=TIMEOUT))
            assert hello["mode"] == "game" and not hello["side_by_side"]
            send(ws, type="side_by_side", on=True)
            assert recv_until(ws, is_type("error"))[0]["code"] == "unsupported"
            frames(ws, 2)
            name = start_recording(ws)
            send(ws, type="input", seq=1, keys=["forward", "sprint"], dy=-30.0)
            recv_until(ws, lambda m: is_frame(m) and m[0]["seq"] >= 1)
            frames(ws, 3)
            send(ws, type="record", on=False)
            saved, _ = recv_until(ws, is_type("saved"))
            assert saved["name"] == name
        ep = Episode(tmp_path / "rec" / name)
        assert ep.meta["source"] == "game" and ep.meta["policy"] == "human"
        assert ep.meta["seed"] == 8 and ep.meta["fps"] == 20 and ep.size == 32
        assert ep.meta["complete"] and "start" in ep.meta and len(ep) == saved["frames"] >= 5
        assert replay(tmp_path / "rec" / name).ok
    finally:
        srv.stop()


# ---------------------------------------------------------------- the wm play process


def spawn(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "worldmodel.cli", "play", "--port", "0", "--no-browser", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if found:
            return proc, found.group(0).rstrip("/")
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"wm play did not start: {proc.stdout.read()}")


class _Url:
    def __init__(self, url: str):
        self.url = url


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_shutdown_and_crash_keep_recordings(checkpoint, tmp_path, how):
    rec_root = tmp_path / "rec"
    proc, url = spawn("--checkpoint", str(checkpoint), "--recordings", str(rec_root))
    try:
        with open_ws(_Url(url), seed=4) as ws:
            frames(ws, 2)
            name = start_recording(ws)
            send(ws, type="input", seq=1, keys=["forward"])
            recv_until(ws, lambda m: is_frame(m) and m[0]["seq"] >= 1 and m[0]["recording"])
            frames(ws, 2)
            proc.send_signal(getattr(signal, how))
            assert proc.wait(timeout=TIMEOUT) == (0 if how == "SIGTERM" else -signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    rec = rec_root / name
    ep = Episode(rec)
    assert len(ep) >= 3
    assert replay(rec).ok  # raw frames and actions are intact either way
    if how == "SIGTERM":
        assert ep.meta["complete"] and mp4_frames(rec / "video.mp4") == len(ep)
    else:  # the mp4 was never finalised; the raw frames rebuild it
        assert not ep.meta.get("complete")
        out = tmp_path / "rebuilt.mp4"
        assert cli.main(["replay", str(rec), "--export", str(out), "--no-check"]) == 0
        assert mp4_frames(out) == len(ep)


def test_missing_checkpoint_is_explained(capsys, monkeypatch, tmp_path):
    args = _play_args("--checkpoint", "/nonexistent/checkpoint")
    assert server.main(args) == 1
    assert "/nonexistent/checkpoint" in capsys.readouterr().err
    monkeypatch.setattr("worldmodel.session.ASSETS", tmp_path)  # an install without assets
    assert server.main(_play_args()) == 1
    err = capsys.readouterr().err
    assert "no default checkpoint is shipped yet" in err and "docs/train-your-own.md" in err


def _play_args(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    server.add_arguments(parser)
    return parser.parse_args(["--no-browser", "--port", "0", *argv])


def test_latest_slot_keeps_only_the_newest():
    async def go():
        slot = server.LatestSlot()
        slot.put("old")
        slot.put("new")
        assert await slot.get() == "new"  # a slow reader skips, never queues
        waiting = asyncio.create_task(slot.get())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        slot.put("next")
        assert await waiting == "next"

    asyncio.run(go())
