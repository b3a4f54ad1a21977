"""Checkpoints: safetensors for tensors, a JSON sidecar for everything else.

A saved piece is two files, `NAME.safetensors` and `NAME.json`. Both are written to a
temporary name and renamed, the tensors first, so a crash never leaves a half file and a
sidecar never points at missing weights. Optimizer state is flattened into the same two
files (tensors into safetensors, numbers and groups into JSON): nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


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
