"""`tgrowth predict` end to end on a tiny longitudinal set: files, geometry, metrics, wandb, resume, days."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.predict_fixtures import CONTRASTS, make_data, predict_overrides, record_calls
from tgrowth.cli import main

REPO = Path(__file__).resolve().parents[1]
PREDICT_YAML = str(REPO / "experiments" / "predict.yaml")
INFO_KEYS = {"prior_timepoint", "target_timepoint", "prior_day", "target_day", "slice_index", "contrasts", "ode",
             "target_area_mm2", "guidance", "seed"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tiny convolutions gain nothing from two, and on a shared 2-core machine
    two spinning OpenMP threads can be ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny(tiny_predict):
    return tiny_predict


def predict(tiny, out, *extra) -> int:
    root, models = tiny
    return main(["predict", "-c", PREDICT_YAML, *predict_overrides(root, models, out, *extra)])


def read_csv(path):
    import csv

    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_predict_end_to_end(tiny, tmp_path):
    from data_modules.formats import discover
    from data_modules.slices import load_slice
    from tests.test_tracking import read_run
    from tgrowth import metrics as M

    root, _ = tiny
    out = tmp_path / "pred"
    assert predict(tiny, out, "wandb.enabled=true", "wandb.mode=offline", "experiment=tinytest") == 0
    rows = read_csv(out / "metrics.csv")
    methods = {"tgrowth", "unguided", "oracle-area", "no-change", "no-change-segmenter", "segmenter-on-truth",
               "grow-to-target", "grow-to-truth"}  # predict.yaml's methods: generative rows and every baseline
    assert {(r["subject"], r["method"]) for r in rows} == {(s, m) for s in ("SUB02", "SUB03") for m in methods}
    ds = discover(root)
    for s in ("SUB02", "SUB03"):
        d = out / s
        info = json.loads((d / "info.json").read_text())
        assert INFO_KEYS <= set(info)
        assert (info["prior_timepoint"], info["target_timepoint"], info["prior_day"], info["target_day"]) == \
            ("001", "002", 30.0, 75.0)
        assert info["contrasts"] == CONTRASTS and set(info["ode"]) >= {"model", "median", "p05", "p95"}
        assert info["ode"]["p05"] <= info["ode"]["median"] <= info["ode"]["p95"]
        stages = info["stage_seconds"]  # where the subject's time went, in stage order
        assert list(stages) == ["load", "targets", "generate", "baselines", "evaluate"]
        assert min(stages.values()) >= 0 and sum(stages.values()) <= info["seconds"] + 0.05
        # NIfTI in the input geometry: same affine and shape, the slice at its index, the rest zero
        ref = nib.load(str(root / f"{s}-002" / f"{s}-002-t1n.nii.gz"))
        prob = nib.load(str(d / "prob_map.nii.gz"))
        mean = nib.load(str(d / "pred_mean.nii.gz"))
        std = nib.load(str(d / "pred_std.nii.gz"))
        assert prob.shape == ref.shape and mean.shape == ref.shape + (4,) and std.shape == ref.shape + (4,)
        assert np.allclose(prob.affine, ref.affine) and np.allclose(mean.affine, ref.affine)
        k = info["slice_index"]
        pm, mm = prob.get_fdata(), mean.get_fdata()
        others = np.delete(mm, k, axis=2)
        assert not others.any() and np.abs(mm[:, :, k]).max() > 0 and 0 <= pm.min() and pm.max() <= 1
        for f in ("panel.png", "growth_curve.png"):
            assert (d / f).stat().st_size > 1000
        # the no-change baseline has known answers: the prior slice and its tumour against the real follow-up
        sub = next(x for x in ds.subjects if x.subject == s)
        prior = load_slice(sub.timepoints[1], k, CONTRASTS, 32)
        target = load_slice(sub.timepoints[2], k, CONTRASTS, 32)
        nc = next(r for r in rows if r["subject"] == s and r["method"] == "no-change")
        assert float(nc["dice"]) == pytest.approx(M.dice(prior.seg > 0, target.seg > 0), abs=1e-6)
        assert float(nc["ssim"]) == pytest.approx(M.ssim(prior.image, target.image), abs=1e-6)
        brain = (target.image > -1 + 1e-3).any(0)
        assert float(nc["ssim_brain"]) == pytest.approx(M.ssim(prior.image, target.image, mask=brain), abs=1e-6)
        assert float(nc["ssim_brain"]) != pytest.approx(float(nc["ssim"]), abs=1e-4)  # the background counts
        assert float(nc["pred_area_mm2"]) == pytest.approx(prior.area_mm2("whole"))
        true_area = target.area_mm2("whole")
        for r in (x for x in rows if x["subject"] == s):
            assert float(r["true_area_mm2"]) == pytest.approx(true_area)
            tgt = float(r["target_area_mm2"])
            assert float(r["ode_forecast_error"]) == pytest.approx(abs(tgt - true_area) / true_area, rel=1e-6)
            assert float(r["area_error_vs_truth"]) == pytest.approx(
                abs(float(r["pred_area_mm2"]) - true_area) / true_area, rel=1e-6)
        orc = next(r for r in rows if r["subject"] == s and r["method"] == "oracle-area")
        assert float(orc["guided_to_area_mm2"]) == pytest.approx(true_area)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_predicted"] == 2 and set(summary["methods"]) == methods
    got = read_run(out, ("predict/hd95", "predict/ssim"))
    tg = summary["methods"]["tgrowth"]
    assert got["summary"]["predict/hd95"] == pytest.approx(tg["hd95"]["mean"])
    assert got["summary"]["predict/ssim"] == pytest.approx(tg["ssim"]["mean"])
    assert got["run"]["group"] == "tinytest" and "predict" in got["run"]["tags"]


def test_predict_resume_skips_finished_subjects(tiny, tmp_path):
    out = tmp_path / "pred"
    assert predict(tiny, out, "data.subjects=[SUB02,SUB03]") == 0
    done = out / "SUB02" / "prob_map.nii.gz"
    stamp = done.stat().st_mtime_ns
    # the state an interrupted run leaves: SUB03's info.json (written last) is missing
    (out / "SUB03" / "info.json").unlink()
    (out / "summary.json").unlink()
    assert predict(tiny, out) == 1  # the folder exists: refused without resume/overwrite
    assert predict(tiny, out, "resume=true") == 0
    assert done.stat().st_mtime_ns == stamp  # SUB02 not redone
    assert (out / "SUB03" / "info.json").is_file()
    assert json.loads((out / "summary.json").read_text())["n_predicted"] == 2
    assert predict(tiny, out, "resume=true", "guidance.scale=9") == 1  # different settings: refused


def test_predict_future_days_montage(tiny, tmp_path):
    out = tmp_path / "days"
    assert predict(tiny, out, "data.subjects=[SUB02]", "target.days=[30,60,90]", "sampling.num_generations=2",
                   "guidance.target=bootstrap") == 0
    d = out / "SUB02"
    info = json.loads((d / "info.json").read_text())
    assert [t["days_after_prior"] for t in info["targets"]] == [30.0, 60.0, 90.0]
    assert info["prior_timepoint"] == "002" and info["target_day"] == [105.0, 135.0, 165.0]
    for t in ("day+030", "day+060", "day+090"):
        assert nib.load(str(d / t / "prob_map.nii.gz")).shape == (32, 32, 6)
    assert (d / "montage.png").stat().st_size > 1000
    rows = read_csv(out / "metrics.csv")  # no real follow-up: only the area error vs the ODE target per day
    assert [float(r["target_day"]) for r in rows] == [105.0, 135.0, 165.0]
    assert all(r["hd95"] == "" and float(r["area_error_vs_target"]) >= 0 for r in rows)


def test_bad_inputs_have_clear_messages(tiny, tmp_path, capsys):
    root, models = tiny
    # missing checkpoint
    assert predict(tiny, tmp_path / "a", f"checkpoints.segmenter={tmp_path / 'nope.pt'}") == 1
    assert "checkpoints.segmenter: file not found" in capsys.readouterr().err
    # wrong kind
    assert predict(tiny, tmp_path / "b", f"checkpoints.denoiser={models['regressor']}") == 1
    assert "is a regressor checkpoint, expected a denoiser" in capsys.readouterr().err
    # wrong image size
    assert predict(tiny, tmp_path / "c", "data.image_size=64") == 1
    assert "was trained on 32x32 images, expected 64x64" in capsys.readouterr().err
    # one usable timepoint before the target: reported per subject, nothing generated, so the run fails
    assert predict(tiny, tmp_path / "d", "target.timepoint=001") == 1
    assert "no subject was predicted (2 skipped or failed: see" in capsys.readouterr().err
    errs = read_csv(tmp_path / "d" / "errors.csv")
    assert [e["subject"] for e in errs] == ["SUB02", "SUB03"]
    assert "subject SUB02: only 1 usable timepoint(s) (000) before the target timepoint 001; the growth ODE needs " \
           "at least 2" in errs[0]["error"]
    assert predict(tiny, tmp_path / "e", "target.timepoint=001", "strict=true") == 1
    assert "only 1 usable timepoint" in capsys.readouterr().err
    # sampling choices are checked before any model is loaded or subject fitted
    assert predict(tiny, tmp_path / "f", "sampling.invert_order=3") == 2  # a config error
    assert "config key 'sampling.invert_order' must be 1 or 2, got 3" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_inverted_prior_with_eta_zero_gives_identical_generations(tiny, tmp_path):
    """encode=invert, eta=0, one median target: the N generations coincide, so the map is 0/1 and std 0."""
    out = tmp_path / "inv"
    assert predict(tiny, out, "data.subjects=[SUB02]", "methods=[tgrowth]", "plots=false", "sampling.encode=invert",
                   "sampling.eta=0.0", "sampling.num_generations=3", "guidance.target=median") == 0
    prob = nib.load(str(out / "SUB02" / "prob_map.nii.gz")).get_fdata()
    std = nib.load(str(out / "SUB02" / "pred_std.nii.gz")).get_fdata()
    assert set(np.unique(prob)) <= {0.0, 1.0} and np.abs(std).max() < 1e-5


def test_target_timepoint_without_needed_modalities(tmp_path, tiny):
    _, models = tiny
    root = make_data(tmp_path / "data")
    (root / "SUB02-002" / "SUB02-002-t2f.nii.gz").unlink()
    out = tmp_path / "pred"
    rc = main(["predict", "-c", PREDICT_YAML, *predict_overrides(root, models, out, "sampling.num_generations=2")])
    assert rc == 0  # SUB03 still predicted
    errs = read_csv(out / "errors.csv")
    assert errs[0]["subject"] == "SUB02"
    assert "subject SUB02, timepoint 002, file SUB02-002-t2f.nii.gz: missing modality t2f" in errs[0]["error"]
    assert (out / "SUB03" / "info.json").is_file() and not (out / "SUB02" / "info.json").exists()


def test_same_seed_same_maps(tiny, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for o in (a, b):
        assert predict(tiny, o, "data.subjects=[SUB02]", "methods=[tgrowth]", "plots=false") == 0
    pa = nib.load(str(a / "SUB02" / "pred_mean.nii.gz")).get_fdata()
    pb = nib.load(str(b / "SUB02" / "pred_mean.nii.gz")).get_fdata()
    assert np.array_equal(pa, pb)
    assert torch.get_num_threads() >= 1


def test_batch_size_never_changes_results_and_methods_share_noise(tiny, tmp_path):
    """Noise is keyed by (seed, subject, generation): sampling.batch_size is invisible, and with a zero scale
    the guided method and `unguided` draw the same noise, so their maps are identical (common random numbers)."""
    runs = {}
    for name, bs in (("a", 16), ("b", 3)):
        out = tmp_path / name
        assert predict(tiny, out, "data.subjects=[SUB02]", "methods=[tgrowth,unguided]", "plots=false",
                       "guidance.scale=0", "sampling.eta=0.5", f"sampling.batch_size={bs}") == 0
        runs[name] = read_csv(out / "metrics.csv")
        assert nib.load(str(out / "SUB02" / "prob_map.nii.gz")).get_fdata().max() <= 1
    pa = nib.load(str(tmp_path / "a" / "SUB02" / "pred_mean.nii.gz")).get_fdata()
    pb = nib.load(str(tmp_path / "b" / "SUB02" / "pred_mean.nii.gz")).get_fdata()
    assert np.allclose(pa, pb, atol=1e-5)
    cols = ("ssim", "dice", "hd95", "pred_area_mm2")
    for r_a, r_b in zip(runs["a"], runs["b"]):
        assert all(float(r_a[c]) == pytest.approx(float(r_b[c]), abs=1e-5) for c in cols)
    tg, ug = runs["a"]
    assert (tg["method"], ug["method"]) == ("tgrowth", "unguided")
    assert all(float(tg[c]) == pytest.approx(float(ug[c]), abs=1e-6) for c in cols)


def test_bootstrap_targets_use_replicate_g_mod_b():
    from tgrowth.predict.targets import Targets

    ratios = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)  # B = 3 replicates, one day
    tg = Targets(forecast=None, median=torch.tensor([20.0], dtype=torch.float64), ratios=ratios)
    assert tg.per_generation("bootstrap", 10.0, 0, 5).tolist() == [10.0, 20.0, 30.0, 10.0, 20.0]
    assert tg.per_generation("median", 10.0, 0, 2).tolist() == [20.0, 20.0]


def test_quantile_targets_are_stratified_over_the_replicates():
    from tgrowth.predict.targets import Targets

    # B = 5 replicates in shuffled order, one of them a heavy tail (x100): the first 4 replicates would put it in
    # generation 1 of 4, the quantiles put the tail only into the last generation's interpolation
    ratios = torch.tensor([[2.0], [100.0], [1.0], [3.0], [4.0]], dtype=torch.float64)
    tg = Targets(forecast=None, median=torch.tensor([30.0], dtype=torch.float64), ratios=ratios)
    assert tg.per_generation("bootstrap", 10.0, 0, 4).tolist() == [20.0, 1000.0, 10.0, 30.0]
    # sorted 1, 2, 3, 4, 100; quantile q at position q * 4: 0.5 -> 1.5, 1.5 -> 2.5, 2.5 -> 3.5, 3.5 -> 52
    assert tg.per_generation("quantiles", 10.0, 0, 4).tolist() == pytest.approx([15.0, 25.0, 35.0, 520.0])
    assert tg.per_generation("quantiles", 10.0, 0, 1).tolist() == pytest.approx([30.0])  # N = 1: the median
    with pytest.raises(Exception, match="guidance.target"):
        tg.per_generation("mean", 10.0, 0, 2)


def _timeline_days(root, subject, days):
    import csv

    path = root / "timeline.csv"
    rows = list(csv.DictReader(open(path)))
    for r in rows:
        if r["subject"] == subject:
            r["day"] = str(days[int(r["timepoint"])])
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_predict_applies_the_data_check_rules(tmp_path, tiny, capsys):
    """Days 0/90/75 (timepoint 002 before 001) and a follow-up 40 mm off the prior's grid: the subject is skipped
    with the data-check reason (they used to be predicted silently), or the run stops with strict=true."""
    from tests.factories import affine_for, write_nifti

    _, models = tiny
    root = make_data(tmp_path / "data")
    _timeline_days(root, "SUB02", [0, 90, 75])
    for f in (root / "SUB03-002").iterdir():
        img = nib.load(str(f))
        write_nifti(f, np.asarray(img.dataobj), affine_for(origin=(40.0, 0.0, 0.0)))
    out = tmp_path / "pred"
    rc = main(["predict", "-c", PREDICT_YAML, *predict_overrides(root, models, out, "sampling.num_generations=2")])
    assert rc == 1 and "no subject was predicted" in capsys.readouterr().err
    errs = {e["subject"]: e["error"] for e in read_csv(out / "errors.csv")}
    assert set(errs) == {"SUB02", "SUB03"}
    assert "SUB02" in errs["SUB02"] and "day" in errs["SUB02"] and "increase" in errs["SUB02"]
    assert "affine differs by 40 mm translation" in errs["SUB03"]
    assert not (out / "SUB02").exists() and not (out / "SUB03").exists()
    rc = main(["predict", "-c", PREDICT_YAML, *predict_overrides(root, models, tmp_path / "strict", "strict=true")])
    assert rc == 1 and "SUB02" in capsys.readouterr().err


def test_a_subjects_forecast_does_not_depend_on_the_others(tiny, tmp_path):
    """The audit: predict's target for SUB03 changed when it was predicted alone (58.1 -> 60.9 mm^2)."""
    got = {}
    for name, subjects in (("both", "[SUB02,SUB03]"), ("alone", "[SUB03]")):
        out = tmp_path / name
        assert predict(tiny, out, f"data.subjects={subjects}", "methods=[no-change]", "plots=false") == 0
        got[name] = json.loads((out / "SUB03" / "info.json").read_text())
    for key in ("target_area_mm2", "ode"):
        assert got["both"][key] == got["alone"][key]


