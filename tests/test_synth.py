"""The synthetic longitudinal phantom: format, determinism, truth tables, growth/RT behaviour, bad config."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from data_modules.formats import discover
from tests.factories import write_longitudinal
from tgrowth.cli import main
from tgrowth.errors import ConfigError
from tgrowth.synth import assign_splits, generate_cohort
from tgrowth.synth.growth import Schedule, simulate
from tgrowth.vocab import CONTRASTS

TINY = ["n_subjects=2", "n_timepoints=3", "voxel_mm=4", "sim_voxel_mm=4", "sim_box_mm=96",
        "montage=false", "schedule.pre_rt_scans=2"]
KINDS = list(CONTRASTS) + ["seg"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    assert main(["synth", *TINY, f"output_dir={root}", "seed=3"]) == 0
    return root


def test_cli_writes_the_longitudinal_format(cohort: Path):
    for name in ("timeline.csv", "splits.csv", "ground_truth.csv", "config.yaml", "summary.json"):
        assert (cohort / name).is_file(), name
    rows = _rows(cohort / "timeline.csv")
    assert list(rows[0].keys()) == ["subject", "timepoint", "day", "rt_start_day", "rt_end_day"]
    subjects = sorted({r["subject"] for r in rows})
    assert subjects == ["SYN-00001", "SYN-00002"]
    folders = sorted(p.name for p in cohort.iterdir() if p.is_dir())
    assert folders == [f"{s}-{t:03d}" for s in subjects for t in range(3)]
    for r in rows:
        base = cohort / f"{r['subject']}-{r['timepoint']}"
        assert sorted(p.name for p in base.iterdir()) == sorted(f"{base.name}-{k}.nii.gz" for k in KINDS)
    splits = _rows(cohort / "splits.csv")
    assert list(splits[0].keys()) == ["subject", "split"]
    assert sorted(s["subject"] for s in splits) == subjects
    assert {s["split"] for s in splits} <= {"train", "val", "test"}


def test_timeline_days_and_rt_dates(cohort: Path):
    rows = _rows(cohort / "timeline.csv")
    for s in {r["subject"] for r in rows}:
        mine = [r for r in rows if r["subject"] == s]
        assert [r["timepoint"] for r in mine] == ["000", "001", "002"]
        days = [float(r["day"]) for r in mine]
        assert days[0] == 0.0 and all(b > a for a, b in zip(days, days[1:]))
        assert len({(r["rt_start_day"], r["rt_end_day"]) for r in mine}) == 1
        start, end = float(mine[0]["rt_start_day"]), float(mine[0]["rt_end_day"])
        # 30 fractions, 5 a week: 6 weeks, the last fraction on the Friday of week 6
        assert end - start == 39.0
        assert days[1] < start and days[2] > end  # two scans before RT (pre_rt_scans=2), one after


def test_volumes_share_geometry_and_labels_are_brats(cohort: Path):
    ref = nib.load(str(cohort / "SYN-00001-000" / "SYN-00001-000-t1n.nii.gz"))
    assert np.allclose(np.diag(ref.affine)[:3], [4.0, 4.0, 4.0])
    assert ref.header.get_xyzt_units()[0] == "mm"
    for folder in sorted(p for p in cohort.iterdir() if p.is_dir()):
        for k in KINDS:
            img = nib.load(str(folder / f"{folder.name}-{k}.nii.gz"))
            assert img.shape == ref.shape and np.array_equal(img.affine, ref.affine), (folder.name, k)
            data = np.asarray(img.dataobj)
            assert np.isfinite(data).all()
            if k == "seg":
                assert set(np.unique(data)) <= {0, 1, 2, 3}
            else:
                assert data.max() > 500  # white matter near 1000
                assert data[0, 0, 0] == 0  # skull-stripped background


def test_ground_truth_matches_the_segmentations(cohort: Path):
    truth = _rows(cohort / "ground_truth.csv")
    assert len(truth) == 6
    for r in truth:
        seg = np.asarray(nib.load(str(cohort / f"{r['subject']}-{r['timepoint']}" / f"{r['subject']}-{r['timepoint']}-seg.nii.gz")).dataobj)
        vox = 4.0**3
        assert float(r["whole_tumor_volume_mm3"]) == pytest.approx((seg > 0).sum() * vox)
        assert float(r["tumor_core_volume_mm3"]) == pytest.approx(np.isin(seg, [1, 3]).sum() * vox)
        assert float(r["enhancing_volume_mm3"]) == pytest.approx((seg == 3).sum() * vox)
        areas = (seg > 0).sum(axis=(0, 1)) * 16.0
        assert float(r["max_axial_area_mm2"]) == pytest.approx(areas.max())
        assert int(r["max_area_slice"]) == int(areas.argmax())
        assert float(r["whole_tumor_volume_mm3"]) > 0
        for key in ("rho_per_day", "d_white_mm2_per_day", "d_grey_mm2_per_day", "alpha_per_gy"):
            assert float(r[key]) > 0
        assert float(r["d_grey_mm2_per_day"]) < float(r["d_white_mm2_per_day"])


def test_tumour_grows_before_rt_and_rt_kills_proliferating_cells(cohort: Path):
    truth = _rows(cohort / "ground_truth.csv")
    for s in {r["subject"] for r in truth}:
        mine = sorted((r for r in truth if r["subject"] == s), key=lambda r: r["timepoint"])
        wt = [float(r["whole_tumor_volume_mm3"]) for r in mine]
        cells = [float(r["tumor_cell_volume_mm3"]) for r in mine]
        assert [r["phase"] for r in mine] == ["pre_rt", "pre_rt", "post_rt"]
        assert wt[1] > wt[0] and cells[1] > cells[0]
        assert cells[2] < 0.7 * cells[1]


def test_same_seed_same_bytes_other_seed_differs(cohort: Path, tmp_path: Path):
    # subject 1 alone, same seed: byte-identical to subject 1 of the two-subject run (independent of n_subjects)
    kwargs = dict(_parse(a) for a in TINY)
    kwargs["n_subjects"] = 1
    same = generate_cohort(None, output_dir=str(tmp_path / "a"), seed=3, log=lambda *_: None, **kwargs)
    yaml = tmp_path / "other.yaml"  # the API also takes a YAML path (keywords override it)
    yaml.write_text("seed: 4\ngrowth:\n  mass_effect: 0.0\n" + "".join(f"{k}: {v}\n" for k, v in kwargs.items() if "." not in k))
    other = generate_cohort(yaml, output_dir=str(tmp_path / "b"), log=lambda *_: None)
    assert same["subjects"] == other["subjects"] == ["SYN-00001"]
    for tp in ("000", "002"):
        for k in ("t1c", "seg"):
            name = f"SYN-00001-{tp}/SYN-00001-{tp}-{k}.nii.gz"
            a = nib.load(str(cohort / name))
            b = nib.load(str(tmp_path / "a" / name))
            c = nib.load(str(tmp_path / "b" / name))
            assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.array_equal(a.affine, b.affine)
            assert not np.array_equal(np.asarray(a.dataobj), np.asarray(c.dataobj))
    # without mass effect the anatomy (brain mask) is the same at every scan
    masks = [np.asarray(nib.load(str(tmp_path / "b" / f"SYN-00001-{tp}/SYN-00001-{tp}-t1n.nii.gz")).dataobj) > 0 for tp in ("000", "002")]
    assert np.array_equal(masks[0], masks[1])
    assert (cohort / "timeline.csv").read_text().splitlines()[1:4] == (tmp_path / "a" / "timeline.csv").read_text().splitlines()[1:4]


def test_overwrite_refuses_a_data_set_synth_did_not_write(tmp_path: Path, capsys):
    root = write_longitudinal(tmp_path / "real", n_subjects=1, n_timepoints=2)
    before = {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    assert main(["synth", *TINY, f"output_dir={root}", "overwrite=true"]) == 1
    err = capsys.readouterr().err
    assert (f"output_dir {root} is not empty and was not written by tgrowth synth (no config.yaml or summary.json of a"
            " synth run); overwrite=true only replaces synth's own earlier output, never another data set") in err
    assert {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} == before  # untouched


def test_overwrite_replaces_its_own_earlier_output(cohort: Path, tmp_path: Path, capsys):
    root = tmp_path / "data"
    shutil.copytree(cohort, root)  # two subjects, written by synth
    assert main(["synth", *TINY, "n_subjects=1", f"output_dir={root}", "overwrite=true", "seed=3"]) == 0
    # the earlier output is replaced, not mixed in: no stale SYN-00002 scans
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [f"SYN-00001-{t:03d}" for t in range(3)]
    assert discover(root).problems == []
    # anything synth did not write next to its output: refused, left alone
    (root / "notes.txt").write_text("mine")
    assert main(["synth", *TINY, f"output_dir={root}", "overwrite=true"]) == 1
    assert "holds an earlier synth data set but also files synth did not write (notes.txt)" in capsys.readouterr().err
    assert (root / "notes.txt").read_text() == "mine" and (root / "SYN-00001-000").is_dir()


@pytest.mark.parametrize("override, key", [
    ("n_subjects=0", "n_subjects"),
    ("n_timepoints=1", "n_timepoints"),
    ("voxel_mm=0", "voxel_mm"),
    ("voxel_mm=-2", "voxel_mm"),
    ("sim_voxel_mm=0", "sim_voxel_mm"),
    ("growth.rho_per_day=[0.05,0.01]", "growth.rho_per_day"),
    ("schedule.pre_rt_scans=0", "schedule.pre_rt_scans"),
    ("split_fractions=[1,0]", "split_fractions"),
    ("device=tpu9", "device"),
    ("growth.anisotropy=[0.5,2]", "growth.anisotropy"),
    ("growth.anisotropy=[3,2]", "growth.anisotropy"),
])
def test_bad_config_names_the_key(override, key, tmp_path: Path, capsys):
    kwargs = dict(_parse(a) for a in TINY)
    bad_key, bad_value = _parse(override)
    kwargs[bad_key] = bad_value
    with pytest.raises(ConfigError, match=f"'{key}'"):
        generate_cohort(None, output_dir=str(tmp_path / "x"), **kwargs)
    assert not (tmp_path / "x").exists()
    out = tmp_path / "cli"
    assert main(["synth", *TINY, override, f"output_dir={out}"]) != 0
    assert f"'{key}'" in capsys.readouterr().err
    assert not out.exists()


def _parse(override: str):
    key, value = override.split("=", 1)
    if value.startswith("["):
        return key, [float(v) for v in value.strip("[]").split(",")]
    if value in ("true", "false"):
        return key, value == "true"
    if not value.lstrip("-").replace(".", "").isdigit():
        return key, value
    return key, float(value) if ("." in value or key.endswith("_mm")) else int(value)


def test_splits_deterministic_disjoint_and_sized():
    subjects = [f"S{i}" for i in range(20)]
    a = assign_splits(subjects, [0.7, 0.15, 0.15], seed=0)
    assert a == assign_splits(subjects, [0.7, 0.15, 0.15], seed=0)
    assert a != assign_splits(subjects, [0.7, 0.15, 0.15], seed=1)
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 14, "val": 3, "test": 3}
    assert set(assign_splits(subjects[:3], [0.8, 0.1, 0.1], seed=0).values()) == {"train", "val", "test"}
    assert sorted(assign_splits(subjects[:2], [0.8, 0.1, 0.1], seed=0).values()) == ["test", "train"]


# --------------------------------------------------------------------------- the growth solver itself
def _params(**kw) -> dict[str, torch.Tensor]:
    base = dict(d_white=0.2, d_grey=0.2, rho=0.05, alpha=0.05, beta=0.005, k_clear=0.0, k_nec=0.0)
    base.update(kw)
    return {k: torch.tensor([v], dtype=torch.float32) for k, v in base.items()}


def test_front_speed_matches_fisher_kolmogorov():
    """A planar front in homogeneous tissue travels at the Fisher-Kolmogorov speed 2 sqrt(D rho)."""
    n = 120
    tissue = torch.zeros(1, 2, n, 3, 3)
    tissue[:, 1] = 1.0
    u0 = torch.zeros(1, n, 3, 3)
    u0[0, :3] = 0.9
    sched = Schedule(scan_days=[0, 150, 250], fraction_days=[], target_visible_voxels=1)
    res = simulate(tissue, u0, _params(), [sched], 1.0, steps_per_day=4, dose_per_fraction_gy=0.0, margin_mm=0.0)
    front = [float((s[0, :, 1, 1] > 0.5).sum()) for s in res.snapshots[0]]
    speed = (front[2] - front[1]) / 100.0
    theory = 2 * math.sqrt(0.2 * 0.05)  # 0.2 mm/day, approached from below (Bramson's log delay)
    assert 0.85 * theory < speed < 1.05 * theory


def test_no_flux_into_csf_and_mass_conserved_without_growth():
    n = 20
    tissue = torch.zeros(1, 2, n, n, n)
    tissue[:, 1, :, :, :10] = 1.0  # white matter in one half, "CSF" (D = 0) in the other
    u0 = torch.zeros(1, n, n, n)
    u0[0, 10, 10, 7] = 0.5
    sched = Schedule(scan_days=[0, 30], fraction_days=[], target_visible_voxels=1)
    res = simulate(tissue, u0, _params(rho=0.0), [sched], 1.0, steps_per_day=2, dose_per_fraction_gy=0.0, margin_mm=0.0)
    u_end = res.snapshots[0, 1, 0]
    assert float(u_end[..., 10:].abs().max()) == 0.0
    assert float(u_end.sum()) == pytest.approx(0.5, rel=1e-4)
    assert float(u_end[10, 10, 7]) < 0.5


def test_linear_quadratic_kill_and_damage_compartment():
    """Without diffusion and growth, each fraction multiplies the cells by exp(-alpha D - beta D^2) in the PTV."""
    n = 16
    tissue = torch.zeros(1, 2, n, n, n)
    tissue[:, 1] = 1.0
    u0 = torch.zeros(1, n, n, n)
    u0[0, 6:10, 6:10, 6:10] = 0.8
    sched = Schedule(scan_days=[0, 1, 3], fraction_days=[1, 2], target_visible_voxels=1)
    p = _params(d_white=0.0, d_grey=0.0, rho=0.0, alpha=0.1, beta=0.01, k_clear=0.05)
    res = simulate(tissue, u0, p, [sched], 1.0, steps_per_day=1, dose_per_fraction_gy=2.0, margin_mm=3.0)
    s = math.exp(-0.1 * 2.0 - 0.01 * 4.0)
    u, _, d = res.snapshots[0, 2].unbind(0)
    assert float(u[8, 8, 8]) == pytest.approx(0.8 * s * s, rel=1e-5)
    # damage: first kill cleared for 2 days, second for 1 day
    expected = 0.8 * (1 - s) * math.exp(-0.1) + 0.8 * s * (1 - s) * math.exp(-0.05)
    assert float(d[8, 8, 8]) == pytest.approx(expected, rel=1e-4)
    scan1 = res.snapshots[0, 1]  # scans come before the fraction on the same day
    assert float(scan1[0, 8, 8, 8]) == pytest.approx(0.8)


def test_montage_png(tmp_path: Path):
    from tgrowth.synth.montage import save_montage

    rng = np.random.default_rng(0)
    vols = [rng.uniform(0, 1000, size=(12, 14, 6)).astype(np.int16) for _ in range(3)]
    segs = [np.zeros((12, 14, 6), np.uint8) for _ in range(3)]
    for k, s in enumerate(segs):
        s[4:6 + k, 5:7 + k, 3] = [2, 3, 1][k]
    out = save_montage({"subject": "S", "days": [0, 20, 90], "t1c": vols, "t2f": vols, "seg": segs, "rt": (30, 69)},
                       tmp_path / "m.png", (3.0, 3.0, 3.0))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_untreated_subject_has_empty_rt_dates_and_keeps_growing(tmp_path: Path):
    kwargs = dict(_parse(a) for a in TINY)
    kwargs.update({"n_subjects": 1, "rt.fraction_of_subjects": 0.0, "slice_thickness_mm": 5.0})
    summary = generate_cohort(None, output_dir=str(tmp_path / "norx"), seed=2, log=lambda *_: None, **kwargs)
    seg = nib.load(str(tmp_path / "norx" / "SYN-00001-002" / "SYN-00001-002-seg.nii.gz"))
    assert np.allclose(np.diag(seg.affine)[:3], [4.0, 4.0, 5.0])  # anisotropic voxels: thick axial slices
    lab = np.asarray(seg.dataobj)
    assert summary["ground_truth"][2]["whole_tumor_volume_mm3"] == pytest.approx((lab > 0).sum() * 80.0)
    assert summary["ground_truth"][2]["max_axial_area_mm2"] == pytest.approx((lab > 0).sum(axis=(0, 1)).max() * 16.0)
    rows = _rows(tmp_path / "norx" / "timeline.csv")
    assert [(r["rt_start_day"], r["rt_end_day"]) for r in rows] == [("", "")] * 3
    truth = summary["ground_truth"]
    assert [r["phase"] for r in truth] == ["no_rt"] * 3
    cells = [r["tumor_cell_volume_mm3"] for r in truth]
    assert cells[0] < cells[1] < cells[2]


@pytest.mark.parametrize("h", [1.0, 2.0, 2.5, 3.0, 4.0])
def test_time_steps_respect_the_explicit_stability_bound(h):
    from tgrowth.growth.fk import pregrowth_days_per_step, stable_steps_per_day

    d_max, rho_max = 0.6, 0.08
    spd = stable_steps_per_day(d_max, h, rho_max=rho_max)
    dt = 1.0 / spd
    assert dt * 6 * d_max / h**2 <= 0.8 + 1e-9 and rho_max * dt <= 0.1 + 1e-9
    k = pregrowth_days_per_step(d_max, h, spd, rho_max=rho_max)
    assert k >= 1 and k * dt * 6 * d_max / h**2 <= 1.0 and rho_max * k * dt <= 0.25 + 1e-9


def test_rough_diffusivity_at_the_stable_step_matches_a_fine_step():
    """Checkerboard D at the maximum: the chosen step agrees with an 8x finer one (a too-large step does not)."""
    from tgrowth.growth.fk import stable_steps_per_day

    n, h = 16, 1.0
    idx = torch.arange(n)
    tissue = torch.zeros(1, 2, n, n, n)
    tissue[0, 1] = 0.2 + 0.8 * ((idx[:, None, None] + idx[None, :, None] + idx[None, None, :]) % 2).float()
    u0 = torch.zeros(1, n, n, n)
    u0[0, 6:10, 6:10, 6:10] = 1.0
    sched = Schedule(scan_days=[0, 20], fraction_days=[], target_visible_voxels=1)
    p = _params(d_white=0.6, d_grey=0.6, rho=0.05)

    def run(spd: int) -> torch.Tensor:
        return simulate(tissue, u0, p, [sched], h, spd, 0.0, 0.0).snapshots[0, 1, 0]

    spd = stable_steps_per_day(0.6, h, rho_max=0.05)
    ref = run(8 * spd)
    u = run(spd)
    assert float(u.min()) >= 0.0 and float(u.max()) <= 1.0 + 1e-5
    assert float((u - ref).abs().max()) < 0.01
    assert float((run(1) - ref).abs().max()) > 0.05  # dt 6 D / h^2 = 3.6: the bound matters


def test_anisotropic_phantom_spreads_with_variance_two_d_s_t_per_axis():
    """The phantom's solver with a diagonal tensor (growth.anisotropy): pure diffusion from a point in white
    matter has variance exactly 2 D s_a t along axis a (a Gaussian with those variances), mass conserved."""
    n, d, t = 33, 0.2, 10
    tissue = torch.zeros(2, 2, n, n, n)
    tissue[:, 1] = 1.0
    u0 = torch.zeros(2, n, n, n)
    u0[:, n // 2, n // 2, n // 2] = 1.0
    scale = torch.tensor([[4.0, 1.0, 1.0], [1.0, 2.5, 1.0]])
    sched = Schedule(scan_days=[0, t], fraction_days=[], target_visible_voxels=1)
    p = _params(d_white=d, d_grey=d, rho=0.0)
    p = {k: v.expand(2) for k, v in p.items()}
    res = simulate(tissue, u0, p, [sched, sched], 1.0, steps_per_day=4, dose_per_fraction_gy=0.0, margin_mm=0.0,
                   axis_scale=scale)
    u = res.snapshots[:, 1, 0].double()  # [2, n, n, n]
    x = torch.arange(n, dtype=torch.float64) - n // 2
    for b in range(2):
        assert float(u[b].sum()) == pytest.approx(1.0, rel=1e-4)
        for axis in range(3):
            marginal = u[b].sum(dim=tuple(a for a in range(3) if a != axis))
            var = float((marginal * x**2).sum() / marginal.sum())
            assert var == pytest.approx(2.0 * d * float(scale[b, axis]) * t, rel=2e-3), (b, axis)


def test_anisotropy_draws_leave_every_other_draw_unchanged(cohort: Path, tmp_path: Path):
    """growth.anisotropy draws from its own stream: same seed, same schedules and seed points as the default
    cohort; the ratio and axis are recorded in ground_truth.csv (a default cohort has no such columns), and
    the tumour is longer along the drawn axis than across it."""
    out = tmp_path / "aniso"
    assert main(["synth", *TINY, f"output_dir={out}", "seed=3", "growth.anisotropy=[6,6]", "growth.mass_effect=0"]) == 0
    assert (out / "timeline.csv").read_text() == (cohort / "timeline.csv").read_text()
    truth, plain = _rows(out / "ground_truth.csv"), _rows(cohort / "ground_truth.csv")
    assert "anisotropy" not in plain[0]
    for a, b in zip(truth, plain):
        assert (a["seed_x_mm"], a["seed_y_mm"], a["seed_z_mm"]) == (b["seed_x_mm"], b["seed_y_mm"], b["seed_z_mm"])
        assert a["d_white_mm2_per_day"] == b["d_white_mm2_per_day"] and float(a["anisotropy"]) == 6.0
        assert a["anisotropy_axis"] in ("x", "y")
    for s in sorted({r["subject"] for r in truth}):
        row = [r for r in truth if r["subject"] == s][-1]
        lab = np.asarray(nib.load(str(out / f"{s}-{row['timepoint']}" / f"{s}-{row['timepoint']}-seg.nii.gz")).dataobj) > 0
        ext = [int(np.count_nonzero(lab.any(axis=tuple(a for a in range(3) if a != k)))) for k in range(2)]
        along = 0 if row["anisotropy_axis"] == "x" else 1
        assert ext[along] > ext[1 - along], (s, row["anisotropy_axis"], ext)
