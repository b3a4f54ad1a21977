"""`wm bench` and `wm eval` on random tiny checkpoints; the inverse-dynamics model and the
collapse rules on their own."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from distill.collapse import CollapseRules, collapse_verdict, sequence_stats
from distill.collect import EVAL_SEED_START, Explorer
from distill.eval import effect_corr
from distill.idm import IDM, IDMConfig, fit_idm, score
from worldmodel import cli
from worldmodel.actions import Action
from worldmodel.game import Game
from worldmodel.metrics import psnr
from worldmodel.session import make_random_checkpoint


@pytest.fixture(autouse=True)
def keep_threads():
    # the commands run in-process with --threads 1 (the test machine is shared); put it back
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def run_json(capsys, *argv) -> dict:
    assert cli.main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # exactly one JSON object, nothing else on stdout


def explore(seed: int, size: int, n: int, policy_seed: int | None = None):
    """n real frames under the explorer and the actions that led into them."""
    game, player = Game(seed, size), Explorer(seed if policy_seed is None else policy_seed)
    frames, actions = [game.reset()], [Action()]
    for _ in range(n - 1):
        actions.append(player.act(game))
        frames.append(game.step(actions[-1]))
    return np.stack(frames), actions


# ---------------------------------------------------------------------------- wm bench


def test_bench_json(tmp_path, capsys):
    ck = make_random_checkpoint(tmp_path / "wm")
    r = run_json(capsys, "bench", "--checkpoint", ck, "--frames", 20, "--long", 200,
                 "--teacher-frames", 2, "--teacher-steps", 32, "--threads", 1, "--json")
    assert r["device"] == "cpu" and r["resolution"] == 32
    s, t = r["student"], r["teacher"]
    assert s["fps"] > 0 and s["p95_ms"] >= s["p50_ms"] > 0 and s["frames"] == 20
    assert t["fps"] > 0 and t["p95_ms"] >= t["p50_ms"] > 0
    assert r["speedup"] == pytest.approx(s["fps"] / t["fps"])
    assert r["speedup"] > 1  # 32 guided steps over a clip cost more than 4 cached steps
    assert r["teacher_weights"] == "architecture-only"
    assert r["decode_ms"] > 0
    assert r["memory_mb"]["after_100"] > 0 and r["memory_mb"]["after_200"] > 0
    assert r["long_frames"] == 200 and r["cuda_memory_mb"] is None
    for key in ("dtype", "attention", "torch", "cpu", "threads"):
        assert r[key], key
    assert r["threads"] == 1
    assert r["sampler"]["fuse_write"] is True
    r = run_json(capsys, "bench", "--checkpoint", ck, "--frames", 5, "--long", 100,
                 "--threads", 1, "--separate-write", "--json")
    assert r["sampler"]["fuse_write"] is False and r["student"]["fps"] > 0


def test_bench_times_a_real_teacher(tmp_path, capsys, tiny_pipeline):
    ck = make_random_checkpoint(tmp_path / "wm")  # tiny latents, as the tiny teacher's
    r = run_json(capsys, "bench", "--checkpoint", ck, "--teacher", tiny_pipeline.teacher,
                 "--frames", 5, "--long", 100, "--teacher-frames", 1, "--teacher-steps", 8,
                 "--threads", 1, "--json")
    assert r["teacher_weights"] == str(tiny_pipeline.teacher)
    assert r["teacher"]["clip_len"] == 4  # from the teacher's sidecar, not the default
    assert r["teacher"]["steps"] == 8 and r["teacher"]["fps"] > 0


def test_bench_table(tmp_path, capsys):
    ck = make_random_checkpoint(tmp_path / "wm")
    assert cli.main(["bench", "--checkpoint", str(ck), "--frames", "5", "--long", "100",
                     "--teacher-frames", "1", "--teacher-steps", "4", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "student" in out and "teacher" in out and "speedup" in out


# ---------------------------------------------------------------------------- wm eval


def eval_args(tmp_path, ck, *extra):
    return ["eval", "--checkpoint", ck, "--seeds", 1, "--rollouts", 1, "--horizons", "1,4",
            "--stability-frames", 50, "--idm", tmp_path / "idm" / "model", "--idm-preset", "tiny",
            "--idm-steps", 20, "--out", tmp_path / "eval", "--threads", 1, "--probes", "stand,walk",
            "--probe-frames", 18, "--teacher-probe-frames", 3, "--one-step-windows", 2,
            "--segment-frames", 25, "--video-seconds", 0.5, "--json", *extra]


def test_eval_json(tmp_path, capsys):
    ck = make_random_checkpoint(tmp_path / "wm")
    r = run_json(capsys, *eval_args(tmp_path, ck))
    assert set(r["psnr"]) == {"baseline", "tokenizer", "student"}  # nothing given is faked
    for metric in ("psnr", "ssim"):
        for name, row in r[metric].items():
            assert set(row) == {"1", "4"}, name
            assert all(math.isfinite(v) for v in row.values()), name
    idm = r["idm"]
    for key in ("real_key_acc", "student_key_acc", "real_camera_err", "student_camera_err"):
        assert isinstance(idm[key], float) and math.isfinite(idm[key]), key
    assert 0 <= idm["real_key_acc"] <= 1 and idm["real_camera_err"] >= 0
    assert r["stability"]["frames"] == 50 and isinstance(r["stability"]["collapsed"], bool)
    for f in ("eval.json", "report.md", "psnr.png", "ssim.png", "stability.png",
              "stability_frames.png", "rollout_frames.png"):
        assert (tmp_path / "eval" / f).is_file(), f
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["psnr"] == r["psnr"]
    assert "collapse rules" in (tmp_path / "eval" / "report.md").read_text().lower()
    assert (tmp_path / "idm" / "model.safetensors").is_file()  # trained since it was absent

    # pictures first: a strip per probe and stream, the realism of the long session per segment
    for f in ("strip_stand_student.png", "strip_walk_student.png", "strip_walk_tokenizer.png",
              "realism.png"):
        assert (tmp_path / "eval" / f).is_file(), f
    assert [row["stage"] for row in r["stage_table"]] == [
        "real frames", "tokenizer recon", "student", "repeat last frame"]
    assert r["stage_table"][0]["realism"] == 1.0
    # the rollout rows' IDM pools the explorer rollouts with the probes: standing still
    # releases forward, so always guessing it can no longer score 1.0
    real_rollout_pairs = r["idm"]["streams"]["real"]["pairs"]
    assert 0.5 <= r["stage_table"][0]["forward_chance"] < 1.0
    stand_walk_pairs = sum(r["probes"][p]["streams"]["game"]["idm"]["pairs"] for p in ("stand", "walk"))
    assert stand_walk_pairs > 0 and real_rollout_pairs > 0
    assert r["stage_table"][0]["idm_pairs"] == real_rollout_pairs + stand_walk_pairs
    for row in r["stage_table"][1:]:
        assert math.isfinite(row["one_step_psnr"]) and row["realism"] > 0, row
    assert set(r["probes"]) == {"stand", "walk"}
    stand = r["probes"]["stand"]["streams"]
    assert set(stand["student"]["psnr"]) == {"1", "4", "16"} and stand["student"]["frames"] == 18
    # standing still, repeating the last real frame is exact
    assert stand["baseline"]["psnr"]["1"] == 100.0
    segs = r["stability"]["realism"]
    assert len(segs["mid"]) == 2 and all(v > 0 for v in segs["student"])
    assert set(segs) == {"mid", "student", "flat", "tiled", "shuffled", "blurred"}
    assert r["worlds"]["declared"] is None and "seen" not in r
    assert (r["stability"]["seed"], r["stability"]["seen"]) == (EVAL_SEED_START, False)
    assert "Stage table" in (tmp_path / "eval" / "report.md").read_text()

    # the baseline, computed here from the game alone: repeat the last context frame
    ctx = r["context"]
    frames, _ = explore(EVAL_SEED_START, 32, ctx + 4)
    for h in (1, 4):
        expected = float(psnr(frames[ctx + h - 1], frames[ctx - 1]))
        assert r["psnr"]["baseline"][str(h)] == pytest.approx(expected, abs=1e-4)


def test_eval_with_teacher_and_student_init(tmp_path, capsys, tiny_pipeline):
    ck = make_random_checkpoint(tmp_path / "wm")
    init = make_random_checkpoint(tmp_path / "init", seed=1)
    r = run_json(capsys, *eval_args(tmp_path, ck, "--teacher", tiny_pipeline.teacher,
                                    "--tokenizer", tiny_pipeline.tokenizer, "--teacher-steps", 4,
                                    "--student-init", init, "--stability-frames", 20))
    assert set(r["psnr"]) == {"baseline", "tokenizer", "teacher", "student_init", "student"}
    assert r["psnr"]["student_init"] != r["psnr"]["student"]  # another model, other frames
    assert [row["stage"] for row in r["stage_table"]] == [
        "real frames", "tokenizer recon", "teacher one-step", "teacher rollout", "init student",
        "student", "repeat last frame"]
    assert r["probes"]["walk"]["streams"]["teacher"]["frames"] == 3
    for name in ("teacher", "student_init", "student"):
        assert (tmp_path / "eval" / f"strip_stand_{name}.png").is_file(), name
    assert "teacher" in r["idm"]["streams"] and "student_init" in r["idm"]["streams"]


# ---------------------------------------------------------------------------- the IDM


def simple_pairs(seeds, size: int, n: int):
    """Real frame pairs under forward on/off and yaw -0.8/0/0.8, drawn independently."""
    prev, cur, acts = [], [], []
    for s in seeds:
        rng, game = np.random.default_rng(s), Game(s, size)
        f = game.reset()
        for _ in range(n):
            a = Action(forward=bool(rng.random() < 0.5), yaw=float(rng.choice([-0.8, 0.0, 0.8])))
            nxt = game.step(a)
            prev.append(f)
            cur.append(nxt)
            acts.append(a.to_vector())
            f = nxt
    return np.stack(prev), np.stack(cur), np.stack(acts)


def test_idm_learns_actions_from_real_frames():
    # A fixed small set; judged on other worlds, against what guessing would score.
    torch.set_num_threads(1)  # a small net on a shared machine: more threads only wait
    torch.manual_seed(0)
    cfg = IDMConfig(frame_size=32, channels=(8, 32, 32, 32), hidden=64, steps=150,
                    batch_size=16, lr=1e-2)
    train = simple_pairs(range(100, 108), 32, 60)
    val = simple_pairs(range(200, 204), 32, 60)
    model = fit_idm(IDM(cfg), *train, cfg)
    s = score(model.predict(val[0], val[1]), val[2])
    assert s["per_camera_sign_acc"]["yaw"] > 0.85  # chance: 0.5
    assert s["per_key_acc"]["forward"] > 0.62  # chance: 0.5 (a wall can hide a step)
    zero_err = np.abs(val[2][:, 6:]).mean()  # always guessing "no turn"
    assert s["camera_err"] < 0.5 * zero_err


def test_idm_score_of_exact_guesses():
    _, _, acts = simple_pairs([300], 32, 20)
    s = score(acts, acts)
    assert s["key_acc"] == 1.0 and s["camera_err"] == 0.0 and s["camera_sign_acc"] == 1.0


# ---------------------------------------------------------------------------- collapse rules


@pytest.fixture(scope="module")
def real_reference():
    frames, _ = explore(EVAL_SEED_START, 32, 150)
    return sequence_stats(frames)


def test_real_game_is_not_collapsed(real_reference):
    # the same world walked another way: a model that went its own way without breaking
    frames, actions = explore(EVAL_SEED_START, 32, 150, policy_seed=7)
    v = collapse_verdict(sequence_stats(frames), real_reference, [a.yaw for a in actions])
    assert not v["collapsed"], v


def test_frozen_picture_while_turning_is_collapsed(real_reference):
    frames, _ = explore(EVAL_SEED_START + 1, 32, 20)
    frozen = np.repeat(frames[-1:], 150, axis=0)
    v = collapse_verdict(sequence_stats(frozen), real_reference, [0.5] * 150)
    assert v["collapsed"] and v["reasons"] == ["frozen"], v
    # the same picture with no turning commanded is a player standing still
    v = collapse_verdict(sequence_stats(frozen), real_reference, [0.0] * 150)
    assert not v["collapsed"], v


def test_saturated_blurred_and_noisy_sequences_are_collapsed(real_reference):
    white = np.full((120, 32, 32, 3), 255, np.uint8)
    v = collapse_verdict(sequence_stats(white), real_reference, np.zeros(120))
    assert v["collapsed"] and {"saturated", "flat"} <= set(v["reasons"]), v

    frames, actions = explore(EVAL_SEED_START + 1, 32, 120)
    blurred = frames.astype(np.float32)
    for _ in range(3):  # a wide box blur, as a model that lost all detail would draw
        blurred = sum(np.roll(blurred, (dy, dx), axis=(1, 2))
                      for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    v = collapse_verdict(sequence_stats(blurred.round().astype(np.uint8)), real_reference,
                         [a.yaw for a in actions])
    assert v["collapsed"] and "blurred" in v["reasons"], v

    noise = np.random.default_rng(0).integers(0, 256, (120, 32, 32, 3), dtype=np.uint8)
    v = collapse_verdict(sequence_stats(noise), real_reference, [a.yaw for a in actions])
    assert v["collapsed"] and "noisy" in v["reasons"], v


def test_collapse_rules_are_written_out():
    text = " ".join(CollapseRules().describe())
    for word in ("blurred", "noisy", "flat", "saturated", "off-palette", "frozen"):
        assert word in text


def test_counterfactual_response_of_the_game_and_of_a_frozen_picture(tmp_path, capsys):
    ck = make_random_checkpoint(tmp_path / "wm")
    r = run_json(capsys, *eval_args(tmp_path, ck, "--response-frames", 3))
    resp = r["response"]
    assert resp["probes"] == ["none", "forward", "yaw+", "yaw-"] and resp["frames"] == 3
    assert set(resp["streams"]) == {"real", "baseline", "student"}
    real, frozen = resp["streams"]["real"], resp["streams"]["baseline"]
    # the game's own effects match themselves; a picture that ignores the actions has none
    assert real["effect_corr"] == pytest.approx({"forward": 1.0, "yaw+": 1.0, "yaw-": 1.0})
    assert frozen["effect_corr"] == {"forward": 0.0, "yaw+": 0.0, "yaw-": 0.0}
    for p in resp["probes"]:
        assert real["psnr"][p][p] == 100.0  # identical frames
        assert all(math.isfinite(v) for v in resp["streams"]["student"]["psnr"][p].values())
    assert all(-1 <= v <= 1 for v in resp["streams"]["student"]["effect_corr"].values())
    assert "Counterfactual actions" in (tmp_path / "eval" / "report.md").read_text()
    r = run_json(capsys, *eval_args(tmp_path, ck, "--response-frames", 0, "--seen-worlds", "3-4"))
    assert "response" not in r
    # declared worlds are measured apart: from a pose that is not the spawn of their training episodes
    assert r["worlds"]["seen"] == [3] and r["worlds"]["unseen"] == [EVAL_SEED_START]
    assert set(r["seen"]["probes"]) == {"stand", "walk"}
    assert (tmp_path / "eval" / "strip_seen_walk_student.png").is_file()
    # the long session plays in a declared world; without any, in the world never trained on
    assert (r["stability"]["seed"], r["stability"]["seen"]) == (3, True)


def test_effect_corr_sees_the_direction_of_a_shift():
    rng = np.random.default_rng(0)
    still = rng.integers(0, 256, (4, 16, 16, 3)).astype(np.uint8)
    left, right = np.roll(still, -2, axis=2), np.roll(still, 2, axis=2)
    assert effect_corr(left, still, left, still) == pytest.approx(1.0)
    assert effect_corr(right, still, left, still) < effect_corr(left, still, left, still)
    assert effect_corr(still, still, left, still) == 0.0
