"""Stage 1 of predict, the plan: which subjects, which prior and target scans, which axial slice, and the tumour
areas the growth ODE is fitted to. Data access goes through :class:`~data_modules.longitudinal.LongitudinalDataModule`
(subject selection and splits, the checks of ``tgrowth data-check``, slices in the models' geometry).

``plan_subjects(cfg, dm) -> (selected, plans, skipped)``; ``load_slices(dm, plan, labels) -> SubjectSlices``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig

from data_modules.formats import Subject, Timepoint
from data_modules.geometry import centroid
from data_modules.longitudinal import LongitudinalDataModule
from data_modules.slices import SliceSample
from data_modules.volumes import tumour_mask
from tgrowth.errors import DataError, TgrowthError
from tgrowth.metrics import foreground

__all__ = ["Plan", "SubjectSlices", "plan_subjects", "plan_subject", "load_slices", "subject_seed", "volume_slices"]


@dataclass
class Plan:
    """One subject's prediction: from ``prior`` (its last segmented scan before the target) to ``target`` (a real
    follow-up timepoint; None when predicting ``target_days`` after the prior), on axial slice ``slice_index``;
    the ODE is fitted to ``sizes`` (mm^2 on that slice) at ``fit_timepoints``. With ``volume=true``: ``sizes``
    are tumour volumes (mm^3), ``slices`` the axial indices generated (:func:`volume_slices`) and
    ``slice_index`` the prior's largest-tumour slice (for reference)."""

    subject: str
    prior: Timepoint
    target: Timepoint | None
    fit_timepoints: list[Timepoint]
    target_days: list[float]
    slice_index: int
    sizes: list[float]
    rt: tuple[float | None, float | None]
    seed: int
    slices: list[int] = field(default_factory=list)  # volume=true: the generated axial indices (sizes in mm^3)

    @property
    def multi_day(self) -> bool:
        """True when predicting future days (no real follow-up)."""
        return self.target is None


@dataclass
class SubjectSlices:
    """The prior slice and the real follow-up slice (None without one), in the models' geometry; ``history``:
    the segmented timepoints the ODE is fitted to (``plan.fit_timepoints``, the prior last) on the same slice
    or window, when loaded (``load_slices(..., history=True)``: the FK prior is calibrated on them)."""

    prior: SliceSample
    truth: SliceSample | None
    labels: Any
    history: list[SliceSample] = field(default_factory=list)

    @property
    def pixel_area(self) -> float:
        return float(self.prior.spacing_mm[0] * self.prior.spacing_mm[1])

    @property
    def prior_area(self) -> float:
        return self.prior.area_mm2(self.labels)

    @property
    def true_area(self) -> float | None:
        return self.truth.area_mm2(self.labels) if self.truth is not None and self.truth.seg is not None else None

    @property
    def prior_mask(self) -> torch.Tensor:
        if self.prior.seg is None:
            return torch.zeros(self.prior.image.shape[1:], dtype=torch.bool)
        return tumour_mask(self.prior.seg, self.labels)

    @property
    def truth_mask(self) -> torch.Tensor | None:
        return None if self.truth is None or self.truth.seg is None else tumour_mask(self.truth.seg, self.labels)


def subject_seed(seed: int, subject: str) -> int:
    """Per-subject seed independent of rank, order and which subjects run (reported in info.json)."""
    return (int(seed) * 1_000_003 + zlib.crc32(subject.encode())) % (2**31 - 1)


def plan_subjects(cfg: DictConfig, dm: LongitudinalDataModule) -> tuple[list[Subject], list[Plan], dict[str, str]]:
    """(selected subjects, plans, {subject: why skipped}); ``strict=true`` raises at the first bad subject."""
    selected = dm.selected()
    plans: list[Plan] = []
    skipped: dict[str, str] = {}
    for subj in selected:
        try:
            reasons = dm.problems_of(subj)  # the checks of `tgrowth data-check`
            if reasons:
                raise DataError("; ".join(reasons))
            plans.append(plan_subject(cfg, dm, subj))
        except TgrowthError as exc:
            if cfg.strict:
                raise
            skipped[subj.subject] = str(exc)
    return selected, plans, skipped


def _timepoints(cfg: DictConfig, subj: Subject) -> tuple[Timepoint, Timepoint | None, list[Timepoint]]:
    """(prior, target, the segmented timepoints before the target) of one subject."""
    name, tps = subj.subject, sorted(subj.timepoints, key=lambda t: t.day)
    if list(cfg.target.days):
        with_seg = [t for t in tps if t.seg is not None]
        if not with_seg:
            raise DataError(f"subject {name}: no timepoint has a segmentation; nothing to fit the growth ODE to")
        return with_seg[-1], None, with_seg
    if cfg.target.timepoint is None:
        target = tps[-1]
    else:
        want = str(cfg.target.timepoint)
        match = [t for t in tps if t.timepoint == want
                 or (want.isdigit() and t.timepoint.isdigit() and int(t.timepoint) == int(want))]  # 001 read as 1
        if not match:
            raise DataError(f"subject {name}: no timepoint {want} (has {', '.join(t.timepoint for t in tps)})")
        target = match[0]
    before = [t for t in tps if t.day < target.day and t.seg is not None]
    if not before:
        raise DataError(f"subject {name}: no segmented timepoint before the target timepoint {target.timepoint}; "
                        "nothing to predict from")
    return before[-1], target, before


