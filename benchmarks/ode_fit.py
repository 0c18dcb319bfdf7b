"""ODE fit benchmark (prints tables; not a test).

Table 1 -- speed at equal quality. A simulated cohort from the authors' RT model (32 subjects x 100
bootstrap replicates by default; the last scan of each subject held out), fitted
  (a) by tgrowth: ``fit_cohort`` (all subjects x replicates x starts in one batched Levenberg-Marquardt
      fit run by Lightning's ``trainer.fit``), and
  (b) by a baseline written like the authors' code: scipy ``odeint`` of the two-compartment ODE
      (piecewise across the RT kill) inside ``scipy.optimize.least_squares``, one replicate and one
      start at a time, with the *same* bootstrap replicates, the same starting points and the same
      (widened) bounds.
Both forecast the held-out scan by the bootstrap median; the table shows wall times, the ratio, and
both methods' held-out relative errors (median / mean over subjects).

Table 2 -- forecast skill: held-out relative error (median, mean over subjects) of every registered model,
``auto``, and the two baselines (last value; linear extrapolation of the last two points) on a simulated
Fisher-Kolmogorov-like cohort (constant-speed fronts with RT dips), last two scans held out; and, with
``--phantom``, on the whole-tumour volumes of a small ``tgrowth synth`` phantom cohort.

Table 3 -- accuracy against scipy. Simulated cohorts from the authors' RT model (24 subjects, 6 or 7 scans,
5 % noise, last scan held out; several draws), fitted by ``fit_cohort``'s defaults and by scipy
``least_squares`` (bounded, the same closed-form model, the same points) from the authors' starting
values plus 29 random ones per subject: held-out relative error of the batched point fit, the batched
bootstrap median and the scipy fit, seconds, and for how many subjects the batched point fit's SSE is
at most scipy's.

Usage: ``python benchmarks/ode_fit.py [--quick] [--phantom] [--skip-speed] [--skip-accuracy] [--skip-skill]``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "disabled")

from tgrowth.ode.cohort import _items, _module, _settings, fit_cohort  # noqa: E402
from tgrowth.ode.data import load_series  # noqa: E402
from tgrowth.ode.fit import cpu_threads, run_fit, widened_bounds  # noqa: E402
from tgrowth.ode.models import LOG_MAX, get_model, model_names, simulate_closed_form  # noqa: E402
from tgrowth.ode.synthetic import fk_cohort, rt_cohort  # noqa: E402


# --------------------------------------------------------------------------- the authors'-style baseline
def _authors_rhs(state, t, lam, lam_d, delay, slope, t_rt, after):
    vl, vd = state
    dvd = -math.tanh(slope * (t - t_rt - delay)) * lam_d * vd if after else 0.0
    return [lam * vl, dvd]


def authors_model_scipy(theta, t, t_rt):
    """The authors' ODE with scipy odeint, integrated piecewise across the instantaneous RT kill."""
    from scipy.integrate import odeint

    v0, lam, sf, lam_d, delay, slope = theta
    t = np.asarray(t, dtype=float)
    tk = max(t_rt, 0.0)
    out = np.empty_like(t)
    before = t < tk
    grid_a = np.concatenate([[0.0], t[before & (t > 0)], [min(tk, t.max())]])
    ya = odeint(_authors_rhs, [v0, 0.0], grid_a, args=(lam, lam_d, delay, slope, t_rt, False), mxstep=5000)
    out[before] = ya[np.searchsorted(grid_a, t[before]), 0] if before.any() else out[before]
    if (~before).any():
        vl = ya[-1, 0] if tk > 0 else v0
        grid_b = np.concatenate([[tk], t[~before]])
        yb = odeint(_authors_rhs, [sf * vl, (1 - sf) * vl], grid_b, args=(lam, lam_d, delay, slope, t_rt, True),
                    mxstep=5000)
        out[~before] = yb[1:].sum(1)
    return out


