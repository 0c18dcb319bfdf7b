"""`tgrowth predict volume=true`: every tumour slice in one batched pass, 3D maps and metrics, known answers."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.factories import write_longitudinal
from tests.predict_fixtures import CONTRASTS, predict_overrides, record_calls
from tgrowth import metrics as M
from tgrowth.cli import main
from tgrowth.predict.plan import volume_slices
from tgrowth.predict.volume import adjacent_dice

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
PREDICT_YAML = str(REPO / "experiments" / "predict.yaml")
ALL = "[tgrowth,unguided,oracle-area,no-change,no-change-segmenter,segmenter-on-truth,grow-to-target,grow-to-truth,fk,fk-to-truth]"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, tiny_predict):
    """12 axial slices (32 x 32, 1 mm): the tumour ball (radius 2 -> 3 -> 4 voxels, centre z = 5.5) covers slices
    3..8 on the prior (001) and 2..9 on the follow-up (002); the tiny 32-pixel models of the predict tests."""
    root = write_longitudinal(tmp_path_factory.mktemp("vol") / "data", n_subjects=2, n_timepoints=3,
                              shape=(32, 32, 12), radii=[2.0, 3.0, 4.0], splits={"SUB01": "train", "SUB02": "test"})
    return root, tiny_predict[1]


def predict(cohort, out, *extra) -> int:
    root, models = cohort
    return main(["predict", "-c", PREDICT_YAML, *predict_overrides(root, models, out, "volume=true", "data.split=test",
                                                                    "guidance.form=segmenter", *extra)])


def read_csv(path):
    import csv

    with open(path) as fh:
        return {r["method"]: r for r in csv.DictReader(fh)}


def seg_of(root: Path, tp: str) -> np.ndarray:
    return np.asarray(nib.load(str(root / f"SUB02-{tp}" / f"SUB02-{tp}-seg.nii.gz")).get_fdata()) > 0


def test_volume_slices_are_the_tumour_range_plus_margin():
    assert volume_slices([0, 0, 5, 0, 3, 0, 0, 0], 1) == [1, 2, 3, 4, 5]  # contiguous: the gap at 3 included
    assert volume_slices([4, 1, 0, 0], 2) == [0, 1, 2, 3]  # clipped to the volume
    assert volume_slices([0, 2, 0], 0) == [1]
    assert volume_slices([0, 0, 0], 1) == []


def test_adjacent_dice_has_known_answers():
    a = torch.zeros(4, 6, 6, dtype=torch.bool)
    a[:3, 1:3, 1:3] = True  # three identical slices, then an empty one
    assert adjacent_dice(a) == pytest.approx(2 / 3)  # pairs (0,1), (1,2): 1; (2,3): 0; none skipped
    b = torch.zeros(3, 6, 6, dtype=torch.bool)
    b[0, :2, :2] = True
    b[1, :2, :4] = True  # Dice 2*4/(4+8) = 2/3; the pair (1, 2) ... b[2] empty -> 0
    assert adjacent_dice(b) == pytest.approx((2 / 3 + 0) / 2)
    assert adjacent_dice(torch.zeros(3, 4, 4, dtype=torch.bool)) is None and adjacent_dice(a[:1]) is None


def test_volume_prediction_end_to_end_with_3d_baselines(cohort, tmp_path):
    root, _ = cohort
    out = tmp_path / "vol"
    assert predict(cohort, out, f"methods={ALL}", "sampling.preserve_anatomy=true", "volume_margin_slices=1") == 0
    info = json.loads((out / "SUB02" / "info.json").read_text())
    assert info["slices"] == list(range(2, 10))  # the prior's tumour slices 3..8, one more each side
    assert list(info["stage_seconds"]) == ["load", "targets", "generate", "baselines", "evaluate"]
    vf = info["volume_forecast_mm3"]
    assert set(vf) == {"median", "p05", "p95"} and vf["p05"] <= vf["median"] <= vf["p95"]
    prior3d, truth3d = seg_of(root, "001"), seg_of(root, "002")
    assert info["prior_volume_mm3"] == pytest.approx(prior3d.sum()) and info["true_volume_mm3"] == truth3d.sum()
    assert info["ode"]["fit_sizes_mm3"] == [float(seg_of(root, "000").sum()), float(prior3d.sum())]  # fitted on volumes
    assert sum(info["slice_share"]) == pytest.approx(1.0)
    # volume_distribution=fk: the 3D FK forecast to the ODE volume reaches the margin slices (no prior tumour)
    assert info["slice_share"][0] > 0 and info["slice_share"][-1] > 0 and info["fk"]["forecasts"]["target0"]["reached"]
    # the maps in the input geometry: every generated slice holds values, the others are 0
    ref = nib.load(str(root / "SUB02-002" / "SUB02-002-t1n.nii.gz"))
    prob, mean = (nib.load(str(out / "SUB02" / f"{k}.nii.gz")) for k in ("prob_map", "pred_mean"))
    assert prob.shape == ref.shape and mean.shape == ref.shape + (4,) and np.allclose(prob.affine, ref.affine)
    mm = mean.get_fdata()
    filled = [k for k in range(12) if np.abs(mm[:, :, k]).max() > 0]
    assert filled == info["slices"] and 0 <= prob.get_fdata().min() and prob.get_fdata().max() <= 1
    assert info["files"]["montage"] == "montage.png" and (out / "SUB02" / "montage.png").stat().st_size > 0
    rows = read_csv(out / "metrics.csv")
    assert set(rows) == set(ALL[1:-1].split(","))
    for r in rows.values():
        assert r["dice_3d"] != "" and r["hd95_3d"] != "" and r["volume_error_vs_truth"] != ""
    nc, gt, gtr, fk = rows["no-change"], rows["grow-to-target"], rows["grow-to-truth"], rows["fk"]
    # no-change in 3D: the prior tumour against the follow-up, scored in the input grid at the voxel spacing
    assert float(nc["dice_3d"]) == pytest.approx(M.dice(prior3d, truth3d))
    assert float(nc["hd95_3d"]) == pytest.approx(M.hd95(prior3d, truth3d, (1.0, 1.0, 1.0)))
    assert float(nc["volume_error_vs_truth"]) == pytest.approx(abs(prior3d.sum() - truth3d.sum()) / truth3d.sum())
    # grown in 3D to their targets to a voxel (1 mm^3); grow-to-truth is then the true volume
    assert abs(float(gt["map_volume_mm3"]) - float(gt["target_volume_mm3"])) <= 0.5 + 1e-9
    assert abs(float(gtr["map_volume_mm3"]) - truth3d.sum()) <= 0.5 + 1e-9
    assert abs(float(fk["map_volume_mm3"]) - float(fk["target_volume_mm3"])) <= 0.5 + 1e-9
    assert abs(float(rows["fk-to-truth"]["map_volume_mm3"]) - truth3d.sum()) <= 0.5 + 1e-9  # the FK shape, true size
    # the consistency of the real follow-up's neighbouring slices, from the file itself
    assert float(nc["adjacent_dice_truth"]) == pytest.approx(adjacent_dice(torch.from_numpy(truth3d[:, :, 2:10]).permute(2, 0, 1)))
    assert float(nc["adjacent_dice"]) == pytest.approx(adjacent_dice(torch.from_numpy(prior3d[:, :, 2:10]).permute(2, 0, 1)))
    summary = json.loads((out / "summary.json").read_text())
    assert {"dice_3d", "hd95_3d", "volume_error_vs_truth", "adjacent_dice"} <= set(summary["methods"]["tgrowth"])
    assert "tgrowth_beats_no_change_on_hd95_3d" in summary["checks"]


def test_no_change_scores_dice_one_against_itself(cohort, tmp_path):
    """A follow-up with the prior's own tumour (radii 3 -> 3): no-change is scored against itself in 3D (Dice 1,
    HD95 0, no volume error), and grow-to-truth has nothing to grow."""
    root = write_longitudinal(tmp_path / "same", n_subjects=2, n_timepoints=3, shape=(32, 32, 12),
                              radii=[2.0, 3.0, 3.0], splits={"SUB01": "train", "SUB02": "test"})
    out = tmp_path / "same_out"
    assert predict((root, cohort[1]), out, "methods=[no-change,grow-to-truth]", "volume_distribution=prior",
                   "method_maps=true") == 0
    rows = read_csv(out / "metrics.csv")
    for m in ("no-change", "grow-to-truth"):
        assert float(rows[m]["dice_3d"]) == 1.0 and float(rows[m]["hd95_3d"]) == 0.0
        assert float(rows[m]["volume_error_vs_truth"]) == 0.0
    # method_maps: each method's 3D map in the input geometry; here both are the follow-up's tumour, voxel for voxel
    info = json.loads((out / "SUB02" / "info.json").read_text())
    assert info["files"]["methods"] == {m: f"methods/{m}.nii.gz" for m in ("no-change", "grow-to-truth")}
    truth = np.asarray(nib.load(str(root / "SUB02-002" / "SUB02-002-seg.nii.gz")).get_fdata()) > 0
    for m in ("no-change", "grow-to-truth"):
        assert np.array_equal(nib.load(str(out / "SUB02" / "methods" / f"{m}.nii.gz")).get_fdata() >= 0.5, truth)


def test_unguided_preserve_anatomy_keeps_the_prior_outside_the_3d_zone(cohort, tmp_path):
    """Guidance scale 0 and anatomy-preserving sampling with a sharp zone: on every generated slice, the pixels
    further than the zone's reach (info.json change_zone_mm) from the prior tumour IN 3D are the prior exactly."""
    from data_modules.formats import discover
    from data_modules.slices import load_slice
    from tgrowth.growth.geometry import distance_to

    root, _ = cohort
    out = tmp_path / "keep"
    assert predict(cohort, out, "methods=[tgrowth]", "guidance.scale=0", "sampling.preserve_anatomy=true",
                   "sampling.zone_margin_mm=0", "sampling.zone_edge_mm=0", "sampling.eta=0.5",
                   "volume_distribution=prior", "volume_margin_slices=2") == 0
    info = json.loads((out / "SUB02" / "info.json").read_text())
    assert info["slices"] == list(range(1, 11)) and info["change_zone_mm"] > 0
    share = np.array(info["slice_share"])  # volume_distribution=prior: the prior's slice areas, none on the margins
    assert share[[0, 1, 8, 9]].tolist() == [0, 0, 0, 0] and (share[2:8] > 0).all() and share.sum() == pytest.approx(1)
    sub = next(s for s in discover(root).subjects if s.subject == "SUB02")
    prior = [load_slice(sub.timepoints[1], k, CONTRASTS, 32) for k in info["slices"]]
    images = torch.stack([p.image for p in prior])
    tumour = torch.stack([p.seg > 0 for p in prior])
    far = distance_to(tumour[None], (1.0, 1.0, 1.0))[0] > info["change_zone_mm"] + 1e-6
    mean = torch.as_tensor(nib.load(str(out / "SUB02" / "pred_mean.nii.gz")).get_fdata()[:, :, info["slices"]])
    mean = mean.permute(2, 3, 0, 1).float()  # [S, C, H, W]
    same = (mean - images).abs().amax(1) < 1e-5
    assert bool(same[far].all()) and not bool(same[tumour].all())
    assert float(far.float().mean()) > 0.3  # the check covers much of the stack