def test_geometric_and_segmenter_baselines_have_known_answers(tiny, tmp_path):
    """grow-to-truth holds exactly the true area (to a pixel), grow-to-target the ODE target; the segmenter rows are
    the trained segmenter on the prior / the real follow-up; every method is scored on the same slice."""
    from data_modules.formats import discover
    from data_modules.slices import load_slice
    from tgrowth.diffusion.checkpoints import load_segmenter
    from tgrowth.probability import segmenter_from_logits

    root, models = tiny
    out = tmp_path / "base"
    methods = "[no-change,grow-to-target,grow-to-truth,no-change-segmenter,segmenter-on-truth]"
    assert predict(tiny, out, "data.subjects=[SUB02]", f"methods={methods}", "plots=false", "method_maps=true") == 0
    rows = {r["method"]: r for r in read_csv(out / "metrics.csv")}
    assert set(rows) == {"no-change", "grow-to-target", "grow-to-truth", "no-change-segmenter", "segmenter-on-truth"}
    px = 1.0 * 1.0  # the factory's spacing
    true_area, target = float(rows["grow-to-truth"]["true_area_mm2"]), float(rows["grow-to-target"]["target_area_mm2"])
    assert abs(float(rows["grow-to-truth"]["map_area_mm2"]) - true_area) <= px / 2 + 1e-9
    assert abs(float(rows["grow-to-target"]["map_area_mm2"]) - target) <= px / 2 + 1e-9
    assert float(rows["grow-to-truth"]["area_error_vs_truth"]) <= px / 2 / true_area + 1e-9
    info = json.loads((out / "SUB02" / "info.json").read_text())
    sub = next(s for s in discover(root).subjects if s.subject == "SUB02")
    k = info["slice_index"]
    prior, truth = (load_slice(sub.timepoints[i], k, CONTRASTS, 32) for i in (1, 2))
    seg = segmenter_from_logits(load_segmenter(models["segmenter"])[0])
    for method, image in (("no-change-segmenter", prior.image), ("segmenter-on-truth", truth.image)):
        assert float(rows[method]["map_area_mm2"]) == pytest.approx(float(seg(image[None])[0].sum()) * px)
    assert float(rows["segmenter-on-truth"]["ssim"]) == pytest.approx(1.0)  # its image is the follow-up itself
    # method_maps: every method's map in the input geometry, on the predicted slice only; scored again from the file
    assert set(info["files"]["methods"]) == set(rows)
    seg_nii = nib.load(str(root / "SUB02-002" / "SUB02-002-seg.nii.gz"))
    for method, rel in info["files"]["methods"].items():
        img = nib.load(str(out / "SUB02" / rel))
        vol = img.get_fdata()
        assert img.shape == seg_nii.shape and np.allclose(img.affine, seg_nii.affine) and rel == f"methods/{method}.nii.gz"
        assert np.abs(np.delete(vol, k, axis=2)).max() == 0
        assert (vol[:, :, k] >= 0.5).sum() * px == pytest.approx(float(rows[method]["map_area_mm2"]))
    nc = nib.load(str(out / "SUB02" / "methods" / "no-change.nii.gz")).get_fdata()[:, :, k]
    assert np.array_equal(nc > 0.5, (prior.seg > 0).numpy())  # the prior tumour itself (32 x 32: no resampling)


