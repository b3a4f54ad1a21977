"""scripts/levers_table.py and scripts/warp_probe.py read what they say they read."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from worldmodel.actions import KEYS
from worldmodel.model import DiT, get_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def probe(teacher: list[float], baseline: float, fwd: float = 0.5, yaw: float = 0.25) -> dict:
    idm = {"forward_acc": fwd, "forward_chance": 0.9, "yaw_sign_acc": yaw}
    return {"streams": {"teacher": {"psnr": dict(zip(("1", "4", "16"), teacher)), "idm": idm},
                        "baseline": {"psnr": {"1": 99.0, "4": 98.0, "16": baseline}}}}


def test_teacher_row_reads_the_teacher_stream_of_both_worlds():
    seen = {"stand": probe([30, 29, 28], 100), "walk": probe([17, 16, 12.25], 10, 0.75, 1.0),
            "turn": probe([19, 18, 13], 10.4, 0.125, 0.875)}
    unseen = {"stand": probe([26, 25, 21], 100), "walk": probe([18, 17, 15], 12.7),
              "turn": probe([19, 15, 12], 11.8)}
    r = {"seen": {"probes": seen, "one_step": {"streams": {"teacher": {"psnr": 21.216},
                                                           "baseline": {"psnr": 19.384}}}},
         "probes": unseen}
    row = script("levers_table").teacher_cells(r)
    assert row[:4] == ["30.0/29.0/28.0 (100.0)", "17.0/16.0/12.2 (10.0)", "19.0/18.0/13.0 (10.4)",
                       "26.0/25.0/21.0 (100.0)"]
    assert row[6:] == ["21.22 / 19.38", "0.75 (0.90) / 1.00", "0.12 (0.90) / 0.88"]


def test_warp_probe_reports_zoom_and_shift_in_cells():
    net = DiT(get_config("tiny", prev_frame=True, prev_warp=True))
    with torch.no_grad():
        net.warp.weight[0, KEYS.index("forward")] = math.log(1.25)
        net.warp.weight[1, len(KEYS)] = 0.5  # yaw +1: half the frame's half-width
    w = script("warp_probe").learnt_warp(net)
    assert w["forward"] == pytest.approx((1.25, 0.0, 0.0))
    assert w["yaw +1"] == pytest.approx((1.0, 0.5 * net.cfg.latent_size / 2, 0.0))
    assert w["yaw -1"][1] == pytest.approx(-w["yaw +1"][1])
    assert w["none"] == (1.0, 0.0, 0.0)
