"""Measure `wm play` under hostile and careless clients, on loopback (docs/protocol.md).

    python -m tests.hostile_probe [--checkpoint default] [--seconds 10] [--only flood,list,...]

Starts `wm play` in a subprocess and prints one JSON object:

    flood     another player's frames per second alone, then while a client floods input
              messages as fast as it can from its own process; how the flood ended
    list      GET /recordings with 250 recordings (copies of one real one): median ms, and
              the other player's FPS while a client polls the list
    rebind    the answers to a DNS-rebinding attempt (Host and Origin evil.example:P) and to
              an ftp:// origin
    silent    two clients that connect and never read nor send, with --max-sessions 2:
              seconds until a third player gets a session
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent
INPUT = json.dumps({"type": "input", "seq": 1, "keys": ["forward"], "dx": 1.0})


def spawn(checkpoint: str, recordings: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "worldmodel.cli", "play", "--port", "0", "--no-browser",
         "--checkpoint", checkpoint, "--recordings", str(recordings), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if found:
            return proc, int(found.group(1))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("wm play did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def fps(port: int, seconds: float, warmup: float = 3.0) -> float:
    """Frames per second one player receives (it sends an input every 50 ms, as a browser)."""
    with connect(f"ws://127.0.0.1:{port}/ws?seed=1", open_timeout=60, proxy=None) as ws:
        t_end = time.monotonic() + warmup + seconds
        count, t0, next_input, seq = 0, None, 0.0, 0
        while (now := time.monotonic()) < t_end:
            if now >= next_input:
                seq += 1
                ws.send(json.dumps({"type": "input", "seq": seq, "keys": ["forward"]}))
                next_input = now + 0.05
            try:
                msg = ws.recv(timeout=0.05)
            except TimeoutError:
                continue
            if isinstance(msg, bytes):
                if t0 is None and now >= t_end - seconds:
                    t0, count = now, 0
                count += 1
        return count / (time.monotonic() - t0)


def flood(port: int, seconds: float) -> None:
    """Send input messages as fast as possible for `seconds`; print what happened."""
    sent, code = 0, None
    t0 = time.monotonic()
    try:
        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=60, proxy=None,
                     max_queue=None) as ws:  # fmt: skip
            while time.monotonic() - t0 < seconds:
                for _ in range(100):
                    ws.send(INPUT)
                sent += 100
    except ConnectionClosed as e:
        code = e.rcvd.code if e.rcvd else None
    elapsed = time.monotonic() - t0
    print(json.dumps({"sent": sent, "per_s": round(sent / elapsed), "closed": code,
                      "after_s": round(elapsed, 1)}), flush=True)  # fmt: skip


def helper(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.hostile_probe", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip


def probe_flood(checkpoint: str, tmp: Path, seconds: float, *extra: str) -> dict:
    """The other player alone, during the flood, and alone again (the machine's load drifts)."""
    proc, port = spawn(checkpoint, tmp / "rec-flood", *extra)
    try:
        alone = fps(port, seconds)
        flooder = helper("--flood", str(port), str(seconds + 8))
        time.sleep(1.0)
        flooded = fps(port, seconds)
        out = json.loads(flooder.communicate(timeout=120)[0])
        again = fps(port, seconds)
    finally:
        stop(proc)
    base = (alone + again) / 2
    return {"fps_alone": round(alone, 2), "fps_flooded": round(flooded, 2),
            "fps_alone_after": round(again, 2), "cost_pct": round(100 * (1 - flooded / base), 1),
            "flooder": out}  # fmt: skip


def get(port: int, path: str, **headers: str) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def poll(port: int, seconds: float) -> None:
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        get(port, "/recordings")
        n += 1
    print(json.dumps({"gets": n}), flush=True)


def probe_list(checkpoint: str, tmp: Path, seconds: float, n: int = 250) -> dict:
    root = tmp / "rec-list"
    proc, port = spawn(checkpoint, root)
    try:  # one real recording of about 2 s, made by this server
        with connect(f"ws://127.0.0.1:{port}/ws?seed=2", open_timeout=60, proxy=None) as ws:
            ws.send(json.dumps({"type": "record", "on": True}))
            t_end = time.monotonic() + 2.0
            while time.monotonic() < t_end:
                ws.recv(timeout=10)
            ws.send(json.dumps({"type": "record", "on": False}))
            while not (isinstance(m := ws.recv(timeout=30), str) and '"saved"' in m):
                pass
    finally:
        stop(proc)
    (first,) = [p for p in root.iterdir() if p.is_dir()]
    meta_bytes = (first / "meta.json").stat().st_size
    for i in range(n - 1):
        shutil.copytree(first, root / f"20240101-000000-{i:03d}")
    proc, port = spawn(checkpoint, root)
    try:
        status, body = get(port, "/recordings")
        listed = len(json.loads(body)) if status == 200 else None
        ms = []
        for _ in range(20):
            t0 = time.perf_counter()
            get(port, "/recordings")
            ms.append((time.perf_counter() - t0) * 1000)
        poller = helper("--poll", str(port), str(seconds + 6))
        time.sleep(1.0)
        polled = fps(port, seconds)
        gets = json.loads(poller.communicate(timeout=120)[0])["gets"]
    finally:
        stop(proc)
    return {"recordings": listed, "meta_json_bytes": meta_bytes,
            "get_ms_median": round(statistics.median(ms), 1), "get_ms_max": round(max(ms), 1),
            "fps_while_polling": round(polled, 2), "polls": gets}  # fmt: skip


def ws_status(port: int, host: str, origin: str) -> int:
    """The HTTP status of a websocket handshake with these Host and Origin headers."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(
            f"GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        return int(s.recv(100).split()[1])


def probe_rebind(checkpoint: str, tmp: Path) -> dict:
    proc, port = spawn(checkpoint, tmp / "rec-rebind")
    try:
        evil = f"evil.example:{port}"
        return {
            "ws_evil_host_and_origin": ws_status(port, evil, f"http://{evil}"),
            "recordings_evil_host": get(port, "/recordings", Host=evil)[0],
            "ws_ftp_origin": ws_status(port, f"127.0.0.1:{port}", f"ftp://127.0.0.1:{port}"),
            "ws_own_origin": ws_status(port, f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"),
        }
    finally:
        stop(proc)


def silent_socket(port: int) -> socket.socket:
    """A websocket client that completes the handshake, then never reads nor sends."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return s


def probe_silent(checkpoint: str, tmp: Path, limit: float = 120.0) -> dict:
    proc, port = spawn(checkpoint, tmp / "rec-silent", "--max-sessions", "2")
    socks = []
    try:
        socks = [silent_socket(port), silent_socket(port)]
        t0 = time.monotonic()
        time.sleep(1.0)
        while time.monotonic() - t0 < limit:
            with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=60, proxy=None) as ws:
                if json.loads(ws.recv(timeout=60))["type"] == "hello":
                    return {"slot_free_after_s": round(time.monotonic() - t0, 1)}
            time.sleep(0.5)
        return {"slot_free_after_s": f"> {limit}"}
    finally:
        for s in socks:
            s.close()
        stop(proc)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--only", default="flood,list,rebind,silent")
    p.add_argument("--serve", action="append", default=[],
                   help="extra `wm play` flag for the flood probe, e.g. --serve=--flood-close-s=1000")  # fmt: skip
    p.add_argument("--flood", nargs=2, metavar=("PORT", "SECONDS"))
    p.add_argument("--poll", nargs=2, metavar=("PORT", "SECONDS"))
    args = p.parse_args()
    if args.flood:
        return flood(int(args.flood[0]), float(args.flood[1]))
    if args.poll:
        return poll(int(args.poll[0]), float(args.poll[1]))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in args.only.split(","):
            if name == "flood":
                out[name] = probe_flood(args.checkpoint, tmp, args.seconds, *args.serve)
            elif name == "list":
                out[name] = probe_list(args.checkpoint, tmp, args.seconds)
            elif name == "rebind":
                out[name] = probe_rebind(args.checkpoint, tmp)
            elif name == "silent":
                out[name] = probe_silent(args.checkpoint, tmp)
            print(json.dumps({name: out[name]}), file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
