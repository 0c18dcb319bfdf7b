"""benchmarks/cohort_table.py: one run split over folders (DIR_A+DIR_B) and the 3D columns of a volume=true run."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cohort_table import main  # noqa: E402

FIELDS = ["subject", "method", "dice_3d", "hd95_3d", "volume_error_vs_truth", "volume_error_vs_target",
          "adjacent_dice", "ssim", "pred_volume_mm3", "target_timepoint", "target_day"]


def _write(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return folder


def _rows(subjects, hd_tg, hd_nc):
    out = []
    for s, a, b in zip(subjects, hd_tg, hd_nc):
        for m, h in (("tgrowth", a), ("no-change", b)):
            out.append({"subject": s, "method": m, "dice_3d": 0.8 if m == "tgrowth" else 0.6, "hd95_3d": h,
                        "volume_error_vs_truth": 0.1, "volume_error_vs_target": 0.0, "adjacent_dice": 0.9,
                        "ssim": 0.7, "pred_volume_mm3": 100.0, "target_timepoint": "005", "target_day": 300})
    return out


def test_a_run_split_over_two_folders_gets_the_3d_table(tmp_path, capsys):
    a = _write(tmp_path / "a", _rows(["S1", "S2"], [4.0, 6.0], [8.0, 9.0]))
    b = _write(tmp_path / "b", _rows(["S3"], [5.0], [10.0]))
    assert main([f"{a}+{b}", "--against", "no-change"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip().strip("|").split("|")]
             for ln in out.splitlines() if ln.startswith("| ") and not ln.startswith("| method")}
    assert out.count("| method | n | HD95 3D mm | Dice 3D |") == 1
    assert lines["tgrowth"][1:3] == ["3", "5.000 (5.000)"]  # the three subjects of both folders
    assert lines["no-change"][2] == "9.000 (9.000)" and lines["tgrowth"][3] == "0.800 (0.800)"
    # paired over the 3 subjects: HD95 3D -4.0 on average (differences -4, -3, -5), Dice 3D +0.2 on every one
    verdicts = [ln for ln in out.splitlines() if ln.startswith("run 1:")]
    assert len(verdicts) == 3 and "HD95 3D" in verdicts[0] and "better" in verdicts[0]
    assert "Dice 3D" in verdicts[1] and "volume error vs truth" in verdicts[2]


def test_a_missing_folder_is_named(tmp_path, capsys):
    a = _write(tmp_path / "a", _rows(["S1"], [4.0], [8.0]))
    assert main([f"{a}+{tmp_path / 'nope'}"]) == 2
    assert "nope" in capsys.readouterr().err


def test_folders_adding_methods_on_the_same_subjects_are_joined(tmp_path, capsys):
    # a later run added "unguided" on the same subjects and scored no-change again, identically
    a = _write(tmp_path / "a", _rows(["S1", "S2"], [4.0, 6.0], [8.0, 9.0]))
    extra = [dict(r, method="unguided", hd95_3d=7.0) if r["method"] == "tgrowth" else r
             for r in _rows(["S1", "S2"], [0.0, 0.0], [8.0, 9.0])]
    b = _write(tmp_path / "b", extra)
    assert main([f"{a}+{b}", "--against", "no-change", "unguided"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip().strip("|").split("|")]
             for ln in out.splitlines() if ln.startswith("| ") and not ln.startswith("| method")}
    assert lines["no-change"][1:3] == ["2", "8.500 (8.500)"]  # kept once per subject, not counted twice
    assert lines["unguided"][1:3] == ["2", "7.000 (7.000)"] and lines["tgrowth"][2] == "5.000 (5.000)"
    # tgrowth vs unguided, paired: -3 and -1 mm
    assert any("vs unguided, HD95 3D" in ln and "paired difference -2 mm" in ln for ln in out.splitlines())


def test_a_repeated_row_with_other_scores_is_refused_and_named(tmp_path, capsys):
    a = _write(tmp_path / "a", _rows(["S1"], [4.0], [8.0]))
    b = _write(tmp_path / "b", _rows(["S1"], [4.0], [8.5]))  # no-change scored differently: another run
    assert main([f"{a}+{b}"]) == 2
    err = capsys.readouterr().err
    assert "S1" in err and "no-change" in err and "hd95_3d" in err and str(b) in err
