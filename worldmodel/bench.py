"""`wm bench`: speed and memory of the student next to the teacher, in one run on one machine.

    wm bench --checkpoint runs/world-model                     # readable table
    wm bench --checkpoint runs/world-model --device cuda --json
    wm bench --checkpoint runs/world-model --teacher runs/teacher/model --teacher-steps 32

student  `WorldSession.step` at batch 1, as a player gets frames: its few denoising steps with the
         KV cache, then the tokenizer's decode to uint8; timed per frame after a warm-up.
teacher  `teacher_rollout` one frame at a time, as `wm sample` dreams: `--teacher-steps` Euler
         steps per frame over a clip of the teacher's length, each step a doubled batch when
         `--teacher-cfg` is not 1; its latents are decoded by the same tokenizer, so both
         rates are frames a player could see. The teacher's speed does not depend on its
         weights: without `--teacher` the student's own network runs in bidirectional mode
         and the output says "teacher_weights": "architecture-only".
memory   the process's resident set (and on CUDA the allocator's peak) after 100 frames of a
         session and after `--long` frames: a rolling KV cache keeps them equal.

    wm bench --checkpoint default --players 1,2,4,8 --json       # many players instead

players  for each count N, N players each on a thread of its own stepping as fast as frames
         come: "separate" gives each a `WorldSession` (batch 1, as `wm play` serves today),
         "batched" puts all N on one `BatchedWorld` of N rows (`--rows R` for a fixed R).
         Aggregate frames/s over the timed window, per-player frames/s and p50/p95 frame
         time, CPU ms per frame (the players' own threads for separate sessions, the
         scheduler thread for batched: the work a frame costs, which other jobs on a shared
         machine do not inflate as they inflate wall time), and the sessions the device
         holds at the model's frame rate (`worldmodel.scheduler.sessions_at_rate`).

Frames come from the real game (context) under a fixed script of walking and turning. On
CUDA every clock is read after a synchronize. Progress goes to stderr; `--json` prints one
JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worldmodel.actions import Action, stack
from worldmodel.attention import resolve_backend
from worldmodel.checkpoint import load_teacher
from worldmodel.flags import add_config_arguments, config_from_args
from worldmodel.game import Game
from worldmodel.model import DiT
from worldmodel.sampling import TeacherConfig, teacher_rollout
from worldmodel.session import WorldSession, freeze_heap, resolve_checkpoint
from worldmodel.tokenizer import Tokenizer, frames_to_tensor, tensor_to_frames

MEMORY_EARLY = 100  # session frames before the first memory reading


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_mb() -> float:
    """Resident set size of this process now, in MiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the peak is the best there is
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency_stats(seconds: list[float]) -> dict:
    """Per-frame wall times -> frames/s (frames over their summed time) and percentiles."""
    ms = np.asarray(seconds) * 1e3
    return {"fps": float(len(ms) / (ms.sum() / 1e3)), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "mean_ms": float(ms.mean()),
            "frames": int(len(ms))}


def script(n: int, seed: int = 0) -> list[Action]:
    """Walking with smooth turns, strafes and looks: what a player does, fixed by the seed."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        yaw = float(np.clip(np.sin(i / 15.0) * 0.6 + rng.normal(0, 0.1), -1, 1))
        out.append(Action(forward=bool(i % 50 < 40), left=bool(i % 70 > 60),
                          sprint=bool(i % 90 > 70), yaw=yaw,
                          pitch=float(np.clip(0.3 * np.sin(i / 23.0), -1, 1))))
    return out


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        info |= {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda}
    return info


def backend_of(model: DiT) -> str:
    """The attention backend `auto` resolves to for this model's unmasked steps (the student's
    window and the teacher's bidirectional clip both attend without a mask)."""
    p = next(model.parameters())
    q = torch.empty(1, model.cfg.heads, 1, model.cfg.head_dim, device=p.device, dtype=p.dtype)
    return resolve_backend(q, None, model.cfg.attn_backend)


def game_clip(size: int, n: int, seed: int) -> tuple[np.ndarray, list[Action]]:
    """n real frames and the actions that led into them (the first is no input)."""
    game = Game(seed, size)
    actions = [Action()] + script(n - 1, seed)
    frames = [game.reset()] + [game.step(a) for a in actions[1:]]
    return np.stack(frames), actions


@torch.no_grad()
def decode(tok: Tokenizer, z: torch.Tensor) -> np.ndarray:
    """Latents (N, C, h, w) -> uint8 frames on the host, as `WorldSession.step` does it."""
    return tensor_to_frames(tok.decode(z).float().cpu()).numpy()


