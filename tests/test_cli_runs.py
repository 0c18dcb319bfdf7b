"""`tgrowth runs compare DIR [DIR ...]` on hand-made run folders of each kind (known numbers)."""


from tgrowth.cli import main
from tgrowth.io import read_csv, write_csv, write_json
from tgrowth.ode.cohort import summarise_metrics as ode_summarise
from tgrowth.predict.report import write_tables


def predict_run(path, tg_hd95, nc_hd95):
    rows = []
    for i, (t, n) in enumerate(zip(tg_hd95, nc_hd95)):
        rows.append({"subject": f"S{i}", "method": "tgrowth", "hd95": t, "dice": 0.5, "area_error_vs_target": 0.1})
        rows.append({"subject": f"S{i}", "method": "no-change", "hd95": n, "dice": 0.4})
    write_tables(path, rows, [], ["tgrowth", "no-change"])
    return path


def test_compare_predict_runs_side_by_side(tmp_path, capsys):
    a = predict_run(tmp_path / "a", [2.0, 4.0, 9.0], [3.0, 3.0, 3.0])
    b = predict_run(tmp_path / "b", [1.0, float("inf")], [5.0, 7.0])
    csv_path = tmp_path / "cmp.csv"
    assert main(["runs", "compare", str(a), str(b), "--csv", str(csv_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = {ln.split()[0]: ln for ln in lines if ln.split()}
    assert row["run"].split()[1:] == [str(a), str(b)] and row["kind"].split()[1:] == ["predict", "predict"]
    assert row["tgrowth/hd95"].split("  ")[0] == "tgrowth/hd95"
    cells = [c.strip() for c in row["tgrowth/hd95"][len("tgrowth/hd95"):].split("  ") if c.strip()]
    assert cells == ["5 / 4 (n=3)", "1 / 1 (n=1, 1 inf)"]  # mean / median (n), the inf counted apart
    assert "3 / 3 (n=3)" in row["no-change/hd95"] and "6 / 6 (n=2)" in row["no-change/hd95"]
    assert row["n"].split()[-2:] == ["3", "2"]  # "n subjects"
    assert "no-change/area_error_vs_target" not in row  # no values: no row
    got = {(r["run"], r["metric"]): r for r in read_csv(csv_path)}
    assert float(got[(str(a), "tgrowth/hd95")]["mean"]) == 5.0 and got[(str(a), "tgrowth/hd95")]["n"] == "3"
    assert float(got[(str(b), "no-change/hd95")]["median"]) == 6.0 and got[(str(b), "tgrowth/hd95")]["n_nonfinite"] == "1"
    # an interrupted predict run (metrics.csv, no summary.json) gives the same numbers
    (a / "summary.json").unlink()
    assert main(["runs", "compare", str(a), "methods=[tgrowth]"]) == 0
    out = capsys.readouterr().out
    assert "5 / 4 (n=3)" in out and "no-change" not in out


def test_compare_fit_ode_and_training_runs(tmp_path, capsys):
    ode = tmp_path / "ode"
    metrics = [{"subject": "A", "r2": 0.9, "nrmse": 0.1, "holdout_rel_error": 0.2, "holdout_rel_error_point": 0.25,
                "baseline_last_rel_error": 0.4,
                "baseline_linear_rel_error": 0.3, "holdout_in_band": 1.0},
               {"subject": "B", "r2": 0.7, "nrmse": 0.3}]  # B has no held-out scan
    write_csv(ode / "metrics.csv", metrics)
    write_json(ode / "summary.json", ode_summarise(metrics))
    den = tmp_path / "den"
    write_json(den / "metrics.json", {"val/loss": 0.0125, "val/ssim": 0.81, "global_step": 45, "checkpoint": "x.ckpt"})
    (den / "denoiser.pt").write_bytes(b"")
    assert main(["runs", "compare", str(ode), str(den)]) == 0
    row = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.split()}
    assert row["kind"].split()[1:] == ["fit-ode", "train-denoiser"]
    assert "- / 0.8 (n=2)" in row["r2"]  # fit-ode keeps the median of R^2 only
    assert "0.2 / 0.2 (n=1)" in row["holdout_rel_error"]  # n: subjects with a held-out scan
    assert row["val/loss"].split()[1:] == ["0.0125"] and row["global_step"].split()[1:] == ["45"]
    assert "checkpoint" not in row


def test_compare_bad_folders_are_named(tmp_path, capsys):
    demo = tmp_path / "demo"
    predict_run(demo / "predict", [1.0], [2.0])
    assert main(["runs", "compare", str(demo)]) == 1
    err = capsys.readouterr().err
    assert f"{demo} is not a tgrowth run folder" in err and f"run folders inside it: {demo / 'predict'}" in err
    assert main(["runs", "compare", str(tmp_path / "missing")]) == 1
    assert f"run folder not found: {tmp_path / 'missing'}" in capsys.readouterr().err
    assert main(["runs", "compare"]) == 2
    assert "give one or more run folders" in capsys.readouterr().err


def test_compare_help_and_print_config(capsys):
    assert main(["runs", "compare", "--help"]) == 0
    assert "bare arguments set dirs" in capsys.readouterr().out
    assert main(["runs", "compare", "a", "b c", "--csv", "o.csv", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "- a\n- b c\n" in out and "csv: o.csv" in out
