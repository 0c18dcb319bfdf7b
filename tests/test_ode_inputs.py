"""Every bad input of the size table gets a clear message naming the subject and row."""

import pytest
import torch

from tgrowth.errors import DataError
from tgrowth.ode import fit_cohort
from tgrowth.ode.data import load_series
from tgrowth.ode.fit import cpu_threads

HEADER = "subject,day,size,rt_start_day,rt_end_day\n"
GOOD = "a,0,100,10,52\na,60,140,10,52\na,120,120,10,52\n"
FAST = {"model": "exponential_rt", "n_bootstrap": 4, "n_starts": 1, "steps": 10, "compare_models": False,
        "progress_bar": False}


@pytest.fixture(autouse=True)
def _one_thread():
    with cpu_threads(0):
        yield


def _csv(tmp_path, body, header=HEADER):
    p = tmp_path / "sizes.csv"
    p.write_text(header + body)
    return p


@pytest.mark.parametrize("body, message", [
    ("b,0,100,,\n", r"subject 'b' row 4: only 1 point\(s\); at least 2 are needed"),
    ("b,0,100,,\nb,0,110,,\n", r"subject 'b' row 5: duplicate day 0 \(also row 4\)"),
    ("b,0,100,,\nb,50,110,,\nb,30,120,,\n", r"subject 'b' row 6: days decrease \(30 after 50 in row 5\)"),
    ("b,0,100,,\nb,50,-3,,\n", r"subject 'b' row 5: size -3.0 is negative"),
    ("b,0,100,,\nb,50,nan,,\n", r"subject 'b' row 5: size is NaN"),
    ("b,0,100,,\nb,50,inf,,\n", r"subject 'b' row 5: size inf is infinite"),
    ("b,0,0,,\nb,50,10,,\n", r"subject 'b' row 4: first size is zero"),
    ("b,0,100,60,20\nb,50,110,60,20\n", r"subject 'b' row 4: RT end day 20 is before RT start day 60"),
    ("b,0,100,,\nb,50,abc,,\n", r"subject 'b' row 5: size 'abc' is not a number"),
    ("b,0,100,10,52\nb,50,110,10,60\n", r"subject 'b' row 5: RT days .* differ"),
])
def test_bad_subject_is_reported_and_others_fitted(tmp_path, body, message):
    path = _csv(tmp_path, GOOD + body)
    cohort = fit_cohort(path, FAST)
    assert cohort.subjects == ["a"]
    assert len(cohort.errors) == 1 and cohort.errors[0]["subject"] == "b"
    assert cohort.errors[0]["message"].startswith(str(path))
    import re

    assert re.search(message, cohort.errors[0]["message"]), cohort.errors[0]["message"]
    with pytest.raises(DataError, match=message):  # strict: the first problem stops the run
        fit_cohort(path, FAST, strict=True)
    with pytest.raises(DataError, match="not fitted"):
        cohort.forecast("b", [10.0])


def test_missing_columns(tmp_path):
    path = _csv(tmp_path, "a,0,100,10\n", header="subject,day,size,rt_start_day\n")
    with pytest.raises(DataError, match=r"missing column\(s\) rt_end_day; found subject, day, size, rt_start_day"):
        load_series(path)


@pytest.mark.parametrize("text, message", [("", "empty file"), (HEADER, "a header but no data rows")])
def test_empty_file(tmp_path, text, message):
    p = tmp_path / "empty.csv"
    p.write_text(text)
    with pytest.raises(DataError, match=message):
        load_series(p)
    with pytest.raises(DataError, match="empty table"):
        load_series([])


def test_single_point_prior_only_forecast(tmp_path):
    """With the population prior a 1-point subject gets a prior-only forecast, said so in the output."""
    path = _csv(tmp_path, GOOD + "a2,0,90,10,52\na2,70,130,10,52\na2,130,115,10,52\nb,0,100,10,52\n")
    cohort = fit_cohort(path, {**FAST, "population_prior": True})
    assert cohort.subjects == ["a", "a2", "b"] and not cohort.errors
    assert "prior-only forecast" in cohort.fits["b"].note
    fc = cohort.forecast("b", [0.0, 100.0])
    assert torch.isfinite(fc.samples).all() and fc.median[0] == pytest.approx(100.0, rel=0.25)
    assert any("prior-only" in m["note"] for m in cohort.metrics_rows() if m["subject"] == "b")


def test_holdout_leaving_too_few_points(tmp_path):
    path = _csv(tmp_path, GOOD + "b,0,100,,\nb,50,110,,\n")
    cohort = fit_cohort(path, {**FAST, "holdout_last": 1})
    assert cohort.errors[0]["subject"] == "b"
    assert "holdout_last=1 leave 1 to fit" in cohort.errors[0]["message"]


def test_no_fittable_subject(tmp_path):
    path = _csv(tmp_path, "b,0,100,,\n")
    with pytest.raises(DataError, match="no subject could be fitted"):
        fit_cohort(path, FAST)


def test_rt_end_derived_from_start(tmp_path):
    series, problems = load_series(_csv(tmp_path, "c,0,100,20,\nc,90,130,20,\n"))
    assert not problems and series[0].rt_end_day == 62.0 and series[0].rt_start_day == 20.0


def test_vanished_tumour_size_zero_later(tmp_path):
    """A later size of 0 (tumour gone after RT) is valid: fitted, forecast, finite metrics."""
    path = _csv(tmp_path, "v,0,100,10,52\nv,70,40,10,52\nv,130,5,10,52\nv,200,0,10,52\nv,260,0,10,52\n")
    cohort = fit_cohort(path, {**FAST, "model": "auto", "holdout_last": 1})
    m = cohort.metrics_rows()[0]
    assert not cohort.errors and m["n_holdout"] == 1
    for key in ("holdout_rel_error", "baseline_last_rel_error", "baseline_linear_rel_error", "r2", "nrmse"):
        assert m[key] == m[key] and abs(m[key]) < float("inf"), key