def test_volume_config_errors_name_the_key(cohort, tmp_path, capsys):
    assert predict(cohort, tmp_path / "a", "target.days=[30]") == 2
    assert "config key 'target.days' is not supported with volume=true" in capsys.readouterr().err
    assert predict(cohort, tmp_path / "b", "data.slice_index=4") == 2
    assert ("config key 'data.slice_index' picks one slice, but volume=true generates every tumour slice: set it to "
            "null, got 4") in capsys.readouterr().err
    assert predict(cohort, tmp_path / "c", "volume_margin_slices=-1") == 2
    assert "config key 'volume_margin_slices' must be >= 0, got -1" in capsys.readouterr().err
    assert predict(cohort, tmp_path / "c2", "volume_fill_slices=-2") == 2
    assert "config key 'volume_fill_slices' must be >= 0, got -2" in capsys.readouterr().err
    assert predict(cohort, tmp_path / "d", "volume_distribution=ball") == 2
    assert "config key 'volume_distribution' must be one of fk, prior, got 'ball'" in capsys.readouterr().err
    assert predict(cohort, tmp_path / "e", "sampling.keep_prior_holes=true") == 2
    assert "config key 'sampling.keep_prior_holes' is 2D only for now" in capsys.readouterr().err
    assert not any((tmp_path / x).exists() for x in ["a", "b", "c", "c2", "d", "e"])


