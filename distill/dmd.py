"""Distribution matching distillation (DMD) with Self-Forcing rollouts.

    wm distill dmd --preset cpu --data data/train --teacher runs/teacher/model \\
        --student runs/student-init/model --out runs/student-dmd

The generator (the initialised student) rolls out clips the way it plays: real context
frames prefill its KV cache, then it generates every later frame under the clip's real
actions with its own cache, window and sinks. Each frame stops at a random one of the K
denoising steps and returns that step's x0 prediction; only that step carries gradient, the
earlier ones run without, and the cache is written with the detached frame.

Two scores look at the rollout, noised to one flow time per clip (context frames clean):
the frozen teacher with CFG on actions (real score) and a critic initialised from the
teacher (fake score) that keeps learning the student's distribution by flow matching on
the student's detached rollouts, `critic_steps` updates per generator update. The generator
follows the difference of their x0 predictions, normalised per clip (DMD2):

    grad = (x0_fake - x0_real) / mean|x - x0_real|,   loss = 0.5 * mse(x, (x - grad).detach())

With rollout_frames beyond the clip, the student plays on until its cache holds only its own
frames, as it does a few frames into a session, and the scores see the last clip_len frames:
the student's own earlier frames as clean context, then the frames that carry gradient.
This trains the student where it plays, not only next to real context.

With sink_gap G > 0 (for a student whose sampler has S sinks) each rollout starts from S
real frames taken 1 to G frames before its real context, then the context: the student's
cache then holds old sinks and recent frames, as it does at play once the session's first
frames are far behind, and the regression onto the real frames says when the old view is
still there and when the player has moved on from it.

With real_weight w > 0 the generator also regresses its scored frames onto the clip's real
frames under the same actions, w * 0.5 * mse(x, real) (DMD2's regression term): the real
clip says where the actions lead, which the teacher's score of a weak teacher says faintly.

With gan_weight > 0 a discriminator joins them (DMD2's GAN term): a small head reads the
critic's last-block tokens of the scored frames and gives each frame a logit, real or the
student's. The critic and head learn it on the clip's own real frames against the student's
frames after the same actions, noised alike, with weight gan_critic_weight beside the
critic's flow matching; the generator adds gan_weight * softplus(-logit) of its frames,
through a critic and head that it does not train. The real clips, not the teacher, say what
a frame looks like after those actions, sharp and moved.

Logged: gen_loss (the regression and GAN terms included), critic_loss, dmd_grad_norm (RMS of
grad), and real_x0_loss, the MSE of the student's whole rollout against the real frames of
the clip, a cheap check that it does not drift. With the GAN term also the discriminator's
loss and mean logits on real and student frames, the generator's GAN loss, and
gan_grad_norm, the RMS of that term's gradient on the frames in dmd_grad_norm's units (times
the frames' element count, as the DMD term's gradient is grad over it).
The run folder's model.safetensors is the EMA of the generator, a student checkpoint.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from distill.common import (
    EMA,
    Run,
    average_gradients,
    count_params,
    loop,
    print0,
    setup_distributed,
)
from distill.data import ClipDataset
from worldmodel import flow
from worldmodel.checkpoint import load_student, load_teacher
from worldmodel.model import DiT
from worldmodel.sampling import StudentConfig, StudentSampler, TeacherConfig, guided_velocity


@dataclass
class DmdConfig:
    data: str = "data/train"
    teacher: str = "runs/teacher/model"  # real score, and the critic's starting point
    student: str = "runs/student-init/model"
    out: str = "runs/student-dmd"
    clip_len: int = 8  # frames the scores see: context (the student's context_length) + scored
    # Frames each rollout generates; 0 = clip_len - context_length. Longer rollouts play on
    # past the point where the student's cache holds only its own frames, as it does after a
    # few frames of play; the last clip_len frames are scored and only their generated
    # frames carry gradient.
    rollout_frames: int = 0
    # >0: each rollout's cache starts with the sampler's sinks taken from up to this many
    # frames before its real context (see the module's docstring). 0 = contiguous clips.
    sink_gap: int = 0
    batch_size: int = 4
    gen_lr: float = 2e-5
    critic_lr: float = 2e-5
    beta1: float = 0.0
    beta2: float = 0.999
    critic_steps: int = 5  # critic updates per generator update
    teacher_cfg: float = TeacherConfig.cfg_scale  # guidance of the real score
    real_weight: float = 0.0  # weight of the regression onto the real frames (0 = DMD alone)
    gan_weight: float = 0.0  # the generator's GAN term (0 = no discriminator)
    gan_critic_weight: float = 1.0  # the discriminator's loss beside the critic's flow matching
    t_min: float = 0.02
    t_max: float = 0.98
    steps: int = 1000  # generator updates
    max_minutes: float = 60.0
    ema_decay: float = 0.99
    grad_clip: float = 1.0
    log_every: int = 5
    ckpt_every: int = 50
    workers: int = 0  # clips of cached latents load in microseconds
    seed: int = 0
    device: str = "auto"


PRESETS: dict[str, DmdConfig] = {
    "tiny": DmdConfig(data="data/tiny", teacher="runs/t-tiny/model",
                      student="runs/init-tiny/model", out="runs/dmd-tiny", clip_len=4,
                      rollout_frames=4, batch_size=2, gen_lr=1e-4, critic_lr=1e-4, critic_steps=2, steps=3,
                      max_minutes=2.0, log_every=1, ckpt_every=2),
    "cpu": DmdConfig(steps=600, max_minutes=40.0, ckpt_every=25),
    "gpu": DmdConfig(batch_size=16, gen_lr=1e-5, critic_lr=1e-5, steps=3000, max_minutes=240.0,
                     log_every=10, ckpt_every=100, workers=2),
}


def rollout(student: DiT, context: torch.Tensor, actions: torch.Tensor, sampler: StudentConfig,
            generator: torch.Generator | None = None, grad_frames: int | None = None
            ) -> torch.Tensor:
    """Self-Forcing: the student generates the frames after `context` as it does at play time.

    context (B, Fc, C, h, w) clean; actions (B, Fc + N, A). Each chunk runs the sampler's steps
    up to a random exit step and returns that step's x0 prediction: every step has to land
    on the data, and one step with gradient per frame keeps the graph as small as a single
    forward per frame. Under grad mode only the exit step records a graph. With grad_frames
    set, the frames before the last grad_frames are played as at inference (all steps, no
    graph) and only the last ones exit early. Returns (B, N, C, h, w).
    """
    B, Fc = context.shape[:2]
    first_scored = Fc if grad_frames is None else actions.shape[1] - grad_frames
    play = StudentSampler(student, sampler, B, fuse_write=False)
    play.prefill(context, actions[:, :Fc])
    out = []
    for s in range(Fc, actions.shape[1], sampler.chunk):
        a = actions[:, s:s + sampler.chunk]
        if s < first_scored:  # history: played as at inference, without a graph
            out.append(play.step(a, generator))
            continue
        exit_step = int(torch.randint(len(play.timesteps), (1,), generator=generator,
                                      device=context.device))
        out.append(play.step(a, generator, exit_step=exit_step))
    return torch.cat(out, 1)


def split_clip(batch: dict[str, torch.Tensor], lead: int, context_length: int,
               device: torch.device | str = "cpu"
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of training clips -> (the rollout's clean context: `lead` old sink frames, then
    the real context; the actions of the whole clip; the real frames after the context)."""
    lat = batch["latents"].to(device)
    n = lead + context_length
    return lat[:, :n], batch["actions"].to(device), lat[:, n:]


