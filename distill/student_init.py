"""Student initialisation: the teacher's weights, taught to jump from the student's noise
levels to the teacher's ODE end points with frame-causal attention and a KV cache.

    wm distill init --preset cpu --pairs runs/ode --teacher runs/teacher/model --out runs/student-init

Every clip of ODE pairs is played exactly as `StudentSampler` plays a session: the clean
context prefills the cache, then each generated frame (or chunk) is seen at one of the K
student levels, a random one per clip, with gradient; the student predicts x0 = x_t - t v,
and the clean frame (the ODE end point) is written into the cache without gradient, as the
sampler writes its own output. Window and sinks are those of inference and travel with the
checkpoint. Loss: MSE between the predicted x0 and the ODE end point.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from distill.common import (
    EMA,
    Run,
    average_gradients,
    cosine_lr,
    count_params,
    loop,
    print0,
    setup_distributed,
)
from distill.data import PairSet
from worldmodel import flow
from worldmodel.checkpoint import load_teacher
from worldmodel.model import DiT
from worldmodel.sampling import StudentConfig, StudentSampler


@dataclass
class InitConfig:
    pairs: str = "runs/ode"
    teacher: str = "runs/teacher/model"  # the weights the student starts from
    out: str = "runs/student-init"
    window: int = StudentConfig.window
    sinks: int = StudentConfig.sinks
    chunk: int = StudentConfig.chunk
    cache_level: float = StudentConfig.cache_level  # flow time of the frames the cache holds
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    warmup: int = 50
    steps: int = 3000
    max_minutes: float = 60.0
    ema_decay: float = 0.99
    grad_clip: float = 1.0
    log_every: int = 10
    ckpt_every: int = 100
    seed: int = 0
    device: str = "auto"


PRESETS: dict[str, InitConfig] = {
    "tiny": InitConfig(pairs="runs/ode-tiny", teacher="runs/t-tiny/model", out="runs/init-tiny",
                       window=3, batch_size=4, lr=1e-3, warmup=2, steps=10, max_minutes=2.0,
                       log_every=2, ckpt_every=5),
    "cpu": InitConfig(batch_size=8, steps=2000, max_minutes=20.0),
    "gpu": InitConfig(batch_size=32, lr=5e-5, steps=5000, warmup=200, max_minutes=120.0,
                      log_every=25, ckpt_every=250),
}


def init_backward(student: DiT, batch: dict[str, torch.Tensor], sampler: StudentConfig,
                  generator: torch.Generator | None = None):
    """Play a batch of ODE pairs through the student and backpropagate the x0 loss.

    batch: context (B, Fc, C, h, w), actions (B, Fc + N, A), levels (B, N, K, C, h, w),
    target (B, N, C, h, w). Returns the mean loss and, per level, the summed loss of the
    frames seen at that level and their count (for logging).
    """
    context, actions, levels, target = (batch[k] for k in ("context", "actions", "levels", "target"))
    B, Fc = context.shape[:2]
    N, K = levels.shape[1:3]
    dev = context.device
    times = flow.student_timesteps(sampler.steps, sampler.shift).to(dev, context.dtype)
    if K != len(times):
        raise ValueError(f"pairs hold {K} levels, the student takes {len(times)} steps")
    play = StudentSampler(student, sampler, B)
    play.prefill(context, actions[:, :Fc])
    err_sum, count = torch.zeros(K), torch.zeros(K)
    for s in range(0, N, sampler.chunk):
        e = min(s + sampler.chunk, N)
        a = actions[:, Fc + s:Fc + e]
        k = torch.randint(K, (B,), generator=generator).to(dev)
        x = levels[:, s:e][torch.arange(B, device=dev), :, k]  # (B, c, C, h, w): clip b at level k[b]
        t = times[k][:, None].expand(B, e - s)  # (B, c)
        x0 = flow.predict_x0(x, student.forward_step(x, t, a, play.cache), t)
        err = (x0.float() - target[:, s:e]).pow(2).flatten(2).mean(-1)  # (B, c)
        # The cache carries no gradient, so each chunk's graph stands alone: backpropagate it
        # now and keep only one in memory.
        (err.sum() / (B * N)).backward()
        with torch.no_grad():
            # the teacher's frame goes into the cache as the sampler would write its own
            student.forward_step(*play.cache_input(target[:, s:e], None), a, play.cache,
                                 write=True)
        err_sum.index_add_(0, k.cpu(), err.detach().mean(1).cpu())
        count.index_add_(0, k.cpu(), torch.ones(B))
    return (err_sum.sum() / count.sum()).item(), err_sum, count


def train(cfg: InitConfig) -> DiT:
    """Train the student from ODE pairs (resumable, time-budgeted)."""
    d = setup_distributed(cfg.device)
    torch.manual_seed(cfg.seed + d.rank)
    pairs = PairSet(cfg.pairs)
    index = pairs.index
    student, meta = load_teacher(cfg.teacher, d.device)
    student.train().requires_grad_(True)
    shape = (student.cfg.latent_channels, student.cfg.latent_size)
    pair_shape = (index["model"]["latent_channels"], index["model"]["latent_size"])
    if shape != pair_shape:
        raise ValueError(f"pairs are latents of {pair_shape} (channels, size), the teacher "
                         f"{cfg.teacher} takes {shape}")
    sampler = StudentConfig(steps=index["settings"]["levels"], shift=index["settings"]["shift"],
                            window=cfg.window, sinks=cfg.sinks, chunk=cfg.chunk,
                            cache_level=cfg.cache_level,
                            context_length=index["settings"]["context"])
    levels = flow.student_timesteps(sampler.steps, sampler.shift)
    if not torch.allclose(levels, torch.tensor(index["times"]), atol=1e-5):
        raise ValueError(f"pairs are at t = {index['times']}, the student's levels are "
                         f"{levels.tolist()}")
    print0(f"student init from {cfg.teacher} ({count_params(student) / 1e6:.2f}M params) on "
           f"{len(pairs)} clips of {index['settings']['target']} ODE pairs; window "
           f"{cfg.window}, sinks {cfg.sinks}, levels {[round(t, 3) for t in levels.tolist()]}")
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            weight_decay=cfg.weight_decay)
    ema = EMA(student, cfg.ema_decay)
    run = Run(cfg.out, "student_init", asdict(cfg), d)
    start = run.resume(student, opt, ema)
    out_meta = {"model": asdict(student.cfg), "sampler": asdict(sampler), "stage": "init",
                "teacher": cfg.teacher, "pairs": cfg.pairs,
                "tokenizer_hash": meta.tokenizer_hash}  # None where the teacher knew none
    err_sum, count, grad_norms = torch.zeros(sampler.steps), torch.zeros(sampler.steps), []
    done = start
    for step in loop(start, cfg.steps, cfg.max_minutes, d, "init"):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.lr, cfg.warmup, cfg.steps)
        rows = torch.randint(len(pairs), (cfg.batch_size,)).tolist()
        opt.zero_grad(set_to_none=True)
        _, e, c = init_backward(student, pairs.batch(rows, d.device), sampler)
        average_gradients(student, d)
        grad_norms.append(torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip).item())
        opt.step()
        ema.update(student, step)
        done = step + 1
        err_sum += e
        count += c
        if (step + 1) % cfg.log_every == 0:
            row = {"step": step + 1, "loss": (err_sum.sum() / count.sum()).item()}
            row |= {f"loss_t{t:.2f}": (err_sum[i] / count[i]).item()
                    for i, t in enumerate(levels.tolist()) if count[i] > 0}
            row |= {"grad_norm": sum(grad_norms) / len(grad_norms), "lr": opt.param_groups[0]["lr"]}
            run.log(row)
            err_sum.zero_()
            count.zero_()
            grad_norms.clear()
        if (step + 1) % cfg.ckpt_every == 0:
            run.save(student, opt, ema, step + 1, out_meta)
    run.save(student, opt, ema, done, out_meta)
    print0(f"student saved to {run.out}/model.safetensors")
    return ema.model
