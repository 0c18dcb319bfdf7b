"""The batched fit against known answers: recovery, forecasts, bounds, auto vs baselines, the prior."""

import statistics

import numpy as np
import pytest
import torch

from tgrowth.ode import fit_cohort
from tgrowth.ode.fit import cpu_threads, widened_bounds
from tgrowth.ode.models import get_model, simulate_closed_form
from tgrowth.ode.synthetic import fk_cohort, rt_cohort

QUIET = {"progress_bar": False, "compare_models": False}


@pytest.fixture(autouse=True)
def _one_thread():
    with cpu_threads(0):
        yield


def test_parameter_recovery_authors_model():
    """Known parameters, 5 % noise, 12 scans 30 days apart: the identifiable parameters come back."""
    theta = torch.tensor([[1.0, 0.008, 0.15, 0.05, 20.0, 0.5], [1.0, 0.012, 0.08, 0.03, 35.0, 0.5]], dtype=torch.float64)
    rows, truth = rt_cohort(2, 12, noise=0.05, seed=3, theta=theta, spacing=30.0)
    cohort = fit_cohort(rows, {**QUIET, "model": "exponential_rt", "n_bootstrap": 16})
    for i, subject in enumerate(cohort.subjects):
        point = cohort.fits[subject].theta_point
        p = cohort.params(subject)
        assert point[1] == pytest.approx(float(theta[i, 1]), rel=0.12), f"{subject} lambda_gr {point[1]}"
        assert abs(float(point[2]) - float(theta[i, 2])) < 0.04, f"{subject} SF {point[2]}"
        lo, hi = torch.quantile(p["lambda_gr"], torch.tensor([0.05, 0.95], dtype=torch.float64))
        assert lo <= theta[i, 1] <= hi  # the bootstrap band covers the true growth rate
        days, clean = truth["clean"][subject]
        fc = cohort.forecast(subject, days)
        rel = ((fc.median - torch.tensor(clean)) / torch.tensor(clean)).abs()
        # (bootstrap medians of 16 replicates: over seeds 0-5 the mean is 0.02-0.05, the largest point 0.05-0.16)
        assert float(rel.mean()) < 0.06 and float(rel.max()) < 0.2, f"{subject}: median curve vs noiseless truth {rel}"


@pytest.mark.parametrize("name, theta", [("exponential", [1.0, 0.01]), ("linear_radial", [1.0, 0.004]),
                                         ("gompertz", [1.0, 0.01, 6.0])])
