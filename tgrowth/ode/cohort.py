"""Cohort fits, forecasts, metrics, model selection and baselines.

``fit_cohort(rows, fit_cfg) -> CohortFit`` validates the table (bad subjects go to
``CohortFit.errors`` unless ``strict``), optionally compares/chooses models, then runs one batched
bootstrap fit per chosen model (subjects x replicates x starts as tensor dimensions).

- Model selection (``fit.model=auto``): per subject, rolling-origin cross-validation on its own fitted
  points (fit on the first k, forecast point k+1, for every k >= ``auto_min_train``), mean relative
  error; subjects without any fold fall back to AICc (infinite where n <= k + 1), then AIC. The CV
  horizon is ``auto_horizon`` points ahead (default: as far as the held-out points); with RT inside the
  fitted span, training windows reach at least ``auto_post_rt`` points past the RT end. Models whose in-sample
  R^2 is below 0.5 cannot describe the data and are not candidates. A subject's few folds give a noisy error, so
  it is shrunk toward the cohort's CV error of the same model: ``(sum of the subject's fold errors +
  auto_pool x cohort mean) / (folds + auto_pool)`` (``auto_pool=0``: purely per subject).
  Ties go to the model with fewer parameters.
- AIC/BIC (least squares): ``n log(max(SSE/n, 1e-6)) + 2k`` and ``+ k log n``, on the unperturbed
  point fit, with k the parameters acting on the subject (RT ones only when RT falls in the fitted span).
- Metrics: R^2 and nRMSE (RMSE / mean observed) of the median curve on fitted points; relative error
  of each held-out point; the same for the two baselines (last observed value, linear extrapolation
  of the last two fitted points).
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from tgrowth.errors import ConfigError, DataError
from tgrowth.ode.data import SizeSeries, SubjectProblem, load_series
from tgrowth.ode.fit import (
    BatchedFit,
    FitProblems,
    FitResult,
    bootstrap,
    problem_key,
    run_fit,
    widened_bounds,
)
from tgrowth.ode.models import NO_RT, GrowthModel, get_model, model_names, simulate_closed_form, simulate_ode

log = logging.getLogger("tgrowth.ode")
SSE_FLOOR = 1e-6  # per-point squared-error floor of AIC/BIC (normalised sizes): 0.1 % of the first size
LM_STEPS, LM_BOOT_STEPS, ADAM_STEPS = 300, 100, 1000  # default iteration caps: point fits, bootstrap replicates
REL_FLOOR = 0.01  # relative errors of a size 0 (vanished tumour) are taken relative to 1 % of the first size


# --------------------------------------------------------------------------- settings
def _settings(fit_cfg: Any):
    """A ``FitSettings`` dataclass from a DictConfig, dict, dataclass or None (defaults)."""
    from tgrowth.config.ode import FitSettings

    if fit_cfg is None:
        return FitSettings()
    if isinstance(fit_cfg, FitSettings):
        return fit_cfg
    if hasattr(fit_cfg, "_metadata"):  # DictConfig
        from omegaconf import OmegaConf

        fit_cfg = OmegaConf.to_container(fit_cfg, resolve=True)
    if not isinstance(fit_cfg, dict):
        fit_cfg = {f.name: getattr(fit_cfg, f.name) for f in fields(fit_cfg)}
    valid = {f.name for f in fields(FitSettings)}
    unknown = sorted(set(fit_cfg) - valid)
    if unknown:
        raise ConfigError(f"unknown fit setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    return FitSettings(**fit_cfg)


def _check_settings(s) -> list[str]:
    names = model_names()
    if s.model != "auto" and s.model not in names:
        raise ConfigError(f"fit.model: unknown model '{s.model}'; choose auto or one of {', '.join(names)}")
    cands = list(s.candidates) or names
    bad = [c for c in cands if c not in names]
    if bad:
        raise ConfigError(f"fit.candidates: unknown model(s) {', '.join(bad)}; registered: {', '.join(names)}")
    if s.integrator not in ("closed_form", "odeint"):
        raise ConfigError(f"fit.integrator must be closed_form or odeint, got '{s.integrator}'")
    if s.optimizer not in ("lm", "adam"):
        raise ConfigError(f"fit.optimizer must be lm or adam, got '{s.optimizer}'")
    if s.prior_mode not in ("hierarchical", "map"):
        raise ConfigError(f"fit.prior_mode must be hierarchical or map, got '{s.prior_mode}'")
    if s.size_kind not in ("area", "volume", "voxels"):
        raise ConfigError(f"fit.size_kind must be area, volume or voxels, got '{s.size_kind}'")
    if s.holdout_last < 0 or s.n_bootstrap < 0 or s.n_starts < 1:
        raise ConfigError("fit.holdout_last and fit.n_bootstrap must be >= 0, fit.n_starts >= 1")
    if not 0 <= s.noise < 1:
        raise ConfigError(f"fit.noise must be in [0, 1), got {s.noise}")
    if s.dtype not in ("float64", "float32"):
        raise ConfigError(f"fit.dtype must be float64 or float32, got '{s.dtype}'")
    return cands


# --------------------------------------------------------------------------- baselines
def baseline_last(days_fit, sizes_fit, days) -> torch.Tensor:
    """Forecast = last observed (fitted) value."""
    return torch.full((len(days),), float(sizes_fit[-1]), dtype=torch.float64)


def baseline_linear(days_fit, sizes_fit, days) -> torch.Tensor:
    """Linear extrapolation of the last two fitted points (last value if only one); clamped at 0."""
    d = torch.as_tensor(days, dtype=torch.float64)
    if len(days_fit) < 2:
        return baseline_last(days_fit, sizes_fit, days)
    (d1, d2), (s1, s2) = days_fit[-2:], sizes_fit[-2:]
    return (s2 + (s2 - s1) / (d2 - d1) * (d - d2)).clamp_min(0.0)


def aic_bic(sse: float, n: int, k: int) -> tuple[float, float]:
    mse = max(sse / max(n, 1), SSE_FLOOR)
    return n * math.log(mse) + 2 * k, n * math.log(mse) + k * math.log(max(n, 1))


def aicc(aic: float, n: int, k: int) -> float:
    """Small-sample AIC; infinite when n <= k + 1 (no information left to compare)."""
    return aic + 2 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else math.inf


# --------------------------------------------------------------------------- results
@dataclass
class Forecast:
    """Sizes (input units) at ``days``: bootstrap median and 5-95 % band; ``samples[B, D]``."""

    subject: str
    model: str
    days: torch.Tensor
    median: torch.Tensor
    p05: torch.Tensor
    p95: torch.Tensor
    samples: torch.Tensor
    note: str = ""
    point: torch.Tensor | None = None  # the point fit's (unperturbed data) forecast [D]


@dataclass
class SubjectFit:
    series: SizeSeries
    model: str
    n_fit: int
    theta_point: torch.Tensor  # [P] fit to the unperturbed data
    theta_samples: torch.Tensor  # [B, P] bootstrap fits
    sse_point: float
    note: str = ""
    comparison: dict[str, dict[str, float]] = field(default_factory=dict)
    converged: bool = True  # the point fit met the convergence test (and the model was not flat there)
    flat: list[str] = field(default_factory=list)  # growth-law parameters that do not move the model at the point fit
    at_bound: dict[str, str] = field(default_factory=dict)  # parameter -> "lower"/"upper" (point fit)
    boot_converged: float = 1.0  # fraction of the bootstrap fits that converged
    flags: list[str] = field(default_factory=list)  # problems of the fit (also appended to note)

    @property
    def day0(self) -> float:
        return float(self.series.days[0])

    @property
    def y0(self) -> float:
        return float(self.series.sizes[0])

    @property
    def t_rt(self) -> float:
        return float(self.series.rt_end_day) - self.day0 if self.series.has_rt else NO_RT


class CohortFit:
    """The fitted cohort: ``forecast(subject, days)``, ``model_name(subject)``, ``errors``, tables."""

    def __init__(self, fits: dict[str, SubjectFit], errors: list[dict[str, Any]], settings, notes: list[str]):
        self.fits = fits
        self.errors = errors
        self.settings = settings
        self.notes = notes

    @property
    def subjects(self) -> list[str]:
        return list(self.fits)

    def _fit(self, subject: str) -> SubjectFit:
        if subject in self.fits:
            return self.fits[subject]
        for e in self.errors:
            if e["subject"] == subject:
                raise DataError(f"subject '{subject}' was not fitted: {e['message']}")
        raise DataError(f"unknown subject '{subject}'; fitted: {', '.join(self.fits) or 'none'}")

    def model(self, subject: str) -> GrowthModel:
        return get_model(self._fit(subject).model, self.settings.size_kind)

    def model_name(self, subject: str) -> str:
        return self._fit(subject).model

    def params(self, subject: str) -> dict[str, torch.Tensor]:
        """Bootstrap samples of each named parameter (``[B]``)."""
        f = self._fit(subject)
        return {n: f.theta_samples[:, i] for i, n in enumerate(self.model(subject).param_names)}

    def curve(self, subject: str, days, theta: torch.Tensor) -> torch.Tensor:
        """Sizes (input units) at ``days`` for parameter rows ``theta [B, P]`` -> ``[B, D]``, clamped."""
        f = self._fit(subject)
        s = self.settings
        d = torch.as_tensor(days, dtype=torch.float64).reshape(-1)
        t = (d - f.day0).clamp_min(0.0).expand(theta.shape[0], -1)
        t_rt = torch.full((theta.shape[0],), f.t_rt, dtype=torch.float64)
        m = self.model(subject)
        if s.integrator == "odeint":
            y = simulate_ode(m, theta.double(), t, t_rt, method=s.ode_method, rtol=s.ode_rtol, atol=s.ode_atol)
        else:
            y = simulate_closed_form(m, theta.double(), t, t_rt)
        y = torch.nan_to_num(y * f.y0, nan=0.0, posinf=s.max_fold * f.y0, neginf=0.0)
        return y.clamp(0.0, s.max_fold * f.y0)

    def forecast(self, subject: str, days) -> Forecast:
        f = self._fit(subject)
        d = torch.as_tensor(days, dtype=torch.float64).reshape(-1)
        samples = self.curve(subject, d, f.theta_samples)
        q = torch.quantile(samples, torch.tensor([0.5, 0.05, 0.95], dtype=torch.float64), dim=0)
        point = self.curve(subject, d, f.theta_point.unsqueeze(0))[0]
        return Forecast(subject, f.model, d, q[0], q[1], q[2], samples, f.note, point)

    def flag_fits(self) -> None:
        """Name what is wrong with each subject's fit (``SubjectFit.flags``, appended to its note, logged as
        a warning): the point fit did not converge (iteration limit) or the model is flat there (it
        saturates: days in other units?), parameters pinned at a bound, the curve clamped at
        ``max_fold`` x the first size, most bootstrap fits not converged."""
        for subj, f in self.fits.items():
            flags = []
            if f.flat:
                days_hint = "; are the days in days?" if f.series.days[-1] - f.day0 > 36500 else ""
                flags.append(f"not converged: {', '.join(f.flat)} does not move the fitted curve (the model saturates{days_hint})")
            elif not f.converged:
                flags.append("not converged: iteration limit (raise fit.steps)")
            if f.at_bound:
                flags.append("at bound: " + ", ".join(f"{p} ({side})" for p, side in f.at_bound.items()))
            curve = self.curve(subj, f.series.days, f.theta_point.unsqueeze(0))[0]
            if bool((curve >= self.settings.max_fold * f.y0 * (1 - 1e-9)).any()):
                flags.append(f"curve clamped at max_fold x first size ({self.settings.max_fold:g})")
            if f.boot_converged < 0.5 and not flags:
                flags.append(f"{1 - f.boot_converged:.0%} of the bootstrap fits not converged")
            f.flags = flags
            if flags:
                f.note = "; ".join(x for x in (f.note, *flags) if x)
                log.warning("subject '%s' (%s): %s", subj, f.model, "; ".join(flags))

    # ------------------------------------------------------------------ tables
    def params_rows(self) -> list[dict[str, Any]]:
        rows = []
        for subj, f in self.fits.items():
            names = self.model(subj).param_names
            q = torch.quantile(f.theta_samples, torch.tensor([0.5, 0.05, 0.95], dtype=f.theta_samples.dtype), dim=0)
            for i, n in enumerate(names):
                rows.append({"subject": subj, "model": f.model, "parameter": n, "median": float(q[0, i]),
                             "p05": float(q[1, i]), "p95": float(q[2, i]), "point": float(f.theta_point[i])})
        return rows

    def forecast_rows(self) -> list[dict[str, Any]]:
        rows = []
        for subj, f in self.fits.items():
            ser = f.series
            fc = self.forecast(subj, ser.days)
            last = baseline_last(ser.days[: f.n_fit], ser.sizes[: f.n_fit], ser.days)
            lin = baseline_linear(ser.days[: f.n_fit], ser.sizes[: f.n_fit], ser.days)
            for j, (d, obs) in enumerate(zip(ser.days, ser.sizes)):
                hold = j >= f.n_fit
                rows.append({
                    "subject": subj, "day": d, "observed": obs, "median": float(fc.median[j]),
                    "p05": float(fc.p05[j]), "p95": float(fc.p95[j]), "point": float(fc.point[j]),
                    "is_holdout": int(hold), "model": f.model,
                    "rel_error": abs(float(fc.median[j]) - obs) / max(obs, REL_FLOOR * f.y0),
                    "rel_error_point": abs(float(fc.point[j]) - obs) / max(obs, REL_FLOOR * f.y0),
                    "baseline_last": float(last[j]) if hold else "", "baseline_linear": float(lin[j]) if hold else "",
                })
        return rows

    def metrics_rows(self) -> list[dict[str, Any]]:
        rows = []
        for subj, f in self.fits.items():
            ser = f.series
            obs = torch.tensor(ser.sizes, dtype=torch.float64)
            fc = self.forecast(subj, ser.days)
            fit_obs, fit_pred = obs[: f.n_fit], fc.median[: f.n_fit]
            ss_res = float(((fit_obs - fit_pred) ** 2).sum())
            ss_tot = float(((fit_obs - fit_obs.mean()) ** 2).sum())
            r2 = 1.0 - ss_res / ss_tot if f.n_fit > 1 and ss_tot > 0 else float("nan")
            nrmse = math.sqrt(ss_res / f.n_fit) / float(fit_obs.mean())
            k = self.model(subj).effective_n_params(ser.has_rt and f.t_rt <= float(ser.days[f.n_fit - 1]) - f.day0)
            aic, bic = aic_bic(f.sse_point, f.n_fit, k)
            row = {"subject": subj, "model": f.model, "n_points": len(ser), "n_fit": f.n_fit,
                   "n_holdout": len(ser) - f.n_fit, "n_params": k, "r2": r2, "nrmse": nrmse, "aic": aic, "bic": bic}
            if len(ser) > f.n_fit:
                hold_obs = obs[f.n_fit:]
                hd = ser.days[f.n_fit:]
                denom = hold_obs.clamp_min(REL_FLOOR * f.y0)  # a vanished tumour (size 0): relative to 1 % of the first size
                rel = ((fc.median[f.n_fit:] - hold_obs).abs() / denom)
                last = baseline_last(ser.days[: f.n_fit], ser.sizes[: f.n_fit], hd)
                lin = baseline_linear(ser.days[: f.n_fit], ser.sizes[: f.n_fit], hd)
                inside = ((hold_obs >= fc.p05[f.n_fit:]) & (hold_obs <= fc.p95[f.n_fit:])).double()
                rel_point = ((fc.point[f.n_fit:] - hold_obs).abs() / denom)
                row.update({
                    "holdout_rel_error": float(rel.mean()), "holdout_rel_error_point": float(rel_point.mean()),
                    "holdout_in_band": float(inside.mean()),
                    "baseline_last_rel_error": float(((last - hold_obs).abs() / denom).mean()),
                    "baseline_linear_rel_error": float(((lin - hold_obs).abs() / denom).mean()),
                })
            row["converged"] = int(f.converged)
            row["at_bound"] = " ".join(f"{p}:{side}" for p, side in f.at_bound.items())
            row["note"] = f.note
            rows.append(row)
        return rows

    def comparison_rows(self) -> list[dict[str, Any]]:
        rows = []
        for subj, f in self.fits.items():
            for name, c in f.comparison.items():
                rows.append({"subject": subj, "model": name, **c, "chosen": int(name == f.model)})
        return rows


# --------------------------------------------------------------------------- cohort summary
def _median(values):
    values = [v for v in values if isinstance(v, float) and not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def _mean(values):
    values = [v for v in values if isinstance(v, float) and not math.isnan(v)]
    return statistics.fmean(values) if values else float("nan")


def summarise_metrics(metrics: list[dict]) -> dict:
    """Cohort figures of ``metrics_rows()`` (``summary.json``, the report and ``cohort_summary.png`` all use
    these): medians and means over subjects (NaN left out; the median of an even count is the mean of the
    middle two), and the number of flagged fits (not converged or a parameter at a bound)."""
    out = {"subjects": len(metrics), "r2_median": _median([m["r2"] for m in metrics]),
           "nrmse_median": _median([m["nrmse"] for m in metrics]),
           "not_converged": sum(1 for m in metrics if not m.get("converged", 1)),
           "at_bound": sum(1 for m in metrics if m.get("at_bound"))}
    held = [m for m in metrics if "holdout_rel_error" in m]
    if held:
        for key in ("holdout_rel_error", "holdout_rel_error_point", "baseline_last_rel_error",
                    "baseline_linear_rel_error", "holdout_in_band"):
            out[f"{key}_median"] = _median([m[key] for m in held])
            out[f"{key}_mean"] = _mean([m[key] for m in held])
    return out


# --------------------------------------------------------------------------- batching helpers
@dataclass
class _Item:
    subject: str
    t: torch.Tensor  # normalised times
    y: torch.Tensor  # normalised sizes
    n_train: int  # fitted points: the first n_train
    t_rt: float
    target: int | None = None  # index forecast by a CV fold
    purpose: str = "fit"  # names the item's starts: (seed, subject, purpose) seeds its generator
    group: int = 0  # prior group (population prior: the items that share one prior)


def _items(series: SizeSeries, n_fit: int, dtype) -> _Item:
    d = torch.tensor(series.days, dtype=dtype)
    y = torch.tensor(series.sizes, dtype=dtype)
    t_rt = float(series.rt_end_day) - float(d[0]) if series.has_rt else NO_RT
    return _Item(series.subject, d - d[0], y / y[0], n_fit, t_rt)


def _pack(items: list[_Item], n_bootstrap: int, s, seed: int, dtype) -> FitProblems:
    """Pad the items into one batch. Every random draw of an item is keyed by (seed, subject, ...):
    its bootstrap replicates by (seed, subject, "bootstrap"), its starts by (seed, subject, purpose)."""
    width = max(len(it.t) for it in items)
    t = torch.zeros(len(items), width, dtype=dtype)
    y = torch.ones(len(items), width, dtype=dtype)
    mask = torch.zeros(len(items), width, dtype=torch.bool)
    for i, it in enumerate(items):
        n = len(it.t)
        t[i, :n], y[i, :n] = it.t, it.y
        t[i, n:], y[i, n:] = it.t[-1], it.y[-1]
        mask[i, : it.n_train] = True
    if n_bootstrap > 0:
        yb = bootstrap(y, n_bootstrap, s.noise, s.noise_clip, [problem_key(seed, it.subject, "bootstrap") for it in items],
                       [len(it.t) for it in items])
    else:
        yb = y.unsqueeze(1)
    t_rt = torch.tensor([it.t_rt for it in items], dtype=dtype)
    keys = [problem_key(seed, it.subject, it.purpose) for it in items]
    groups = torch.tensor([it.group for it in items], dtype=torch.long)
    return FitProblems(t, yb, mask, t_rt, keys, groups)


def _module(model: GrowthModel, items: list[_Item], n_bootstrap: int, s, seed: int, prior=None) -> BatchedFit:
    """The batched fit of ``items``: their point fits (``n_bootstrap=0``, ``n_starts`` starts each), or
    their bootstrap replicates alone (``boot_starts`` starts each)."""
    dtype = torch.float64 if s.dtype == "float64" else torch.float32
    problems = _pack(items, n_bootstrap, s, seed, dtype)
    if n_bootstrap > 0:  # replicate 0 (the data) is the point fit, done already
        problems.y = problems.y[:, 1:]
        problems.keys = [problem_key(seed, it.subject, it.purpose, "bootstrap starts") for it in items]
    steps = s.steps if s.steps >= 0 else (ADAM_STEPS if s.optimizer == "adam" else LM_BOOT_STEPS if n_bootstrap else LM_STEPS)
    return BatchedFit(
        model, problems, n_starts=s.boot_starts if n_bootstrap > 0 else s.n_starts, start_jitter=s.start_jitter,
        noise=s.noise, steps=steps, lr=s.lr, integrator=s.integrator,
        ode_kwargs=dict(method=s.ode_method, rtol=s.ode_rtol, atol=s.ode_atol),
        prior=prior, seed=seed, optimizer=s.optimizer,
    )


def _fit(model: GrowthModel, items: list[_Item], n_bootstrap: int, s, seed: int, prior=None, progress=False,
         logger=None) -> FitResult:
    """Point fits of ``items``, then, with ``n_bootstrap > 0``, their bootstrap replicates (each from the
    authors' starting values, as the authors do): replicate 0 of the result is the point fit,
    replicates 1.. the bootstrap fits."""
    bar = progress and s.progress_bar
    point = run_fit(_module(model, items, 0, s, seed, prior), accelerator=s.accelerator, progress_bar=bar, logger=logger)
    if n_bootstrap == 0:
        return point
    boot = run_fit(_module(model, items, n_bootstrap, s, seed, prior), accelerator=s.accelerator, progress_bar=bar,
                   logger=logger)
    return FitResult(*(torch.cat([getattr(point, f.name), getattr(boot, f.name)], dim=1)
                       if getattr(point, f.name) is not None else None for f in fields(FitResult)))


def unit_coords(model: GrowthModel, theta: torch.Tensor, noise: float) -> torch.Tensor:
    """Normalised (log-)parameters in [0, 1], the space the population prior lives in."""
    lo, hi = widened_bounds(model, noise, theta.dtype)
    ls = torch.tensor(model.log_scale())
    zlog = (torch.log(theta.clamp_min(1e-30)) - torch.log(lo.abs().clamp_min(1e-30))) / (
        torch.log(hi.abs().clamp_min(1e-30)) - torch.log(lo.abs().clamp_min(1e-30)))
    return torch.where(ls, zlog, (theta - lo) / (hi - lo)).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- the cohort fit
def fit_cohort(rows, fit_cfg: Any = None, *, seed: int = 0, strict: bool = False, logger=None) -> CohortFit:
    """Fit every subject of ``rows`` (CSV path or list of dicts) with ``fit_cfg`` (FitSettings).

    Bad subjects are reported in ``CohortFit.errors`` (and logged) and the rest are fitted, unless
    ``strict`` (then the first problem raises ``DataError``).
    """
    s = _settings(fit_cfg)
    candidates = _check_settings(s)
    prior_on = bool(s.population_prior)
    usable, errors = _usable_series(rows, s, prior_on, strict)
    dtype = torch.float64 if s.dtype == "float64" else torch.float32
    notes: list[str] = []
    subject_notes: dict[str, str] = {}
    for ser, n_fit in usable:
        if n_fit == 1:
            subject_notes[ser.subject] = "prior-only forecast: 1 fitted point, growth parameters from the population prior"
            log.warning("subject '%s': %s", ser.subject, subject_notes[ser.subject])
    base_items = [_items(ser, n_fit, dtype) for ser, n_fit in usable]
    prior_arg = "hierarchical" if prior_on else None

    # ---- model comparison / auto selection (unperturbed data, no bootstrap)
    comparison: dict[str, dict[str, dict[str, float]]] = {ser.subject: {} for ser, _ in usable}
    if s.model == "auto" or s.compare_models:
        names = candidates if s.model == "auto" else sorted(set(candidates) | {s.model}, key=model_names().index)
        for name in names:
            model = get_model(name, s.size_kind)
            items = list(base_items)
            if s.model == "auto":
                items += _cv_items(base_items, s, prior_on)
            res = _fit(model, items, 0, s, seed, prior=prior_arg)
            _score_model(model, name, items, res, comparison)
        _pool_cv_scores(names, comparison, s)
        chosen = _choose_models(usable, comparison, s, subject_notes)
    else:
        chosen = {ser.subject: s.model for ser, _ in usable}

    # ---- bootstrap fit, one batched fit per chosen model
    fits: dict[str, SubjectFit] = {}
    groups: dict[str, list[int]] = {}
    for i, (ser, _) in enumerate(usable):
        groups.setdefault(chosen[ser.subject], []).append(i)
    for name, idx in groups.items():
        fits.update(_bootstrap_group(name, [usable[i] for i in idx], [base_items[i] for i in idx], s, seed, prior_arg,
                                     notes, subject_notes, comparison, logger))
    ordered = {ser.subject: fits[ser.subject] for ser, _ in usable}
    cohort = CohortFit(ordered, errors, s, notes)
    cohort.flag_fits()
    return cohort


def _usable_series(rows, s, prior_on: bool, strict: bool) -> tuple[list[tuple[SizeSeries, int]], list[dict[str, Any]]]:
    """The series with enough points to fit (each with its number of fitted points), and the error rows of the rest."""
    min_points = 1 if prior_on else 2
    series, problems = load_series(rows, s.rt_duration_days, min_points=min_points, strict=strict)
    usable: list[tuple[SizeSeries, int]] = []
    for ser in series:
        n_fit = len(ser) - s.holdout_last
        if n_fit < min_points:
            msg = (f"subject '{ser.subject}' row {ser.rows[-1]}: {len(ser)} point(s) and holdout_last={s.holdout_last} "
                   f"leave {n_fit} to fit; at least {min_points} needed"
                   + ("" if prior_on else " (fit.population_prior=true allows 1)"))
            if strict:
                raise DataError(msg)
            problems.append(SubjectProblem(ser.subject, ser.rows[-1], msg))
            continue
        usable.append((ser, n_fit))
    errors = [p.as_row() for p in problems]
    for e in errors:
        log.warning("skipped: %s", e["message"])
    if not usable:
        raise DataError("no subject could be fitted: " + "; ".join(e["message"] for e in errors[:5]))
    return usable, errors


def _cv_items(base_items: list[_Item], s, prior_on: bool) -> list[_Item]:
    """The rolling-origin CV folds of ``fit.model=auto`` as extra items (with the prior: one prior group per cut)."""
    horizon = s.auto_horizon if s.auto_horizon > 0 else max(s.holdout_last, 1)
    cuts: list[tuple[_Item, int]] = []
    for it in base_items:
        # with RT in the fitted span, a training window must reach auto_post_rt points past
        # the RT end: earlier windows say nothing about the post-RT course being forecast
        post = (it.t[: it.n_train] > it.t_rt).nonzero()
        k_rt = int(post[0]) + s.auto_post_rt if len(post) and s.auto_post_rt > 0 else 0
        cuts += [(it, k) for k in range(max(s.auto_min_train, 1, k_rt), it.n_train - horizon + 1)]
    items: list[_Item] = []
    if prior_on:
        # the prior of a fold must not see points after the fold's cut: cut k is its own cohort
        # (every subject's first k points, one prior group), in which the folds at k are fitted
        targets = {(it.subject, k): k + horizon - 1 for it, k in cuts}
        for gi, k in enumerate(sorted({k for _, k in cuts}), start=1):
            items += [_Item(it.subject, it.t, it.y, min(k, it.n_train), it.t_rt,
                            target=targets.get((it.subject, k)), purpose=f"cv{k}", group=gi)
                      for it in base_items]
    else:
        items += [_Item(it.subject, it.t, it.y, k, it.t_rt, target=k + horizon - 1, purpose=f"cv{k}")
                  for it, k in cuts]
    return items


def _score_model(model: GrowthModel, name: str, items: list[_Item], res: FitResult,
                 comparison: dict[str, dict[str, dict[str, float]]]) -> None:
    """Add model ``name``'s in-sample scores (SSE, R^2, AIC/BIC/AICc) and CV error per subject to ``comparison``."""
    cv: dict[str, list[float]] = {}
    for i, it in enumerate(items):
        if it.purpose == "fit":
            sse = float(res.sse[i, 0])
            has_rt = it.t_rt <= float(it.t[it.n_train - 1])
            k_eff = model.effective_n_params(has_rt)
            aic, bic = aic_bic(sse, it.n_train, k_eff)
            yf = it.y[: it.n_train].double()
            ss_tot = float(((yf - yf.mean()) ** 2).sum())
            comparison[it.subject][name] = {"n_params": k_eff, "n_points": it.n_train, "sse": sse,
                                            "r2": 1.0 - sse / ss_tot if ss_tot > 0 else float("nan"),
                                            "aic": aic, "bic": bic, "aicc": aicc(aic, it.n_train, k_eff)}
        elif it.target is not None:  # (items of a cut without a fold only shape that cut's prior)
            pred = simulate_closed_form(model, res.theta[i, 0].double(), it.t[it.target : it.target + 1].double(),
                                        torch.tensor(it.t_rt, dtype=torch.float64))
            obs = float(it.y[it.target])
            cv.setdefault(it.subject, []).append(abs(float(pred[0]) - obs) / max(obs, REL_FLOOR))
    for subj, errs in cv.items():
        comparison[subj][name]["cv_error"] = sum(errs) / len(errs)
        comparison[subj][name]["cv_folds"] = len(errs)


def _pool_cv_scores(names: list[str], comparison: dict[str, dict[str, dict[str, float]]], s) -> None:
    """Set each subject's ``cv_score``: its CV error shrunk toward the cohort-wide CV error of the model (auto_pool)."""
    pooled: dict[str, float] = {}
    for name in names:
        errs = [c[name]["cv_error"] * c[name]["cv_folds"] for c in comparison.values() if "cv_error" in c.get(name, {})]
        folds = [c[name]["cv_folds"] for c in comparison.values() if "cv_error" in c.get(name, {})]
        if folds:
            pooled[name] = sum(errs) / sum(folds)
    for c in comparison.values():
        for name, row in c.items():
            if "cv_error" in row:
                w = float(s.auto_pool)
                row["cv_score"] = (row["cv_error"] * row["cv_folds"] + w * pooled[name]) / (row["cv_folds"] + w)


def _choose_models(usable: list[tuple[SizeSeries, int]], comparison: dict[str, dict[str, dict[str, float]]], s,
                   subject_notes: dict[str, str]) -> dict[str, str]:
    """Each subject's model: fit.model, or with auto the best CV score (AICc without folds); notes say why."""
    chosen: dict[str, str] = {}
    for ser, _ in usable:
        comp = comparison[ser.subject]
        if s.model != "auto":
            chosen[ser.subject] = s.model
            continue
        # a model that cannot describe the fitted points (in-sample R^2 < 0.5) is no candidate
        with_cv = {m: c for m, c in comp.items() if "cv_error" in c and not c["r2"] < 0.5}
        if with_cv:
            best = min(with_cv, key=lambda m: (round(with_cv[m]["cv_score"], 6), with_cv[m]["n_params"]))
            why = f"auto: rolling-origin CV ({int(with_cv[best]['cv_folds'])} folds)"
        else:
            best = min(comp, key=lambda m: (comp[m]["aicc"], comp[m]["aic"], comp[m]["n_params"]))
            why = "auto: AICc (too few points for cross-validation)"
        chosen[ser.subject] = best
        subject_notes[ser.subject] = "; ".join(x for x in (subject_notes.get(ser.subject, ""), why) if x)
    return chosen


def _bootstrap_group(name: str, usable: list[tuple[SizeSeries, int]], items: list[_Item], s, seed: int, prior_arg,
                     notes: list[str], subject_notes: dict[str, str],
                     comparison: dict[str, dict[str, dict[str, float]]], logger) -> dict[str, SubjectFit]:
    """One batched point + bootstrap fit of the subjects whose chosen model is ``name``."""
    model = get_model(name, s.size_kind)
    prior = prior_arg
    if s.population_prior and s.prior_mode == "map":
        prior = _empirical_prior(model, items, name, s, seed, notes)
    log.info("fitting %d subject(s) with %s: point fit (%d starts), %d bootstrap replicates x %d starts", len(items),
             name, s.n_starts, s.n_bootstrap, s.boot_starts)
    res = _fit(model, items, s.n_bootstrap, s, seed, prior=prior, progress=True, logger=logger)
    side = res.at_bound()
    fits: dict[str, SubjectFit] = {}
    for j, (ser, n_fit) in enumerate(usable):
        samples = res.theta[j, 1:] if s.n_bootstrap > 0 else res.theta[j, :1]
        pinned = {p: ("lower" if int(side[j, 0, q]) < 0 else "upper")
                  for q, p in enumerate(model.param_names) if int(side[j, 0, q]) != 0}
        fits[ser.subject] = SubjectFit(ser, name, n_fit, res.theta[j, 0], samples, float(res.sse[j, 0]),
                                       subject_notes.get(ser.subject, ""), comparison.get(ser.subject, {}),
                                       bool(res.converged[j, 0]),
                                       [p for q, p in enumerate(model.param_names[: model.n_law]) if res.flat[j, 0, q]],
                                       pinned,
                                       float(res.converged[j, 1:].double().mean()) if s.n_bootstrap > 0 else 1.0)
    return fits


def _empirical_prior(model, items, name, s, seed, notes):
    """prior_mode=map: mean/SD of the normalised parameters of well-sampled subjects (their own fits)."""
    rich = [it for it in items if it.n_train >= s.prior_min_points]
    if len(rich) < 3:
        notes.append(f"{name}: fewer than 3 subjects with >= {s.prior_min_points} points; hierarchical prior used instead of map")
        log.warning(notes[-1])
        return "hierarchical"
    res = _fit(model, rich, 0, s, seed)  # independent fits of the well-sampled subjects
    thetas = res.theta[:, 0]
    z = unit_coords(model, thetas.double(), s.noise)
    return z.mean(0), z.std(0)