def baseline_fit(y_reps, t, n_train, t_rt, starts, lo, hi):
    """least_squares per replicate and start (the authors' loop); best start per replicate -> theta [R, P]."""
    from scipy.optimize import least_squares

    thetas = []
    tt = t[:n_train]
    for r in range(y_reps.shape[0]):
        yy = y_reps[r, :n_train]
        best, best_x = math.inf, None
        for k in range(starts.shape[1]):
            x0 = np.clip(starts[r, k], lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))
            try:
                res = least_squares(lambda x, yy=yy: authors_model_scipy(x, tt, t_rt) - yy, x0, bounds=(lo, hi))
            except Exception:  # a failed integration counts as a failed start
                continue
            if res.success and 2 * res.cost < best:
                best, best_x = 2 * res.cost, res.x
        thetas.append(best_x if best_x is not None else starts[r, 0])
    return np.stack(thetas)


def _heldout_error(theta, series, items, model):
    """Relative error of the bootstrap-median forecast of each subject's last (held-out) scan."""
    errs = []
    for i, (ser, it) in enumerate(zip(series, items)):
        th = torch.as_tensor(theta[i], dtype=torch.float64)
        pred = simulate_closed_form(model, th, it.t[-1:].expand(th.shape[0], 1), torch.full((th.shape[0],), it.t_rt,
                                    dtype=torch.float64))[:, 0] * ser.sizes[0]
        errs.append(abs(float(pred.median()) - ser.sizes[-1]) / ser.sizes[-1])
    return errs


def table_speed(n_subjects, n_boot, n_starts, base_reps, seed, log):
    rows, _ = rt_cohort(n_subjects, 7, noise=0.05, seed=seed)
    cfg = {"model": "exponential_rt", "n_bootstrap": n_boot, "boot_starts": n_starts, "holdout_last": 1,
           "compare_models": False, "progress_bar": False}
    model = get_model("exponential_rt")
    # tgrowth, the whole job through the public API (point fits, then the bootstrap replicates)
    t0 = time.perf_counter()
    cohort = fit_cohort(rows, cfg, seed=seed)
    t_ours = time.perf_counter() - t0
    with cpu_threads(0):
        ours_err = [m["holdout_rel_error"] for m in cohort.metrics_rows()]
    # fit_cohort's first base_reps bootstrap replicates and their starts (every draw is keyed by seed and
    # subject, so asking for fewer replicates gives the first ones), for both methods
    s = _settings(cfg)
    series, _ = load_series(rows)
    items = [_items(ser, len(ser) - 1, torch.float64) for ser in series]
    mod = _module(model, items, base_reps, s, seed)
    starts = mod.theta().detach().numpy()  # [N, R, K, P]
    y_reps = mod.y.numpy().copy()  # [N, R, T]
    lo, hi = (b.numpy() for b in widened_bounds(model, s.noise))
    t0 = time.perf_counter()
    res = run_fit(mod, progress_bar=False)
    t_ours_sub = time.perf_counter() - t0
    ours_sub_err = _heldout_error(res.theta, series, items, model)
    base_theta = []
    t0 = time.perf_counter()
    for i, it in enumerate(items):
        base_theta.append(baseline_fit(y_reps[i], it.t.numpy(), it.n_train, it.t_rt, starts[i], lo, hi))
        log(f"  baseline: subject {i + 1}/{len(items)} done ({time.perf_counter() - t0:.0f} s)")
    t_base = time.perf_counter() - t0
    base_err = _heldout_error(np.stack(base_theta), series, items, model)
    med, mean = statistics.median, statistics.fmean
    n_fits_sub = n_subjects * base_reps * n_starts
    print(f"\nTable 1: authors' RT model, {n_subjects} simulated subjects (7 scans, 5 % noise, last scan held out), "
          f"{n_starts} starts per replicate; CPU time on one thread each")
    print("| method | replicates per subject | wall time (s) | speed-up vs baseline | held-out rel. error median | mean |")
    print("|---|---|---|---|---|---|")
    print(f"| baseline: scipy odeint in least_squares, one replicate and start at a time ({n_fits_sub} fits) | "
          f"{base_reps} | {t_base:.1f} | 1.0x | {med(base_err):.4f} | {mean(base_err):.4f} |")
    print(f"| tgrowth batched fit, same replicates, starts and bounds | {base_reps} | {t_ours_sub:.2f} | "
          f"{t_base / t_ours_sub:.0f}x | {med(ours_sub_err):.4f} | {mean(ours_sub_err):.4f} |")
    per_rep = t_base / base_reps
    print(f"| baseline, extrapolated (not run): {base_reps}-replicate time x {n_boot / base_reps:g} | {n_boot} | "
          f"~{per_rep * n_boot:.0f} | 1.0x | - | - |")
    print(f"| tgrowth fit_cohort (whole job: validation, point fits, bootstrap, trainer) | {n_boot} | {t_ours:.1f} | "
          f"~{per_rep * n_boot / t_ours:.0f}x | {med(ours_err):.4f} | {mean(ours_err):.4f} |")


