"""scripts/gap_probe.py: a teacher's next frame after old context frames, for the ablation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_spec = importlib.util.spec_from_file_location(
    "gap_probe", Path(__file__).parents[1] / "scripts" / "gap_probe.py")
gap_probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gap_probe)


def test_indices_are_the_sinks_then_the_frames_after_the_gap():
    assert gap_probe.indices(10, 0, 2, 1).tolist() == [10, 11, 12, 13]
    assert gap_probe.indices(10, 5, 2, 1).tolist() == [10, 11, 17, 18]
    assert gap_probe.indices(0, 3, 1, 2).tolist() == [0, 4, 5, 6]


def test_probe_scores_each_teacher_and_gap(tiny_pipeline, tmp_path, capsys):
    out = tmp_path / "gap.json"
    gap_probe.main(["--teacher", str(tiny_pipeline.teacher), "--tokenizer", str(tiny_pipeline.tokenizer),
                    "--data", str(tiny_pipeline.data), "--gaps", "0,3", "--sinks", "1",
                    "--recent", "2", "--clips", "3", "--steps", "2", "--json", str(out)])
    table = capsys.readouterr().out
    assert "| - | repeat |" in table and table.count(str(tiny_pipeline.teacher)) == 2
    psnr = json.loads(out.read_text())["psnr"]
    assert len(psnr) == 2 * (1 + 2)  # per gap: repeat, and the teacher's two streams
    assert all(np.isfinite(v) and 0 < v < 100 for v in psnr.values())
    with pytest.raises(SystemExit, match="do not fit"):
        gap_probe.main(["--teacher", str(tiny_pipeline.teacher), "--tokenizer",
                        str(tiny_pipeline.tokenizer), "--data", str(tiny_pipeline.data),
                        "--sinks", "4"])
