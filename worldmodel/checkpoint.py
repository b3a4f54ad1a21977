"""Checkpoints: safetensors for tensors, a JSON sidecar for everything else.

A saved piece is two files, `NAME.safetensors` and `NAME.json`. Both are written to a
temporary name and renamed, the tensors first, so a crash never leaves a half file and a
sidecar never points at missing weights. Optimizer state is flattened into the same two
files (tensors into safetensors, numbers and groups into JSON): nothing is pickled.

One loader per kind of checkpoint reads a network and its sidecar as a typed record:
`load_tokenizer`, `load_teacher` (bidirectional or causal many-step DiT) and `load_student`
(the causal few-step DiT with its sampler settings, from a training run or a packed folder).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from worldmodel.game import Game
from worldmodel.model import DiT, DiTConfig
from worldmodel.sampling import StudentConfig, TeacherConfig
from worldmodel.tokenizer import Tokenizer, TokenizerConfig


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(stem: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write STEM.safetensors and STEM.json; returns the safetensors path."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights = stem.with_name(stem.name + ".safetensors")
    sidecar = stem.with_name(stem.name + ".json")
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic(weights, lambda p: save_file(tensors, str(p)))
    _atomic(sidecar, lambda p: p.write_text(json.dumps(meta, indent=2, default=str)))
    return weights


def load(stem: str | Path, device: str | torch.device = "cpu"):
    """(tensors, meta) from STEM.safetensors and STEM.json."""
    stem = Path(stem)
    weights = stem.with_name(stem.name + ".safetensors")
    sidecar = stem.with_name(stem.name + ".json")
    for p in (weights, sidecar):
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint file missing: {p}")
    meta = json.loads(sidecar.read_text())
    return load_file(str(weights), device=str(device)), meta


def exists(stem: str | Path) -> bool:
    stem = Path(stem)
    return all(stem.with_name(stem.name + s).is_file() for s in (".safetensors", ".json"))


def file_hash(path: str | Path) -> str:
    """sha256 of a file, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state_dict as (tensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, values in rest["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


# ---------------------------------------------------------------------------------------------
# One typed loader per kind


@dataclass
class TokenizerMeta:
    model: TokenizerConfig
    kind: str = "tokenizer"
    sidecar: dict[str, Any] = field(default_factory=dict)  # the whole JSON, as written


@dataclass
class TeacherMeta:
    model: DiTConfig
    mode: str  # "bidirectional" or "causal"
    clip_len: int  # frames the teacher saw at once in training
    shift: float  # the resolution shift of its training times
    kind: str = "teacher"
    tokenizer_hash: str | None = None  # the tokenizer whose latents it was trained on
    sidecar: dict[str, Any] = field(default_factory=dict)

    def sampling(self, steps: int = TeacherConfig.steps,
                 cfg_scale: float = TeacherConfig.cfg_scale) -> TeacherConfig:
        """How to sample this teacher: its own mode, clip length and shift."""
        return TeacherConfig(steps=steps, cfg_scale=cfg_scale, shift=self.shift,
                             clip_len=self.clip_len, mode=self.mode)


@dataclass
class StudentMeta:
    model: DiTConfig
    sampler: StudentConfig
    kind: str = "student"  # "student" (packed), "student_init" or "student_dmd" (run folders)
    fps: int = Game.fps
    tokenizer_hash: str | None = None
    sidecar: dict[str, Any] = field(default_factory=dict)
    worlds: list[int] | None = None  # the game seeds it was trained on; None: any world


TEACHER_KINDS = ("teacher", "causal_teacher")
STUDENT_KINDS = ("student", "student_init", "student_dmd")


def _read(stem: str | Path, device, kinds: tuple[str, ...], what: str):
    tensors, meta = load(stem, device)
    if meta.get("kind") not in kinds:
        raise ValueError(f"{stem} is a {meta.get('kind')!r} checkpoint, not a {what}")
    return tensors, meta


def _ready(net: torch.nn.Module, tensors: dict[str, torch.Tensor], device):
    net.load_state_dict(tensors)
    return net.to(device).eval().requires_grad_(False)


def load_tokenizer(stem: str | Path, device: str | torch.device = "cpu"
                   ) -> tuple[Tokenizer, TokenizerMeta]:
    """A trained tokenizer (frozen, eval mode) and its sidecar."""
    tensors, meta = _read(stem, device, ("tokenizer",), "tokenizer")
    m = TokenizerMeta(TokenizerConfig(**meta["model"]), meta["kind"], meta)
    return _ready(Tokenizer(m.model), tensors, device), m


def load_teacher(stem: str | Path, device: str | torch.device = "cpu") -> tuple[DiT, TeacherMeta]:
    """A trained teacher (frozen, eval mode) and its sidecar."""
    tensors, meta = _read(stem, device, TEACHER_KINDS, "teacher")
    m = TeacherMeta(DiTConfig(**meta["model"]), meta["mode"], int(meta["clip_len"]),
                    float(meta["shift"]), meta["kind"], meta.get("tokenizer_hash"), meta)
    return _ready(DiT(m.model), tensors, device), m


def load_student(stem: str | Path, device: str | torch.device = "cpu") -> tuple[DiT, StudentMeta]:
    """A student (frozen, eval mode) and its sidecar: `student.*` of a world-model folder, or
    `model.*` of a `wm distill init|dmd` run."""
    tensors, meta = _read(stem, device, STUDENT_KINDS, "student")
    m = StudentMeta(DiTConfig(**meta["model"]), StudentConfig(**meta["sampler"]), meta["kind"],
                    int(meta.get("fps", Game.fps)), meta.get("tokenizer_hash"), meta,
                    None if meta.get("worlds") is None else [int(w) for w in meta["worlds"]])
    return _ready(DiT(m.model), tensors, device), m