def test_anatomy_preserving_sampling_keeps_the_prior_outside_the_zone(tiny, tmp_path):
    from data_modules.formats import discover
    from data_modules.slices import load_slice

    root, _ = tiny
    out = tmp_path / "keep"
    assert predict(tiny, out, "data.subjects=[SUB02]", "methods=[tgrowth,no-change]", "sampling.preserve_anatomy=true",
                   "sampling.zone_margin_mm=2", "sampling.zone_edge_mm=0", "sampling.eta=0.5",
                   "guidance.form=segmenter", "checkpoints.regressor=null", "method_maps=true") == 0  # no regressor needed
    info = json.loads((out / "SUB02" / "info.json").read_text())
    k = info["slice_index"]
    main_map, tg_map = (nib.load(str(out / "SUB02" / f)).get_fdata() for f in ("prob_map.nii.gz", "methods/tgrowth.nii.gz"))
    assert np.array_equal(main_map, tg_map)  # method_maps: the main method's file is its prob_map
    sub = next(s for s in discover(root).subjects if s.subject == "SUB02")
    prior = load_slice(sub.timepoints[1], k, CONTRASTS, 32)
    # 32 x 32 slices at image_size 32: the NIfTI slice is the model plane as it is
    mean = torch.as_tensor(nib.load(str(out / "SUB02" / "pred_mean.nii.gz")).get_fdata()[:, :, k]).permute(2, 0, 1).float()
    same = (mean - prior.image).abs().amax(0) < 1e-5
    tumour = prior.seg > 0
    assert same.float().mean() > 0.5 and not same[tumour].all()  # kept far away, generated at the tumour
    rows = {r["method"]: r for r in read_csv(out / "metrics.csv")}
    assert rows["tgrowth"]["ssim_zone"] != "" and float(rows["tgrowth"]["ssim_zone"]) <= 1


