"""benchmarks/stress_table.py: the paired fk vs grow-to-target table and its change against the control cohort."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from scipy.stats import t as student_t

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from stress_table import calibration_rows, calibration_table, cohort_table, differences, main, shift_table  # noqa: E402

from tgrowth.predict.report import write_tables  # noqa: E402


def _rows(hd95_fk, hd95_gtt, dice_fk, dice_gtt):
    rows = []
    for i, vals in enumerate(zip(hd95_fk, hd95_gtt, dice_fk, dice_gtt)):
        for m, h, d in (("fk", vals[0], vals[2]), ("grow-to-target", vals[1], vals[3])):
            rows.append({"subject": f"S{i}", "target_timepoint": "005", "target_day": "300", "method": m,
                         "hd95": str(h), "dice": str(d)})
    return rows


def _half(diffs):
    n = len(diffs)
    sd = math.sqrt(sum((x - sum(diffs) / n) ** 2 for x in diffs) / (n - 1))
    return float(student_t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def test_cohort_table_pairs_by_subject_with_the_t_interval():
    rows = _rows([8.0, 9.0, 10.0, float("nan")], [9.0, 11.0, 10.0, 5.0], [0.9, 0.8, 0.7, 0.5], [0.8, 0.8, 0.6, 0.5])
    assert differences(rows, "hd95", "fk", "grow-to-target") == {
        ("S0", "005", "300"): -1.0, ("S1", "005", "300"): -2.0, ("S2", "005", "300"): 0.0}
    line = cohort_table({"control": rows}, "fk", "grow-to-target").splitlines()[2]
    h = _half([-1.0, -2.0, 0.0])
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:2] == ["control", "3"]  # the NaN subject is left out of the pairs
    assert cells[2] == "9.000 (9.000)"  # fk's finite values
    assert cells[4] == f"-1.000 [{-1.0 - h:+.3f}, {-1.0 + h:+.3f}]" and cells[5] == "tie"
    assert cells[6] == "2/1/0"  # HD95: better on 2, equal on 1, worse on none
    assert cells[11] == "2/2/0"  # Dice: higher is better


def test_shift_table_compares_the_per_subject_edge_with_the_reference():
    control = _rows([8.0, 9.0, 10.0], [10.0, 11.0, 12.5], [0.9, 0.9, 0.9], [0.8, 0.8, 0.8])  # fk 2-2.5 mm better
    variant = _rows([10.0, 11.0, 12.0], [10.0, 11.0, 12.0], [0.8, 0.8, 0.8], [0.8, 0.8, 0.8])  # no edge left
    line = shift_table({"control": control, "variant": variant}, "fk", "grow-to-target").splitlines()[2]
    cells = [c.strip() for c in line.strip("|").split("|")]
    shift = [2.0, 2.0, 2.5]  # (fk - gtt) of the variant minus that of the control, per subject
    h = _half(shift)
    assert cells[:2] == ["variant", "3"]
    assert cells[2] == f"+2.167 [{13 / 6 - h:+.3f}, {13 / 6 + h:+.3f}]" and cells[3] == "smaller"
    assert cells[4].startswith("-0.100") and cells[5] == "smaller"  # Dice edge 0.1 -> 0 on every subject


def test_cli_reads_run_folders_and_names_a_bad_argument(tmp_path, capsys):
    rows = _rows([8.0, 9.0], [9.0, 9.5], [0.9, 0.8], [0.8, 0.8])
    write_tables(tmp_path / "run", rows, [], ["fk", "grow-to-target"])
    assert main([f"control={tmp_path / 'run'}", f"same={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    assert "| control | 2 |" in out and "| same | 2 | +0.000 [+0.000, +0.000] | no change shown |" in out
    assert main([str(tmp_path / "run")]) == 2
    assert "expected NAME=RUN_DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--method"])


def test_calibration_table_reads_info_json_and_pairs_the_scores(tmp_path):
    def run(name, scores):
        for i, sc in enumerate(scores):
            d = tmp_path / name / f"S{i}"
            d.mkdir(parents=True)
            fk = {"calibrated": sc is not None, "score": sc or 0.0, "lambda_mm": 2.0 + i, "rho_per_day": 0.02}
            (d / "info.json").write_text(json.dumps({"subject": f"S{i}", "fk": fk}))
        return calibration_rows(tmp_path / name)

    cal = {"control": run("c", [0.9, 0.8, None]), "variant": run("v", [0.7, 0.7, 0.6])}
    lines = calibration_table(cal).splitlines()
    assert lines[2] == "| control | 2/3 | 0.850 (0.850) | - | - | 2.50 | 0.0200 |"
    # S0 and S1 pair (S2 is not calibrated in the control): differences -0.2 and -0.1
    h = _half([-0.2, -0.1])
    assert lines[3] == (f"| variant | 3/3 | 0.667 (0.700) | -0.150 [{-0.15 - h:+.3f}, {-0.15 + h:+.3f}] | tie | 3.00 | 0.0200 |")