def noised_clip(context: torch.Tensor, x: torch.Tensor, cfg: DmdConfig, shift: float,
                generator: torch.Generator | None = None):
    """Context + detached generated frames, the generated ones noised to one flow time per
    clip, uniform in [t_min, t_max] and then shifted as in training. Returns the clean clip
    (B, F, C, h, w), the noise, the noisy clip and t (B, F), 0 on the context."""
    clip = torch.cat([context, x.detach()], 1)
    B, Fc = context.shape[:2]
    u = cfg.t_min + (cfg.t_max - cfg.t_min) * torch.rand(B, generator=generator, device=x.device)
    t = torch.zeros(clip.shape[:2], device=x.device, dtype=x.dtype)
    t[:, Fc:] = flow.shift_time(u, shift)[:, None]
    noise = torch.randn(clip.shape, generator=generator, device=x.device, dtype=x.dtype)
    return clip, noise, flow.add_noise(clip, noise, t), t


def critic_loss(critic: DiT, context: torch.Tensor, x: torch.Tensor, actions: torch.Tensor,
                cfg: DmdConfig, shift: float, mode: str,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Flow matching on the student's detached frames x (B, N, ...) after the clean context:
    the critic learns the velocity of the student's distribution. Context frames unweighted."""
    clip, noise, x_t, t = noised_clip(context, x, cfg, shift, generator)
    weight = torch.zeros_like(t)
    weight[:, context.shape[1]:] = 1
    v = critic(x_t, t, actions, mode=mode)
    return flow.flow_loss(v.float(), clip.float(), noise.float(), weight)


class GanHead(nn.Module):
    """DMD2's discriminator head on the critic: tokens (B, F, N, D) -> a logit per frame (B, F),
    the mean over the frame's tokens of a small MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(),
                                 nn.Linear(dim, 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens).squeeze(-1).mean(-1)


def gan_logits(critic: DiT, head: GanHead, context: torch.Tensor, x: torch.Tensor,
               actions: torch.Tensor, cfg: DmdConfig, shift: float, mode: str,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The discriminator's logits (B, N) for frames x (B, N, C, h, w) after the clean context
    under actions (B, Fc + N, A), x noised as the critic's clips are. Gradient reaches x."""
    _, noise, _, t = noised_clip(context, x, cfg, shift, generator)
    x_t = flow.add_noise(torch.cat([context, x], 1), noise, t)
    _, tokens = critic(x_t, t, actions, mode=mode, features=True)
    return head(tokens[:, context.shape[1]:]).float()


def critic_gan_loss(critic: DiT, head: GanHead, context: torch.Tensor, x: torch.Tensor,
                    real_context: torch.Tensor, real: torch.Tensor, actions: torch.Tensor,
                    cfg: DmdConfig, shift: float, mode: str,
                    generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The critic step's two losses from one forward: the student's detached frames x
    (B, N, ...) after their context, and the real frames after theirs, both under actions
    (B, Fc + N, A) and noised alike. The critic's flow matching on the student's frames (as
    `critic_loss`) and the discriminator's non-saturating GAN loss, real against student.
    Returns (flow loss, GAN loss, mean real logit, mean fake logit)."""
    B, Fc = x.shape[0], context.shape[1]
    clip, noise, x_t, t = noised_clip(torch.cat([context, real_context]),
                                      torch.cat([x.detach(), real]), cfg, shift, generator)
    v, tokens = critic(x_t, t, actions.repeat(2, 1, 1), mode=mode, features=True)
    weight = torch.zeros_like(t)
    weight[:B, Fc:] = 1  # the student's frames only
    loss_flow = flow.flow_loss(v.float(), clip.float(), noise.float(), weight)
    logits = head(tokens[:, Fc:]).float()
    fake, true = logits[:B], logits[B:]
    loss_gan = F.softplus(fake).mean() + F.softplus(-true).mean()
    return loss_flow, loss_gan, true.mean().detach(), fake.mean().detach()


@contextmanager
def frozen(*nets: nn.Module):
    """The networks' parameters record no gradient inside the block: a loss through them
    trains only what lies before them."""
    flags = [[p.requires_grad for p in n.parameters()] for n in nets]
    for n in nets:
        n.requires_grad_(False)
    try:
        yield
    finally:
        for n, f in zip(nets, flags):
            for p, r in zip(n.parameters(), f):
                p.requires_grad_(r)


def dmd_loss(x: torch.Tensor, context: torch.Tensor, actions: torch.Tensor, teacher: DiT,
             critic: DiT, cfg: DmdConfig, shift: float, mode: str,
             generator: torch.Generator | None = None, real: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The generator's DMD loss for its frames x (B, N, C, h, w) that follow the clean context
    (B, Fc, ...) under actions (B, Fc + N, A), plus cfg.real_weight * 0.5 * mse(x, real) with
    the real frames (B, N, ...) of the clip. Returns (loss, RMS of the DMD gradient)."""
    Fc = context.shape[1]
    with torch.no_grad():
        _, _, x_t, t = noised_clip(context, x, cfg, shift, generator)
        v_real = guided_velocity(teacher, x_t, t, actions, mode=mode, cfg_scale=cfg.teacher_cfg)
        v_fake = critic(x_t, t, actions, mode=mode)
        x0_real = flow.predict_x0(x_t, v_real, t)[:, Fc:].float()
        x0_fake = flow.predict_x0(x_t, v_fake, t)[:, Fc:].float()
        gen = x.detach().float()
        norm = (gen - x0_real).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
        grad = (x0_fake - x0_real) / norm
    loss = 0.5 * F.mse_loss(x.float(), gen - grad)
    if cfg.real_weight:
        if real is None:
            raise ValueError("real_weight needs the clip's real frames")
        loss = loss + cfg.real_weight * 0.5 * F.mse_loss(x.float(), real.float())
    return loss, grad.pow(2).mean().sqrt()


def train(cfg: DmdConfig) -> DiT:
    """Run DMD from an initialised student (resumable, time-budgeted)."""
    d = setup_distributed(cfg.device)
    torch.manual_seed(cfg.seed + d.rank)
    teacher, t_meta = load_teacher(cfg.teacher, d.device)
    gen, s_meta = load_student(cfg.student, d.device)
    if gen.cfg != teacher.cfg:
        raise ValueError(f"student {cfg.student} and teacher {cfg.teacher} differ in shape")
    sampler = s_meta.sampler
    if cfg.clip_len <= sampler.context_length:
        raise ValueError(f"clip_len {cfg.clip_len} leaves no frame after the student's "
                         f"{sampler.context_length} context frames")
    scored = cfg.clip_len - sampler.context_length  # generated frames the scores see
    n_roll = cfg.rollout_frames or scored
    if n_roll < scored:
        raise ValueError(f"rollout_frames {cfg.rollout_frames} is shorter than the "
                         f"{scored} scored frames of a {cfg.clip_len}-frame clip")
    if cfg.sink_gap and not sampler.sinks:
        raise ValueError(f"--sink-gap needs a student whose sampler has sinks; {cfg.student} "
                         "has none (give `wm distill init` --sinks)")
    lead = sampler.sinks if cfg.sink_gap else 0  # old frames before the real context
    mode, shift = t_meta.mode, t_meta.shift
    gen.train().requires_grad_(True)
    critic = copy.deepcopy(teacher).train().requires_grad_(True)
    nets = nn.ModuleDict({"generator": gen, "critic": critic})
    groups = [{"params": list(gen.parameters()), "lr": cfg.gen_lr},
              {"params": list(critic.parameters()), "lr": cfg.critic_lr}]
    head = None
    if cfg.gan_weight:
        head = GanHead(gen.cfg.dim).to(d.device)
        nets["gan_head"] = head
        groups.append({"params": list(head.parameters()), "lr": cfg.critic_lr})
    disc = nn.ModuleList([critic] + ([head] if head is not None else []))  # what the critic step trains
    # One Adam, one parameter group per network. Adam's state is per parameter and a network
    # without gradients is skipped, so the updates stay independent while the run folder
    # saves and resumes a single optimizer.
    opt = torch.optim.Adam(groups, betas=(cfg.beta1, cfg.beta2))
    ema = EMA(gen, cfg.ema_decay)
    run = Run(cfg.out, "student_dmd", asdict(cfg), d)
    start = run.resume(nets, opt, ema)
    out_meta = {"model": asdict(gen.cfg), "sampler": asdict(sampler), "stage": "dmd",
                "teacher": cfg.teacher, "student_init": cfg.student,
                "tokenizer_hash": s_meta.tokenizer_hash}

    # a resumed run draws other clips than the ones it has already trained on
    ds = ClipDataset(cfg.data, clip_len=lead + sampler.context_length + n_roll,
                     seed=cfg.seed + start, latents=True, gap=cfg.sink_gap,
                     gap_frames=lead, p_gap=1.0)
    ds.rank = d.rank
    loader = iter(DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.workers,
                             persistent_workers=cfg.workers > 0))
    Fc = sampler.context_length

    def next_clip():
        return split_clip(next(loader), lead, Fc, d.device)

    def play(context, actions):
        """Roll out; returns the scored window: its clean context (real frames, or the
        student's own after a long rollout), the generated frames, their actions, and the
        whole rollout."""
        x = rollout(gen, context, actions, sampler, grad_frames=scored)
        seq = torch.cat([context, x], 1)[:, -cfg.clip_len:]
        return seq[:, :Fc].detach(), x[:, -scored:], actions[:, -cfg.clip_len:], x

    def update(net: nn.Module, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(net, d)
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()

    print0(f"DMD: student {cfg.student} ({count_params(gen) / 1e6:.2f}M params), {mode} "
           f"teacher {cfg.teacher} with CFG {cfg.teacher_cfg}, rollouts of {n_roll} frames "
           f"after {Fc} context frames, the last {cfg.clip_len} scored, window {sampler.window}, sinks "
           f"{sampler.sinks}" + (f" taken up to {cfg.sink_gap} frames before the context"
                                 if lead else "")
           + f", {cfg.critic_steps} critic updates per generator update"
           + (f", GAN weight {cfg.gan_weight} (discriminator {cfg.gan_critic_weight})"
              if head is not None else ""))
    stats: dict[str, list[float]] = {}
    done = start
    for step in loop(start, cfg.steps, cfg.max_minutes, d, "dmd"):
        for _ in range(cfg.critic_steps):
            real_context, all_actions, real = next_clip()
            with torch.no_grad():
                context, x, actions, _ = play(real_context, all_actions)
            if head is None:
                loss_c = critic_loss(critic, context, x, actions, cfg, shift, mode)
                stats.setdefault("critic_loss", []).append(loss_c.item())
            else:  # the clip's own real frames in the scored window
                seq = torch.cat([real_context, real], 1)[:, -cfg.clip_len:]
                loss_c, loss_d, real_logit, fake_logit = critic_gan_loss(
                    critic, head, context, x, seq[:, :Fc], seq[:, Fc:], actions, cfg, shift, mode)
                for k, v in (("critic_loss", loss_c), ("gan_d_loss", loss_d),
                             ("gan_real_logit", real_logit), ("gan_fake_logit", fake_logit)):
                    stats.setdefault(k, []).append(v.item())
                loss_c = loss_c + cfg.gan_critic_weight * loss_d
            update(disc, loss_c)
        context, actions, real = next_clip()
        context, x, actions, whole = play(context, actions)
        loss_g, grad_norm = dmd_loss(x, context, actions, teacher, critic, cfg, shift, mode,
                                     real=real[:, -scored:])
        if head is not None:
            with frozen(critic, head):
                loss_gan = F.softplus(-gan_logits(critic, head, context, x, actions, cfg, shift,
                                                  mode)).mean()
            loss_g = loss_g + cfg.gan_weight * loss_gan
            stats.setdefault("gan_g_loss", []).append(loss_gan.item())
            if (step + 1) % cfg.log_every == 0:  # its pull on the frames, in dmd_grad_norm's units
                g_x, = torch.autograd.grad(cfg.gan_weight * loss_gan, x, retain_graph=True)
                stats.setdefault("gan_grad_norm", []).append(
                    (g_x.float().pow(2).mean().sqrt() * x.numel()).item())
        update(gen, loss_g)
        ema.update(gen, step)
        done = step + 1
        for k, v in (("gen_loss", loss_g), ("dmd_grad_norm", grad_norm),
                     ("real_x0_loss", F.mse_loss(whole.detach().float(), real.float()))):
            stats.setdefault(k, []).append(v.item())
        if done % cfg.log_every == 0:
            run.log({"step": done} | {k: sum(v) / len(v) for k, v in stats.items()})
            stats.clear()
        if done % cfg.ckpt_every == 0:
            run.save(nets, opt, ema, done, out_meta)
    run.save(nets, opt, ema, done, out_meta)
    print0(f"student saved to {run.out}/model.safetensors")
    return ema.model