def test_fk_prior_method_zone_and_spatial_guidance_end_to_end(tiny, tmp_path):
    """methods with fk, sampling.zone=fk and guidance.spatial_weight > 0 in one run: the fk mask holds the ODE
    target area to half a pixel; the FK model was calibrated on the two earlier scans (info.json); with
    anatomy-preserving sampling the image is the prior exactly far from the tumour; the spatial term changes the
    guided generations and leaves the unguided ones bit for bit (weight 0 in the same batches)."""
    from data_modules.formats import discover
    from data_modules.slices import load_slice

    root, _ = tiny
    common = ("data.subjects=[SUB02]", "methods=[tgrowth,unguided,fk,grow-to-target]", "sampling.zone=fk",
              "sampling.preserve_anatomy=true", "sampling.zone_edge_mm=0", "sampling.eta=0.5", "plots=false")
    out, off = tmp_path / "fk", tmp_path / "off"
    assert predict(tiny, out, *common, "guidance.spatial_weight=3e4") == 0
    assert predict(tiny, off, *common, "guidance.spatial_weight=0") == 0
    rows = {r["method"]: r for r in read_csv(out / "metrics.csv")}
    rows_off = {r["method"]: r for r in read_csv(off / "metrics.csv")}
    px = 1.0 * 1.0
    assert abs(float(rows["fk"]["map_area_mm2"]) - float(rows["fk"]["target_area_mm2"])) <= px / 2 + 1e-9
    assert float(rows["fk"]["pred_area_mm2"]) == float(rows["fk"]["map_area_mm2"])
    info = json.loads((out / "SUB02" / "info.json").read_text())
    fk = info["fk"]
    assert fk["calibrated"] is True and fk["n_intervals"] == 1 and fk["lambda_mm"] > 0 and fk["rho_per_day"] > 0
    assert set(fk["forecasts"]) == {"target0", "zone"}
    assert fk["forecasts"]["target0"]["size_mm2"] == pytest.approx(float(rows["fk"]["target_area_mm2"]))
    assert fk["forecasts"]["zone"]["size_mm2"] >= fk["forecasts"]["target0"]["size_mm2"]
    # the fk change zone: the prior is kept exactly far from the tumour, generated at the tumour
    k = info["slice_index"]
    sub = next(s for s in discover(root).subjects if s.subject == "SUB02")
    prior = load_slice(sub.timepoints[1], k, CONTRASTS, 32)
    mean = torch.as_tensor(nib.load(str(out / "SUB02" / "pred_mean.nii.gz")).get_fdata()[:, :, k]).permute(2, 0, 1).float()
    same = (mean - prior.image).abs().amax(0) < 1e-5
    from tgrowth.growth.geometry import distance_to

    far = distance_to((prior.seg > 0)[None], (1.0, 1.0))[0] > 12
    assert same[far].all() and not same[prior.seg > 0].all()
    # spatial guidance: the guided arm moved, the unguided arm is identical to the run without the term
    assert rows["unguided"] == rows_off["unguided"]
    assert rows["tgrowth"]["ssim"] != rows_off["tgrowth"]["ssim"]
    assert rows["fk"] == rows_off["fk"] and rows["grow-to-target"] == rows_off["grow-to-target"]


