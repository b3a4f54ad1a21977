"""`wm play` against hostile and careless clients: floods, piles of recordings, rebound
host names, clients that never read, failing disks, odd query values. A real server on a
free port of 127.0.0.1, real websocket clients (or raw sockets where a client must
misbehave below the websocket layer), a tiny untrained checkpoint."""

from __future__ import annotations

import builtins
import io
import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from app import recording, server
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
    ws_url,
)
from worldmodel import episode
from worldmodel.episode import Episode

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("serve_threads")


def request(srv, path: str, method: str = "GET", **headers: str):
    req = urllib.request.Request(srv.url + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def handshake(port: int, host: str, origin: str | None = None, path: str = "/ws") -> socket.socket:
    """A raw websocket handshake; the socket reads nothing afterwards unless told."""
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]  # fmt: skip
    if origin is not None:
        lines.append(f"Origin: {origin}")
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return s


def handshake_status(port: int, host: str, origin: str | None = None, path: str = "/ws") -> int:
    with handshake(port, host, origin, path) as s:
        return int(s.recv(200).split()[1])


def sessions(srv) -> int:
    return json.loads(request(srv, "/healthz")[2])["sessions"]


def start_recording(ws) -> str:
    send(ws, type="record", on=True)
    state, _ = recv_until(ws, lambda m: is_type("state")(m) and m["recording"])
    return state["recording"]


# ---------------------------------------------------------------- 1. floods


