"""Simulated cohorts with known truth (tests, benchmarks, the demo CSV).

- :func:`rt_cohort`: the authors' RT model with known parameters and multiplicative noise.
- :func:`fk_cohort`: Fisher-Kolmogorov-like fronts: the radius grows at a constant speed (the
  "velocity of diametric expansion"), RT pushes the front back (a dip that sets in over a few weeks)
  and the front then moves on at the same speed (``speed_after_range`` can make it slower). Areas =
  pi r^2. None of the registered models is exactly this curve.

Both return rows ``subject, day, size, rt_start_day, rt_end_day`` (sizes in mm^2) and the truth.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tgrowth.ode.models import get_model, simulate_closed_form


def _uniform(g, n, lo, hi, log=False):
    u = torch.rand(n, generator=g, dtype=torch.float64)
    if log:
        return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
    return lo + (hi - lo) * u


def scan_days(g: torch.Generator, n_scans: int, rt_end: float, spacing: float = 60.0) -> list[float]:
    """A baseline before RT, one scan right after RT, then follow-ups every ~``spacing`` days."""
    days = [0.0]
    d = rt_end + 7.0 + float(torch.randint(0, 14, (1,), generator=g))
    while len(days) < n_scans:
        days.append(round(d))
        d += spacing * (0.8 + 0.4 * float(torch.rand(1, generator=g, dtype=torch.float64)))
    return days


def rt_cohort(n_subjects: int = 8, n_scans: int | list[int] = 6, noise: float = 0.05, seed: int = 0,
              base_area: tuple[float, float] = (200.0, 800.0), theta: torch.Tensor | None = None,
              prefix: str = "sim", spacing: float = 60.0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Authors' RT model (``exponential_rt``): random (or given) parameters, RT ending on day 42+.

    Returns ``(rows, truth)``; truth holds ``theta [S, P]``, ``param_names``, per-subject clean series.
    """
    g = torch.Generator().manual_seed(seed)
    model = get_model("exponential_rt")
    if theta is None:
        theta = torch.stack([
            _uniform(g, n_subjects, 0.95, 1.05),          # V0
            _uniform(g, n_subjects, 0.004, 0.02, True),   # lambda_gr
            _uniform(g, n_subjects, 0.05, 0.18),          # SF
            _uniform(g, n_subjects, 0.01, 0.06, True),    # lambda_decay
            _uniform(g, n_subjects, 10.0, 60.0),          # delay
            _uniform(g, n_subjects, 0.05, 0.5, True),     # slope
        ], dim=-1)
    scans = n_scans if isinstance(n_scans, list) else [n_scans] * n_subjects
    rows, clean = [], {}
    for i in range(n_subjects):
        rt_end = 42.0 + float(torch.randint(0, 20, (1,), generator=g))
        days = scan_days(g, scans[i], rt_end, spacing)
        t = torch.tensor(days, dtype=torch.float64)
        y = simulate_closed_form(model, theta[i], t, torch.tensor(rt_end, dtype=torch.float64))
        a0 = float(_uniform(g, 1, *base_area))
        eps = torch.randn(len(days), generator=g, dtype=torch.float64)
        obs = a0 * y * (1.0 + noise * eps)
        sid = f"{prefix}{i:03d}"
        clean[sid] = (days, (a0 * y).tolist())
        for d, s in zip(days, obs.clamp_min(1e-3).tolist()):
            rows.append({"subject": sid, "day": d, "size": round(s, 4), "rt_start_day": rt_end - 42.0, "rt_end_day": rt_end})
    return rows, {"theta": theta, "param_names": model.param_names, "clean": clean}


def fk_area(days: torch.Tensor, r0: float, speed: float, rt_end: float | None, push: float, speed_after: float,
            onset: float = 20.0) -> torch.Tensor:
    """Area of a constant-speed front with an RT dip: ``r = r0 + v t`` before RT; after RT the front is
    pushed back by ``push`` x its radius (setting in over ~``onset`` days) and moves on at ``speed_after``."""
    r = r0 + speed * days
    if rt_end is not None:
        after = days > rt_end
        dt = (days - rt_end).clamp_min(0.0)
        r_rt = r0 + speed * rt_end
        r_after = r_rt + speed_after * dt - push * r_rt * (1.0 - torch.exp(-dt / onset))
        r = torch.where(after, r_after, r)
    return math.pi * r.clamp_min(0.5) ** 2


def fk_cohort(n_subjects: int = 12, n_scans: int = 8, noise: float = 0.03, seed: int = 0, spacing: float = 60.0,
              rt_fraction: float = 0.75, prefix: str = "fk", speed_after_range: tuple[float, float] = (1.0, 1.0)) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Fisher-Kolmogorov-like cohort (radius linear in time, RT dips); sizes are areas in mm^2."""
    g = torch.Generator().manual_seed(seed)
    rows, truth = [], {}
    for i in range(n_subjects):
        r0 = float(_uniform(g, 1, 5.0, 12.0))  # mm
        speed = float(_uniform(g, 1, 0.02, 0.06))  # mm/day (7-22 mm/year)
        has_rt = float(torch.rand(1, generator=g, dtype=torch.float64)) < rt_fraction
        rt_end = 42.0 + float(torch.randint(0, 20, (1,), generator=g)) if has_rt else None
        push = float(_uniform(g, 1, 0.1, 0.3)) if has_rt else 0.0
        speed_after = speed * float(_uniform(g, 1, *speed_after_range)) if has_rt else speed
        days = scan_days(g, n_scans, rt_end if rt_end is not None else 42.0, spacing)
        t = torch.tensor(days, dtype=torch.float64)
        area = fk_area(t, r0, speed, rt_end, push, speed_after)
        obs = area * (1.0 + noise * torch.randn(len(days), generator=g, dtype=torch.float64))
        sid = f"{prefix}{i:03d}"
        truth[sid] = {"r0": r0, "speed": speed, "rt_end": rt_end, "push": push, "speed_after": speed_after,
                      "clean": area.tolist()}
        for d, s in zip(days, obs.clamp_min(1e-3).tolist()):
            rows.append({"subject": sid, "day": d, "size": round(s, 4),
                         "rt_start_day": "" if rt_end is None else rt_end - 42.0,
                         "rt_end_day": "" if rt_end is None else rt_end})
    return rows, truth