def test_fk_to_truth_is_the_fk_forecast_at_the_true_area(tiny, tmp_path):
    """fk-to-truth holds the TRUE follow-up area to half a pixel (the FK shape with a perfect size clock); its extra
    forecast row leaves the fk method's mask unchanged (each size is its own row of one batched forecast)."""
    out, alone = tmp_path / "both", tmp_path / "alone"
    assert predict(tiny, out, "data.subjects=[SUB02]", "methods=[fk,fk-to-truth,grow-to-truth]", "plots=false",
                   "method_maps=true") == 0
    assert predict(tiny, alone, "data.subjects=[SUB02]", "methods=[fk]", "plots=false") == 0
    rows = {r["method"]: r for r in read_csv(out / "metrics.csv")}
    true_area = float(rows["fk-to-truth"]["true_area_mm2"])
    assert abs(float(rows["fk-to-truth"]["map_area_mm2"]) - true_area) <= 0.5 + 1e-9  # 1 mm pixels
    info = json.loads((out / "SUB02" / "info.json").read_text())
    assert info["fk"]["forecasts"]["truth"]["size_mm2"] == pytest.approx(true_area)
    assert rows["fk"] == {r["method"]: r for r in read_csv(alone / "metrics.csv")}["fk"]
    fk_map = nib.load(str(out / "SUB02" / "methods" / "fk-to-truth.nii.gz")).get_fdata()
    gt_map = nib.load(str(out / "SUB02" / "methods" / "grow-to-truth.nii.gz")).get_fdata()
    assert (fk_map >= 0.5).sum() == pytest.approx(float(rows["fk-to-truth"]["map_area_mm2"]))
    assert not np.array_equal(fk_map >= 0.5, gt_map >= 0.5)  # the FK shape, not the isotropic one


