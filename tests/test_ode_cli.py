"""`tgrowth fit-ode` end to end on a temporary CSV: files exist, parse, numbers are sane."""

import json
import math

import pytest

from tgrowth.cli import main
from tgrowth.io import read_csv, write_csv
from tgrowth.ode.fit import cpu_threads
from tgrowth.ode.synthetic import rt_cohort


@pytest.fixture(autouse=True)
def _one_thread():
    with cpu_threads(0):
        yield


def test_fit_ode_cli_end_to_end(tmp_path, capsys):
    rows, _ = rt_cohort(3, 6, noise=0.03, seed=5)
    rows += [{"subject": "bad", "day": 0, "size": -1, "rt_start_day": "", "rt_end_day": ""},
             {"subject": "bad", "day": 10, "size": 5, "rt_start_day": "", "rt_end_day": ""}]
    csv_path = tmp_path / "cohort.csv"
    write_csv(csv_path, rows)
    out = tmp_path / "run"
    code = main(["fit-ode", "-c", "experiments/ode_fit.yaml", f"data.areas_csv={csv_path}", f"output_dir={out}",
                 "fit.n_bootstrap=8", "fit.n_starts=2", "fit.holdout_last=1", "fit.candidates=[exponential,exponential_rt]",
                 "wandb.enabled=false", "fit.progress_bar=false"])
    assert code == 0
    printed = capsys.readouterr()
    assert "skipped subject 'bad'" in printed.err and "size -1.0 is negative" in printed.err
    for name in ("params.csv", "forecast.csv", "metrics.csv", "model_comparison.csv", "errors.csv", "config.yaml",
                 "cohort_summary.png", "plots/sim000.png", "summary.json", "report.txt"):
        assert (out / name).is_file(), name
    errors = read_csv(out / "errors.csv")
    assert [e["subject"] for e in errors] == ["bad"] and errors[0]["row"] == "19"
    params = read_csv(out / "params.csv")
    assert {p["subject"] for p in params} == {"sim000", "sim001", "sim002"}
    for p in params:
        assert float(p["p05"]) <= float(p["median"]) <= float(p["p95"])
    fc = read_csv(out / "forecast.csv")
    assert len(fc) == 18 and sum(int(r["is_holdout"]) for r in fc) == 3
    for r in fc:
        assert float(r["p05"]) <= float(r["median"]) <= float(r["p95"])
        if not int(r["is_holdout"]):  # fitted points: the median curve is within 15 % of the data
            assert abs(float(r["median"]) - float(r["observed"])) / float(r["observed"]) < 0.15
    metrics = read_csv(out / "metrics.csv")
    assert all(float(m["r2"]) > 0.9 for m in metrics)
    assert all(math.isfinite(float(m["holdout_rel_error"])) for m in metrics)
    comp = read_csv(out / "model_comparison.csv")
    assert {c["model"] for c in comp} == {"exponential", "exponential_rt"} and len(comp) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["subjects"] == 3 and summary["skipped_subjects"] == 1
    assert "exponential_rt" in (out / "config.yaml").read_text()


def test_fit_ode_help_lists_keys(capsys):
    assert main(["fit-ode", "--help"]) == 0
    text = capsys.readouterr().out
    for key in ("data.areas_csv", "fit.model", "fit.population_prior", "fit.holdout_last", "fit.n_bootstrap"):
        assert key in text


def test_fit_ode_unknown_model(tmp_path, capsys):
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("subject,day,size,rt_start_day,rt_end_day\na,0,1,,\na,5,2,,\n")
    code = main(["fit-ode", f"data.areas_csv={csv_path}", f"output_dir={tmp_path / 'o'}", "fit.model=expo",
                 "wandb.enabled=false"])
    assert code != 0 and "unknown model 'expo'" in capsys.readouterr().err
