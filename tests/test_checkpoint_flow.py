import json

import pytest
import torch

from worldmodel import checkpoint, flow


def test_checkpoint_round_trip_with_optimizer(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    tensors, rest = checkpoint.flatten_optimizer(opt.state_dict())
    checkpoint.save(tmp_path / "run", model.state_dict() | tensors, {"step": 7, "optimizer": rest})
    assert not list(tmp_path.glob("*.tmp"))
    loaded, meta = checkpoint.load(tmp_path / "run")
    assert meta["step"] == 7
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    model2.load_state_dict({k: v for k, v in loaded.items() if not k.startswith("optim.")})
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    opt2.load_state_dict(checkpoint.unflatten_optimizer(loaded, json.loads(json.dumps(meta["optimizer"]))))
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    for i in s1:
        assert torch.equal(s1[i]["exp_avg_sq"], s2[i]["exp_avg_sq"])
        assert float(s1[i]["step"]) == float(s2[i]["step"])


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file missing"):
        checkpoint.load(tmp_path / "nothing")


def test_noise_and_x0_are_inverse():
    x0, noise = torch.randn(2, 3, 4, 5, 5), torch.randn(2, 3, 4, 5, 5)
    t = torch.rand(2, 3)
    xt = flow.add_noise(x0, noise, t)
    assert torch.allclose(flow.predict_x0(xt, noise - x0, t), x0, atol=1e-5)


def test_euler_integrates_a_straight_flow_exactly():
    # For a constant velocity field the Euler solution is exact at any step count.
    x0, noise = torch.randn(5), torch.randn(5)
    for steps in (1, 4, 32):
        out = flow.euler_sample(lambda x, t: noise - x0, noise, steps, shift=3.0)
        assert torch.allclose(out, x0, atol=1e-5)


def test_schedules():
    ts = flow.student_timesteps(4, 3.0)
    assert torch.allclose(ts, torch.tensor([1.0, 0.9, 0.75, 0.5]))
    grid = flow.ode_timesteps(10, 3.0)
    assert grid[0] == 1 and grid[-1] == 0 and (grid[1:] < grid[:-1]).all()
    t = flow.sample_time((10000,), shift=3.0, generator=torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1 and t.mean() > 0.5  # the shift moves mass to noise


def test_flow_loss_ignores_context_frames():
    x0, noise = torch.randn(1, 3, 2), torch.randn(1, 3, 2)
    perfect = noise - x0
    wrong_context = perfect.clone()
    wrong_context[:, 0] += 10
    weight = torch.tensor([[0.0, 1.0, 1.0]])
    assert flow.flow_loss(wrong_context, x0, noise, weight) == 0
    assert flow.flow_loss(wrong_context, x0, noise, torch.ones(1, 3)) > 0


def test_each_loader_takes_only_its_own_kind(tmp_path):
    from dataclasses import asdict

    from worldmodel.checkpoint import load_student, load_teacher, load_tokenizer
    from worldmodel.model import DiT, get_config
    from worldmodel.sampling import StudentConfig
    from worldmodel.tokenizer import TOKENIZER_PRESETS, Tokenizer

    tok = Tokenizer(TOKENIZER_PRESETS["tiny"])
    checkpoint.save(tmp_path / "tok", tok.state_dict(), {"kind": "tokenizer", "model": asdict(tok.cfg)})
    net = DiT(get_config("tiny"))
    checkpoint.save(tmp_path / "teacher", net.state_dict(),
                    {"kind": "teacher", "model": asdict(net.cfg), "mode": "causal", "clip_len": 6,
                     "shift": 2.0, "tokenizer_hash": "abc"})
    checkpoint.save(tmp_path / "student", net.state_dict(),
                    {"kind": "student_init", "model": asdict(net.cfg),
                     "sampler": asdict(StudentConfig(window=3))})
    _, t_meta = load_teacher(tmp_path / "teacher")
    assert (t_meta.mode, t_meta.clip_len, t_meta.shift, t_meta.tokenizer_hash) == ("causal", 6, 2.0, "abc")
    sampling = t_meta.sampling(steps=8, cfg_scale=2.0)
    assert (sampling.steps, sampling.cfg_scale, sampling.mode, sampling.clip_len, sampling.shift) == \
        (8, 2.0, "causal", 6, 2.0)
    _, s_meta = load_student(tmp_path / "student")
    assert s_meta.sampler == StudentConfig(window=3) and s_meta.kind == "student_init"
    assert load_tokenizer(tmp_path / "tok")[1].model == tok.cfg
    with pytest.raises(ValueError, match="not a student"):
        load_student(tmp_path / "teacher")
    with pytest.raises(ValueError, match="not a teacher"):
        load_teacher(tmp_path / "tok")
    with pytest.raises(ValueError, match="not a tokenizer"):
        load_tokenizer(tmp_path / "student")