def test_the_spatial_terms_settings_reach_the_2d_sampler(tiny, tmp_path, monkeypatch):
    """guidance.spatial_tolerance and spatial_schedule reach the spatial term of the one 2D sampling pass; the
    unguided arm's weight is 0."""
    import tgrowth.predict.generate as G
    from tgrowth.diffusion.guidance import SCALE_SCHEDULES, SpatialGuidance

    calls = record_calls(monkeypatch, G)
    assert predict(tiny, tmp_path / "sp", "data.subjects=[SUB02]", "methods=[tgrowth,unguided]",
                   "sampling.num_generations=2", "guidance.spatial_weight=2e4", "guidance.spatial_tolerance=0.3",
                   "guidance.spatial_schedule=sqrt_one_minus_abar", "plots=false") == 0
    (spatial,) = [c for c in calls[0]["callbacks"] if isinstance(c, SpatialGuidance)]
    assert spatial.tolerance == 0.3 and spatial.schedule is SCALE_SCHEDULES["sqrt_one_minus_abar"]
    assert spatial.weight.tolist() == [2e4, 2e4, 0.0, 0.0]


def test_fk_method_in_native_windows_at_the_scans_spacing(tmp_path, tiny):
    """data.resize=window at 0.8 mm pixels: the fk forecast works on the same window and spacing as the other
    baselines (its mask holds the target area to half a 0.64 mm^2 pixel); with target.days the FK prior and the
    spatial guidance run per day (one batched forecast)."""
    from tests.factories import write_longitudinal

    _, models = tiny
    root = write_longitudinal(tmp_path / "d", n_subjects=1, n_timepoints=3, shape=(48, 44, 6), spacing=(0.8, 0.8, 1.0),
                              radii=[3.0, 4.0, 5.5], splits={"SUB01": "test"})
    out = tmp_path / "w"
    assert main(["predict", "-c", PREDICT_YAML, *predict_overrides(
        root, models, out, "data.resize=window", "methods=[fk,grow-to-target,no-change]", "plots=false")]) == 0
    rows = {r["method"]: r for r in read_csv(out / "metrics.csv")}
    info = json.loads((out / "SUB01" / "info.json").read_text())
    assert info["pixel_spacing_mm"] == pytest.approx([0.8, 0.8])
    px = 0.8 * 0.8
    assert abs(float(rows["fk"]["map_area_mm2"]) - float(rows["fk"]["target_area_mm2"])) <= px / 2 + 1e-9
    assert float(rows["fk"]["target_area_mm2"]) == float(rows["grow-to-target"]["target_area_mm2"])
    assert info["fk"]["forecasts"]["target0"]["reached"] is True
    days = tmp_path / "days"
    assert main(["predict", "-c", PREDICT_YAML, *predict_overrides(
        root, models, days, "data.resize=window", "target.days=[30,60]", "sampling.num_generations=2",
        "guidance.spatial_weight=1e4", "sampling.zone=fk", "plots=false")]) == 0
    fk = json.loads((days / "SUB01" / "info.json").read_text())["fk"]
    assert set(fk["forecasts"]) == {"target0", "target1", "zone"}
    assert fk["forecasts"]["target0"]["size_mm2"] < fk["forecasts"]["target1"]["size_mm2"]


