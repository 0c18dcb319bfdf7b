"""Mechanistic tumour-growth ODEs: batched bootstrap fits, forecasts and model selection.

A torchdiffeq-like small API::

    from tgrowth.ode import fit_cohort, forecast, simulate
    cohort = fit_cohort("sizes.csv", {"model": "auto", "n_bootstrap": 100})
    fc = forecast(cohort, "patient-1", days=[300, 400])   # fc.median, fc.p05, fc.p95, fc.samples [B, D]
    y = simulate("exponential_rt", theta, t, t_rt)         # normalised sizes, closed form or odeint

``tgrowth.ode.models`` (the maths) imports with torch and torchdiffeq alone; the fit needs Lightning.
"""

from tgrowth.ode.data import REQUIRED_COLUMNS, SizeSeries, load_series
from tgrowth.ode.models import MODELS, NO_RT, GrowthModel, get_model, model_names, simulate

__all__ = [
    "MODELS",
    "NO_RT",
    "REQUIRED_COLUMNS",
    "CohortFit",
    "Forecast",
    "GrowthModel",
    "SizeSeries",
    "fit_cohort",
    "forecast",
    "get_model",
    "load_series",
    "model_names",
    "simulate",
]


def __getattr__(name):  # the fit pulls in Lightning: import it on first use
    if name in ("CohortFit", "Forecast", "fit_cohort"):
        from tgrowth.ode import cohort as _fc

        return getattr(_fc, name)
    raise AttributeError(name)


def forecast(cohort, subject: str, days):
    """``cohort.forecast(subject, days)``: median, p05, p95 ``[D]`` and samples ``[B, D]``."""
    return cohort.forecast(subject, days)