def bench_decode(tok: Tokenizer, n: int, device: torch.device) -> float:
    """Median ms of one frame's decode (1, C, h, w) -> uint8 on the host."""
    c, h = tok.cfg.latent_channels, tok.cfg.latent_size
    z = torch.randn(1, c, h, h, device=device)
    times = []
    for i in range(n + 3):
        sync(device)
        t0 = time.perf_counter()
        decode(tok, z)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def bench_student(session: WorldSession, frames: int, warmup: int, long: int, seed: int) -> dict:
    """Time `frames` steps after `warmup`, and keep the session going to `long` frames for
    the memory readings; the last `frames` steps of the long run are timed too."""
    from tqdm import tqdm

    dev = session.device
    ctx_frames, ctx_actions = game_clip(session.size, session.context_length, seed)
    total = max(long, warmup + frames)
    acts = script(total, seed + 1)
    session.reset(ctx_frames, ctx_actions, seed=seed)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times, memory, cuda_memory = [], {}, {}
    for i in tqdm(range(total), desc="student", unit="frame", file=sys.stderr, leave=False,
                  mininterval=1.0):
        sync(dev)
        t0 = time.perf_counter()
        session.step(acts[i])
        sync(dev)
        times.append(time.perf_counter() - t0)
        n = session.frame_index
        if n in (MEMORY_EARLY, long):
            memory[f"after_{n}"] = rss_mb()
            if dev.type == "cuda":
                cuda_memory[f"after_{n}"] = {
                    "allocated": torch.cuda.memory_allocated(dev) / 2**20,
                    "max_allocated": torch.cuda.max_memory_allocated(dev) / 2**20}
    stats = latency_stats(times[warmup:warmup + frames])
    stats["late_p50_ms"] = latency_stats(times[-frames:])["p50_ms"]  # unchanged by session length
    return {"student": stats, "memory": memory, "cuda_memory": cuda_memory or None}


@torch.no_grad()
def bench_teacher(model: DiT, tok: Tokenizer, sampling: TeacherConfig, *, frames: int,
                  warmup: int, seed: int) -> dict:
    """Dream frame after frame from a clip_len - 1 context, timing model + decode per frame."""
    dev = next(model.parameters()).device
    ctx_n = sampling.clip_len - 1
    real, actions = game_clip(tok.cfg.frame_size, ctx_n, seed)
    acts = torch.from_numpy(stack(actions + script(warmup + frames, seed + 2)))[None].to(dev)
    z = tok.encode(frames_to_tensor(torch.from_numpy(real)).to(dev))[None]  # (1, ctx, C, h, w)
    ctx, ctx_a = z, acts[:, :ctx_n]
    g = torch.Generator(device=dev).manual_seed(seed)
    times, model_times = [], []
    for i in range(warmup + frames):
        a = acts[:, ctx_n + i:ctx_n + i + 1]
        sync(dev)
        t0 = time.perf_counter()
        new = teacher_rollout(model, ctx, ctx_a, a, sampling, generator=g)  # (1, 1, C, h, w)
        sync(dev)
        t1 = time.perf_counter()
        decode(tok, new[0])
        t2 = time.perf_counter()
        if i >= warmup:
            times.append(t2 - t0)
            model_times.append(t1 - t0)
        log(f"teacher frame {i + 1}/{warmup + frames}: {(t2 - t0) * 1e3:.0f} ms"
            + (" (warm-up)" if i < warmup else ""))
        ctx = torch.cat([ctx, new], 1)[:, -ctx_n:]
        ctx_a = torch.cat([ctx_a, a], 1)[:, -ctx_n:]
    passes = sampling.steps * (2 if sampling.cfg_scale != 1.0 else 1)
    return latency_stats(times) | {
        "model_ms": float(np.median(model_times) * 1e3), "steps": sampling.steps,
        "cfg": sampling.cfg_scale, "clip_len": sampling.clip_len, "mode": sampling.mode,
        "network_passes_per_frame": passes,
        "params": model.param_count()}