# --------------------------------------------------------------------------- accuracy vs scipy multi-start
def np_exponential_rt(x, t, t_rt):
    """The authors' model in closed form with numpy (as ``simulate_closed_form``; checked against it)."""
    v0, lam, sf, lam_d, delay, slope = x
    tk = max(t_rt, 0.0)

    def logcosh(a):
        return np.abs(a) + np.log(1.0 + np.exp(-2.0 * np.abs(a))) - math.log(2.0)

    def exp(a):
        return np.exp(np.clip(a, -LOG_MAX, LOG_MAX))

    log_k = math.log(v0) + lam * tk
    decay = (lam_d / slope) * (logcosh(slope * (np.maximum(t, tk) - t_rt - delay)) - logcosh(slope * (tk - t_rt - delay)))
    after = exp(math.log(sf) + log_k + lam * (t - tk)) + exp(math.log(1.0 - min(sf, 1 - 1e-12)) + log_k - decay)
    return np.where(t >= tk, after, exp(math.log(v0) + lam * t))


def scipy_multistart(t, y, t_rt, lo, hi, log_scale, starts, n_random, rng):
    """Bounded ``least_squares`` (trust region reflective) from ``starts`` plus ``n_random`` starts drawn
    uniformly over the (log-)bounds; the lowest SSE wins -> (theta, SSE)."""
    from scipy.optimize import least_squares

    x0s = [np.clip(starts, lo, hi)]
    x0s += [np.where(log_scale, lo * (hi / lo) ** z, lo + z * (hi - lo)) for z in rng.uniform(size=(n_random, len(lo)))]
    best = (math.inf, None)
    for x0 in x0s:
        r = least_squares(lambda x: np_exponential_rt(x, t, t_rt) - y, x0, bounds=(lo, hi))
        if 2 * r.cost < best[0]:
            best = (2 * r.cost, r.x)
    return best[1], best[0]