def test_parameter_recovery_growth_laws(name, theta):
    model = get_model(name)
    days = torch.arange(0.0, 300.0, 30.0, dtype=torch.float64)
    th = torch.tensor(theta, dtype=torch.float64)
    clean = model.logflow(days, torch.log(th[:1]), [th[i : i + 1] for i in range(1, len(theta))]).exp() * 100.0
    noise = 1 + 0.05 * torch.randn(len(days), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rows = [{"subject": "s", "day": float(d), "size": float(v), "rt_start_day": "", "rt_end_day": ""}
            for d, v in zip(days, clean * noise)]
    cohort = fit_cohort(rows, {**QUIET, "model": name, "n_bootstrap": 8})
    # parameters are relative to the (noisy) first size; the rates come back within 10 %
    assert float(cohort.fits["s"].theta_point[1]) == pytest.approx(theta[1], rel=0.10)
    # a normal fit: converged, nothing at a bound, no flag
    m = cohort.metrics_rows()[0]
    assert (m["converged"], m["at_bound"], m["note"], cohort.fits["s"].flags) == (1, "", "", [])


def test_saturated_fit_flagged_days_in_millions(caplog):
    """The audit: days in the millions gave R^2 = -4e8 and a forecast pinned at the max_fold clamp with an
    empty note. The growth rate no longer moves the (saturated) model: flagged as not converged, clamped."""
    rows = [{"subject": "big", "day": d, "size": v, "rt_start_day": "", "rt_end_day": ""}
            for d, v in [(0, 100.0), (1e6, 120.0), (2e6, 150.0), (3e6, 170.0), (4e6, 200.0)]]
    for name in ("exponential_rt", "exponential"):
        caplog.clear()
        cohort = fit_cohort(rows, {**QUIET, "model": name, "n_bootstrap": 4, "n_starts": 2, "holdout_last": 1})
        m = cohort.metrics_rows()[0]
        assert m["r2"] < -1e6  # the fit is hopeless ...
        assert m["converged"] == 0  # ... and says so
        assert "not converged: lambda_gr does not move the fitted curve (the model saturates; are the days in days?)" in m["note"]
        assert "curve clamped at max_fold x first size" in m["note"]
        assert "subject 'big'" in caplog.text and "not converged" in caplog.text


def test_bound_pinned_parameter_named():
    """A steep fall after RT that the authors' SF bound (<= 0.2, a kill of 80 %+) cannot reach is pinned at
    SF's lower bound; the flag names it."""
    rows = [{"subject": "p", "day": d, "size": v, "rt_start_day": 0, "rt_end_day": 42}
            for d, v in [(0, 100.0), (30, 130.0), (60, 100.0), (120, 101.0), (180, 102.0), (240, 103.0)]]
    cohort = fit_cohort(rows, {**QUIET, "model": "exponential_rt", "n_bootstrap": 0, "n_starts": 4})
    f = cohort.fits["p"]
    m = cohort.metrics_rows()[0]
    assert "SF" in f.at_bound and f"SF:{f.at_bound['SF']}" in m["at_bound"]
    assert "at bound: " in m["note"] and "SF (" in m["note"]


def test_point_fit_reaches_the_multistart_least_squares_optimum():
    """The batched point fit (defaults: 16 starts) reaches the optimum of an 8-start scipy least_squares
    fit of the same model and data (with 4 starts, sim011 stayed in a local minimum with 200x the SSE);
    the forecast rows carry its forecast next to the bootstrap median."""
    from scipy.optimize import least_squares

    rows, _ = rt_cohort(24, 7, noise=0.05, seed=0)
    rows = [r for r in rows if r["subject"] in ("sim005", "sim007", "sim011")]
    cohort = fit_cohort(rows, {**QUIET, "model": "exponential_rt", "n_bootstrap": 16, "holdout_last": 1})
    model = get_model("exponential_rt")
    lo, hi = (b.numpy() for b in widened_bounds(model, 0.1))
    log_scale = np.array(model.log_scale())
    rng = np.random.default_rng(0)
    for subject, f in cohort.fits.items():
        t = torch.tensor(f.series.days[: f.n_fit], dtype=torch.float64) - f.day0
        y = torch.tensor(f.series.sizes[: f.n_fit], dtype=torch.float64) / f.y0
        t_rt = torch.tensor(f.t_rt, dtype=torch.float64)

        def res(x, t=t, y=y, t_rt=t_rt):
            return (simulate_closed_form(model, torch.from_numpy(x), t, t_rt) - y).numpy()

        starts = [np.where(log_scale, lo * (hi / lo) ** z, lo + z * (hi - lo)) for z in rng.uniform(size=(8, 6))]
        best = min(2 * least_squares(res, x0, bounds=(lo, hi)).cost for x0 in starts)
        assert f.sse_point <= best * (1 + 1e-6) + 1e-12, (subject, f.sse_point, best)
    for subject, f in cohort.fits.items():
        point = cohort.curve(subject, f.series.days, f.theta_point.unsqueeze(0))[0]
        assert [r["point"] for r in cohort.forecast_rows() if r["subject"] == subject] == pytest.approx(point.tolist(), rel=1e-12)


def test_bounds_respected_and_forecasts_finite():
    """Data far outside what the bounds allow (a 1000-fold jump): parameters stay inside the widened bounds,
    forecasts stay finite and clamped."""
    rows = [{"subject": "wild", "day": d, "size": s, "rt_start_day": 10, "rt_end_day": 52}
            for d, s in [(0, 1.0), (5, 1000.0), (60, 0.001), (61, 5000.0), (400, 1e-4)]]
    rows += [{"subject": "tiny", "day": d, "size": s, "rt_start_day": "", "rt_end_day": ""}
             for d, s in [(0, 1e-6), (30, 2e-6), (90, 5e-6)]]
    for name in ("exponential_rt", "logistic_rt", "linear_radial_rt", "gompertz"):
        cohort = fit_cohort(rows, {**QUIET, "model": name, "n_bootstrap": 6, "noise": 0.1})
        lo, hi = widened_bounds(get_model(name), 0.1)
        for subject, f in cohort.fits.items():
            assert ((f.theta_samples >= lo - 1e-9) & (f.theta_samples <= hi + 1e-9)).all(), (name, subject)
            fc = cohort.forecast(subject, [0.0, 100.0, 1e4, 1e6])
            assert torch.isfinite(fc.samples).all() and (fc.samples >= 0).all()
            assert (fc.samples <= cohort.settings.max_fold * f.y0).all()


def test_adam_through_the_solver_lowers_the_loss():
    from tgrowth.ode.fit import BatchedFit, FitProblems, run_fit

    rows, _ = rt_cohort(2, 5, noise=0.02, seed=6)
    t = torch.tensor([[r["day"] for r in rows[i * 5:(i + 1) * 5]] for i in range(2)], dtype=torch.float64)
    y = torch.tensor([[r["size"] for r in rows[i * 5:(i + 1) * 5]] for i in range(2)], dtype=torch.float64)
    problems = FitProblems(t - t[:, :1], (y / y[:, :1]).unsqueeze(1), torch.ones_like(t, dtype=torch.bool),
                           torch.tensor([rows[0]["rt_end_day"], rows[5]["rt_end_day"]], dtype=torch.float64))
    module = BatchedFit(get_model("exponential_rt"), problems, n_starts=1, steps=6, lr=0.05, optimizer="adam",
                        integrator="odeint", ode_kwargs={"rtol": 1e-7, "atol": 1e-9})
    before = module.objective()[0].detach().clone()
    closed = BatchedFit(get_model("exponential_rt"), problems, n_starts=1)
    assert torch.allclose(before, closed.objective()[0].detach(), rtol=1e-4)  # solver objective == closed form
    res = run_fit(module, progress_bar=False)
    assert (res.objective[:, 0] < before[:, 0, 0]).all()


def test_auto_beats_both_baselines_on_fk_cohort():
    """Constant-speed fronts with RT dips (Fisher-Kolmogorov-like), 5 % noise, last two scans held out.

    A fixed draw (seed 3) as a regression check. It is not a general guarantee: `auto` beats the
    last-value baseline on every draw we tried, but linear extrapolation of the last two points is a
    strong competitor on this cohort and wins on some draws (see docs/benchmarks.md)."""
    rows, _ = fk_cohort(12, 8, noise=0.05, seed=3)
    cohort = fit_cohort(rows, {**QUIET, "model": "auto", "n_bootstrap": 10, "holdout_last": 2, "n_starts": 3})
    m = cohort.metrics_rows()
    auto = [r["holdout_rel_error"] for r in m]
    last = [r["baseline_last_rel_error"] for r in m]
    linear = [r["baseline_linear_rel_error"] for r in m]
    for stat in (statistics.median, statistics.fmean):
        assert stat(auto) < stat(last) and stat(auto) < stat(linear), (stat.__name__, stat(auto), stat(last), stat(linear))
    assert all("rolling-origin CV" in r["note"] for r in m)
    comp = cohort.comparison_rows()
    assert {r["model"] for r in comp} >= {"linear_radial", "exponential_rt"} and sum(r["chosen"] for r in comp) == 12


def test_population_prior_helps_three_scan_subjects():
    n_rich, n_poor = 12, 8
    rows, _ = rt_cohort(n_rich + n_poor, [7] * n_rich + [4] * n_poor, noise=0.05, seed=0)
    poor = {f"sim{i:03d}" for i in range(n_rich, n_rich + n_poor)}
    cfg = {**QUIET, "model": "exponential_rt", "n_bootstrap": 10, "holdout_last": 1, "n_starts": 2}
    errors = {}
    for prior in (False, True):
        cohort = fit_cohort(rows, {**cfg, "population_prior": prior})
        errors[prior] = [r["holdout_rel_error"] for r in cohort.metrics_rows() if r["subject"] in poor]
    assert statistics.median(errors[True]) < 0.6 * statistics.median(errors[False]), errors
    assert statistics.fmean(errors[True]) < statistics.fmean(errors[False]), errors


def test_exact_fits_tie_nearest_to_the_starting_values():
    """A subject with fewer points than parameters has many exact fits; the point fit is the exact fit (of
    those the starts reached) closest to the authors' starting values, not whichever rounds lowest."""
    from tgrowth.ode.fit import BatchedFit, FitProblems, run_fit

    model = get_model("exponential_rt")
    t = torch.tensor([[0.0, 60.0, 120.0, 200.0]], dtype=torch.float64)
    t_rt = torch.tensor([42.0], dtype=torch.float64)
    y = simulate_closed_form(model, torch.tensor([1.0, 0.01, 0.1, 0.03, 30.0, 0.2], dtype=torch.float64), t, t_rt)
    module = BatchedFit(model, FitProblems(t, y.unsqueeze(1), torch.ones_like(t, dtype=torch.bool), t_rt),
                        n_starts=12, steps=300, seed=0)
    res = run_fit(module, progress_bar=False)
    obj = module.objective()[0][0, 0]
    exact = obj <= 1e-12
    assert int(exact.sum()) >= 2 and float(res.sse[0, 0]) <= 1e-12  # several starts fit exactly
    z0 = module.to_unit(torch.tensor(model.starts, dtype=torch.float64))
    dist = ((module.to_unit(module.theta()[0, 0].detach()) - z0) ** 2).sum(-1)
    chosen = ((module.to_unit(res.theta[0, 0]) - z0) ** 2).sum()
    assert float(chosen) == pytest.approx(float(dist[exact].min()), rel=1e-9)
    assert float(chosen) < float(dist[exact].max())  # the rule chose among different exact fits