def play_threads(sessions: list, frames: int, warmup: int, seed: int) -> dict:
    """Each session on a thread of its own: reset, `warmup` steps, then `frames` timed steps.
    Aggregate frames/s over the window from the first timed step to the last; per player,
    frames/s over its own window and the p50/p95 of every timed frame time."""
    import threading

    ctx, ctx_actions = game_clip(sessions[0].size, sessions[0].context_length, seed)
    dev = sessions[0].device
    spans: list[list[tuple[float, float]]] = [[] for _ in sessions]
    cpu = [0.0] * len(sessions)  # CPU time of each player's own thread over its timed steps
    errors: list[BaseException] = []
    start = threading.Barrier(len(sessions))

    def play(i: int) -> None:
        try:
            s = sessions[i]
            s.reset(ctx, ctx_actions, seed=seed + i)
            acts = script(warmup + frames, seed + 1 + i)
            start.wait()
            for k, a in enumerate(acts):
                t0, c0 = time.perf_counter(), time.thread_time()
                s.step(a)
                sync(dev)
                if k >= warmup:
                    spans[i].append((t0, time.perf_counter()))
                    cpu[i] += time.thread_time() - c0
        except BaseException as e:  # reported after the join
            errors.append(e)
            start.abort()

    threads = [threading.Thread(target=play, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    first = min(sp[0][0] for sp in spans)
    last = max(sp[-1][1] for sp in spans)
    each = [len(sp) / (sp[-1][1] - sp[0][0]) for sp in spans]
    ms = np.array([(b - a) * 1e3 for sp in spans for a, b in sp])
    return {"aggregate_fps": len(ms) / (last - first), "per_player_fps": float(np.mean(each)),
            "slowest_player_fps": float(min(each)), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "frames_per_player": frames,
            "thread_cpu_ms_per_frame": float(sum(cpu) * 1e3 / len(ms))}


def bench_players(template: WorldSession, counts: list[int], frames: int, warmup: int,
                  seed: int, rows: int | None = None) -> list[dict]:
    """For each player count: N separate sessions against N sessions on one BatchedWorld."""
    from worldmodel.scheduler import BatchedWorld

    out = []
    for n in counts:
        separate = [WorldSession(template.tokenizer, template.model, template.sampler.cfg,
                                 name=template.name, fps=template.fps) for _ in range(n)]
        for s in separate:
            s.sampler.fuse_write = template.sampler.fuse_write
        log(f"{n} player(s): separate sessions")
        row = {"players": n, "separate": play_threads(separate, frames, warmup, seed)}
        row["separate"]["cpu_ms_per_frame"] = row["separate"].pop("thread_cpu_ms_per_frame")
        log(f"{n} player(s): batched, {rows or n} rows")
        with BatchedWorld(template, rows or n) as world:
            b = play_threads([world.session() for _ in range(n)], frames, warmup, seed)
            # the work is on the scheduler thread: its CPU time over every tick, warm-up too
            b.pop("thread_cpu_ms_per_frame")
            row["batched"] = b | {"rows": world.rows, "ticks": world.ticks,
                                  "cpu_ms_per_frame": world.cpu_s * 1e3 / world.steps_done}
        log(f"  separate {row['separate']['per_player_fps']:.1f}, batched "
            f"{row['batched']['per_player_fps']:.1f} frames/s per player")
        out.append(row)
    return out


def run_players(args: BenchConfig, device: torch.device) -> dict:
    from worldmodel.scheduler import sessions_at_rate

    counts = sorted(set(args.players))
    if not counts or counts[0] < 1:
        raise SystemExit("wm bench: --players takes positive counts, e.g. 1,2,4,8")
    folder = resolve_checkpoint(args.checkpoint)
    template = WorldSession.from_checkpoint(folder, device=str(device))
    freeze_heap()
    if args.separate_write:
        template.sampler.fuse_write = False
    p = next(template.model.parameters())
    out: dict = {"device": device.type, "resolution": template.size,
                 "dtype": str(p.dtype).split(".")[-1]} | machine(device)
    out |= {"checkpoint": str(folder), "checkpoint_hash": template.checkpoint_hash,
            "target_fps": template.fps, "attention": backend_of(template.model),
            "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}
    out["players"] = bench_players(template, counts, args.frames, args.warmup, args.seed,
                                   args.rows or None)
    log("sessions at the target rate")
    held, tried = sessions_at_rate(template, max_rows=args.max_rows)
    out["sessions_at_target"] = {"sessions": held, "per_player_fps_by_rows": tried}
    return out


def players_table(r: dict) -> str:
    hw = r.get("gpu") or r["cpu"]
    rows = [f"device      {r['device']} ({hw}), {r['dtype']}, torch {r['torch']}, {r['threads']} "
            f"thread(s), cores {r['affinity']}, load {r['load_avg']}",
            "",
            f"{'players':>7} | {'separate: total':>15} {'each':>6} {'p50':>6} {'p95':>6} {'cpu':>5} | "
            f"{'batched: total':>14} {'each':>6} {'p50':>6} {'p95':>6} {'cpu':>5} {'rows':>4}"]
    for p in r["players"]:
        s, b = p["separate"], p["batched"]
        rows.append(f"{p['players']:>7} | {s['aggregate_fps']:>15.1f} {s['per_player_fps']:>6.1f} "
                    f"{s['p50_ms']:>6.1f} {s['p95_ms']:>6.1f} {s['cpu_ms_per_frame']:>5.1f} | "
                    f"{b['aggregate_fps']:>14.1f} {b['per_player_fps']:>6.1f} {b['p50_ms']:>6.1f} "
                    f"{b['p95_ms']:>6.1f} {b['cpu_ms_per_frame']:>5.1f} {b['rows']:>4}")
    held = r["sessions_at_target"]
    rows += ["", f"frames/s, frame times and CPU ms per frame; sessions held at {r['target_fps']} frames/s each: "
             f"{held['sessions']} (per player by rows: "
             + ", ".join(f"{k}: {v:.1f}" for k, v in held["per_player_fps_by_rows"].items()) + ")"]
    return "\n".join(rows)


def run(args: BenchConfig) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else
                          "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("wm bench: --device cuda but CUDA is not available")
    if args.players:
        return run_players(args, device)
    if args.long < MEMORY_EARLY:
        raise SystemExit(f"wm bench: --long must be at least {MEMORY_EARLY}")
    if args.frames < 1 or args.teacher_frames < 1:
        raise SystemExit("wm bench: --frames and --teacher-frames must be positive")
    folder = resolve_checkpoint(args.checkpoint)
    session = WorldSession.from_checkpoint(folder, device=str(device))
    freeze_heap()  # as `wm play` does once its worlds are loaded
    if args.separate_write:
        session.sampler.fuse_write = False
    torch.manual_seed(args.seed)
    p = next(session.model.parameters())
    cfg, scfg = session.model.cfg, session.sampler.cfg
    log(f"bench {folder} on {device}: {session.size}px, student {session.model.param_count() / 1e6:.2f}M "
        f"params, {scfg.steps} steps/frame, window {scfg.window}")

    out: dict = {"device": device.type, "resolution": session.size, "dtype": str(p.dtype).split(".")[-1]}
    out |= machine(device)
    out |= {"checkpoint": str(folder), "checkpoint_hash": session.checkpoint_hash,
            "model": {"params": session.model.param_count(), "dim": cfg.dim, "depth": cfg.depth,
                      "heads": cfg.heads, "tokens_per_frame": cfg.tokens_per_frame,
                      "latent": [cfg.latent_channels, cfg.latent_size, cfg.latent_size]},
            "sampler": {"steps": scfg.steps, "window": scfg.window, "sinks": scfg.sinks,
                        "chunk": scfg.chunk, "context_length": scfg.context_length,
                        "fuse_write": session.sampler.fuse_write}}

    student = bench_student(session, args.frames, args.warmup, args.long, args.seed)
    out["student"] = student["student"] | {"target_fps": session.fps}
    out["decode_ms"] = bench_decode(session.tokenizer, max(10, min(args.frames, 100)), device)
    mem = student["memory"]
    out["memory_mb"] = mem | {"growth": mem[f"after_{args.long}"] - mem[f"after_{MEMORY_EARLY}"]}
    out["cuda_memory_mb"] = student["cuda_memory"]
    out["long_frames"] = args.long

    if args.teacher:
        teacher, meta = load_teacher(args.teacher, device)
        latent = (teacher.cfg.latent_channels, teacher.cfg.latent_size)
        if latent != (cfg.latent_channels, cfg.latent_size):
            raise SystemExit(f"wm bench: the teacher takes latents {latent} (channels, size), "
                             f"the checkpoint's tokenizer makes {(cfg.latent_channels, cfg.latent_size)}")
        out["teacher_weights"] = str(args.teacher)
        sampling = meta.sampling(args.teacher_steps, args.teacher_cfg)
    else:
        teacher = session.model
        sampling = TeacherConfig(steps=args.teacher_steps, cfg_scale=args.teacher_cfg,
                                 clip_len=args.teacher_clip_len)
        out["teacher_weights"] = "architecture-only"
    log(f"teacher ({out['teacher_weights']}): {sampling.steps} steps, cfg {sampling.cfg_scale}, "
        f"clip {sampling.clip_len}")
    out["teacher"] = bench_teacher(teacher, session.tokenizer, sampling,
                                   frames=args.teacher_frames, warmup=1, seed=args.seed)
    out["attention"] = {"student": backend_of(session.model), "teacher": backend_of(teacher)}
    out["speedup"] = out["student"]["fps"] / out["teacher"]["fps"]
    return out


def table(r: dict) -> str:
    s, t, m = r["student"], r["teacher"], r["memory_mb"]
    hw = r.get("gpu") or r["cpu"]
    early, late = f"after_{MEMORY_EARLY}", f"after_{r['long_frames']}"
    rows = [
        f"device      {r['device']} ({hw}), {r['dtype']}, torch {r['torch']}, {r['threads']} "
        f"thread(s) of {r['cpu_count']} cores, load {r['load_avg']}",
        f"attention   student {r['attention']['student']}, teacher {r['attention']['teacher']}",
        f"model       {r['model']['params'] / 1e6:.2f}M params, {r['resolution']}px frames, "
        f"{r['model']['tokens_per_frame']} tokens/frame, {r['sampler']['steps']} steps/frame",
        "",
        f"{'':<10}{'frames/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'frames':>8}",
        f"{'student':<10}{s['fps']:>10.1f}{s['p50_ms']:>10.2f}{s['p95_ms']:>10.2f}{s['frames']:>8}",
        f"{'teacher':<10}{t['fps']:>10.3f}{t['p50_ms']:>10.1f}{t['p95_ms']:>10.1f}{t['frames']:>8}",
        "",
        f"speedup     {r['speedup']:.1f}x (teacher: {t['steps']} steps, cfg {t['cfg']}, clip "
        f"{t['clip_len']}, {t['mode']}, weights: {r['teacher_weights']})",
        f"decode      {r['decode_ms']:.2f} ms/frame (included in both rates)",
        f"late p50    {s['late_p50_ms']:.2f} ms/frame over the last frames of the long session",
        f"memory      RSS {m[early]:.0f} MiB after {MEMORY_EARLY} frames, {m[late]:.0f} MiB after "
        f"{r['long_frames']} (growth {m['growth']:+.1f} MiB)",
    ]
    if r.get("cuda_memory_mb"):
        c = r["cuda_memory_mb"]
        rows.append(f"cuda        max allocated {c[early]['max_allocated']:.0f} MiB after "
                    f"{MEMORY_EARLY} frames, {c[late]['max_allocated']:.0f} MiB after {r['long_frames']}")
    realtime = "yes" if s["fps"] >= s["target_fps"] else "no"
    rows.append(f"real time   {realtime} (student {s['fps']:.1f} frames/s, game {s['target_fps']} frames/s)")
    return "\n".join(rows)


@dataclass
class BenchConfig:
    """`wm bench`; the flags' help says what each field means."""

    checkpoint: str = "default"
    device: str = "auto"
    frames: int = 200
    warmup: int = 10
    long: int = 5000
    teacher: str | None = None
    teacher_steps: int = TeacherConfig.steps
    teacher_cfg: float = TeacherConfig.cfg_scale
    teacher_frames: int = 4
    teacher_clip_len: int = TeacherConfig.clip_len
    threads: int = 0
    seed: int = 1_000_000
    separate_write: bool = False
    players: tuple[int, ...] = ()
    rows: int = 0
    max_rows: int = 64
    json: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, BenchConfig(), choices={"device": ["auto", "cpu", "cuda"]}, helps={
        "checkpoint": "world-model folder or name under assets/",
        "frames": "student frames timed after warm-up", "warmup": "student frames before timing",
        "long": "session length for the memory reading",
        "teacher": "teacher checkpoint stem; without it the architecture is timed",
        "teacher_frames": "teacher frames timed after one warm-up",
        "teacher_clip_len": "clip length when no teacher checkpoint says its own",
        "threads": "torch CPU threads (0: torch's default)",
        "seed": "world seed of the context frames",
        "separate_write": "cache each frame with a pass of its own, not inside the next "
                          "frame's first step (to measure what the fused write saves)",
        "players": "player counts, e.g. 1,2,4,8: batched against separate sessions "
                   "instead of the student/teacher bench",
        "rows": "with --players: rows of the batched world (0: as many as players)",
        "max_rows": "with --players: the most sessions the capacity search tries",
        "json": "print one JSON object on stdout"})


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(BenchConfig, args)
    result = run(cfg)
    render = players_table if cfg.players else table
    print(json.dumps(result) if cfg.json else render(result))
    return 0
