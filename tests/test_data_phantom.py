"""The data layer reads what `tgrowth synth` writes (format 2): sizes agree with the phantom's ground truth."""

import csv
from pathlib import Path

import pytest

from data_modules.check import check_dataset
from data_modules.longitudinal import LongitudinalDataModule
from data_modules.slices import SliceDataModule
from tgrowth.cli import main

TINY = ["n_subjects=2", "n_timepoints=3", "voxel_mm=4", "sim_voxel_mm=4", "sim_box_mm=96",
        "montage=false", "schedule.pre_rt_scans=2"]


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    pytest.importorskip("tgrowth.synth.run")
    root = tmp_path_factory.mktemp("phantom") / "data"
    assert main(["synth", *TINY, f"output_dir={root}", "seed=5"]) == 0
    return root


def _truth(root: Path) -> dict:
    with open(root / "ground_truth.csv", newline="") as fh:
        return {(r["subject"], r["timepoint"]): r for r in csv.DictReader(fh)}


def test_data_check_matches_phantom_ground_truth(phantom_root):
    rep = check_dataset(phantom_root)
    assert rep["format"] == "longitudinal" and rep["ok"] and rep["n_warnings"] == 0
    truth = _truth(phantom_root)
    assert len(truth) == rep["n_timepoints"] == 6
    for s in rep["subjects"]:
        for t in s["timepoints"]:
            g = truth[(s["subject"], t["timepoint"])]
            assert t["day"] == float(g["day"])
            assert t["whole_tumor_volume_mm3"] == pytest.approx(float(g["whole_tumor_volume_mm3"]))
            assert t["max_axial_area_mm2"] == pytest.approx(float(g["max_axial_area_mm2"]))
            assert t["max_area_slice"] == int(g["max_area_slice"])


def test_datamodules_on_phantom(phantom_root):
    with open(phantom_root / "splits.csv", newline="") as fh:
        splits = {r["subject"]: r["split"] for r in csv.DictReader(fh)}
    dm = SliceDataModule(phantom_root, image_size=48, slices={"tumour": "largest", "healthy": 1}, batch_size=4)
    dm.setup()
    assert dm.split_of == splits and not [p for p in dm.problems if p.severity == "error"]
    for name, items in dm.items.items():
        assert {t.subject for t, _ in items} <= {s for s, sp in splits.items() if sp == name}
    loader = dm.train_dataloader() if dm.items["train"] else dm.test_dataloader()
    b = next(iter(loader))
    assert b["image"].shape[1:] == (4, 48, 48) and b["image"].min() >= -1 and b["image"].max() <= 1
    lm = LongitudinalDataModule(phantom_root)
    truth = _truth(phantom_root)
    for r in lm.sizes_table("volume"):
        g = [v for (s, _), v in truth.items() if s == r["subject"] and float(v["day"]) == r["day"]][0]
        assert r["size"] == pytest.approx(float(g["whole_tumor_volume_mm3"]))
        assert r["rt_start_day"] == float(g["rt_start_day"])