def _slice_index(cfg: DictConfig, dm: LongitudinalDataModule, name: str, prior: Timepoint,
                 target: Timepoint | None) -> int:
    sl = str(cfg.data.slice)
    if cfg.data.slice_index is not None:
        return int(cfg.data.slice_index)
    if sl == "largest_prior":
        return dm.load_slice(prior, None).slice_index
    if sl == "largest_target":
        if target is None or target.seg is None:
            raise DataError(f"subject {name}: data.slice=largest_target needs a segmented target timepoint")
        return dm.load_slice(target, None).slice_index
    try:
        return int(sl)
    except ValueError:
        raise TgrowthError(f"data.slice must be largest_prior, largest_target or an integer, got {sl!r}") from None


def _visible_from_first(cfg: DictConfig, name: str, index: int, before: list[Timepoint],
                        sizes: list[float]) -> tuple[list[Timepoint], list[float]]:
    """Drop the leading timepoints without tumour on the slice (not visible yet: the ODE normalises sizes by
    the first one), keeping at least ``target.min_timepoints``; otherwise a DataError that says so."""
    lead = next((i for i, a in enumerate(sizes) if a > 0), len(sizes))
    if lead == 0:
        return before, sizes
    n_min = int(cfg.target.min_timepoints)
    if len(sizes) - lead < n_min and not cfg.ode.population_prior:
        raise DataError(f"subject {name}: no tumour on slice {index} at timepoint(s) "
                        f"{', '.join(t.timepoint for t in before[:lead])}, so only {len(sizes) - lead} timepoint(s) "
                        f"with a visible tumour are left to fit the growth ODE (needs {n_min}). Skipped")
    return before[lead:], sizes[lead:]


def plan_subject(cfg: DictConfig, dm: LongitudinalDataModule, subj: Subject) -> Plan:
    """Pick the prior/target timepoints and the slice, and measure the areas the ODE is fitted to."""
    name = subj.subject
    prior, target, before = _timepoints(cfg, subj)
    n_min = int(cfg.target.min_timepoints)
    if len(before) < n_min and not cfg.ode.population_prior:
        tp_list = ", ".join(t.timepoint for t in before)
        where = f"before the target timepoint {target.timepoint}" if target is not None else "with a segmentation"
        raise DataError(f"subject {name}: only {len(before)} usable timepoint(s) ({tp_list}) {where}; the growth ODE "
                        f"needs at least {n_min}. Skipped (set ode.population_prior=true for a prior-only forecast)")
    slices: list[int] = []
    if cfg.volume:
        index, slices, sizes = _volume_plan(cfg, dm, name, prior, before)
    else:
        index = _slice_index(cfg, dm, name, prior, target)
        sizes = [dm.load_slice(t, index).area_mm2(cfg.data.labels) for t in before]
    before, sizes = _visible_from_first(cfg, name, index, before, sizes)
    days = list(cfg.target.days)
    target_days = [float(prior.day) + float(d) for d in days] if days else [float(target.day)]
    return Plan(name, prior, target, before, target_days, index, sizes, (subj.rt_start_day, subj.rt_end_day),
                subject_seed(cfg.seed, name), slices)


def volume_slices(areas_mm2, margin: int) -> list[int]:
    """The axial indices generated with ``volume=true``: from the first to the last slice with tumour
    (``areas_mm2 > 0``, per axial slice), widened by ``margin`` slices each side, inside the volume (contiguous,
    so the slices stack into a regular 3D grid); empty without tumour."""
    hit = [i for i, a in enumerate(areas_mm2) if a > 0]
    if not hit:
        return []
    return list(range(max(0, hit[0] - int(margin)), min(len(areas_mm2), hit[-1] + int(margin) + 1)))


def _volume_plan(cfg: DictConfig, dm: LongitudinalDataModule, name: str, prior: Timepoint,
                 before: list[Timepoint]) -> tuple[int, list[int], list[float]]:
    """(the prior's largest-tumour slice, the generated slices, the tumour volumes (mm^3) of ``before``)."""
    sizes = {s.timepoint: s for s in dm.sizes(name)}
    ps = sizes[prior.timepoint]
    slices = volume_slices(ps.areas_mm2, int(cfg.volume_margin_slices) + int(cfg.volume_fill_slices))
    if not slices:
        raise DataError(f"subject {name}: no tumour on the prior scan {prior.timepoint} "
                        f"({cfg.data.labels} labels); volume=true generates the slices that hold it")
    return int(ps.max_area_slice), slices, [float(sizes[t.timepoint].volume_mm3) for t in before]


def load_slices(dm: LongitudinalDataModule, plan: Plan, labels: Any, history: bool = False) -> SubjectSlices:
    """The prior and (when there is one) the real follow-up slice at the plan's slice index; with
    ``data.resize=window`` both are the window centred on the PRIOR's tumour (known at prediction time; the
    brain's centre without one), at the scan's own pixel spacing. ``history=True`` also loads the fitted
    timepoints (``plan.fit_timepoints``) in the same geometry (the same window)."""
    prior = dm.load_slice(plan.prior, plan.slice_index)
    truth = dm.load_slice(plan.target, plan.slice_index) if plan.target is not None else None
    earlier = [dm.load_slice(t, plan.slice_index) for t in plan.fit_timepoints if t is not plan.prior] if history else []
    if dm.prep.resize == "window":
        mask = tumour_mask(prior.seg, labels) if prior.seg is not None else None
        center = (centroid(mask) if mask is not None else None) or centroid(foreground(prior.image))
        size = dm.prep.image_size
        prior = prior.window(center, size)
        truth = truth.window(center, size) if truth is not None else None
        earlier = [e.window(center, size) for e in earlier]
    return SubjectSlices(prior, truth, labels, earlier + [prior] if history else [])
