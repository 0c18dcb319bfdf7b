"""Output-dir policy, resume fingerprint, rank split and the merged tables of `tgrowth predict`."""

import json

import pytest
from omegaconf import OmegaConf

from tgrowth.config.base import load_config
from tgrowth.config.predict import PredictConfig
from tgrowth.errors import TgrowthError
from tgrowth.predict import report, state


def _cfg(out, *extra):
    return load_config(PredictConfig, [], [f"output_dir={out}", "data.root=/nowhere", "checkpoints.denoiser=a",
                                           "checkpoints.regressor=b", "checkpoints.segmenter=c", *extra])


def test_output_dir_policy_refuse_resume_overwrite(tmp_path):
    out = tmp_path / "run"
    state.prepare_predict_dir(_cfg(out))  # fresh folder: fine
    (out / "S1").mkdir()
    (out / "S1" / "info.json").write_text("{}")
    (out / "S1" / "metrics.json").write_text("[]")
    with pytest.raises(TgrowthError, match=r"exists and is not empty\. It holds a predict run \(1 subject\(s\) "
                                           r"finished, unfinished\)\. Pass resume=true .* or overwrite=true"):
        state.prepare_predict_dir(_cfg(out))
    # same settings (only neutral keys differ): resume is allowed and keeps the finished subject
    state.prepare_predict_dir(_cfg(out, "resume=true", "trainer.devices=2", "wandb.enabled=false"))
    assert state.is_done(out, "S1")
    # different results-changing settings: resume refuses and names the key
    with pytest.raises(TgrowthError, match=r"settings differ .*guidance\.scale: 50000\.0 -> 7\.0"):
        state.prepare_predict_dir(_cfg(out, "resume=true", "guidance.scale=7"))
    # overwrite starts again: finished subjects and merged tables go
    (out / "metrics.csv").write_text("x\n")
    (out / "notes.txt").write_text("user file\n")
    state.prepare_predict_dir(_cfg(out, "overwrite=true"))
    assert not (out / "S1").exists() and not (out / "metrics.csv").exists() and (out / "notes.txt").exists()


