"""What every training stage shares: distributed set-up, rank-0 logging, EMA, a
time-budgeted resumable loop, loss logs and their plots.

A run folder holds:
    model.safetensors / model.json   EMA weights (what inference loads) + config, step
    train.safetensors / train.json   raw weights and optimizer state, for resuming
    log.jsonl                        one line per log interval
    loss.png                         the loss curves, redrawn at every checkpoint
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from worldmodel import checkpoint


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Dist:
    """Single process, or one process per rank under torchrun (nccl on CUDA, gloo on CPU)."""
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if "RANK" not in os.environ:
        return Dist(device=torch.device("cuda" if want_cuda else device if device != "auto" else "cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    if want_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        # share the cores between the processes instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
        dev = torch.device("cpu")
    return Dist(rank, world, local, dev)


def teardown_distributed() -> None:
    """Destroy the process group, if any, while the interpreter is still whole: a gloo group
    left to interpreter shutdown can abort the process after its work is done."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(model: nn.Module, d: Dist) -> None:
    """Mean of the gradients over ranks. The student trains through `forward_step`, which
    DDP's forward hook never sees, so the reduction is explicit."""
    if d.world == 1:
        return
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(d.world)


def print0(*args: Any, **kwargs: Any) -> None:
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


class EMA:
    """Exponential moving average of a model's parameters (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm up: follow closely at first
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def cosine_lr(step: int, base: float, warmup: int, total: int, floor: float = 0.1) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    if total <= warmup:
        return base
    progress = min(1.0, (step - warmup) / (total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class Run:
    """A run folder: resumable state, EMA export, logs and plots. Only rank 0 writes."""

    def __init__(self, out: str | Path, kind: str, config: dict[str, Any], d: Dist):
        self.out = Path(out)
        self.kind = kind
        self.config = config
        self.d = d
        if d.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "log.jsonl"

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer,
               ema: EMA | None) -> int:
        """Load train.* if present; returns the step to continue from (0 for a new run)."""
        if not checkpoint.exists(self.out / "train"):
            return 0
        tensors, meta = checkpoint.load(self.out / "train", self.d.device)
        if meta.get("kind") != self.kind:
            raise ValueError(f"{self.out} holds a {meta.get('kind')} run, not {self.kind}")
        unwrap(model).load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer.load_state_dict(checkpoint.unflatten_optimizer(tensors, meta["optimizer"]))
        if ema is not None:
            ema.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        print0(f"resumed {self.out} at step {meta['step']}")
        return int(meta["step"])

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None,
             step: int, extra: dict[str, Any] | None = None,
             export_tensors: dict[str, torch.Tensor] | None = None) -> None:
        if not self.d.main:
            return
        raw = unwrap(model).state_dict()
        opt_tensors, opt_rest = checkpoint.flatten_optimizer(optimizer.state_dict())
        tensors = {f"model.{k}": v for k, v in raw.items()} | opt_tensors
        if ema is not None:
            tensors |= {f"ema.{k}": v for k, v in ema.model.state_dict().items()}
        meta = {"kind": self.kind, "step": step, "config": self.config, **(extra or {})}
        checkpoint.save(self.out / "train", tensors, meta | {"optimizer": opt_rest})
        export = export_tensors if export_tensors is not None else (ema.model if ema else unwrap(model)).state_dict()
        checkpoint.save(self.out / "model", export, meta)
        plot_log(self.log_path, self.out / "loss.png", title=f"{self.kind}: {self.out.name}")

    def log(self, row: dict[str, Any]) -> None:
        if self.d.main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(row) + "\n")


def plot_log(log_path: Path, png: Path, title: str = "") -> None:
    """One panel per logged quantity whose name contains 'loss' or 'gain' (or all numbers if
    none), over every row that has it."""
    if not log_path.is_file():
        return
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = list(dict.fromkeys(
        k for r in rows for k, v in r.items() if k != "step" and isinstance(v, (int, float))))
    keys = [k for k in numeric if "loss" in k or "gain" in k] or numeric
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.4 * len(keys)), squeeze=False)
    for ax, k in zip(axes[:, 0], keys):
        pts = [(r["step"], r[k]) for r in rows if k in r]
        ax.plot(*zip(*pts), lw=1)
        ax.set_ylabel(k)
        ax.grid(alpha=0.3)
        if all(v > 0 for _, v in pts):
            ax.set_yscale("log")
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def loop(start: int, max_steps: int, max_minutes: float, d: Dist, desc: str) -> Iterator[int]:
    """Yields steps from start until max_steps or the time budget runs out, with a progress
    bar on rank 0. The budget is agreed across ranks so that all stop at the same step."""
    from tqdm import tqdm

    began = time.monotonic()
    bar = tqdm(total=max_steps, initial=start, desc=desc, disable=not d.main, smoothing=0.02,
               dynamic_ncols=True)
    for step in range(start, max_steps):
        yield step
        bar.update(1)
        out_of_time = torch.tensor(float(time.monotonic() - began > max_minutes * 60))
        if dist.is_initialized():
            dist.all_reduce(out_of_time, op=dist.ReduceOp.MAX)
        if out_of_time.item():
            print0(f"\ntime budget of {max_minutes} min reached after step {step}")
            break
    bar.close()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