def table_accuracy(draws, n_subjects, n_boot, scipy_starts, log):
    """Held-out accuracy of fit_cohort's defaults (point fit and bootstrap median) against a scipy
    multi-start least-squares fit of the same model on the same points, per simulated cohort draw."""
    model = get_model("exponential_rt")
    lo, hi = (b.numpy() for b in widened_bounds(model, 0.1))
    log_scale = np.array(model.log_scale())
    th = torch.tensor([[1.0, 0.01, 0.1, 0.03, 20.0, 0.5], [1.05, 0.004, 0.05, 0.06, 60.0, 0.05]], dtype=torch.float64)
    tt = torch.linspace(0, 400, 9, dtype=torch.float64)
    for x in th:  # the numpy baseline evaluates the same model
        assert np.allclose(np_exponential_rt(x.numpy(), tt.numpy(), 42.0),
                           simulate_closed_form(model, x, tt, torch.tensor(42.0, dtype=torch.float64)).numpy(), rtol=1e-10)
    med, mean = statistics.median, statistics.fmean
    print(f"\nTable 3: accuracy against scipy. The authors' RT model, {n_subjects} simulated subjects per draw "
          "(5 % noise, last scan held out), fitted by fit_cohort's defaults (point fit: 16 starts; "
          f"{n_boot} bootstrap replicates x 4 starts) and by scipy least_squares (TRF, bounded) from the authors' "
          f"starting values plus {scipy_starts - 1} random starts, on the same points; one thread each")
    print("| cohort draw (seed, scans) | method | n | held-out rel. error median | mean | seconds | SSE <= scipy's |")
    print("|---|---|---|---|---|---|---|")
    pooled = {"batched point fit": [], "batched bootstrap median": [], "scipy multi-start point fit": []}
    for seed, n_scans in draws:
        rows, _ = rt_cohort(n_subjects, n_scans, noise=0.05, seed=seed)
        cfg = {"model": "exponential_rt", "n_bootstrap": n_boot, "holdout_last": 1, "compare_models": False,
               "progress_bar": False}
        t0 = time.perf_counter()
        cohort = fit_cohort(rows, cfg, seed=0)
        t_ours = time.perf_counter() - t0
        with cpu_threads(0):
            metrics = cohort.metrics_rows()
        rng = np.random.default_rng(seed)
        errs, sse_ok = [], 0
        t0 = time.perf_counter()
        for f in cohort.fits.values():
            d = np.array(f.series.days) - f.day0
            y = np.array(f.series.sizes) / f.y0
            x, sse = scipy_multistart(d[: f.n_fit], y[: f.n_fit], f.t_rt, lo, hi, log_scale, np.array(model.starts),
                                      scipy_starts - 1, rng)
            pred = float(np_exponential_rt(x, d[-1:], f.t_rt)[0]) * f.y0
            errs.append(abs(pred - f.series.sizes[-1]) / f.series.sizes[-1])
            sse_ok += f.sse_point <= sse * (1 + 1e-6) + 1e-12
        t_scipy = time.perf_counter() - t0
        log(f"  accuracy: draw ({seed}, {n_scans}) done")
        res = {"batched point fit": ([m["holdout_rel_error_point"] for m in metrics], t_ours, f"{sse_ok}/{len(errs)}"),
               "batched bootstrap median": ([m["holdout_rel_error"] for m in metrics], t_ours, "-"),
               "scipy multi-start point fit": (errs, t_scipy, "-")}
        for name, (e, secs, ok) in res.items():
            pooled[name] += e
            what = f"{secs:.1f}" if name != "batched bootstrap median" else "(same run)"
            print(f"| ({seed}, {n_scans}) | {name} | {len(e)} | {med(e):.4f} | {mean(e):.4f} | {what} | {ok} |")
    if len(draws) > 1:
        for name, e in pooled.items():
            print(f"| all draws | {name} | {len(e)} | {med(e):.4f} | {mean(e):.4f} | | |")


def phantom_rows(n_subjects, seed, log):
    """Whole-tumour volumes of a small tgrowth synth phantom cohort as ODE rows (None if synth is absent)."""
    try:
        from tgrowth.synth import generate_cohort
    except ImportError:
        return None
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="tgrowth_phantom_"))
    t0 = time.perf_counter()
    summary = generate_cohort(output_dir=str(root / "ph"), n_subjects=n_subjects, n_timepoints=6, seed=seed,
                              overwrite=True, log=lambda *a: None)
    log(f"(phantom: {n_subjects} subjects generated in {time.perf_counter() - t0:.0f} s)")
    rows = []
    for g in summary["ground_truth"]:
        rt = ("" if g["rt_start_day"] is None else g["rt_start_day"], "" if g["rt_end_day"] is None else g["rt_end_day"])
        rows.append({"subject": g["subject"], "day": float(g["day"]), "size": float(g["whole_tumor_volume_mm3"]),
                     "rt_start_day": rt[0], "rt_end_day": rt[1]})
    return rows