def test_one_batched_pass_with_the_same_noise_on_every_slice(cohort, tmp_path, monkeypatch):
    """The arms x slices x generations run as ONE probability_map call: row (arm a, slice k, generation g) starts
    from slice k's prior, is reduced in group (a, k) and draws the noise keyed (seed, subject, g) on every slice."""
    import tgrowth.predict.volume as V
    from tgrowth.diffusion.sampler import key_seed

    calls = record_calls(monkeypatch, V)
    out = tmp_path / "spy"
    assert predict(cohort, out, "methods=[tgrowth,unguided]", "sampling.batch_size=7", "volume_distribution=prior",
                   "seed=3") == 0
    assert len(calls) == 1
    kw, s, n = calls[0], 8, 4
    assert kw["num_generations"] == 2 * s * n and kw["chunk_size"] == 7
    rows = [(a, k, g) for a in range(2) for k in range(s) for g in range(n)]
    assert kw["noise_seeds"] == [key_seed(3, "SUB02", g) for _, _, g in rows]
    assert kw["prior_index"].tolist() == [k for _, k, _ in rows]
    assert kw["groups"].tolist() == [a * s + k for a, k, _ in rows]


def test_one_native_window_for_all_slices(cohort, tmp_path):
    """data.resize=window: one 32-pixel window of the 48 x 48 slices for every generated slice, pasted back into the
    input grid: the 3D baselines score exactly as the masks in the files."""
    root = write_longitudinal(tmp_path / "big", n_subjects=2, n_timepoints=3, shape=(48, 48, 12),
                              radii=[2.0, 3.0, 4.0], splits={"SUB01": "train", "SUB02": "test"})
    out = tmp_path / "win"
    assert predict((root, cohort[1]), out, "data.resize=window", "methods=[no-change,grow-to-truth]",
                   "volume_distribution=prior", "wandb.enabled=true", "wandb.mode=offline") == 0
    rows = read_csv(out / "metrics.csv")
    from tests.test_tracking import read_run

    got = read_run(out, ("predict/no-change/dice_3d",))["summary"]  # the 3D metrics reach wandb too
    assert got["predict/no-change/dice_3d"] == pytest.approx(float(rows["no-change"]["dice_3d"]))
    assert got["predict/grow-to-truth/volume_error"] == pytest.approx(0.0)
    prior3d, truth3d = seg_of(root, "001"), seg_of(root, "002")
    assert float(rows["no-change"]["dice_3d"]) == pytest.approx(M.dice(prior3d, truth3d))
    assert float(rows["no-change"]["map_volume_mm3"]) == prior3d.sum()
    assert abs(float(rows["grow-to-truth"]["map_volume_mm3"]) - truth3d.sum()) <= 0.5 + 1e-9