def flood(port: int, seconds: float) -> subprocess.Popen:
    """A client in its own process sending input messages as fast as it can."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.hostile_probe", "--flood", str(port), str(seconds)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def fps(srv, seconds: float) -> float:
    with open_ws(srv, seed=1) as ws:
        frames(ws, 3)
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < seconds:
            recv_until(ws, is_frame)
            n += 1
        return n / (time.monotonic() - t0)


@pytest.mark.slow
def test_a_flood_costs_another_player_little_and_is_closed(checkpoint, tmp_path):
    srv = start_server(tmp_path / "rec", checkpoint, fps=10.0, flood_close_s=8.0)
    try:
        alone = fps(srv, 4.0)
        flooder = flood(srv.server.port, 20.0)
        time.sleep(0.5)
        flooded = fps(srv, 4.0)
        out = json.loads(flooder.communicate(timeout=60)[0])
    finally:
        srv.stop()
    assert flooded >= 0.9 * alone, (alone, flooded)
    # pushed back at the socket: its sends blocked; then it was closed, well before it stopped
    # (its close frame may not reach it: a blocked send keeps its reader from reading)
    assert out["closed"] in (None, server.CLOSE_FLOOD) and out["after_s"] < 17, out


def test_a_client_far_over_the_rate_limit_is_closed(checkpoint, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="wm.play")
    srv = start_server(tmp_path / "rec", checkpoint, rate_limit=20.0, flood_close_s=2.0)
    try:
        # its reader thread reads on (max_queue=None), so that it sees the close frame
        with connect(ws_url(srv), max_queue=None, open_timeout=TIMEOUT, proxy=None) as ws:
            frames(ws, 1)
            t0 = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                for i in range(100_000):
                    send(ws, type="input", seq=i + 1, keys=[])
            assert time.monotonic() - t0 < TIMEOUT
        # a client blocked in a send may not read the close frame; the log says why it ended
        if closed.value.rcvd is not None:
            assert closed.value.rcvd.code == server.CLOSE_FLOOD
        wait_for(lambda: any("ended: rate limit exceeded" in r.getMessage() for r in caplog.records))
    finally:
        srv.stop()


def test_resets_are_rate_limited_apart_from_inputs(checkpoint, tmp_path):
    srv = start_server(tmp_path / "rec", checkpoint, reset_rate=2.0)
    try:
        with open_ws(srv) as ws:
            frames(ws, 1)
            for seed in range(10):
                send(ws, type="reset", seed=seed)
            send(ws, type="ping", t=1.0)
            _, before = recv_until(ws, is_type("pong"))
            states = [m for m in before if is_type("state")(m)]
            errors = [m for m in before if is_type("error")(m)]
            # a burst of 2, and 2 more a second while the others are read (not 10)
            assert 1 <= len(states) <= 6 and errors[0]["code"] == "rate_limited"
            assert "resets" in errors[0]["error"]
            send(ws, type="input", seq=1, keys=["forward"])  # inputs are not held back
            recv_until(ws, lambda m: is_frame(m) and m[0]["seq"] == 1)
    finally:
        srv.stop()


# ---------------------------------------------------------------- 2. recordings


def test_recordings_are_capped_per_session_and_in_total(checkpoint, tmp_path):
    root = tmp_path / "rec"
    srv = start_server(root, checkpoint, max_session_recordings=2, max_recordings=3,
                       record_video=False, reset_rate=50.0)  # fmt: skip
    try:
        with open_ws(srv) as ws:
            frames(ws, 1)
            for _ in range(2):
                start_recording(ws)
                frames(ws, 2)
                send(ws, type="record", on=False)
                recv_until(ws, is_type("saved"))
            send(ws, type="record", on=True)
            error, _ = recv_until(ws, is_type("error"))
            assert error["code"] == "recording_full" and "2 recordings" in error["error"]
            frames(ws, 2)  # plays on
        with open_ws(srv) as ws:  # a new session may record, until the folder holds 3
            frames(ws, 1)
            name = start_recording(ws)
            send(ws, type="record", on=False)
            recv_until(ws, is_type("saved"))
            send(ws, type="record", on=True)
            error, _ = recv_until(ws, is_type("error"))
            assert error["code"] == "recording_full" and "at most 3" in error["error"]
        meta = json.loads((root / name / "meta.json").read_text())
        assert "card" not in meta and meta["checkpoint"]["hash"] and meta["checkpoint"]["name"]
        assert len(json.dumps(meta)) < 4000
    finally:
        srv.stop()


def test_a_recording_that_outgrows_its_bytes_is_closed(checkpoint, tmp_path):
    # 0.05 MB: the context and a dozen 32x32 frames
    srv = start_server(tmp_path / "rec", checkpoint, max_session_recording_mb=0.05,
                       record_video=False)  # fmt: skip
    try:
        with open_ws(srv) as ws:
            frames(ws, 1)
            name = start_recording(ws)
            error, _ = recv_until(ws, is_type("error"))
            assert error["code"] == "recording_full"
            saved, _ = recv_until(ws, is_type("saved"))
            assert saved["name"] == name
            send(ws, type="record", on=True)  # the session's bytes are spent
            assert recv_until(ws, is_type("error"))[0]["code"] == "recording_full"
            frames(ws, 2)
        rec = tmp_path / "rec" / name
        ep = Episode(rec)
        assert ep.meta["complete"] and len(ep) == saved["frames"]
        assert recording.recordings_usage(tmp_path / "rec")[1] < 0.07 * 1024 * 1024
    finally:
        srv.stop()


def make_recordings(root: Path, checkpoint: Path, n: int) -> None:
    """n copies of one real recording."""
    srv = start_server(root, checkpoint, record_video=False)
    try:
        with open_ws(srv) as ws:
            frames(ws, 1)
            start_recording(ws)
            frames(ws, 5)
    finally:
        srv.stop()
    (first,) = root.iterdir()
    for i in range(n - 1):
        shutil.copytree(first, root / f"20240101-000000-{i:03d}")


def test_listing_reads_each_meta_alone_and_only_when_it_changed(checkpoint, tmp_path, monkeypatch):
    root = tmp_path / "rec"
    make_recordings(root, checkpoint, 30)
    opened: list[str] = []
    real_open = io.open

    def spy(file, *args, **kwargs):
        opened.append(Path(file).name)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    cache: recording.ListCache = {}
    listed = recording.list_recordings(root, cache)
    assert len(listed) == 30 and all(r["frames"] >= 5 and r["complete"] for r in listed)
    assert sorted(set(opened)) == ["meta.json"] and len(opened) == 30
    opened.clear()
    assert recording.list_recordings(root, cache) == listed and opened == []


def test_listing_does_not_block_the_event_loop(checkpoint, tmp_path, monkeypatch):
    srv = start_server(tmp_path / "rec", checkpoint)
    gate = threading.Event()
    real = recording.list_recordings

    def slow_listing(*args, **kwargs):
        gate.wait(5.0)
        return real(*args, **kwargs)

    monkeypatch.setattr("app.routes.list_recordings", slow_listing)
    try:
        lister = threading.Thread(target=request, args=(srv, "/recordings"))
        lister.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        assert request(srv, "/healthz")[0] == 200  # answered while the listing waits
        assert time.monotonic() - t0 < 2.0
        gate.set()
        lister.join(TIMEOUT)
    finally:
        gate.set()
        srv.stop()


def test_failing_writes_answer_with_an_error_and_play_goes_on(checkpoint, tmp_path, monkeypatch):
    # every frame goes to /dev/full: a path that takes no byte (ENOSPC), as a full disk
    monkeypatch.setattr(episode, "FRAMES", "/dev/full")
    srv = start_server(tmp_path / "rec", checkpoint)
    try:
        with open_ws(srv) as ws:
            frames(ws, 1)
            for _ in range(2):  # and again: a later record does not kill the session either
                send(ws, type="record", on=True)
                saved, seen = recv_until(ws, is_type("saved"))
                name = saved["name"]
                (error,) = [m for m in seen if is_type("error")(m)]
                assert error["code"] == "recording_failed" and "/" not in error["error"]
                state, _ = recv_until(ws, is_type("state"))
                assert state["recording"] is None
                frames(ws, 2)
        meta = json.loads((tmp_path / "rec" / name / "meta.json").read_text())
        assert meta["complete"] and meta["frames"] == 0  # closed cleanly, nothing pretended
    finally:
        srv.stop()


def test_a_failure_to_start_recording_is_generic_and_the_session_lives(
    checkpoint, tmp_path, caplog
):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    srv = start_server(not_a_dir / "rec", checkpoint)
    try:
        with caplog.at_level(logging.ERROR, logger="wm.play"), open_ws(srv) as ws:
            frames(ws, 1)
            send(ws, type="record", on=True)
            error, _ = recv_until(ws, is_type("error"))
            assert error["code"] == "recording_failed"
            assert str(tmp_path) not in error["error"] and "Errno" not in error["error"]
            assert recv_until(ws, is_type("state"))[0]["recording"] is None
            frames(ws, 3)
            send(ws, type="ping")
            recv_until(ws, is_type("pong"))
        assert any(str(not_a_dir) in r.getMessage() for r in caplog.records)
    finally:
        srv.stop()


# ---------------------------------------------------------------- 3. Host and Origin


def test_host_header_must_name_this_server(checkpoint, tmp_path):
    srv = start_server(tmp_path / "rec", checkpoint, allow_origin=("http://friend.example:9",))
    port = srv.server.port
    try:
        evil = f"evil.example:{port}"
        assert handshake_status(port, evil, f"http://{evil}") == 421  # DNS rebinding
        assert request(srv, "/recordings", Host=evil)[0] == 421
        assert request(srv, "/recordings/20250101-000000-001.mp4", Host=evil)[0] == 421
        assert request(srv, "/", Host=evil)[0] == 421
        own = f"127.0.0.1:{port}"
        assert handshake_status(port, own, f"ftp://{own}") == 403  # the scheme counts too
        assert handshake_status(port, own, "null") == 403
        assert handshake_status(port, own, f"http://{own}") == 101
        for host in (f"localhost:{port}", f"[::1]:{port}", "friend.example:9", own):
            assert handshake_status(port, host) == 101, host
        assert request(srv, "/healthz", Host=f"LocalHost:{port}")[0] == 200
    finally:
        srv.stop()


# ---------------------------------------------------------------- 4. idle and non-reading


def test_a_silent_client_frees_its_slot_after_the_idle_timeout(checkpoint, tmp_path):
    srv = start_server(tmp_path / "rec", checkpoint, max_sessions=1, idle_timeout=2.0,
                       read_stall_s=0.5)  # fmt: skip
    port = srv.server.port
    try:
        silent = handshake(port, f"127.0.0.1:{port}")  # never reads nor sends
        wait_for(lambda: sessions(srv) == 1, what="the silent session")
        t0 = time.monotonic()
        with open_ws(srv) as ws:
            assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "busy"
        wait_for(lambda: sessions(srv) == 0, timeout=10.0, what="the slot to be freed")
        assert time.monotonic() - t0 < 6.0
        with open_ws(srv) as ws:
            frames(ws, 1)
        silent.close()
    finally:
        srv.stop()


def test_an_idle_client_is_told_why_it_was_closed(checkpoint, tmp_path):
    srv = start_server(tmp_path / "rec", checkpoint, idle_timeout=1.5, read_stall_s=0.5)
    try:
        with open_ws(srv) as ws:
            frames(ws, 1)
            time.sleep(3.0)  # reads nothing (16 messages fill the client's queue), sends nothing
            idle, _ = recv_until(ws, lambda m: is_type("error")(m) and m["code"] == "idle")
            assert "no message and no reads" in idle["error"]
            with pytest.raises(ConnectionClosed) as closed:
                recv_until(ws, lambda m: False, timeout=10)
        assert closed.value.rcvd.code == server.CLOSE_IDLE and closed.value.rcvd.reason == "idle"
    finally:
        srv.stop()


def test_no_frames_are_generated_for_a_client_that_reads_nothing(checkpoint, tmp_path):
    srv = start_server(tmp_path / "rec", checkpoint, fps=20.0, read_stall_s=0.5)
    try:
        with open_ws(srv, seed=2) as ws:
            frames(ws, 1)
            t0 = time.monotonic()
            f0 = frames(ws, 20)[-1][0]["frame"]
            rate = 19 / (time.monotonic() - t0)
            # stop reading for 6 s, sending inputs all along so that the session is not idle:
            # the client library stops reading the socket once 16 messages wait for it
            t_end = time.monotonic() + 6.0
            seq = 0
            while time.monotonic() < t_end:
                seq += 1
                send(ws, type="input", seq=seq, keys=[])
                time.sleep(0.2)
            resumed = time.time() * 1000
            (header, _), _ = recv_until(ws, lambda m: is_frame(m) and m[0]["server_ms"] > resumed)
        # 6 s of generation would be 6 * rate frames; it stops within about 2.5 s (16 queued
        # messages, a ping a second, read_stall_s)
        assert header["frame"] - f0 < 4 * rate, (header["frame"] - f0, rate)
    finally:
        srv.stop()


# ---------------------------------------------------------------- 6, 7. requests and flags


def test_bad_seeds_get_400_without_a_traceback(checkpoint, tmp_path, caplog):
    srv = start_server(tmp_path / "rec", checkpoint)
    port = srv.server.port
    try:
        with caplog.at_level(logging.DEBUG):
            for seed in ("%C2%B2", "%EF%BC%91", "9" * 5000, "2147483648", "-1", "+1", "0x10"):
                path = f"/ws?seed={seed}"
                assert handshake_status(port, f"127.0.0.1:{port}", path=path) == 400, seed
            assert handshake_status(port, f"127.0.0.1:{port}", path="/ws?seed=2147483647") == 101
        assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    finally:
        srv.stop()


def test_methods_other_than_get_and_head_are_refused(checkpoint, tmp_path):
    srv = start_server(tmp_path / "rec", checkpoint)
    try:
        get_status, get_headers, body = request(srv, "/")
        status, headers, head_body = request(srv, "/", method="HEAD")
        assert status == get_status == 200 and head_body == b""
        assert headers["Content-Length"] == get_headers["Content-Length"] == str(len(body))
        for method in ("POST", "PUT", "DELETE", "TRACE", "PATCH"):
            status, headers, _ = request(srv, "/", method=method)
            assert status == 405 and headers["Allow"] == "GET, HEAD", method
        assert request(srv, "/healthz", method="HEAD")[0] == 200
    finally:
        srv.stop()


def test_an_empty_token_is_refused(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    server.add_arguments(parser)
    args = parser.parse_args(["--no-browser", "--port", "0", "--game", "--token", ""])
    assert server.main(args) == 2
    assert "empty --token" in capsys.readouterr().err
