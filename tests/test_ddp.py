"""`tgrowth predict` with two processes (DDP on gloo, CPU) gives the same outputs as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.predict_fixtures import predict_overrides
from tgrowth.cli import main

REPO = Path(__file__).resolve().parents[1]
PREDICT_YAML = str(REPO / "experiments" / "predict.yaml")


def _csv(path):
    import csv

    with open(path) as fh:
        return sorted(csv.DictReader(fh), key=lambda r: (r["subject"], r["method"]))


def test_two_processes_match_one(tiny_predict, tmp_path):
    root, models = tiny_predict
    extra = ("data.split=all", "plots=false")  # 3 subjects: rank 0 gets 2, rank 1 gets 1
    one, two = tmp_path / "one", tmp_path / "two"
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the same intra-op threads as each DDP process (OMP_NUM_THREADS=1 below)
    try:
        assert main(["predict", "-c", PREDICT_YAML, *predict_overrides(root, models, one, *extra)]) == 0
    finally:
        torch.set_num_threads(n)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), WANDB_MODE="offline")
    cmd = [sys.executable, "-m", "tgrowth", "predict", "-c", PREDICT_YAML,
           *predict_overrides(root, models, two, *extra, "trainer.devices=2", "trainer.strategy=ddp")]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "3 subject(s) selected, 3 to predict; 2 process(es)" in res.stdout
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["n_predicted"] == 3
    for s in ("SUB01", "SUB02", "SUB03"):
        for f in ("prob_map.nii.gz", "pred_mean.nii.gz", "pred_std.nii.gz"):
            a = nib.load(str(one / s / f)).get_fdata()
            b = nib.load(str(two / s / f)).get_fdata()
            assert np.allclose(a, b, atol=1e-5), (s, f, float(np.abs(a - b).max()))
        ia = json.loads((one / s / "info.json").read_text())
        ib = json.loads((two / s / "info.json").read_text())
        assert ia["target_area_mm2"] == pytest.approx(ib["target_area_mm2"]) and ia["seed"] == ib["seed"]
    ra, rb = _csv(one / "metrics.csv"), _csv(two / "metrics.csv")
    assert len(ra) == len(rb) == 3 * 8  # 3 subjects x the 8 methods of predict.yaml
    for x, y in zip(ra, rb):
        for k in ("hd95", "dice", "ssim", "pred_area_mm2", "area_error_vs_target"):
            assert float(x[k]) == pytest.approx(float(y[k]), rel=1e-5, abs=1e-6), (x["subject"], x["method"], k)