def test_resume_needs_a_predict_run(tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    (out / "x.txt").write_text("hello")
    with pytest.raises(TgrowthError, match="holds no predict run"):
        state.prepare_predict_dir(_cfg(out, "resume=true"))


def test_split_for_rank_covers_every_item_once():
    items = [f"S{i}" for i in range(7)]
    parts = [state.split_for_rank(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(items)
    assert [len(p) for p in parts] == [3, 2, 2]
    with pytest.raises(ValueError):
        state.split_for_rank(items, 3, 3)


def test_collect_and_tables(tmp_path):
    rows = [
        {"subject": "A", "method": "tgrowth", "hd95": 2.0, "ssim": 0.9, "area_error_vs_target": 0.1},
        {"subject": "A", "method": "no-change", "hd95": 4.0, "ssim": 0.8, "area_error_vs_target": 0.5},
        {"subject": "A", "method": "unguided", "hd95": 3.0, "ssim": 0.85, "area_error_vs_target": 0.3},
        {"subject": "B", "method": "tgrowth", "hd95": float("inf"), "ssim": 0.7, "area_error_vs_target": 0.2},
        {"subject": "B", "method": "no-change", "hd95": 6.0, "ssim": 0.6, "area_error_vs_target": 0.4},
        {"subject": "B", "method": "unguided", "hd95": 5.0, "ssim": 0.65, "area_error_vs_target": 0.1},
    ]
    for s in ("A", "B"):
        d = tmp_path / s
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps([r for r in rows if r["subject"] == s]))
        (d / "info.json").write_text(json.dumps({"subject": s}))
    state.record_error(tmp_path, "C", "plan", "subject C: only 1 usable timepoint")
    got_rows, infos, errors = state.collect(tmp_path, ["A", "B", "C"])
    assert len(got_rows) == 6 and [i["subject"] for i in infos] == ["A", "B"]
    assert errors == [{"subject": "C", "stage": "plan", "error": "subject C: only 1 usable timepoint"}]
    summary = report.write_tables(tmp_path, got_rows, errors, ["tgrowth", "no-change", "unguided"])
    t = summary["methods"]["tgrowth"]
    assert t["hd95"]["mean"] == 2.0 and t["hd95"]["n"] == 1 and t["hd95"]["n_nonfinite"] == 1
    assert t["ssim"]["mean"] == pytest.approx(0.8) and t["ssim"]["median"] == pytest.approx(0.8)
    assert summary["checks"]["guided_beats_unguided_on_area_error"] == {
        "tgrowth": pytest.approx(0.15), "unguided": pytest.approx(0.2), "holds": True}
    assert summary["checks"]["tgrowth_beats_no_change_on_hd95"]["holds"] is True
    # tgrowth within 0.15 of its ODE target on A (0.1) and off it on B (0.2): B is named
    assert summary["checks"]["tgrowth_reaches_its_target"] == {
        "tolerance": 0.15, "worst": pytest.approx(0.2), "missed": "B", "holds": False}
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:11] == ["subject", "method", "ssim", "ssim_brain", "psnr", "mae", "dice", "hd95",
                           "area_error_vs_truth", "area_error_vs_target", "ode_forecast_error"]
    assert "subject C: only 1 usable timepoint" in (tmp_path / "errors.csv").read_text()
    table = report.format_table(summary)
    assert "tgrowth" in table and "(1 inf)" in table and "guided beats unguided on area error: yes" in table
    assert "tgrowth reaches its target: NO (tolerance=0.150, worst=0.200, missed=B)" in table


def test_fingerprint_ignores_neutral_keys():
    a = OmegaConf.create({"seed": 1, "trainer": {"devices": 1}, "resume": False, "guidance": {"scale": 1.0}})
    b = OmegaConf.create({"seed": 1, "trainer": {"devices": 4}, "resume": True, "guidance": {"scale": 1.0}})
    c = OmegaConf.create({"seed": 2, "trainer": {"devices": 1}, "resume": False, "guidance": {"scale": 1.0}})
    assert state.fingerprint(a)[0] == state.fingerprint(b)[0] != state.fingerprint(c)[0]


def test_resume_refuses_a_model_file_that_changed(tmp_path):
    models = tmp_path / "m"
    models.mkdir()
    for k in ("d", "r", "s"):
        (models / f"{k}.pt").write_bytes(b"weights-" + k.encode())
    out = tmp_path / "run"

    def cfg(*extra):
        return load_config(PredictConfig, [], [f"output_dir={out}", f"data.root={tmp_path / 'data'}",
                                               f"checkpoints.denoiser={models / 'd.pt'}",
                                               f"checkpoints.regressor={models / 'r.pt'}",
                                               f"checkpoints.segmenter={models / 's.pt'}", *extra])

    state.prepare_predict_dir(cfg())
    (out / "S1").mkdir()
    (out / "S1" / "info.json").write_text("{}")
    state.prepare_predict_dir(cfg("resume=true"))  # same files: fine
    (models / "d.pt").write_bytes(b"weights-d-retrained")  # same path, new content
    with pytest.raises(TgrowthError, match=r"resume=true but the settings differ .*model file checkpoints\.denoiser "
                                           r"changed since the run started"):
        state.prepare_predict_dir(cfg("resume=true"))


def test_output_dir_inside_the_data_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for out, word in ((data, "the same folder as"), (data / "preds", "inside")):
        c = load_config(PredictConfig, [], [f"output_dir={out}", f"data.root={data}", "checkpoints.denoiser=a",
                                            "checkpoints.regressor=b", "checkpoints.segmenter=c"])
        with pytest.raises(TgrowthError, match=f"output_dir {out} is {word} data.root={data}: choose an output "
                                               "folder outside the input data"):
            state.prepare_predict_dir(c)


def test_read_only_output_dir_is_a_clear_error(tmp_path, monkeypatch):
    """A folder that cannot be written (read-only mount; root ignores chmod, so the OS error is simulated) and a
    path under a plain file both give one line naming the folder, not a traceback."""
    from pathlib import Path

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(TgrowthError, match=r"output_dir .*file\.txt/run cannot be written"):
        state.prepare_predict_dir(_cfg(blocker / "run"))

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_bytes", denied)
    with pytest.raises(TgrowthError, match=r"output_dir .*ro cannot be written: Permission denied"):
        state.prepare_predict_dir(_cfg(tmp_path / "ro"))


def test_stopwatch_laps_and_stage_medians():
    from tgrowth.predict.state import Stopwatch, stage_medians

    clock = Stopwatch()
    clock.lap("a")
    clock.lap("b")
    clock.lap("a")  # a stage seen twice adds up
    rec = clock.record(device="cpu")
    assert list(rec["stage_seconds"]) == ["a", "b"] and rec["device"] == "cpu"
    assert sum(rec["stage_seconds"].values()) <= rec["seconds"] + 0.02
    infos = [{"stage_seconds": {"load": 1.0, "generate": 10.0}}, {"stage_seconds": {"load": 3.0, "generate": 20.0}},
             {"stage_seconds": {"load": 2.0}}, {}]  # an info.json without stages (an older run) is left out
    assert stage_medians(infos) == {"load": 2.0, "generate": 15.0}
