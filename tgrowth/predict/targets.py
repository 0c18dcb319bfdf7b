"""Stage 2 of predict, the targets: one batched growth-ODE fit of every planned subject, and per subject the
forecast at the target day(s) turned into guidance targets (mm^2 on the slice).

Per bootstrap replicate b the relative change is ``r_b = size_b(target) / size_b(prior)``; the target is
``prior area x median(r)`` (``guidance.target=median``) or, for generation g, ``prior area x r_(g mod B)``
(``bootstrap``: the ODE's uncertainty reaches the map). A prior slice without tumour uses the forecast sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from tgrowth.errors import DataError
from tgrowth.growth.geometry import change_zone, radial_growth_mm
from tgrowth.metrics import foreground
from tgrowth.ode import fit_cohort
from tgrowth.predict.plan import Plan, SubjectSlices

__all__ = ["Targets", "ode_rows", "fit_growth", "subject_targets", "zone_keep"]


@dataclass
class Targets:
    """``forecast``: the ODE forecast at ``[prior day, *target days]`` (median, p05, p95 ``[1 + D]``);
    ``median``: the guidance target per target day (mm^2, ``[D]``); ``ratios``: per replicate and day ``[B, D]``
    (None without tumour on the prior slice)."""

    forecast: Any
    median: torch.Tensor
    ratios: torch.Tensor | None

    def per_generation(self, mode: str, prior_area: float, day: int, n: int) -> torch.Tensor:
        """``[n]`` targets (mm^2): the median for all (``median``), or generation g <- replicate g mod B."""
        if mode == "median" or self.ratios is None:
            return self.median[day].expand(n).clone()
        return prior_area * self.ratios[torch.arange(n) % self.ratios.shape[0], day]

    def band(self, day: int) -> dict[str, float]:
        """The ODE's forecast size at target day ``day``: median, p05, p95 (the fit's own units)."""
        return {k: float(np.asarray(getattr(self.forecast, k))[1 + day]) for k in ("median", "p05", "p95")}


def ode_rows(plans: list[Plan]) -> list[dict[str, Any]]:
    """The ODE table: one row per fitted timepoint (subject, day, size, rt_start_day, rt_end_day)."""
    return [{"subject": p.subject, "day": float(t.day), "size": float(s), "rt_start_day": p.rt[0], "rt_end_day": p.rt[1]}
            for p in plans for t, s in zip(p.fit_timepoints, p.sizes)]


def fit_growth(cfg: DictConfig, plans: list[Plan]):
    """One batched fit of every planned subject (identical on every rank: same rows, same seed)."""
    return fit_cohort(ode_rows(plans), cfg.ode, seed=int(cfg.seed))


def subject_targets(fit: Any, plan: Plan, prior_area: float) -> Targets:
    """The forecast of one subject at its prior day and target day(s), as guidance targets."""
    fc = fit.forecast(plan.subject, [float(plan.prior.day)] + plan.target_days)
    samples = torch.as_tensor(np.asarray(fc.samples), dtype=torch.float64)  # [B, 1 + D]
    if prior_area > 0 and bool((samples[:, :1] > 0).all()):
        ratios = samples[:, 1:] / samples[:, :1]
        median = prior_area * ratios.median(dim=0).values
    else:  # no tumour on the prior slice: the forecast sizes themselves
        ratios, median = None, torch.as_tensor(np.asarray(fc.median), dtype=torch.float64)[1:]
    if not bool(torch.isfinite(median).all()):
        raise DataError(f"subject {plan.subject}: the ODE forecast is not finite ({median.tolist()})")
    return Targets(fc, median, ratios)


def zone_keep(slices: SubjectSlices, targets: Targets, margin_mm: float, edge_mm: float) -> torch.Tensor:
    """``[H, W]`` keep weight of the change zone (0 inside, 1 where the prior is kept; a soft edge between).

    The zone is the prior tumour dilated by the radial growth from the prior area to the ODE's 95th-percentile
    forecast (over the bootstrap replicates, the largest over the target days) plus ``margin_mm``, inside the
    brain. No tumour on the prior slice: no zone (everything may change).
    """
    prior_area = slices.prior_area
    if targets.ratios is None or prior_area <= 0:
        return torch.ones(slices.prior.image.shape[1:])
    upper = prior_area * float(targets.ratios.quantile(0.95, dim=0).max())
    grow = radial_growth_mm(prior_area, upper) + float(margin_mm)
    keep = change_zone(slices.prior_mask.numpy(), grow, slices.prior.spacing_mm,
                       region=foreground(slices.prior.image).numpy(), edge_mm=float(edge_mm))
    return torch.from_numpy(keep).float()
