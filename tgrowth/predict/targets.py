"""Stage 2 of predict, the targets: one batched growth-ODE fit of every planned subject, and per subject the
forecast at the target day(s) turned into guidance targets (mm^2 on the slice).

Per bootstrap replicate b the relative change is ``r_b = size_b(target) / size_b(prior)``; the target is
``prior area x median(r)`` (``guidance.target=median``) or, for generation g of N, ``prior area x r_(g mod B)``
(``bootstrap``: the ODE's uncertainty reaches the map) or ``prior area x`` the ``(g + 0.5) / N`` quantile of r
(``quantiles``: the same uncertainty, stratified: a heavy-tailed forecast puts its tail in the tail generations
instead of in whichever replicates come first). A prior slice without tumour uses the forecast sizes.

Where a run uses it (:func:`uses_fk`: the ``fk`` method, ``sampling.zone=fk`` or ``guidance.spatial_weight > 0``),
:func:`fk_prior` computes the subject's patient Fisher-Kolmogorov forecast once (:class:`FKPrior`): tissue from
the prior slice, calibration on the fitted timepoints' segmentations on the same slice or window, one batched
forecast to every size it is needed at (:func:`fk_sizes`). The ODE is the size clock, the FK model the shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from data_modules.volumes import tumour_mask
from tgrowth.config.predict import GUIDANCE_TARGETS
from tgrowth.errors import DataError, TgrowthError
from tgrowth.growth import Calibration, calibrate, estimate_tissue, fk_mask, forecast_density, initial_density
from tgrowth.growth.geometry import change_zone, distance_to, radial_growth_mm
from tgrowth.metrics import foreground
from tgrowth.ode import fit_cohort
from tgrowth.predict.plan import Plan, SubjectSlices

__all__ = ["Targets", "FKPrior", "ode_rows", "fit_growth", "subject_targets", "zone_upper", "zone_keep", "uses_fk",
           "fk_sizes", "fk_prior", "fk_forecast", "brain_of", "target_key", "TRUTH_KEY", "FK_METHODS",
           "needs_truth_forecast"]

#: the prior tumour dilated by this much (mm) is left out of the tissue fit (its oedema would pass for CSF)
TISSUE_EXCLUDE_MM = 3.0


@dataclass
class Targets:
    """``forecast``: the ODE forecast at ``[prior day, *target days]`` (median, p05, p95 ``[1 + D]``);
    ``median``: the guidance target per target day (mm^2, ``[D]``); ``ratios``: per replicate and day ``[B, D]``
    (None without tumour on the prior slice)."""

    forecast: Any
    median: torch.Tensor
    ratios: torch.Tensor | None

    def per_generation(self, mode: str, prior_area: float, day: int, n: int) -> torch.Tensor:
        """``[n]`` targets (mm^2): the median for all (``median``), generation g <- replicate g mod B
        (``bootstrap``) or the ``(g + 0.5) / n`` quantile of the replicates (``quantiles``, linear interpolation)."""
        if mode == "median" or self.ratios is None:
            return self.median[day].expand(n).clone()
        if mode == "quantiles":
            q = (torch.arange(n, dtype=self.ratios.dtype) + 0.5) / n
            return prior_area * torch.quantile(self.ratios[:, day], q)
        if mode != "bootstrap":
            raise TgrowthError(f"guidance.target must be one of {', '.join(GUIDANCE_TARGETS)} (got {mode!r})")
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


def zone_upper(slices: SubjectSlices, targets: Targets) -> float | None:
    """The size the change zone is made for (mm^2): the ODE's 95th-percentile forecast over the bootstrap
    replicates, the largest over the target days (None without tumour on the prior slice)."""
    prior_area = slices.prior_area
    if targets.ratios is None or prior_area <= 0:
        return None
    return prior_area * float(targets.ratios.quantile(0.95, dim=0).max())


def zone_keep(slices: SubjectSlices, targets: Targets, margin_mm: float, edge_mm: float, zone: str = "isotropic",
              fk: FKPrior | None = None, fk_level: float = 0.05) -> torch.Tensor:
    """``[H, W]`` keep weight of the change zone (0 inside, 1 where the prior is kept; a soft edge between).

    ``isotropic``: the zone is the prior tumour dilated by the radial growth from the prior area to
    :func:`zone_upper` plus ``margin_mm``, inside the brain. ``fk``: the zone is where the FK forecast density at
    :func:`zone_upper` (the ``zone`` row of ``fk``) exceeds ``fk_level``, with the prior tumour, inside the brain
    (``margin_mm`` unused). Both blend linearly to 1 over ``edge_mm`` outside the zone
    (:func:`~tgrowth.growth.geometry.change_zone`). No tumour on the prior slice: no zone (everything may change).
    """
    upper = zone_upper(slices, targets)
    if upper is None:
        return torch.ones(slices.prior.image.shape[1:])
    brain = foreground(slices.prior.image).numpy()
    if zone == "fk":
        if fk is None or "zone" not in fk.sizes:
            raise TgrowthError(f"subject {slices.prior.subject}: sampling.zone=fk needs the FK prior's zone forecast")
        region = (fk.density_of("zone") > float(fk_level)) | slices.prior_mask
        keep = change_zone(region.numpy(), 0.0, slices.prior.spacing_mm, region=brain, edge_mm=float(edge_mm))
    else:
        grow = radial_growth_mm(slices.prior_area, upper) + float(margin_mm)
        keep = change_zone(slices.prior_mask.numpy(), grow, slices.prior.spacing_mm, region=brain,
                           edge_mm=float(edge_mm))
    return torch.from_numpy(keep).float()


# --------------------------------------------------------------------------- the FK prior
#: the :class:`FKPrior` row of the true follow-up size (oracle-area's spatial target, the fk-to-truth method)
TRUTH_KEY = "truth"


def target_key(day_index: int) -> str:
    """The :class:`FKPrior` row of the ODE target at target day ``day_index``."""
    return f"target{day_index}"


def generation_key(g: int) -> str:
    """The :class:`FKPrior` row of generation ``g``'s own size target (``guidance.spatial_target=generation``)."""
    return f"generation{g}"


