"""Inverse dynamics: which action turned frame t-1 into frame t?

A small network reads a pair of frames and predicts the action of the step between them:
the six keys as logits (binary cross-entropy) and yaw, pitch by regression. Trained on real
game frames only, it is the judge of controllability: run on a world model's frames under
commanded actions, it shows whether the model's pictures move the way those actions move
the game. Its score on real frames is the ceiling; some inputs are invisible by nature
(jump while in the air, sprint while standing, forward against a wall, pitch at its limit).

    from distill.idm import ensure_idm
    idm, meta = ensure_idm("runs/idm/model", frame_size=64)  # loads it, or trains and saves it
    guesses = idm.predict(frames[:-1], frames[1:])           # [N, 8], as Action.to_vector

Training pairs come from worlds IDM_SEED_START.. under the explorer policy, with a share
of frames given random actions so that the network reads the picture rather than the
explorer's habits (forward with sprint, and so on). Those worlds lie below the evaluation
range and apart from the usual training range. Preset "tiny" trains in seconds (tests),
"default" in a few minutes on one CPU core at 64px.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.collect import Explorer
from worldmodel import checkpoint
from worldmodel.actions import ACTION_DIM, CAMERA, KEYS, Action
from worldmodel.game import Game
from worldmodel.tokenizer import frames_to_tensor

IDM_SEED_START = 500_000
CAMERA_SIGN_MIN = 0.1  # camera inputs smaller than this count as "no turn" for sign accuracy
CORR_SIZE = 32  # frames are compared at this resolution: a full turn is ~3 pixels here
LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


@dataclass
class IDMConfig:
    frame_size: int = 64
    channels: tuple[int, ...] = (32, 64, 96, 128)  # features, then one stride-2 conv each
    radius: int = 3  # largest shift compared, in pixels at CORR_SIZE
    hidden: int = 256
    episodes: int = 48  # training worlds
    frames: int = 200  # frames per training episode
    val_episodes: int = 4
    random_action_prob: float = 0.3
    steps: int = 1000
    batch_size: int = 32
    lr: float = 5e-3
    camera_weight: float = 5.0  # yaw/pitch MSE is small next to BCE; this evens them out
    seed: int = 0

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        k = self.frame_size // CORR_SIZE
        if self.frame_size % CORR_SIZE or k & (k - 1):
            raise ValueError(f"the IDM reads frames of {CORR_SIZE} x 2^k pixels, not {self.frame_size}")
        if len(self.channels) < 2 or CORR_SIZE >> (len(self.channels) - 1) < 1:
            raise ValueError("channels: the feature width, then 1 to 5 stage widths")


IDM_PRESETS: dict[str, IDMConfig] = {
    # seconds on one core: for tests
    "tiny": IDMConfig(channels=(8, 32, 32, 32), hidden=64, episodes=6, frames=80,
                      val_episodes=2, steps=100, batch_size=16, lr=1e-2),
    # a few minutes on a CPU core at 64px
    "default": IDMConfig(),
}


class IDM(nn.Module):
    """A correlation volume (how well each 3x3 luma patch of frame t-1 matches each patch of
    frame t within `radius`, at CORR_SIZE) next to conv features of frame t -> strided convs
    -> action. The volume says what moved where, whatever the world's colours: that is what
    the action decides, and a plain CNN on the two frames learns the palettes of its training
    worlds instead. The features of frame t add context (walls near, sky, floor)."""

    def __init__(self, cfg: IDMConfig):
        super().__init__()
        self.cfg = cfg
        c0, *rest = cfg.channels
        enc: list[nn.Module] = [nn.Conv2d(3, c0, 3, padding=1), nn.SiLU()]
        for _ in range(int(math.log2(cfg.frame_size // CORR_SIZE))):
            enc += [nn.Conv2d(c0, c0, 4, stride=2, padding=1), nn.SiLU()]
        self.encode = nn.Sequential(*enc, nn.Conv2d(c0, c0, 3, padding=1))
        layers: list[nn.Module] = []
        prev = (2 * cfg.radius + 1) ** 2 + c0
        for ch in rest:  # each stage halves the resolution
            layers += [nn.Conv2d(prev, ch, 4, stride=2, padding=1), nn.GroupNorm(1, ch), nn.SiLU()]
            prev = ch
        self.features = nn.Sequential(*layers)
        side = CORR_SIZE >> len(rest)
        # flatten, not pool: moving forward spreads the picture outwards, which averages to zero
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(prev * side * side, cfg.hidden),
                                  nn.SiLU(), nn.Linear(cfg.hidden, ACTION_DIM))

    @torch.no_grad()
    def correlation(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        """Normalised cross-correlation of 3x3 luma patches of prev (B, 3, S, S) with those of
        cur shifted by every (dy, dx) within the radius, at CORR_SIZE: (B, (2r+1)^2, s, s)."""
        r, s = self.cfg.radius, CORR_SIZE

        def patches(x):
            y = F.adaptive_avg_pool2d((x * LUMA.to(x)).sum(1, keepdim=True), s)  # (B, 1, s, s)
            p = F.unfold(y, 3, padding=1).view(len(x), 9, s, s)
            return F.normalize(p - p.mean(1, keepdim=True), dim=1, eps=1e-3)

        a, b = patches(prev), F.pad(patches(cur), (r, r, r, r))
        return torch.stack([(a * b[:, :, dy:dy + s, dx:dx + s]).sum(1)
                            for dy in range(2 * r + 1) for dx in range(2 * r + 1)], 1)

    def forward(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        """prev, cur (B, 3, S, S) in -1..1 -> (B, 8): six key logits, then yaw, pitch."""
        x = torch.cat([self.correlation(prev, cur), self.encode(cur)], 1)  # (B, (2r+1)^2 + C, s, s)
        return self.head(self.features(x))

    @torch.no_grad()
    def predict(self, prev: np.ndarray, cur: np.ndarray, batch: int = 256) -> np.ndarray:
        """uint8 frames [N, S, S, 3] (t-1 and t) -> float32 [N, 8]: key probabilities, then
        yaw, pitch clipped to -1..1 (the layout of `Action.to_vector`)."""
        dev = next(self.parameters()).device
        out = []
        for i in range(0, len(prev), batch):
            a = frames_to_tensor(torch.from_numpy(np.ascontiguousarray(prev[i:i + batch]))).to(dev)
            b = frames_to_tensor(torch.from_numpy(np.ascontiguousarray(cur[i:i + batch]))).to(dev)
            y = self(a, b).float()
            out.append(torch.cat([y[:, :len(KEYS)].sigmoid(), y[:, len(KEYS):].clamp(-1, 1)], 1))
        if not out:
            return np.zeros((0, ACTION_DIM), np.float32)
        return torch.cat(out).cpu().numpy()


def random_action(rng: np.random.Generator) -> Action:
    """Any input at all: keys held independently, the camera still or turning either way."""
    keys = {k: bool(rng.random() < (0.1 if k == "jump" else 0.35)) for k in KEYS}
    cam = {k: float(rng.uniform(-1, 1)) if rng.random() < 0.6 else 0.0 for k in CAMERA}
    return Action(**keys, **cam)


def play_pairs(seed: int, size: int, frames: int, random_action_prob: float):
    """One episode: uint8 frames [frames, S, S, 3] and float32 actions [frames, 8], where
    actions[t] turned frames[t-1] into frames[t] (actions[0] is no input)."""
    game, player = Game(seed, size), Explorer(seed)
    rng = np.random.default_rng([seed, 31])
    out, acts = [game.reset()], [Action().to_vector()]
    for _ in range(frames - 1):
        a = player.act(game)
        if rng.random() < random_action_prob:
            a = random_action(rng)
        out.append(game.step(a))
        acts.append(a.to_vector())
    return np.stack(out), np.stack(acts)


def make_pairs(seeds, cfg: IDMConfig):
    """(prev, cur, actions) over episodes of the given world seeds."""
    prev, cur, acts = [], [], []
    for s in seeds:
        f, a = play_pairs(s, cfg.frame_size, cfg.frames, cfg.random_action_prob)
        prev.append(f[:-1])
        cur.append(f[1:])
        acts.append(a[1:])
    return np.concatenate(prev), np.concatenate(cur), np.concatenate(acts)


def score(pred: np.ndarray, actions: np.ndarray) -> dict:
    """Agreement of predicted [N, 8] with commanded [N, 8] actions.

    key_acc       mean over the six keys of the fraction of frames where pressed/not matches
    key_chance    the same for always guessing each key's more common state
    camera_err    mean absolute error of yaw and pitch (both in -1..1)
    camera_sign_acc  over frames whose commanded yaw or pitch is at least CAMERA_SIGN_MIN in
                  size, the fraction where the predicted value has the same sign
    """
    pred, actions = np.asarray(pred, np.float64), np.asarray(actions, np.float64)
    nk = len(KEYS)
    pressed, truth = pred[:, :nk] > 0.5, actions[:, :nk] > 0.5
    per_key = (pressed == truth).mean(0)
    rate = truth.mean(0)
    cam_p, cam_t = pred[:, nk:], actions[:, nk:]
    moving = np.abs(cam_t) >= CAMERA_SIGN_MIN
    same = np.sign(cam_p) == np.sign(cam_t)
    sign = {k: float(same[moving[:, i], i].mean()) if moving[:, i].any() else None
            for i, k in enumerate(CAMERA)}
    return {
        "pairs": int(len(pred)),
        "key_acc": float(per_key.mean()),
        "key_chance": float(np.maximum(rate, 1 - rate).mean()),
        "per_key_acc": {k: float(v) for k, v in zip(KEYS, per_key)},
        "per_key_chance": {k: float(max(v, 1 - v)) for k, v in zip(KEYS, rate)},
        "camera_err": float(np.abs(cam_p - cam_t).mean()) if len(pred) else float("nan"),
        "camera_sign_acc": float(same[moving].mean()) if moving.any() else None,
        "per_camera_err": {k: float(np.abs(cam_p[:, i] - cam_t[:, i]).mean()) if len(pred) else None
                           for i, k in enumerate(CAMERA)},
        "per_camera_sign_acc": sign,
    }


def mirror(prev: torch.Tensor, cur: torch.Tensor, actions: torch.Tensor):
    """The same step seen in a mirror: pictures flipped left-right, left and right keys
    swapped, yaw negated. The game is drawn the same both ways, so this doubles the data."""
    a = actions.clone()
    li, ri, yi = KEYS.index("left"), KEYS.index("right"), len(KEYS) + CAMERA.index("yaw")
    a[:, [li, ri]] = actions[:, [ri, li]]
    a[:, yi] = -actions[:, yi]
    return prev.flip(-1), cur.flip(-1), a


def fit_idm(model: IDM, prev: np.ndarray, cur: np.ndarray, actions: np.ndarray, cfg: IDMConfig,
            log=None) -> IDM:
    """Train on pairs: uint8 frames [N, S, S, 3] t-1 and t, float32 actions [N, 8]."""
    dev = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    # uint8 until a batch is drawn: the default set is ~10k pairs, 4x larger as floats
    x_prev, x_cur, y = torch.from_numpy(prev), torch.from_numpy(cur), torch.from_numpy(actions)
    g = torch.Generator().manual_seed(cfg.seed)
    nk = len(KEYS)
    model.train()
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(prev), (cfg.batch_size,), generator=g)
        a, b, target = frames_to_tensor(x_prev[idx]), frames_to_tensor(x_cur[idx]), y[idx]
        flip = torch.rand(len(idx), generator=g) < 0.5
        fa, fb, ft = mirror(a[flip], b[flip], target[flip])
        a[flip], b[flip], target[flip] = fa, fb, ft
        out = model(a.to(dev), b.to(dev))
        target = target.to(dev)
        loss = (F.binary_cross_entropy_with_logits(out[:, :nk], target[:, :nk])
                + cfg.camera_weight * F.mse_loss(out[:, nk:], target[:, nk:]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log and (step + 1) % max(1, cfg.steps // 10) == 0:
            log(f"idm: step {step + 1}/{cfg.steps} loss {loss.item():.4f}")
    return model.eval()


def train_idm(cfg: IDMConfig, device: str = "cpu", log=None) -> tuple[IDM, dict]:
    """Train on fresh real game pairs; returns the model and its scores on held-out worlds."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    torch.manual_seed(cfg.seed)
    t0 = time.monotonic()
    train_seeds = range(IDM_SEED_START, IDM_SEED_START + cfg.episodes)
    val_seeds = range(IDM_SEED_START + cfg.episodes,
                      IDM_SEED_START + cfg.episodes + cfg.val_episodes)
    prev, cur, acts = make_pairs(train_seeds, cfg)
    val = make_pairs(val_seeds, cfg)
    log(f"idm: {len(prev)} training pairs from {cfg.episodes} worlds at {cfg.frame_size}px "
        f"({time.monotonic() - t0:.1f}s)")
    model = fit_idm(IDM(cfg).to(device), prev, cur, acts, cfg, log)
    scores = score(model.predict(val[0], val[1]), val[2])
    sign = scores["camera_sign_acc"]
    log(f"idm: held-out key accuracy {scores['key_acc']:.3f} (chance {scores['key_chance']:.3f}), "
        f"camera error {scores['camera_err']:.3f}, sign accuracy "
        f"{'-' if sign is None else f'{sign:.3f}'} ({time.monotonic() - t0:.0f}s)")
    return model, scores