def test_the_spatial_terms_settings_reach_the_3d_sampler(cohort, tmp_path, monkeypatch):
    """guidance.spatial_tolerance and spatial_schedule reach the 3D pass's spatial term (built by the same helper
    as in 2D), with weight 0 on the unguided rows."""
    import tgrowth.predict.volume as V
    from tgrowth.diffusion.guidance import SCALE_SCHEDULES, SpatialGuidance

    calls = record_calls(monkeypatch, V)
    assert predict(cohort, tmp_path / "sp", "methods=[tgrowth,unguided]", "volume_distribution=prior",
                   "sampling.num_generations=1", "guidance.spatial_weight=2e4", "guidance.spatial_tolerance=0.45",
                   "guidance.spatial_schedule=one_minus_abar", "plots=false") == 0
    (spatial,) = [c for c in calls[0]["callbacks"] if isinstance(c, SpatialGuidance)]
    assert spatial.tolerance == 0.45 and spatial.schedule is SCALE_SCHEDULES["one_minus_abar"]
    assert spatial.weight.tolist() == [2e4] * 8 + [0.0] * 8  # 8 slices, tgrowth then unguided


def test_fk_filled_slices_beyond_the_generated_ones(cohort, tmp_path, monkeypatch):
    """volume_fill_slices=2 with no margin: slices 3..8 (the prior's tumour) are generated in one pass, slices
    1, 2, 9, 10 are filled: each guided map there is the fk method's mask at its target, unguided's is empty,
    the predicted image is the prior; with sampling.map_connected every map's parts touch the prior tumour."""
    from scipy import ndimage

    import tgrowth.predict.volume as V

    root, _ = cohort
    maps_out = []
    calls = record_calls(monkeypatch, V, results=maps_out)
    out = tmp_path / "fill"
    assert predict(cohort, out, "methods=[tgrowth,unguided,no-change,fk]", "volume_margin_slices=0",
                   "volume_fill_slices=2", "sampling.map_connected=true", "method_maps=true", "plots=false",
                   "sampling.num_generations=2") == 0
    info = json.loads((out / "SUB02" / "info.json").read_text())
    assert info["slices"] == list(range(3, 9)) and info["filled_slices"] == [1, 2, 9, 10]
    assert calls[0]["prior_index"].tolist() == [k for _ in range(2) for k in range(6) for _ in range(2)]
    maps = {m: np.asarray(nib.load(str(out / "SUB02" / "methods" / f"{m}.nii.gz")).get_fdata())
            for m in ("tgrowth", "unguided", "fk")}
    fill = [1, 2, 9, 10]
    assert np.array_equal(maps["tgrowth"][:, :, fill], maps["fk"][:, :, fill])
    assert maps["fk"][:, :, fill].sum() > 0  # the FK forecast reaches beyond the prior's slices here
    assert maps["unguided"][:, :, fill].max() == 0
    assert 0 < info["slice_share"][1] and sum(info["slice_share"]) == pytest.approx(1.0)  # shares over the stack
    from data_modules.formats import discover
    from data_modules.slices import load_slice

    sub = next(s for s in discover(root).subjects if s.subject == "SUB02")
    mean = nib.load(str(out / "SUB02" / "pred_mean.nii.gz")).get_fdata()
    for k in fill:  # the filled slices' image is the prior scan
        prior = load_slice(sub.timepoints[1], k, CONTRASTS, 32).image.permute(1, 2, 0).numpy()
        assert np.allclose(mean[:, :, k], prior, atol=1e-5)
    rows = read_csv(out / "metrics.csv")
    areas = maps_out[0].areas.double().reshape(2, 6, 2)  # (arm, generated slice, generation), mm^2 at 1 mm
    for i, m in enumerate(("tgrowth", "unguided")):  # the generations' mean volume, the filled slices' added
        want = float(areas[i].sum(0).mean()) + float(maps[m][:, :, fill].sum())
        assert float(rows[m]["pred_volume_mm3"]) == pytest.approx(want)
    prior3d = seg_of(root, "001")
    near = ndimage.binary_dilation(prior3d)
    for m, p in maps.items():  # map_connected: no part of any map stands apart from the prior tumour
        lab, n = ndimage.label(p > 0)
        assert all((near & (lab == i)).any() for i in range(1, n + 1)), m


