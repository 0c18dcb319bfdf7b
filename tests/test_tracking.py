"""wandb (real, offline mode): resolved config as flat keys, group/tags, stable predict metric names."""

import glob
import time

import numpy as np
import pytest

from tgrowth.config.base import load_config
from tgrowth.config.predict import PredictConfig
from tgrowth.predict import report, track


def read_run(out, want=("predict/hd95",), timeout=20.0):
    """The offline run's records once wandb's service has flushed them."""
    deadline = time.time() + timeout
    while True:
        files = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
        if files:
            got = track.read_offline_run(files[-1])
            if all(k in got["summary"] for k in want) or time.time() > deadline:
                return got
        elif time.time() > deadline:
            raise AssertionError(f"no offline wandb run under {out}/wandb")
        time.sleep(0.25)


def test_predict_metrics_reach_offline_wandb_run(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tgrowth.io import save_figure

    out = tmp_path / "pred"
    cfg = load_config(PredictConfig, [], [f"output_dir={out}", "experiment=exp1", "data.root=x",
                                          "checkpoints.denoiser=a", "checkpoints.regressor=b",
                                          "checkpoints.segmenter=c", "guidance.scale=123", "wandb.mode=offline"])
    fig, ax = plt.subplots()
    ax.imshow(np.eye(8))
    save_figure(fig, out / "S1" / "panel.png")
    rows = [{"subject": "S1", "method": "tgrowth", "hd95": 3.0, "ssim": 0.8, "dice": 0.5, "area_error_vs_truth": 0.1,
             "area_error_vs_target": 0.05},
            {"subject": "S2", "method": "tgrowth", "hd95": 5.0, "ssim": 0.6, "dice": 0.7, "area_error_vs_truth": 0.3,
             "area_error_vs_target": 0.15},
            {"subject": "S1", "method": "no-change", "hd95": 6.0, "ssim": 0.7, "dice": 0.4}]
    infos = [{"subject": "S1", "files": {"panel": "panel.png"}}, {"subject": "S2", "files": {}}]
    summary = report.summarise(rows, ["tgrowth", "no-change"])
    run = track.start(cfg, "predict")
    track.log_predict(run, rows, infos, summary, out)
    run.finish()
    got = read_run(out, ("predict/hd95", "predict/ssim"))
    s = got["summary"]
    assert s["predict/hd95"] == pytest.approx(4.0) and s["predict/ssim"] == pytest.approx(0.7)
    assert s["predict/area_error"] == pytest.approx(0.2) and s["predict/no-change/hd95"] == pytest.approx(6.0)
    assert s["predict/n_subjects"] == 2
    assert s["predict/subjects/_type"] == "table-file" and s["predict/subjects/nrows"] == 3  # per-subject table
    files = out / "wandb" / glob.glob(str(out / "wandb" / "offline-run-*"))[-1].split("/")[-1] / "files" / "media"
    assert '"S2","tgrowth",5.0,0.6' in next((files / "table").rglob("*.table.json")).read_text()
    assert list((files / "images" / "predict" / "panel").glob("S1_*.png"))  # the panel image
    assert got["config"]["guidance.scale"] == 123.0 and got["config"]["experiment"] == "exp1"
    assert got["run"]["group"] == "exp1" and "predict" in got["run"]["tags"] and got["run"]["job_type"] == "predict"
    # rerunning in the same folder continues the same run id (resume)
    rid = (out / "wandb_run_id").read_text().strip()
    assert got["run"]["id"] == rid
    run2 = track.start(cfg, "predict")
    assert run2.id == rid
    run2.finish()
    # read_offline_run takes the run folder (output_dir) and the offline-run-* folder as well as the file
    run_dir = sorted((out / "wandb").glob("offline-run-*"))[0]
    by_folder = track.read_offline_run(run_dir)
    assert by_folder["run"]["id"] == rid and by_folder["summary"]["predict/hd95"] == pytest.approx(4.0)
    assert track.read_offline_run(out)["run"]["id"] == rid  # the newest offline run of output_dir


def test_read_offline_run_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no offline wandb run in it .*wandb/offline-run-\*"):
        track.read_offline_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such wandb run file or folder"):
        track.read_offline_run(tmp_path / "missing")