@dataclass
class FKPrior:
    """One subject's patient Fisher-Kolmogorov forecast on its predicted slice (or window), computed once.

    ``sizes``: row name -> the size (mm^2) the forecast was run to: ``target<j>`` the ODE target of day j
    (:func:`target_key`), ``generation<g>`` generation g's size target (:func:`generation_key`), ``zone`` the
    change zone's upper band (:func:`zone_upper`), ``truth`` the true follow-up area (:data:`TRUTH_KEY`:
    ``oracle-area``'s spatial target, the ``fk-to-truth`` method). ``density [K, H, W]``: the forecast density per
    row;
    ``masks [K, H, W]`` bool: exactly ``round(size / pixel area)`` pixels each, inside ``brain``: the densest
    pixels (:func:`~tgrowth.growth.fk_mask`); where the size exceeds every pixel the density reaches (CSF, the
    reachable tissue full), the rest by distance to the prior tumour (an isotropic fallback, so the size is
    always exact). ``calibration``: the fitted (or default) parameters (None without a prior tumour: then the
    density and the masks are empty; there is nothing to say where a tumour would appear).
    """

    sizes: dict[str, float]
    density: torch.Tensor
    masks: torch.Tensor
    reached: torch.Tensor
    brain: torch.Tensor
    calibration: Calibration | None = None

    def _row(self, key: str) -> int:
        if key not in self.sizes:
            raise KeyError(f"the FK prior has no forecast {key!r} (has {sorted(self.sizes)})")
        return list(self.sizes).index(key)

    def density_of(self, key: str) -> torch.Tensor:
        return self.density[self._row(key)]

    def mask_of(self, key: str) -> torch.Tensor:
        return self.masks[self._row(key)]

    def info(self) -> dict[str, Any]:
        """For info.json: the parameters and each forecast's size and whether the FK model reached it."""
        out: dict[str, Any] = {"forecasts": {k: {"size_mm2": v, "reached": bool(self.reached[i])}
                                             for i, (k, v) in enumerate(self.sizes.items())}}
        c = self.calibration
        if c is not None:
            p = c.params
            out.update(calibrated=bool(c.calibrated[0]), n_intervals=int(c.n_intervals[0]), score=float(c.score[0]),
                       lambda_mm=float(p.lam[0]), rho_per_day=float(p.rho[0]), d_white_mm2_per_day=float(p.d_white[0]),
                       grey_white_ratio=float(p.grey_white_ratio[0]))
        return out


#: the methods that are FK forecasts themselves
FK_METHODS = ("fk", "fk-to-truth")


def uses_fk(cfg: DictConfig, arms: list[Any]) -> bool:
    """Whether a run needs the FK prior: the ``fk`` / ``fk-to-truth`` methods, ``sampling.zone=fk``, or spatial
    guidance of a guided arm."""
    spatial = float(cfg.guidance.spatial_weight) > 0 and any(a.source in ("ode", "oracle") for a in arms)
    return any(a.method in FK_METHODS for a in arms) or str(cfg.sampling.zone) == "fk" or spatial


def needs_truth_forecast(oracle_map: bool, arms: list[Any], true_size: float | None) -> bool:
    """Whether the FK forecast needs the :data:`TRUTH_KEY` row: a follow-up (``true_size`` not None; 0 gives an
    empty mask), and the fk-to-truth method or an oracle arm whose map uses the FK forecast (``oracle_map``:
    spatial guidance; in 3D also the FK-filled slices)."""
    wanted = any(a.method == "fk-to-truth" for a in arms) or (oracle_map and any(a.source == "oracle" for a in arms))
    return wanted and true_size is not None