def test_timepoints_before_the_tumour_is_visible_are_left_out_of_the_fit(tmp_path, tiny):
    """A first scan without tumour on the slice: the ODE is fitted from the first visible one (it normalises
    by it), and with too few visible timepoints left the subject is skipped with the reason."""
    from tests.factories import write_longitudinal

    _, models = tiny
    root = write_longitudinal(tmp_path / "late", n_subjects=2, n_timepoints=4, shape=(32, 32, 6),
                              radii=[0.0, 3.0, 4.0, 5.5], splits={"SUB01": "test", "SUB02": "test"})
    out = tmp_path / "pred"
    assert predict((root, models), out, "methods=[no-change,grow-to-target]") == 0
    info = json.loads((out / "SUB01" / "info.json").read_text())
    assert info["prior_timepoint"] == "002" and info["target_timepoint"] == "003"
    assert info["ode"]["fit_days"] == [30.0, 75.0] and all(a > 0 for a in info["ode"]["fit_sizes_mm2"])  # not day 0
    out2 = tmp_path / "pred2"
    assert predict((root, models), out2, "methods=[no-change]", "target.timepoint=002") == 1  # nothing predicted
    errors = read_csv(out2 / "errors.csv")
    assert len(errors) == 2 and "no tumour on slice" in errors[0]["error"] and "timepoint(s) 000" in errors[0]["error"]