def save_idm(stem, model: IDM, scores: dict) -> None:
    checkpoint.save(stem, model.state_dict(),
                    {"kind": "idm", "config": asdict(model.cfg), "val": scores})


def load_idm(stem, device: str = "cpu") -> tuple[IDM, dict]:
    tensors, meta = checkpoint.load(stem, device)
    if meta.get("kind") != "idm":
        raise ValueError(f"{stem} is a {meta.get('kind')!r} checkpoint, not an IDM")
    model = IDM(IDMConfig(**meta["config"]))
    model.load_state_dict(tensors)
    return model.to(device).eval(), meta


def ensure_idm(stem, frame_size: int, preset: str = "default", train: bool = False,
               device: str = "cpu", log=None, **overrides) -> tuple[IDM, dict]:
    """The IDM at `stem` (safetensors + JSON), trained and saved first if absent or if
    `train`. An IDM reads frames of one size; a stored one of another size is an error."""
    if not train and checkpoint.exists(stem):
        model, meta = load_idm(stem, device)
        if model.cfg.frame_size != frame_size:
            raise ValueError(f"the IDM at {stem} reads {model.cfg.frame_size}px frames, the "
                             f"model makes {frame_size}px: pass --train-idm or another --idm")
        return model, meta
    cfg = replace(IDM_PRESETS[preset], frame_size=frame_size, **overrides)
    model, scores = train_idm(cfg, device, log)
    save_idm(stem, model, scores)
    return model, {"kind": "idm", "config": asdict(cfg), "val": scores}