def skill_rows(rows, holdout, n_boot, seed, size_kind="area"):
    out = []
    base = {"n_bootstrap": n_boot, "holdout_last": holdout, "compare_models": False, "progress_bar": False,
            "size_kind": size_kind}
    results = {}
    for name in model_names() + ["auto"]:
        t0 = time.perf_counter()
        cohort = fit_cohort(rows, {**base, "model": name}, seed=seed)
        with cpu_threads(0):
            metrics = cohort.metrics_rows()
        results[name] = ([m["holdout_rel_error"] for m in metrics], time.perf_counter() - t0)
        if name == "auto":
            results["baseline: last value"] = ([m["baseline_last_rel_error"] for m in metrics], 0.0)
            results["baseline: linear (last two)"] = ([m["baseline_linear_rel_error"] for m in metrics], 0.0)
            picks = {}
            for m in metrics:
                picks[m["model"]] = picks.get(m["model"], 0) + 1
    for name, (errs, secs) in results.items():
        out.append((name, statistics.median(errs), statistics.fmean(errs), secs))
    return out, picks


def table_skill(title, rows, holdout, n_boot, seed, size_kind="area"):
    res, picks = skill_rows(rows, holdout, n_boot, seed, size_kind)
    n = len({r["subject"] for r in rows})
    print(f"\nTable 2{title}: {n} subjects, last {holdout} scans held out, {n_boot} bootstrap replicates")
    print("| model | held-out rel. error median | mean | fit time (s) |")
    print("|---|---|---|---|")
    for name, med, mean, secs in res:
        print(f"| {name} | {med:.4f} | {mean:.4f} | {secs:.1f} |")
    print("auto picked: " + ", ".join(f"{k} x{v}" for k, v in sorted(picks.items(), key=lambda kv: -kv[1])))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small run (4 subjects x 10 replicates)")
    p.add_argument("--phantom", action="store_true", help="add a row block for a tgrowth synth phantom cohort")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--fk-noise", type=float, default=0.05, help="measurement noise of the FK-like cohort")
    p.add_argument("--fk-subjects", type=int, default=None)
    p.add_argument("--baseline-reps", type=int, default=None,
                   help="replicates per subject the slow baseline fits (default: 2 quick, 3 full)")
    p.add_argument("--skip-skill", action="store_true", help="leave out Table 2 (forecast skill of every model)")
    p.add_argument("--skip-accuracy", action="store_true", help="leave out Table 3 (accuracy against scipy)")
    p.add_argument("--acc-seeds", type=int, nargs="+", default=None, help="Table 3 cohort draws (default 0 1 2)")
    p.add_argument("--acc-scans", type=int, nargs="+", default=[6, 7], help="Table 3 scans per subject")
    p.add_argument("--acc-starts", type=int, default=30, help="Table 3: scipy starts per subject")
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # both methods single-threaded: the baseline is, and the CPU is shared
    logging.getLogger("tgrowth.ode").setLevel(logging.ERROR)  # the per-subject fit flags of the many fits here
    n_sub, n_boot = (4, 10) if a.quick else (32, 100)
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; "
          "torch and the baseline run on one thread each")
    if not a.skip_speed:
        reps = a.baseline_reps or (2 if a.quick else 3)
        table_speed(n_sub, n_boot, 4, reps, a.seed, log=lambda *x: print(*x, file=sys.stderr))
    if not a.skip_accuracy:
        seeds = a.acc_seeds if a.acc_seeds is not None else ([0] if a.quick else [0, 1, 2])
        draws = [(sd, ns) for ns in a.acc_scans for sd in seeds]
        table_accuracy(draws, 6 if a.quick else 24, 10 if a.quick else 100, 5 if a.quick else a.acc_starts,
                       log=lambda *x: print(*x, file=sys.stderr))
    if not a.skip_skill:
        fk, _ = fk_cohort(a.fk_subjects or (6 if a.quick else 24), 8, noise=a.fk_noise, seed=a.seed + 1)
        table_skill(" (simulated Fisher-Kolmogorov-like cohort)", fk, 2, 10 if a.quick else 50, a.seed)
    if a.phantom:
        rows = phantom_rows(4 if a.quick else 12, a.seed, print)
        if rows is None:
            print("\n(phantom: tgrowth.synth not available)")
        else:
            table_skill(" (tgrowth synth phantom, whole-tumour volume)", rows, 1, 10 if a.quick else 50, a.seed,
                        size_kind="volume")
    return 0


if __name__ == "__main__":
    sys.exit(main())