def test_map_connected_applies_to_every_method():
    """connected_maps on a 2D case: every method's map loses its parts apart from the prior tumour; off, unchanged."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from tgrowth.predict.methods import Arm, MethodResult, connected_maps

    prior = torch.zeros(6, 6, dtype=torch.bool)
    prior[2:4, 2:4] = True
    prob = torch.zeros(6, 6)
    prob[1:5, 1:5], prob[0, 5] = 0.5, 1.0  # the grown tumour, and a far pixel
    r = MethodResult(prob, torch.zeros(1, 6, 6), torch.zeros(1, 6, 6), torch.tensor([16.0]))
    arms = [Arm("tgrowth", "ode", 1.0), Arm("no-change-segmenter", "baseline", 0.0)]
    case = SimpleNamespace(prior_mask=prior)
    on = connected_maps(OmegaConf.create({"sampling": {"map_connected": True}}), case, {a: r for a in arms})
    for a in arms:
        assert on[a].prob[0, 5] == 0 and torch.equal(on[a].prob[1:5, 1:5], prob[1:5, 1:5])
        assert torch.equal(on[a].areas, r.areas)  # the generations' own sizes are not the map's
    off = connected_maps(OmegaConf.create({"sampling": {"map_connected": False}}), case, {arms[0]: r})
    assert off[arms[0]] is r


def test_spatial_target_generation_steers_each_generation_toward_its_own_size(cohort, tmp_path, monkeypatch):
    """guidance.spatial_target=generation (quantile targets, N = 2, 2 FK-filled slices each side): the spatial
    term has one map per (slice, generation) row; generation g's maps over the generated and the filled slices
    hold exactly its size target (the area guidance's per-slice targets summed over the stack, to a voxel), the
    per-slice area targets are those maps' areas, the smaller quantile asks for less, the filled slices carry
    the generations' frequency, and the predicted volume is the generations' mean over the whole stack."""
    import tgrowth.predict.volume as V
    from tgrowth.diffusion.guidance import SpatialGuidance

    maps_out = []
    calls = record_calls(monkeypatch, V, results=maps_out)
    area_targets = []
    real_area = V.area_guidance

    def spy_area(cfg, vc, targets, *rest):
        area_targets.append(targets.clone())
        return real_area(cfg, vc, targets, *rest)

    monkeypatch.setattr(V, "area_guidance", spy_area)
    out = tmp_path / "gen"
    assert predict(cohort, out, "methods=[tgrowth,fk]", "volume_margin_slices=0", "volume_fill_slices=2",
                   "sampling.num_generations=2", "guidance.target=quantiles", "guidance.spatial_weight=2e4",
                   "guidance.spatial_target=generation", "method_maps=true", "plots=false") == 0
    (spatial,) = [c for c in calls[0]["callbacks"] if isinstance(c, SpatialGuidance)]
    s, n = 6, 2  # generated slices 3..8, two generations
    assert spatial.target.shape == (s * n, 32, 32) and spatial.groups.tolist() == list(range(s * n))
    gen_masks = spatial.target.reshape(s, n, 32, 32).bool()  # row = (slice, generation), generation fastest
    tgt = area_targets[0].reshape(s, n)  # mm^2 per (slice, generation) at 1 mm: the slice's share of the volume
    maps = {m: np.asarray(nib.load(str(out / "SUB02" / "methods" / f"{m}.nii.gz")).get_fdata()) for m in ("tgrowth", "fk")}
    fill = [1, 2, 9, 10]
    filled_tg = maps["tgrowth"][:, :, fill]
    assert set(np.unique(filled_tg)) <= {0.0, 0.5, 1.0} and (filled_tg == 0.5).any()  # two masks of two sizes
    per_slice = gen_masks.flatten(2).sum(2).double()  # [S, n] pixels (1 mm^2 each) on the generated slices
    assert float(per_slice[:, 0].sum()) < float(per_slice[:, 1].sum())  # quantiles 0.25 < 0.75
    # the per-slice area targets are the slice's share of generation g's own mask times its target volume, which
    # the mask (generated + filled slices) holds to half a voxel
    assert torch.allclose(tgt, per_slice, atol=0.5 * per_slice.max().item() / per_slice.sum(0).min().item() + 1e-6)
    assert not torch.equal(per_slice[:, 0], per_slice[:, 1])
    rows = read_csv(out / "metrics.csv")
    areas = maps_out[0].areas.double().reshape(s, n)  # tgrowth's generations on the generated slices
    want = float(areas.sum(0).mean()) + float(filled_tg.sum())  # + the generations' mean filled volume
    assert float(rows["tgrowth"]["pred_volume_mm3"]) == pytest.approx(want)
    assert float(rows["tgrowth"]["target_volume_mm3"]) == pytest.approx(float(rows["fk"]["target_volume_mm3"]))
    assert not np.array_equal(filled_tg, maps["fk"][:, :, fill])  # the fk method keeps the median's mask


def test_a_follow_up_without_tumour_gives_the_oracles_empty_rows(cohort, tmp_path):
    """The tumour has gone by the follow-up (radius 0): oracle-area with spatial guidance and fk-to-truth read
    the FK forecast at the true volume 0, an empty mask (no error), so fk-to-truth's map is empty."""
    root = write_longitudinal(tmp_path / "gone", n_subjects=2, n_timepoints=3, shape=(32, 32, 12),
                              radii=[2.0, 3.0, 0.0], splits={"SUB01": "train", "SUB02": "test"})
    assert not seg_of(root, "002").any()  # the follow-up has no tumour
    out = tmp_path / "gone_out"
    assert predict((root, cohort[1]), out, "methods=[oracle-area,fk-to-truth,fk]", "guidance.spatial_weight=1e4",
                   "sampling.num_generations=2", "plots=false") == 0
    rows = read_csv(out / "metrics.csv")
    assert set(rows) == {"oracle-area", "fk-to-truth", "fk"}
    assert float(rows["fk-to-truth"]["map_volume_mm3"]) == 0.0 and float(rows["fk"]["map_volume_mm3"]) > 0