def fk_sizes(cfg: DictConfig, slices: SubjectSlices, targets: Targets, arms: list[Any]) -> dict[str, float]:
    """The sizes (mm^2) one subject's FK forecast is run to, by row name (see :class:`FKPrior`)."""
    spatial = float(cfg.guidance.spatial_weight) > 0
    sizes: dict[str, float] = {}
    if any(a.method == "fk" for a in arms) or (spatial and any(a.source == "ode" for a in arms)):
        sizes.update({target_key(j): float(v) for j, v in enumerate(targets.median)})
    if str(cfg.sampling.zone) == "fk":
        upper = zone_upper(slices, targets)
        if upper is not None:
            sizes["zone"] = upper
    if needs_truth_forecast(spatial, arms, slices.true_area):
        sizes[TRUTH_KEY] = float(slices.true_area)
    return sizes


def fk_prior(plan: Plan, slices: SubjectSlices, sizes: dict[str, float], contrasts: list[str]) -> FKPrior:
    """The subject's FK forecast to ``sizes`` (2D, on the slice or window, at its pixel spacing).

    Tissue: :func:`~tgrowth.growth.estimate_tissue` on the prior slice's contrasts inside the brain
    (:func:`~tgrowth.metrics.foreground`), the prior tumour dilated by :data:`TISSUE_EXCLUDE_MM` left out.
    Calibration: :func:`~tgrowth.growth.calibrate` on ``slices.history`` (the fitted timepoints, restricted to
    ``data.labels``) at their days; with one segmented timepoint (or no growing interval) the documented
    defaults. Forecast: :func:`~tgrowth.growth.forecast_density` from :func:`~tgrowth.growth.initial_density` of
    the prior, every size one row of one batch.
    """
    if list(sizes) and bool(slices.prior_mask.any()) and len(slices.history) != len(plan.fit_timepoints):
        raise TgrowthError(f"subject {plan.subject}: the FK prior needs the fitted timepoints' slices "
                           "(load_slices(..., history=True))")
    segs = [torch.where(tumour_mask(s.seg, slices.labels), s.seg, 0).long() for s in slices.history]
    return fk_forecast(plan, slices.prior.image, slices.prior_mask, segs, tuple(float(v) for v in slices.prior.spacing_mm),
                       sizes, contrasts)


def fk_forecast(plan: Plan, image: torch.Tensor, prior_mask: torch.Tensor, segs: list[torch.Tensor],
                spacing: tuple[float, ...], sizes: dict[str, float], contrasts: list[str]) -> FKPrior:
    """:func:`fk_prior` on any grid, 2D or 3D: ``image [C, *grid]`` the prior scan, ``prior_mask [*grid]`` its
    tumour, ``segs`` the fitted timepoints' labels (restricted to ``data.labels``; the prior last) on the same
    grid, ``spacing`` mm per grid axis, ``sizes`` mm^2 (2D) or mm^3 (3D); a 3D ``image`` is a stack of
    axial slices ``[C, S, H, W]`` (the brain found per slice)."""
    keys = list(sizes)
    shape = tuple(prior_mask.shape)
    brain = brain_of(image) | prior_mask
    empty = FKPrior(sizes, torch.zeros((len(keys),) + shape), torch.zeros((len(keys),) + shape, dtype=torch.bool),
                    torch.zeros(len(keys), dtype=torch.bool), brain)
    if not keys or not bool(prior_mask.any()):
        return empty
    h = spacing
    segs_t = torch.stack(segs)[None]
    days = torch.tensor([[float(t.day) for t in plan.fit_timepoints]], dtype=torch.float64)
    exclude = distance_to(prior_mask[None], h) <= TISSUE_EXCLUDE_MM
    tissue = estimate_tissue(image[None].float(), brain[None], exclude, list(contrasts),
                             subjects=[f"subject {plan.subject}"])
    cal = calibrate(segs_t, days, tissue, h, subjects=[f"subject {plan.subject}"])
    p = cal.params
    state = initial_density(segs_t[:, -1], h, p.lam, tissue, p.grey_white_ratio)
    rows = torch.zeros(len(keys), dtype=torch.long)
    target = torch.tensor([sizes[k] for k in keys], dtype=torch.float32)
    fc = forecast_density(state[rows], tissue.select(rows), p.select(rows), target, h)
    # beyond the density's reach (u = 0), pixels rank by closeness to the prior tumour: the size is always exact
    score = torch.where(fc.density > 0, fc.density, -distance_to(prior_mask[None], h).expand_as(fc.density))
    masks = fk_mask(score, target, h, allowed=brain[None].expand_as(fc.density))
    return FKPrior(sizes, fc.density, masks, fc.reached, brain, cal)


def brain_of(image: torch.Tensor) -> torch.Tensor:
    """The brain of ``[C, H, W]`` (one slice) or ``[C, S, H, W]`` (a stack of slices): any contrast above the
    background (:func:`~tgrowth.metrics.foreground`, per slice)."""
    return foreground(image) if image.dim() == 3 else foreground(image.transpose(0, 1))
