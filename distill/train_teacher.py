"""Train the teacher: an action-conditioned flow-matching DiT on cached latent clips.

    wm train teacher --data data/train --tokenizer runs/tokenizer/model --out runs/teacher --model cpu
    wm train teacher --data data/tiny --tokenizer runs/tok-tiny/model --out runs/t-tiny --model tiny --steps 20

Each clip of F frames starts with a random number of clean context frames (t = 0, or a
little noise so the model tolerates its own imperfect frames as context); the other frames
are noised to one logit-normal flow time per clip (`--noise uniform`, the default) or to a
level of their own each (`--noise independent`, diffusion forcing). The loss covers only
the non-context frames. Uniform noise is what the teacher meets when it samples and when it
scores the student's clips in DMD; with independent levels a bidirectional teacher can read
a noisy frame's motion off its cleaner neighbours, past and future, and learns to ignore
the actions.
Actions are dropped for a whole clip with probability `action_dropout`, which trains the
unconditional branch that classifier-free guidance on actions needs.

`--prev-frame` gives each frame's tokens the previous frame's input latent as well (frame
stacking, `DiTConfig.prev_frame`); the students distilled from such a teacher inherit it.
`--prev-warp` (with `--prev-frame`) first moves that latent by a zoom and a shift that the
network reads off the frame's action and learns with the rest (`DiTConfig.prev_warp`).
`--init STEM` starts from a trained teacher's weights, with a fresh optimiser and schedule:
with `--prev-frame` / `--prev-warp` added, the new layers start at zero, so that training
starts from that teacher's function.

`--sink-gap G` trains on gapped clips as well: the first `--sink-frames` frames of a clip,
then the rest taken up to G frames later. That is what a student's KV cache holds at play
with sinks (the session's first frames, then its recent ones), with the same positions, so
the network learns to use an old view where it is still right and to follow the recent
frames where the player has moved on.

`--freeze-start P` makes a share P of the clips start from rest: the player stands at one
view with no input for a few frames, then acts as recorded, so that the network learns that
the controls move the view even when the context frames show no motion (the state a
student's own, too still, frames put it in).

`--mode causal` trains the same network with frame-causal attention: the many-step causal
model whose ODE trajectories initialise the student without peeking at future frames.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn.functional import conv2d, pad
from torch.utils.data import DataLoader, default_collate

from distill.common import EMA, Run, cosine_lr, count_params, loop, print0, setup_distributed
from distill.data import ClipDataset
from worldmodel import checkpoint, flow
from worldmodel.checkpoint import load_teacher
from worldmodel.flags import add_config_arguments, config_from_args
from worldmodel.model import PRESETS, DiT, get_config


@dataclass
class TeacherTrainConfig:
    data: str = "data/train"
    tokenizer: str = "runs/tokenizer/model"
    out: str = "runs/teacher"
    model: str = "cpu"  # network size: a preset of worldmodel.model.PRESETS
    prev_frame: bool = False  # frame stacking: see worldmodel.model.DiTConfig.prev_frame
    prev_warp: bool = False  # with prev_frame: move it by the action first (DiTConfig.prev_warp)
    # Start a new run from a trained teacher's weights (a checkpoint stem), with a fresh
    # optimiser and schedule; layers it lacks (--prev-frame, --prev-warp) start at zero.
    init: str = ""
    mode: str = "bidirectional"
    clip_len: int = 8
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    warmup: int = 200
    steps: int = 20000
    max_minutes: float = 60.0
    ema_decay: float = 0.999
    shift: float = 3.0
    noise: str = "uniform"  # "uniform": one flow time per clip; "independent": one per frame
    action_dropout: float = 0.1
    context_noise: float = 0.1
    # Largest std, in latent cells, of a Gaussian blur over a clip's context frames (drawn
    # per clip, uniform from 0): the soft frames a student writes into its own cache, seen
    # in training with sharp frames to follow. 0 = none.
    context_blur: float = 0.0
    # Gapped clips (`distill.data.ClipDataset`): with probability sink_gap_p a clip's first
    # sink_frames frames come up to sink_gap frames before the rest, as the student's sinks
    # sit before its recent frames at play; such a clip keeps them and at least one recent
    # frame as context. 0 = contiguous clips only.
    sink_gap: int = 0
    sink_frames: int = 4
    sink_gap_p: float = 0.5
    # Probability that a clip starts from rest (`freeze_start`): its first k frames become
    # frame k - 1 held still with no input, then the clip goes on as recorded. 0 = none.
    freeze_start: float = 0.0
    p_no_context: float = 0.1
    log_every: int = 25
    ckpt_every: int = 250
    workers: int = 1
    seed: int = 0
    device: str = "auto"


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of std sigma (latent cells) over the last two dims of x (..., h, w),
    each channel alone, edges reflected."""
    if sigma <= 0:
        return x
    r = min(int(np.ceil(3 * sigma)), min(x.shape[-2:]) - 1)  # reflect pads need r < size
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = (k / k.sum()).to(x)
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    y = x.reshape(-1, 1, h, w)
    y = conv2d(pad(y, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = conv2d(pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return y.reshape(*lead, h, w)


def freeze_start(latents: torch.Tensor, actions: torch.Tensor, p: float,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips that start from rest. latents (B, F, C, h, w), actions (B, F, A). With
    probability p per clip, its first k frames (k uniform in 2..F-1) become frame k - 1, the
    player standing at that view with no input, and the clip then goes on with its recorded
    actions and frames: the player stood, then set off. Play data walks for long stretches,
    so it rarely shows motion that the context frames do not already show; these clips do."""
    B, F = latents.shape[:2]
    if p <= 0 or F < 3:
        return latents, actions
    g = dict(generator=generator)
    k = torch.randint(2, F, (B,), **g)
    k[torch.rand(B, **g) >= p] = 0  # these clips stay as they are
    k = k.to(latents.device)
    held = torch.arange(F, device=k.device)[None, :] < k[:, None]  # (B, F): frames at rest
    still = latents[torch.arange(B, device=k.device), (k - 1).clamp(min=0)]  # (B, C, h, w)
    latents = torch.where(held[..., None, None, None], still[:, None], latents)
    actions = torch.where(held[..., None], torch.zeros_like(actions), actions)
    return latents, actions


def make_batch(latents: torch.Tensor, actions: torch.Tensor, cfg: TeacherTrainConfig,
               generator: torch.Generator | None = None, gap: torch.Tensor | None = None):
    """Noise a batch of clips. latents: (B, F, C, h, w); actions: (B, F, A); gap (B,): the
    clips' gaps after their first sink_frames frames (0 = contiguous), or None.

    Returns (x_t, t, action_mask, noise, weight): weight (B, F) is 0 on context frames,
    which are noised to at most context_noise and, with context_blur, blurred first. A
    gapped clip's context is its sink frames and at least one frame after the gap.
    """
    B, F = latents.shape[:2]
    dev = latents.device
    g = dict(generator=generator)
    n_ctx = torch.randint(1, F, (B,), **g)
    n_ctx[torch.rand(B, **g) < cfg.p_no_context] = 0
    if gap is not None:
        gapped = gap.cpu() > 0
        n_ctx[gapped] = n_ctx[gapped].clamp(min=cfg.sink_frames + 1)
    is_ctx = torch.arange(F)[None, :] < n_ctx[:, None]  # (B, F)
    t = flow.sample_time((B, F), cfg.shift, **g)
    if cfg.noise == "uniform":
        t = t[:, :1].expand(B, F)
    t = torch.where(is_ctx, torch.rand(B, F, **g) * cfg.context_noise, t)
    noise = torch.randn(latents.shape, **g)
    if cfg.context_blur:
        sigmas = (torch.rand(B, **g) * cfg.context_blur).tolist()
        soft = torch.stack([blur(clip, s) for clip, s in zip(latents, sigmas)])
        latents = torch.where(is_ctx.to(latents.device)[..., None, None, None], soft, latents)
    keep = torch.rand(B, **g) >= cfg.action_dropout
    t, noise, is_ctx, keep = t.to(dev), noise.to(dev), is_ctx.to(dev), keep.to(dev)
    x_t = flow.add_noise(latents, noise, t)
    return x_t, t, keep, noise, (~is_ctx).float()


@torch.no_grad()
def action_gain(net: DiT, x0: torch.Tensor, actions: torch.Tensor, mode: str,
                shift: float) -> float:
    """How much the model uses the actions, in percent: the drop in flow loss on the last
    frame of fixed clips (every earlier frame clean, as when sampling) from dropped actions
    to the real ones, over three noise levels. Near 0 means the actions are ignored."""
    B, F = x0.shape[:2]
    g = torch.Generator().manual_seed(0)
    weight = torch.zeros(B, F, device=x0.device)
    weight[:, -1] = 1
    loss = {True: 0.0, False: 0.0}  # summed over the levels, with and without the actions
    for u in (0.25, 0.5, 0.75):
        t = torch.zeros(B, F, device=x0.device)
        t[:, -1] = flow.shift_time(torch.tensor(u), shift)
        noise = torch.randn(x0.shape, generator=g).to(x0.device)
        x_t = flow.add_noise(x0, noise, t)
        for keep in loss:
            mask = torch.full((B,), keep, device=x0.device)
            v = net(x_t, t, actions, mode=mode, action_mask=mask)
            loss[keep] += flow.flow_loss(v.float(), x0, noise, weight).item()
    return 100.0 * (loss[False] - loss[True]) / loss[False]


NEW_LAYERS = ("prev_embed.", "warp.")  # zero-initialised: the network starts as without them


def init_from(net: DiT, stem: str, mode: str) -> None:
    """Load a trained teacher's weights into `net`, whose layers beyond the checkpoint's may
    only be the zero-initialised ones (`NEW_LAYERS`), so that it starts as that teacher."""
    old, meta = load_teacher(stem)
    if meta.mode != mode:
        raise ValueError(f"--init {stem} is a {meta.mode} teacher, not {mode}")
    same = {k: v for k, v in asdict(meta.model).items() if k not in ("prev_frame", "prev_warp")}
    want = {k: v for k, v in asdict(net.cfg).items() if k in same}
    if same != want:
        diff = sorted(k for k in same if same[k] != want[k])
        raise ValueError(f"--init {stem} has another network: {', '.join(diff)} differ")
    keys = net.load_state_dict(old.state_dict(), strict=False)
    if keys.unexpected_keys or any(not k.startswith(NEW_LAYERS) for k in keys.missing_keys):
        raise ValueError(f"--init {stem} does not fit: it has {keys.unexpected_keys} that this "
                         f"network lacks, and lacks {keys.missing_keys}")
    print0(f"started from {stem}" + (f" (new: {', '.join(keys.missing_keys)})"
                                     if keys.missing_keys else ""))


def train(cfg: TeacherTrainConfig) -> DiT:
    if cfg.mode not in ("bidirectional", "causal"):
        raise ValueError(f"mode must be bidirectional or causal, got {cfg.mode!r}")
    if cfg.noise not in ("uniform", "independent"):
        raise ValueError(f"noise must be uniform or independent, got {cfg.noise!r}")
    if not 0 <= cfg.freeze_start <= 1:
        raise ValueError(f"--freeze-start is a probability in [0, 1], got {cfg.freeze_start}")
    if cfg.sink_gap and cfg.sink_frames + 1 >= cfg.clip_len:
        raise ValueError(f"--sink-frames {cfg.sink_frames} leaves no frame to learn in clips of "
                         f"{cfg.clip_len} after a recent context frame")
    d = setup_distributed(cfg.device)
    torch.manual_seed(cfg.seed + d.rank)
    ds = ClipDataset(cfg.data, clip_len=cfg.clip_len, seed=cfg.seed, latents=True,
                     gap=cfg.sink_gap, gap_frames=cfg.sink_frames, p_gap=cfg.sink_gap_p)
    ds.rank = d.rank
    C, h = ds.sample(np.random.default_rng(0))["latents"].shape[1:3]
    model_cfg = get_config(cfg.model, latent_channels=C, latent_size=h, prev_frame=cfg.prev_frame,
                           prev_warp=cfg.prev_warp)
    net = DiT(model_cfg).to(d.device)
    if cfg.init:
        init_from(net, cfg.init, cfg.mode)
    print0(f"{cfg.mode} DiT {cfg.model}: {count_params(net) / 1e6:.2f}M params, latents "
           f"{C}x{h}x{h}, clips of {cfg.clip_len}, {len(ds.episodes)} episodes / "
           f"{ds.frames_total} frames, {d.world} process(es) on {d.device}")
    model = torch.nn.parallel.DistributedDataParallel(net) if d.world > 1 else net
    decay, no_decay = [], []
    for p in net.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    ema = EMA(net, cfg.ema_decay)
    kind = "teacher" if cfg.mode == "bidirectional" else "causal_teacher"
    run = Run(cfg.out, kind, asdict(cfg), d)
    start = run.resume(model, opt, ema)
    meta = {"model": asdict(model_cfg), "mode": cfg.mode, "clip_len": cfg.clip_len,
            "shift": cfg.shift, "tokenizer": cfg.tokenizer,
            "tokenizer_hash": checkpoint.file_hash(f"{cfg.tokenizer}.safetensors")
            if checkpoint.exists(cfg.tokenizer) else None}
    loader = iter(DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.workers,
                             persistent_workers=cfg.workers > 0))
    # the action-gain probe: the same contiguous clips with or without gapped training
    plain = (ClipDataset(cfg.data, clip_len=cfg.clip_len, seed=cfg.seed, latents=True)
             if cfg.sink_gap else ds)
    probe = default_collate([plain.sample(np.random.default_rng(12345 + i)) for i in range(32)])
    probe_x0, probe_a = probe["latents"].to(d.device), probe["actions"].to(d.device)

    def save(done: int) -> None:
        gain = action_gain(net, probe_x0, probe_a, cfg.mode, cfg.shift)
        run.log({"step": done, "action_gain_pct": gain})
        run.save(model, opt, ema, done, meta)

    done = start  # steps completed
    for step in loop(start, cfg.steps, cfg.max_minutes, d, kind):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.lr, cfg.warmup, cfg.steps)
        batch = next(loader)
        x0 = batch["latents"].to(d.device)
        actions = batch["actions"].to(d.device)
        x0, actions = freeze_start(x0, actions, cfg.freeze_start)
        x_t, t, keep, noise, weight = make_batch(x0, actions, cfg, gap=batch.get("gap"))
        v = model(x_t, t, actions, mode=cfg.mode, action_mask=keep)
        loss = flow.flow_loss(v.float(), x0, noise, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(net, step)
        if step % cfg.log_every == 0:
            run.log({"step": step, "loss": loss.item(), "grad_norm": grad_norm.item(),
                     "lr": opt.param_groups[0]["lr"]})
        done = step + 1
        if done % cfg.ckpt_every == 0:
            save(done)
    if done % cfg.ckpt_every or done == start:
        save(done)
    print0(f"{kind} saved to {run.out}/model.safetensors")
    return ema.model


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, TeacherTrainConfig(), choices={
        "model": sorted(PRESETS), "mode": ["bidirectional", "causal"],
        "noise": ["uniform", "independent"]})


def main(args: argparse.Namespace) -> int:
    train(config_from_args(TeacherTrainConfig, args))
    return 0
