"""`wm play --workers N`: players spread over N `wm play` processes (one per device) behind
nginx, the websocket-aware load balancer from Debian's packages (`apt-get install nginx-light`).

    wm play --workers 2 --port 8765 --checkpoint runs/cpu/student --token s3cret

starts workers on the next ports (8766, 8767), each a full `wm play` with its own batched
world and session cap, writes nginx's configuration (app/deploy/nginx.conf filled in) to
--nginx-dir, and runs nginx in the foreground on --host:--port. Players use nginx's address
as they would use one server's: a new player goes to the worker with the fewest players
(least_conn), a full worker answers "busy" as always, /healthz is any worker's and
/workers/I/healthz is worker I's. The token and the Origin are checked by the workers.
Without nginx on the PATH the workers still start and the configuration is written, to be
run by hand with the command printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

from app.config import ServeConfig

log = logging.getLogger("wm.play")

TEMPLATE = Path(__file__).parent / "deploy" / "nginx.conf"


def render_nginx_conf(listen: str, ports: list[int], template: Path = TEMPLATE) -> str:
    """nginx.conf for workers on 127.0.0.1 at `ports`, players connecting at `listen`."""
    upstreams = "\n".join(f"        server 127.0.0.1:{p};" for p in ports)
    workers = "\n".join(
        f"        location = /workers/{i}/healthz {{\n"
        f"            proxy_pass http://127.0.0.1:{p}/healthz;\n"
        f"        }}" for i, p in enumerate(ports))
    conf = template.read_text()
    return conf.replace("@LISTEN@", listen).replace("@UPSTREAMS@", upstreams).replace(
        "@WORKERS@", workers)


def write_nginx_prefix(prefix: Path, listen: str, ports: list[int]) -> list[str]:
    """Write nginx.conf and its temp folders under prefix; returns the command that runs
    nginx there in the foreground (no root, nothing outside prefix)."""
    prefix = Path(prefix).resolve()
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render_nginx_conf(listen, ports))
    nginx = shutil.which("nginx") or "nginx"
    return [nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log"),
            "-g", "daemon off;"]


def worker_args(cfg: ServeConfig, port: int, index: int, workers: int) -> list[str]:
    """`wm play` flags of worker `index`: the settings given, its own port, its own device
    when the devices are numbered (cuda -> cuda:index), a share of the cores on CPU."""
    base = ServeConfig()
    out: list[str] = []
    for f in fields(ServeConfig):
        value, default = getattr(cfg, f.name), getattr(base, f.name)
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("host", "port", "device", "threads") or value is None or value == default:
            continue
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            out += [a for v in value for a in (flag, str(v))]
        else:
            out += [flag, str(value)]
    device = f"cuda:{index}" if cfg.device == "cuda" else cfg.device
    out += ["--device", device, "--host", "127.0.0.1", "--port", str(port), "--no-browser"]
    if device == "cpu":  # the workers share the cores
        out += ["--threads", str(max(1, (os.cpu_count() or 1) // workers))]
    return out


def start_workers(cfg: ServeConfig, workers: int) -> tuple[list[int], list[subprocess.Popen]]:
    """Workers on cfg.port+1 .. cfg.port+workers, each a `wm play` process of its own."""
    ports = [cfg.port + 1 + i for i in range(workers)]
    procs = [subprocess.Popen([sys.executable, "-m", "worldmodel.cli", "play",
                               *worker_args(cfg, port, i, workers)])
             for i, port in enumerate(ports)]
    return ports, procs


def stop(procs: list[subprocess.Popen], timeout: float = 30.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(cfg: ServeConfig, workers: int, nginx_dir: Path | None) -> int:
    if workers < 1:
        print("wm play: --workers must be at least 1", file=sys.stderr)
        return 2
    if cfg.port == 0:
        print("wm play: --workers needs a fixed --port (the workers take the next ones)",
              file=sys.stderr)
        return 2
    prefix = Path(nginx_dir) if nginx_dir else Path(tempfile.mkdtemp(prefix="wm-nginx-"))
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    ports, procs = start_workers(cfg, workers)
    command = write_nginx_prefix(prefix, f"{host}:{cfg.port}", ports)
    log.info("wm play: %d workers on ports %s; nginx configuration in %s", workers,
             ", ".join(map(str, ports)), prefix / "nginx.conf")
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    balancer: subprocess.Popen | None = None
    try:
        if shutil.which("nginx") is None:
            print("wm play: nginx is not installed (apt-get install nginx-light); the workers "
                  f"run; start the balancer with: {' '.join(command)}", file=sys.stderr)
        else:
            balancer = subprocess.Popen(command)
            url = f"http://{host}:{cfg.port}/" + (f"?token={cfg.token}" if cfg.token else "")
            print(f"wm play: nginx balancing {workers} workers at {url}", flush=True)
        while not stopping:
            if balancer is not None and balancer.poll() is not None:
                print(f"wm play: nginx exited with {balancer.returncode}; see "
                      f"{prefix / 'error.log'}", file=sys.stderr)
                return 1
            if any(p.poll() is not None for p in procs):
                print("wm play: a worker exited; stopping", file=sys.stderr)
                return 1
            time.sleep(0.2)
    finally:
        stop(([balancer] if balancer is not None else []) + procs)
    print("wm play: stopped", flush=True)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=0,
                   help="run this many `wm play` workers on the next ports behind nginx on "
                   "--port (app/scale.py); 0: one server, no balancer")
    p.add_argument("--nginx-dir", type=Path, default=None,
                   help="with --workers: where nginx's configuration and logs go (a temp folder)")
