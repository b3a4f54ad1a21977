"""Train the frame tokenizer (convolutional autoencoder).

    wm train tokenizer --data data/train --val data/val --out runs/tokenizer --model cpu
    wm train tokenizer --data data/tiny --out runs/tok-tiny --model tiny --steps 30   # seconds
    wm train tokenizer --data data/w/train --val data/w/val --out runs/tok-4x --model cpu-4x
                                                              # 16x16 latents, for `cpu-16`

Loss: L1 + MSE on pixels. The latents get a little Gaussian noise during training so that
the decoder tolerates the imperfect latents a diffusion model produces. After training the
per-channel latent statistics are measured on training frames, so that `encode` gives unit
variance latents; then PSNR/SSIM are measured on held-out episodes.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from distill.common import EMA, Run, cosine_lr, count_params, loop, print0, setup_distributed
from distill.data import ClipDataset, open_episodes
from worldmodel.flags import add_config_arguments, config_from_args
from worldmodel.metrics import psnr, ssim
from worldmodel.tokenizer import (
    TOKENIZER_PRESETS,
    Tokenizer,
    TokenizerConfig,
    frames_to_tensor,
    tensor_to_frames,
)


@dataclass
class TokenizerTrainConfig:
    data: str = "data/train"
    val: str | None = None
    out: str = "runs/tokenizer"
    model: str = "cpu"  # network size: a preset of worldmodel.tokenizer.TOKENIZER_PRESETS
    batch_size: int = 32
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    warmup: int = 200
    steps: int = 6000
    max_minutes: float = 30.0
    latent_noise: float = 0.1
    latent_penalty: float = 1e-4  # weight of mean z^2 in the loss: keeps the latents bounded
    ema_decay: float = 0.999
    log_every: int = 50
    ckpt_every: int = 500
    workers: int = 1
    seed: int = 0
    device: str = "auto"


@torch.no_grad()
def measure_latent_stats(tok: Tokenizer, data: str, frames: int, device) -> None:
    ds = ClipDataset(data, clip_len=1, seed=1234)
    rng = np.random.default_rng(1234)
    zs = []
    for _ in range(0, frames, 64):
        batch = torch.stack([ds.sample(rng)["frames"][0] for _ in range(64)]).to(device)
        zs.append(tok.encoder(frames_to_tensor(batch)))
    tok.set_latent_stats(torch.cat(zs))


@torch.no_grad()
def evaluate(tok: Tokenizer, data: str, max_frames: int = 512, device="cpu") -> dict[str, float]:
    """Reconstruction PSNR/SSIM over up to max_frames frames spread over the episodes."""
    episodes = open_episodes(data, 1)
    per_ep = max(1, max_frames // len(episodes))
    ps, ss = [], []
    for ep in episodes:
        idx = np.linspace(0, len(ep) - 1, min(per_ep, len(ep))).astype(int)
        real = torch.from_numpy(np.array(ep.frames[idx]))
        rec = tensor_to_frames(tok.decode(tok.encode(frames_to_tensor(real).to(device))).cpu())
        ps.append(psnr(real, rec))
        ss.append(ssim(real, rec))
    return {"psnr": float(np.concatenate(ps).mean()), "ssim": float(np.concatenate(ss).mean()),
            "frames": int(sum(map(len, ps)))}


def train(cfg: TokenizerTrainConfig) -> Tokenizer:
    d = setup_distributed(cfg.device)
    torch.manual_seed(cfg.seed + d.rank)
    model_cfg = TOKENIZER_PRESETS[cfg.model]
    ds = ClipDataset(cfg.data, clip_len=1, seed=cfg.seed)
    ds.rank = d.rank
    size = ds.episodes[0].size
    if size != model_cfg.frame_size:
        model_cfg = TokenizerConfig(**{**asdict(model_cfg), "frame_size": size})
    tok = Tokenizer(model_cfg).to(d.device)
    print0(f"tokenizer {cfg.model}: {count_params(tok) / 1e6:.2f}M params "
           f"(decoder {count_params(tok.decoder) / 1e6:.2f}M), {len(ds.episodes)} episodes, "
           f"{ds.frames_total} frames at {size}px")
    model = torch.nn.parallel.DistributedDataParallel(tok) if d.world > 1 else tok
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0,
                            betas=(cfg.beta1, cfg.beta2))
    ema = EMA(tok, cfg.ema_decay)
    run = Run(cfg.out, "tokenizer", asdict(cfg), d)
    start = run.resume(model, opt, ema)
    loader = iter(DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.workers,
                             persistent_workers=cfg.workers > 0))
    meta = {"model": asdict(model_cfg)}
    step = start
    for step in loop(start, cfg.steps, cfg.max_minutes, d, "tokenizer"):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.lr, cfg.warmup, cfg.steps)
        x = frames_to_tensor(next(loader)["frames"][:, 0].to(d.device))  # (B, 3, S, S)
        rec, z = model(x, cfg.latent_noise)
        l1, mse = F.l1_loss(rec, x), F.mse_loss(rec, x)
        loss = l1 + mse + cfg.latent_penalty * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(tok, step)
        if step % cfg.log_every == 0:
            p = 10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10)).item()  # range -1..1
            run.log({"step": step, "loss": loss.item(), "l1_loss": l1.item(), "train_psnr": p})
        if (step + 1) % cfg.ckpt_every == 0:
            # A run stopped before its end leaves this checkpoint as its tokenizer, so it
            # carries latent stats too: without them its latents are not unit variance.
            measure_latent_stats(ema.model, cfg.data, 512, d.device)
            run.save(model, opt, ema, step + 1, meta)
    step += 1
    final = ema.model
    measure_latent_stats(final, cfg.data, 2048, d.device)
    if cfg.val and d.main:
        meta["val"] = evaluate(final, cfg.val, device=d.device)
        print0(f"held-out reconstruction: PSNR {meta['val']['psnr']:.2f} dB, "
               f"SSIM {meta['val']['ssim']:.3f} over {meta['val']['frames']} frames")
    run.save(model, opt, ema, step, meta, export_tensors=final.state_dict())
    print0(f"tokenizer saved to {run.out}/model.safetensors")
    return final


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, TokenizerTrainConfig(), choices={"model": sorted(TOKENIZER_PRESETS)})


def main(args: argparse.Namespace) -> int:
    train(config_from_args(TokenizerTrainConfig, args))
    return 0
