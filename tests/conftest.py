"""Shared fixtures: a tiny pipeline (data -> tokenizer -> latents -> teacher) built once per
test session in seconds, so that later stages are tested on real outputs of earlier ones."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@dataclass
class TinyPipeline:
    data: Path
    tokenizer: Path  # checkpoint stem
    teacher: Path  # checkpoint stem


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> TinyPipeline:
    from distill.cache_latents import cache_latents
    from distill.collect import CollectConfig, collect
    from distill.train_teacher import TeacherTrainConfig
    from distill.train_teacher import train as train_teacher
    from distill.train_tokenizer import TokenizerTrainConfig
    from distill.train_tokenizer import train as train_tokenizer

    root = tmp_path_factory.mktemp("pipeline")
    data = root / "data"
    collect(CollectConfig(out=str(data), episodes=3, frames=48, size=32, workers=1), progress=False)
    train_tokenizer(TokenizerTrainConfig(data=str(data), out=str(root / "tok"), model="tiny",
                                         steps=30, batch_size=8, workers=0, ckpt_every=1000))
    cache_latents(str(data), str(root / "tok" / "model"))
    train_teacher(TeacherTrainConfig(data=str(data), tokenizer=str(root / "tok" / "model"),
                                     out=str(root / "teacher"), model="tiny", clip_len=4,
                                     steps=20, batch_size=4, workers=0, ckpt_every=1000))
    return TinyPipeline(data, root / "tok" / "model", root / "teacher" / "model")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Models and tensors this small gain nothing from threads, and on a busy machine the
    threads' waiting costs far more than the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def serve_threads():
    """The torch thread count `wm play` sets for itself (cores / sessions): on two busy
    cores, more threads make every step wait on the others."""
    from app.config import ServeConfig

    before = torch.get_num_threads()
    torch.set_num_threads(ServeConfig().threads)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained tiny world-model checkpoint for the serving tests."""
    from worldmodel.session import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")
