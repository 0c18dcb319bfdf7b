"""The patient Fisher-Kolmogorov model: a spatial prior for where a tumour grows, batched over subjects.

Pipeline (docs/growth-prior.md has the formulas):

1. :func:`tgrowth.growth.tissue.estimate_tissue` -> :class:`~tgrowth.growth.tissue.TissueMaps` from the scan;
   :func:`mobility` -> ``m(x) = 1[parenchyma] (p_wm + r p_gm)`` with ``r = D_grey / D_white``, so
   ``D(x) = D_white m(x)`` (no flux into CSF or outside the brain).
2. :func:`initial_density`: the tumour-cell density implied by a BraTS segmentation (labels 1 necrotic
   core, 2 oedema, 3 enhancing): thresholding it at :data:`VISIBLE_THRESHOLD` gives back the whole
   tumour and at :data:`CORE_THRESHOLD` the tumour core; an exponential tail of length
   ``lambda = sqrt(D_white / rho)`` (the FK infiltration length) continues it outside the visible tumour.
3. :func:`calibrate`: per subject, ``lambda`` (a grid, one simulation per grid value, batched as rows) and
   ``rho`` (read off the same simulations through the time scaling ``tau = rho t``) that best reproduce
   the later segmentations from the earlier ones; defaults where fewer than two segmented timepoints
   (or no growing interval) exist.
4. :func:`forecast_density`: the FK model run forward in scaled time until the visible size equals a given
   target size (the growth ODE is the size clock, the FK model gives the shape); :func:`fk_mask` thresholds
   a density at exactly a target size.

Time scaling: with ``tau = rho t`` the FK equation ``du/dt = div(D grad u) + rho u (1 - u)`` becomes
``du/dtau = div(lambda^2 m grad u) + u (1 - u)``: the sequence of shapes depends only on ``lambda`` and the
tissue; ``rho`` only sets how fast it is traversed. Everything here runs in ``tau``. Pure torch, CPU or GPU;
every subject's result is independent of the batch it is in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tgrowth.errors import TgrowthError
from tgrowth.growth.fk import (
    VISIBLE_THRESHOLD,
    as_spacing,
    face_coefficients,
    fk_step,
    spatial_ndim,
)
from tgrowth.growth.geometry import distance_to, size_mask
from tgrowth.growth.tissue import TissueMaps

#: density above which the tumour core (necrotic + enhancing) shows
CORE_THRESHOLD = 0.6
#: density deep inside the tumour core of a segmentation
CORE_DENSITY = 0.8
#: BraTS labels of the whole tumour and of the tumour core
WHOLE_TUMOUR_LABELS = (1, 2, 3)
CORE_LABELS = (1, 3)
#: defaults where no calibration is possible (the centre of the phantom's ranges; D_grey / D_white = 0.2
#: as in Swanson et al. 2000, D_white = 5 D_grey): lambda = 2.3 mm, front speed 0.10 mm/day (37 mm/year)
DEFAULT_D_WHITE = 0.12  # mm^2/day
DEFAULT_RHO = 0.022  # 1/day
DEFAULT_GREY_WHITE_RATIO = 0.2
#: calibration grids: infiltration length lambda (mm, log-spaced) and proliferation rho (1/day, log-spaced)
DEFAULT_LAMBDAS = (1.0, 16.0, 9)
DEFAULT_RHOS = (0.002, 0.2, 241)
#: a forecast stops as unreachable after this much scaled time without visible growth (e^10-fold growth time)
STALL_TAU = 10.0
#: largest scaled step (rho dt): explicit Euler then under-estimates the growth rate by < 2.5 %
MAX_TAU_STEP = 0.05


# --------------------------------------------------------------------------- parameters
@dataclass
class FKParams:
    """Per-subject FK parameters ``[B]``: ``d_white`` (mm^2/day), ``rho`` (1/day), ``grey_white_ratio``."""

    d_white: torch.Tensor
    rho: torch.Tensor
    grey_white_ratio: torch.Tensor

    @property
    def lam(self) -> torch.Tensor:
        """Infiltration length in white matter ``sqrt(D_white / rho)`` (mm)."""
        return torch.sqrt(self.d_white / self.rho)

    @property
    def speed(self) -> torch.Tensor:
        """Asymptotic front speed in white matter ``2 sqrt(D_white rho)`` (mm/day)."""
        return 2.0 * torch.sqrt(self.d_white * self.rho)

    @classmethod
    def make(cls, d_white, rho, grey_white_ratio=DEFAULT_GREY_WHITE_RATIO, batch: int | None = None,
             device: torch.device | str | None = None) -> FKParams:
        """From floats or ``[B]`` tensors (floats are repeated over ``batch`` subjects)."""
        vals = [torch.as_tensor(v, dtype=torch.float32, device=device).reshape(-1) for v in (d_white, rho, grey_white_ratio)]
        n = batch if batch is not None else max(v.numel() for v in vals)
        out = []
        for name, v in zip(("d_white", "rho", "grey_white_ratio"), vals):
            if v.numel() not in (1, n):
                raise TgrowthError(f"FKParams: {name} has {v.numel()} values for {n} subjects")
            if not bool((v > 0).all()):
                raise TgrowthError(f"FKParams: {name} must be positive, got {v.tolist()}")
            out.append(v.expand(n).clone())
        return cls(*out)

    @classmethod
    def defaults(cls, batch: int, device: torch.device | str | None = None) -> FKParams:
        return cls.make(DEFAULT_D_WHITE, DEFAULT_RHO, DEFAULT_GREY_WHITE_RATIO, batch, device)

    def select(self, idx) -> FKParams:
        return FKParams(self.d_white[idx], self.rho[idx], self.grey_white_ratio[idx])


def mobility(tissue: TissueMaps, grey_white_ratio: torch.Tensor | float) -> torch.Tensor:
    """``m = 1[p_csf < 0.5] (p_wm + r p_gm)`` ``[B, ...]``: ``D(x) = D_white m(x)``; 0 in CSF and outside the brain."""
    bsz = tissue.wm.shape[0]
    col = (bsz,) + (1,) * (tissue.wm.dim() - 1)
    r = torch.as_tensor(grey_white_ratio, dtype=torch.float32, device=tissue.wm.device).reshape(-1).expand(bsz).reshape(col)
    return (tissue.wm + r * tissue.gm) * tissue.parenchyma()


# --------------------------------------------------------------------------- segmentation -> density
@dataclass
class _SegGeometry:
    """Distances (mm) that the label -> density mapping needs, for a batch of segmentations."""

    whole: torch.Tensor  # bool: whole tumour
    core: torch.Tensor  # bool: tumour core
    depth: torch.Tensor  # inside the whole tumour: distance to the nearest voxel outside it
    to_whole: torch.Tensor  # outside: distance to the nearest whole-tumour voxel (inf: none)
    core_depth: torch.Tensor  # inside the core: distance to the nearest non-core voxel
    to_core: torch.Tensor  # distance to the nearest core voxel (inf: no core)
    has_core: torch.Tensor  # [B] bool


def _seg_geometry(seg: torch.Tensor, spacing: Sequence[float]) -> _SegGeometry:
    whole = torch.zeros(seg.shape, dtype=torch.bool, device=seg.device)
    for lab in WHOLE_TUMOUR_LABELS:
        whole |= seg == lab
    core = torch.zeros_like(whole)
    for lab in CORE_LABELS:
        core |= seg == lab
    return _SegGeometry(whole, core, distance_to(~whole, spacing), distance_to(whole, spacing),
                        distance_to(~core, spacing), distance_to(core, spacing), core.flatten(1).any(1))


def _density_from_geometry(g: _SegGeometry, lam: torch.Tensor, mob: torch.Tensor | None) -> torch.Tensor:
    """The mapping of :func:`initial_density`; ``lam [B]`` (broadcast against the geometry's batch), ``mob``
    the mobility (None: 1 everywhere)."""
    col = (-1,) + (1,) * (g.whole.dim() - 1)
    lam = lam.reshape(col)
    lam_tail = lam if mob is None else lam * mob.sqrt()
    tv, tc, uc = VISIBLE_THRESHOLD, CORE_THRESHOLD, CORE_DENSITY
    core = tc + (uc - tc) * (1.0 - torch.exp(-g.core_depth / lam))
    s_core = g.depth / (g.depth + g.to_core)  # in (0, 1) where a core exists (inf distance -> 0: replaced below)
    s_none = 1.0 - torch.exp(-g.depth / lam)
    s = torch.where(g.has_core.reshape(col), s_core, s_none)
    oedema = tv + (tc - tv) * s
    tail = torch.where(lam_tail > 0, tv * torch.exp(-g.to_whole / lam_tail.clamp_min(1e-6)), torch.zeros_like(g.to_whole))
    u = torch.where(g.core, core, torch.where(g.whole, oedema, tail))
    return u.masked_fill(u < 1e-9, 0.0).to(torch.float32)


def initial_density(seg: torch.Tensor, spacing: float | Sequence[float], lam: torch.Tensor | float,
                    tissue: TissueMaps | None = None,
                    grey_white_ratio: torch.Tensor | float = DEFAULT_GREY_WHITE_RATIO) -> torch.Tensor:
    """Tumour-cell density ``[B, ...]`` implied by BraTS labels ``seg [B, ...]`` (2D or 3D).

    With ``theta_v`` = :data:`VISIBLE_THRESHOLD` (0.2), ``theta_c`` = :data:`CORE_THRESHOLD` (0.6),
    ``u_c`` = :data:`CORE_DENSITY` (0.8), ``lambda`` [mm] (per subject) and Euclidean distances (mm):

    - core (labels 1, 3), at depth ``a`` (distance to the nearest non-core voxel):
      ``u = theta_c + (u_c - theta_c)(1 - exp(-a / lambda))``, in ``(theta_c, u_c)``;
    - oedema (label 2), at depth ``a`` in the whole tumour and distance ``c`` to the core:
      ``u = theta_v + (theta_c - theta_v) a / (a + c)``; without a core ``theta_v + (theta_c - theta_v)(1 - exp(-a / lambda))``;
    - outside, at distance ``e`` from the whole tumour: ``u = theta_v exp(-e / (lambda sqrt(m)))`` with the
      local :func:`mobility` ``m`` of ``tissue`` (the FK leading edge decays over ``sqrt(D / rho)``: ``lambda``
      in white matter, ``lambda sqrt(r)`` in grey matter, no tail in CSF or outside the brain); ``m = 1``
      without ``tissue``; below 1e-9 set to 0.

    So ``u > theta_v`` is exactly the whole tumour and ``u > theta_c`` exactly the core, and ``u`` rises
    monotonically inwards (no ties that would make :func:`fk_mask` arbitrary).
    """
    nd = spatial_ndim(seg, "seg")
    h = as_spacing(spacing, nd)
    lam_t = torch.as_tensor(lam, dtype=torch.float32, device=seg.device).reshape(-1).expand(seg.shape[0])
    if not bool((lam_t > 0).all()):
        raise TgrowthError(f"initial_density: lambda must be positive mm, got {lam_t.tolist()}")
    mob = None if tissue is None else mobility(tissue, grey_white_ratio)
    return _density_from_geometry(_seg_geometry(seg, h), lam_t, mob)


# --------------------------------------------------------------------------- scaled-time stepping
def _scaled_dt(lam: torch.Tensor, spacing: Sequence[float], safety: float) -> torch.Tensor:
    """Stable ``tau`` step per row: ``min(safety / (2 lambda^2 sum_a h_a^-2), MAX_TAU_STEP)`` (``m <= 1``)."""
    inv = sum(1.0 / s**2 for s in spacing)
    return torch.clamp(safety / (2.0 * lam**2 * inv), max=MAX_TAU_STEP)


class _Rows:
    """Rows stepping the scaled FK equation together; finished rows are dropped (compaction)."""

    def __init__(self, u: torch.Tensor, mob: torch.Tensor, lam: torch.Tensor, spacing: Sequence[float], safety: float):
        self.nd = u.dim() - 1
        self.col = (-1,) + (1,) * self.nd
        self.u = u
        self.faces = face_coefficients(lam.reshape(self.col) ** 2 * mob, spacing)
        self.dt = _scaled_dt(lam, spacing, safety)
        self.ids = torch.arange(u.shape[0], device=u.device)
        self.extra: dict[str, torch.Tensor] = {}

    def step(self) -> torch.Tensor:
        dt = self.dt.reshape(self.col)
        self.u = fk_step(self.u, self.faces, dt, dt)
        return self.u

    def keep(self, mask: torch.Tensor) -> None:
        idx = torch.nonzero(mask).flatten()
        self.u = self.u[idx]
        self.faces = [f[idx] for f in self.faces]
        self.dt = self.dt[idx]
        self.ids = self.ids[idx]
        self.extra = {k: v[idx] for k, v in self.extra.items()}


def _count(mask: torch.Tensor) -> torch.Tensor:
    return mask.flatten(1).sum(1)


# --------------------------------------------------------------------------- forecast
@dataclass
class Forecast:
    """``density [B, ...]``; ``size`` [B] (mm^3 or mm^2) of its visible region (``density > 0.2``: the target to
    a voxel where reached, the current size where shrinking);
    ``tau`` [B] scaled time run (``rho t``); ``days`` [B] = ``tau / rho``, the FK model's own time to the target
    (for comparison with the size clock); ``reached`` [B]; ``shrink`` [B] (target below the current size:
    no simulation, the density is the input)."""

    density: torch.Tensor
    size: torch.Tensor
    tau: torch.Tensor
    days: torch.Tensor
    reached: torch.Tensor
    shrink: torch.Tensor


def forecast_density(state: torch.Tensor, tissue: TissueMaps, params: FKParams,
                     target_size: torch.Tensor | float | Sequence[float], spacing: float | Sequence[float],
                     max_tau: float = 60.0, safety: float = 0.8) -> Forecast:
    """Run the FK model from the density ``state [B, ...]`` until its visible size equals ``target_size``.

    ``target_size`` [B]: mm^3 for 3D volumes, mm^2 for 2D slices (size of ``density > VISIBLE_THRESHOLD``).
    Growth: steps of ``du/dtau = div(lambda^2 m grad u) + u (1 - u)``; at the step where the visible size
    first reaches the target, the density is interpolated linearly over that step, ``u = u_k + w (u_{k+1} - u_k)``,
    with ``w`` just past the fraction at which the ``n``-th voxel crosses the threshold (``n`` = target / voxel
    volume, rounded): the visible size of the result is the target to a voxel.
    Shrinking (target <= current size): no simulation; the returned density is ``state`` and
    :func:`fk_mask` then keeps its densest voxels, i.e. the tumour recedes along the FK density ordering
    (infiltrated margin first, core last). A target not reached within ``max_tau``, or with no visible
    growth for ``STALL_TAU`` (e.g. larger than the reachable parenchyma), returns the last density with
    ``reached = False``; so does an empty ``state`` (nothing to grow from).
    """
    nd = spatial_ndim(state, "state")
    h = as_spacing(spacing, nd)
    bsz = state.shape[0]
    dev = state.device
    vv = float(math.prod(h))
    target = torch.as_tensor(target_size, dtype=torch.float32, device=dev).reshape(-1).expand(bsz).clone()
    if not bool(torch.isfinite(target).all()) or bool((target < 0).any()):
        raise TgrowthError(f"forecast_density: target sizes must be finite and >= 0, got {target.tolist()}")
    if tuple(tissue.wm.shape) != tuple(state.shape):
        raise TgrowthError(f"forecast_density: tissue shape {tuple(tissue.wm.shape)} differs from the state {tuple(state.shape)}")
    mob = mobility(tissue, params.grey_white_ratio.to(dev))
    u0 = state.to(torch.float32)
    size0 = _count(u0 > VISIBLE_THRESHOLD).to(torch.float32) * vv
    shrink = target <= size0
    out = u0.clone()
    tau = torch.zeros(bsz, device=dev)
    reached = shrink.clone()
    size = size0.clone()
    empty = u0.flatten(1).amax(1) <= 0  # no tumour: nothing can grow
    grow = torch.nonzero(~shrink & ~empty).flatten()
    if grow.numel():
        rows = _Rows(u0[grow], mob[grow], params.lam.to(dev)[grow], h, safety)
        zero = torch.zeros(grow.numel(), device=dev)
        rows.extra = {"target": target[grow], "size": size0[grow], "tau": zero, "grew_at": zero.clone()}
        while rows.ids.numel():
            prev = rows.u
            cur = rows.step()
            s_prev = rows.extra["size"]
            s_cur = _count(cur > VISIBLE_THRESHOLD).to(torch.float32) * vv
            tau_prev = rows.extra["tau"]
            tau_cur = tau_prev + rows.dt
            rows.extra["grew_at"] = torch.where(s_cur > s_prev, tau_cur, rows.extra["grew_at"])
            hit = s_cur >= rows.extra["target"]
            # unreachable: past max_tau, or no visible growth for STALL_TAU (the reachable tissue is full)
            over = ~hit & ((tau_cur >= max_tau) | (tau_cur - rows.extra["grew_at"] >= STALL_TAU))
            done = hit | over
            if bool(done.any()):
                idx = torch.nonzero(done).flatten()
                p, c = prev[idx], cur[idx]
                # the step fraction w at which the n-th voxel (n = target / voxel volume) crosses theta_v, with
                # u(w) = p + w (c - p) linear in w over the step: the visible size then is the target to a voxel
                need = torch.round(rows.extra["target"][idx] / vv) - torch.round(s_prev[idx] / vv)  # voxels still to cross
                cross = (p <= VISIBLE_THRESHOLD) & (c > VISIBLE_THRESHOLD)
                w_vox = torch.where(cross, (VISIBLE_THRESHOLD - p) / (c - p).clamp_min(1e-12), torch.full_like(p, math.inf))
                srt = w_vox.flatten(1).sort(1).values
                k = need.clamp(min=1).long().clamp(max=srt.shape[1]) - 1
                w_n = srt.gather(1, k[:, None])[:, 0]
                w = torch.where(hit[idx], w_n.clamp(0.0, 1.0), torch.ones_like(w_n))
                col = (-1,) + (1,) * nd
                dens = p + w.reshape(col) * (c - p)
                # the voxels that cross by w: on the visible side of theta_v despite rounding
                crossed = (w_vox <= w_n.reshape(col)) & hit[idx].reshape(col)
                above = torch.nextafter(torch.tensor(VISIBLE_THRESHOLD, dtype=dens.dtype, device=dev), torch.tensor(1.0, dtype=dens.dtype, device=dev))
                dens = torch.where(crossed, torch.maximum(dens, above), dens)
                sub = grow[rows.ids[idx]]
                out[sub] = dens
                tau[sub] = (tau_prev[idx] + w * rows.dt[idx])
                reached[sub] = hit[idx]
                size[sub] = _count(dens > VISIBLE_THRESHOLD).to(torch.float32) * vv
            rows.extra["size"] = s_cur
            rows.extra["tau"] = tau_cur
            if bool(done.any()):
                rows.keep(~done)
    days = tau / params.rho.to(dev)
    return Forecast(out, size, tau, days, reached, shrink)


def fk_mask(density: torch.Tensor, target_size: torch.Tensor | float | Sequence[float], spacing: float | Sequence[float],
            allowed: torch.Tensor | None = None) -> torch.Tensor:
    """The ``n = round(target_size / voxel volume)`` densest voxels of each subject: a bool mask of exactly that size.

    ``density [B, ...]``; ``target_size`` [B] in mm^3 (3D) or mm^2 (2D). :func:`tgrowth.growth.geometry.size_mask`
    ranked by density (ties by voxel index); ``allowed`` (optional bool ``[B, ...]``) restricts the choice.
    """
    return size_mask(density, target_size, spacing, allowed, name="fk_mask")


# --------------------------------------------------------------------------- calibration
@dataclass
class Calibration:
    """Per-subject result of :func:`calibrate` (``[B]`` tensors).

    ``params``: fitted (or default) parameters; ``calibrated``: fitted from >= 1 growing interval;
    ``n_intervals``: intervals (start, target) used; ``score``: the objective at the optimum, the mean over the intervals of
    the Dice score (whole tumour, averaged with the core's where both ends have one: in [0, 1]);
    ``at_bound``: the best ``lambda`` or ``rho`` lies on the edge of its grid (widen the grid).
    """

    params: FKParams
    calibrated: torch.Tensor
    n_intervals: torch.Tensor
    score: torch.Tensor
    at_bound: torch.Tensor


def _grid(spec: tuple[float, float, int] | Sequence[float] | torch.Tensor, name: str, device) -> torch.Tensor:
    if isinstance(spec, tuple) and len(spec) == 3 and isinstance(spec[2], int):
        lo, hi, n = spec
        if not 0 < lo < hi or n < 2:
            raise TgrowthError(f"calibrate: {name} grid (low, high, n) must have 0 < low < high and n >= 2, got {spec}")
        return torch.logspace(math.log10(lo), math.log10(hi), n, device=device)
    g = torch.as_tensor(spec, dtype=torch.float32, device=device).reshape(-1)
    if g.numel() < 2 or not bool((g > 0).all()) or not bool((g[1:] > g[:-1]).all()):
        raise TgrowthError(f"calibrate: {name} grid must have >= 2 positive increasing values, got {g.tolist()}")
    return g


@dataclass
class _Runs:
    """Growing runs of a batch: a start segmentation and up to K later (target) ones, one entry per run."""

    subject: torch.Tensor  # [I] subject index
    geo: _SegGeometry  # of the start segmentation
    mob: torch.Tensor  # [I, ...] mobility
    gap: torch.Tensor  # [I, K] days from the start (0 where no target)
    valid: torch.Tensor  # [I, K] bool
    whole: torch.Tensor  # [I, K, ...] whole tumour of each target
    core: torch.Tensor  # [I, K, ...] core of each target
    use_core: torch.Tensor  # [I, K] the start and the target both have a core


def _labels_in(seg: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
    out = torch.zeros(seg.shape, dtype=torch.bool, device=seg.device)
    for lab in labels:
        out |= seg == lab
    return out


def _crop_runs(runs: _Runs, union: torch.Tensor, spacing: Sequence[float], margin_mm: float) -> _Runs:
    """Each run cut to the box around ``union [I, ...]`` grown by ``margin_mm``, padded to the largest box.

    Padding is inert (no tumour, mobility 0, distance to the tumour inf: no density, no flux), so a run
    gives the same numbers in any batch.
    """
    n_run = union.shape[0]
    nd = union.dim() - 1
    boxes = []
    for i in range(n_run):
        box = []
        for axis in range(nd):
            hit = torch.nonzero(union[i].any(dim=tuple(a for a in range(nd) if a != axis))).flatten()
            m = int(math.ceil(margin_mm / spacing[axis]))
            lo, hi = max(int(hit[0]) - m, 0), min(int(hit[-1]) + m + 1, union.shape[axis + 1])
            box.append(slice(lo, hi))
        boxes.append(tuple(box))
    size = tuple(max(b[a].stop - b[a].start for b in boxes) for a in range(nd))

    def crop(t: torch.Tensor, fill, lead: int = 1) -> torch.Tensor:
        out = torch.full(t.shape[:lead] + size, fill, dtype=t.dtype, device=t.device)
        for i, box in enumerate(boxes):
            dst = (i,) + (slice(None),) * (lead - 1) + tuple(slice(0, b.stop - b.start) for b in box)
            out[dst] = t[(i,) + (slice(None),) * (lead - 1) + box]
        return out

    g = runs.geo
    geo = _SegGeometry(crop(g.whole, False), crop(g.core, False), crop(g.depth, 0.0), crop(g.to_whole, math.inf),
                       crop(g.core_depth, 0.0), crop(g.to_core, math.inf), g.has_core)
    return _Runs(runs.subject, geo, crop(runs.mob, 0.0), runs.gap, runs.valid, crop(runs.whole, False, 2),
                 crop(runs.core, False, 2), runs.use_core)


def _run_scores(runs: _Runs, lam: torch.Tensor, rho_grid: torch.Tensor, spacing: Sequence[float],
                overshoot: float, safety: float) -> torch.Tensor:
    """Score of every (run, lambda, target, rho): ``lam [I, L]`` -> ``[I, L, K, Q]`` (see :func:`calibrate`)."""
    n_run, n_lam = lam.shape
    dev = lam.device
    row_run = torch.arange(n_run, device=dev).repeat_interleave(n_lam)
    row_lam = lam.reshape(-1)
    g = runs.geo
    geo = _SegGeometry(g.whole[row_run], g.core[row_run], g.depth[row_run], g.to_whole[row_run],
                       g.core_depth[row_run], g.to_core[row_run], g.has_core[row_run])
    mob = runs.mob[row_run]
    rows = _Rows(_density_from_geometry(geo, row_lam, mob), mob, row_lam, spacing, safety)
    n_rows = row_run.numel()
    n_k = runs.gap.shape[1]
    # score every `stride` steps: about every h_min / (6 lambda) of tau (the front moves ~ h/3 in between)
    stride = torch.clamp(torch.floor(min(spacing) / (6.0 * row_lam * rows.dt)), min=1).long()
    dt_rec = rows.dt * stride  # tau between two trace entries
    n_whole = _count(runs.whole.flatten(0, 1)).reshape(n_run, n_k)
    biggest = torch.where(runs.valid, n_whole, torch.zeros_like(n_whole)).amax(1)
    rows.extra = {
        "whole": runs.whole[row_run], "core": runs.core[row_run],
        "n_whole": n_whole[row_run], "n_core": _count(runs.core.flatten(0, 1)).reshape(n_run, n_k)[row_run],
        "use_core": runs.use_core[row_run], "biggest": biggest[row_run].to(torch.float32),
        "tau_max": rho_grid[-1] * runs.gap.amax(1)[row_run],
        "tau": torch.zeros(n_rows, device=dev), "stride": stride,
    }
    trace = torch.full((n_rows, n_k, 64), math.nan, device=dev)
    n_rec = torch.ones(n_rows, dtype=torch.long, device=dev)  # trace entries written
    stopped_over = torch.zeros(n_rows, dtype=torch.bool, device=dev)

    def score(u: torch.Tensor, ex: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        vis = u > VISIBLE_THRESHOLD
        nv = _count(vis)
        inter = (vis[:, None] & ex["whole"]).flatten(2).sum(2)
        d_wt = 2.0 * inter / (nv[:, None] + ex["n_whole"]).clamp_min(1)
        core = u > CORE_THRESHOLD
        inter_c = (core[:, None] & ex["core"]).flatten(2).sum(2)
        d_tc = 2.0 * inter_c / (_count(core)[:, None] + ex["n_core"]).clamp_min(1)
        return torch.where(ex["use_core"], 0.5 * (d_wt + d_tc), d_wt).to(torch.float32), nv

    trace[:, :, 0] = score(rows.u, rows.extra)[0]
    step = 0
    while rows.ids.numel():
        rows.step()
        step += 1
        rows.extra["tau"] = rows.extra["tau"] + rows.dt
        due = (step % rows.extra["stride"]) == 0
        if not bool(due.any()):
            continue
        idx = torch.nonzero(due).flatten()
        ex = {k: v[idx] for k, v in rows.extra.items()}
        s, nv = score(rows.u[idx], ex)
        ids = rows.ids[idx]
        k = step // ex["stride"]
        while int(k.max()) >= trace.shape[2]:
            trace = torch.cat([trace, torch.full_like(trace, math.nan)], 2)
        trace[ids, :, k] = s
        n_rec[ids] = k + 1
        over = nv.to(torch.float32) > overshoot * ex["biggest"]
        done_due = over | (ex["tau"] >= ex["tau_max"])
        if bool(done_due.any()):
            stopped_over[ids[done_due]] = over[done_due]
            done = torch.zeros_like(due)
            done[idx[done_due]] = True
            rows.keep(~done)

    # read each trace at tau = rho * gap (linear interpolation); past an overshoot stop the score is 0
    pos = (runs.gap[row_run][:, :, None] * rho_grid) / dt_rec[:, None, None]  # [R, K, Q]
    i0 = pos.floor().long()
    frac = pos - i0
    last = (n_rec - 1)[:, None, None]
    a = trace.gather(2, torch.minimum(i0, last))
    b = trace.gather(2, torch.minimum(i0 + 1, last))
    val = torch.where(i0 + 1 <= last, a + frac * (b - a), a)
    beyond = pos > last.to(pos.dtype) + 1e-6
    val = torch.where(beyond & stopped_over[:, None, None], torch.zeros_like(val), val)
    val = val * runs.valid[row_run][:, :, None]
    return val.reshape(n_run, n_lam, n_k, -1)


def _best(obj: torch.Tensor, lam: torch.Tensor, rho_grid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Optimum of ``obj [B, L, Q]`` over per-subject ``lam [B, L]`` and ``rho_grid [Q]``.

    Returns (lambda, rho, score, lambda index, rho index): lambda refined by a parabola in log lambda through
    the best point and its neighbours, rho interpolated in log towards the neighbour's best rho.
    """
    bsz, n_lam, n_q = obj.shape
    ar = torch.arange(bsz, device=obj.device)
    best = obj.flatten(1).argmax(1)
    li, qi = best // n_q, best % n_q
    per_lam = obj.max(2)
    f, q_of_l = per_lam.values, per_lam.indices  # [B, L]
    log_lam, log_rho = torch.log(lam), torch.log(rho_grid)
    lam_fit, rho_fit = lam[ar, li], rho_grid[qi]
    inner = (li > 0) & (li < n_lam - 1)
    if n_lam >= 3:
        lo, hi = (li - 1).clamp(min=0), (li + 1).clamp(max=n_lam - 1)
        fm, f0, fp = f[ar, lo], f[ar, li], f[ar, hi]
        curv = fm - 2.0 * f0 + fp
        delta = torch.where(curv < 0, 0.5 * (fm - fp) / curv.clamp(max=-1e-12), torch.zeros_like(f0)).clamp(-0.5, 0.5)
        nb = torch.where(delta >= 0, hi, lo)
        lam_ref = torch.exp(log_lam[ar, li] + delta.abs() * (log_lam[ar, nb] - log_lam[ar, li]))
        rho_ref = torch.exp(log_rho[qi] + delta.abs() * (log_rho[q_of_l[ar, nb]] - log_rho[qi]))
        lam_fit = torch.where(inner, lam_ref, lam_fit)
        rho_fit = torch.where(inner, rho_ref, rho_fit)
    return lam_fit, rho_fit, obj.flatten(1).max(1).values, li, qi


def calibrate(
    segs: torch.Tensor,
    days: torch.Tensor,
    tissue: TissueMaps,
    spacing: float | Sequence[float],
    valid: torch.Tensor | None = None,
    grey_white_ratio: float | torch.Tensor = DEFAULT_GREY_WHITE_RATIO,
    lambdas: tuple[float, float, int] | Sequence[float] = DEFAULT_LAMBDAS,
    rhos: tuple[float, float, int] | Sequence[float] = DEFAULT_RHOS,
    refine: int = 7,
    crop_margin_mm: float | None = 30.0,
    min_growth: float = 0.05,
    overshoot: float = 1.5,
    safety: float = 0.8,
    subjects: Sequence[str] | None = None,
) -> Calibration:
    """Fit ``D_white`` and ``rho`` (``D_grey = grey_white_ratio D_white`` fixed) to each subject's segmentations.

    ``segs [B, T, ...]`` BraTS labels of T co-registered timepoints on one grid (2D or 3D), ``days [B, T]``,
    ``valid [B, T]`` (optional: which timepoints exist), ``tissue``: the subject's maps on the same grid.

    Growing runs: the valid timepoints in day order are cut into runs in which each whole tumour is more
    than ``min_growth`` (relative) larger than the previous one (a shrinking step, e.g. the RT response,
    ends a run: this FK model has no treatment; an empty segmentation cannot start one). A run with >= 2
    timepoints is a start ``s`` and targets ``j`` (intervals ``(s, j)``). For each run and each ``lambda`` of
    the grid (rows of one batch) the scaled model runs from :func:`initial_density` of ``seg_s`` and scores
    its states (at ``tau_k``) against every target: ``Dice(u > theta_v, WT_j)``, averaged with
    ``Dice(u > theta_c, TC_j)`` where start and target have a core. A row stops once its visible size
    passes ``overshoot`` x the largest target's (later scores count 0) or ``tau = rho_max max_j (t_j - t_s)``.
    For every ``rho`` of the grid an interval's score is its trace read at ``tau = rho (t_j - t_s)``; the
    subject's objective is the mean over its intervals, maximised over the (lambda, rho) grid. A second
    pass repeats this on ``refine`` lambdas spanning the best coarse value's neighbours; ``lambda`` is then
    refined by a parabola (in log lambda) and ``rho`` interpolated to match. ``D_white = rho lambda^2``.
    Subjects without an interval get :data:`DEFAULT_D_WHITE`, :data:`DEFAULT_RHO` (``calibrated`` False).

    Speed: each run is simulated in the box around its tumours (start and targets) grown by
    ``crop_margin_mm`` (None: the whole grid), a no-flux boundary there; the runs of a batch are padded to
    the largest box with inert voxels (``D = 0``, ``u = 0``), so a subject's result does not depend on its
    batch.
    """
    if segs.dim() < 4:
        raise TgrowthError(f"calibrate: segs must be [B, T, H, W] or [B, T, X, Y, Z], got shape {tuple(segs.shape)}")
    bsz, n_t = segs.shape[:2]
    spatial = tuple(segs.shape[2:])
    h = as_spacing(spacing, len(spatial))
    dev = segs.device
    names = list(subjects) if subjects is not None else [f"subject {b}" for b in range(bsz)]
    days_t = torch.as_tensor(days, dtype=torch.float64).reshape(bsz, n_t).cpu()
    valid_t = torch.ones(bsz, n_t, dtype=torch.bool) if valid is None else torch.as_tensor(valid).bool().reshape(bsz, n_t).cpu()
    if tuple(tissue.wm.shape) != (bsz,) + spatial:
        raise TgrowthError(f"calibrate: tissue shape {tuple(tissue.wm.shape)} does not match the segmentations {(bsz,) + spatial}")
    lam_grid = _grid(lambdas, "lambda", dev)
    rho_grid = _grid(rhos, "rho", dev)
    ratio = torch.as_tensor(grey_white_ratio, dtype=torch.float32, device=dev).reshape(-1).expand(bsz).clone()

    whole_vox = _count(_labels_in(segs.flatten(0, 1), WHOLE_TUMOUR_LABELS)).reshape(bsz, n_t).cpu()
    found: list[tuple[int, list[int]]] = []  # subject, timepoints of a growing run (first = start)
    for b in range(bsz):
        tps = sorted((t for t in range(n_t) if bool(valid_t[b, t])), key=lambda t: float(days_t[b, t]))
        for i, j in zip(tps, tps[1:]):
            if float(days_t[b, j]) == float(days_t[b, i]):
                raise TgrowthError(f"calibrate: {names[b]}: timepoints {i} and {j} are on the same day {float(days_t[b, i])}")
        run: list[int] = []
        for t in tps:
            grows = bool(run) and whole_vox[b, t] > (1.0 + min_growth) * whole_vox[b, run[-1]]
            if grows:
                run.append(t)
                continue
            if len(run) >= 2:
                found.append((b, run))
            run = [t] if whole_vox[b, t] > 0 else []
        if len(run) >= 2:
            found.append((b, run))

    params = FKParams.defaults(bsz, dev)
    params.grey_white_ratio = ratio
    zeros = torch.zeros(bsz, device=dev)
    if not found:
        return Calibration(params, zeros.bool(), zeros.long(), zeros, zeros.bool())
    n_k = max(len(r) - 1 for _, r in found)
    sb = torch.tensor([b for b, _ in found], device=dev)
    start = segs[sb, torch.tensor([r[0] for _, r in found], device=dev)]
    tgt_idx = torch.tensor([r[1:] + [r[-1]] * (n_k + 1 - len(r)) for _, r in found], device=dev)  # [I, K] (padded)
    tgt_valid = torch.tensor([[k < len(r) - 1 for k in range(n_k)] for _, r in found], device=dev)
    gaps = torch.tensor([[float(days_t[b, t] - days_t[b, r[0]]) for t in r[1:]] + [0.0] * (n_k + 1 - len(r))
                         for b, r in found], dtype=torch.float32, device=dev)
    ends = segs[sb[:, None], tgt_idx]  # [I, K, ...]
    geo = _seg_geometry(start, h)  # on the full grid: cropping below leaves these distances exact
    end_whole, end_core = _labels_in(ends, WHOLE_TUMOUR_LABELS), _labels_in(ends, CORE_LABELS)
    runs = _Runs(sb, geo, mobility(tissue, ratio)[sb], gaps, tgt_valid, end_whole, end_core,
                 geo.has_core[:, None] & end_core.flatten(2).any(2))
    if crop_margin_mm is not None:
        runs = _crop_runs(runs, geo.whole | end_whole.any(1), h, crop_margin_mm)
    counts = torch.zeros(bsz, dtype=torch.long, device=dev).index_add_(0, sb, tgt_valid.sum(1))
    has = counts > 0

    def objective(lam_b: torch.Tensor) -> torch.Tensor:  # [B, L] lambdas -> [B, L, Q] mean score over intervals
        val = _run_scores(runs, lam_b[sb], rho_grid, h, overshoot, safety).sum(2)  # [I, L, Q]
        total = torch.zeros((bsz,) + tuple(val.shape[1:]), device=dev).index_add_(0, sb, val)
        return total / counts.clamp_min(1)[:, None, None].to(total.dtype)

    lam_b = lam_grid[None].expand(bsz, -1)
    lam_fit, rho_fit, score, li, qi = _best(objective(lam_b), lam_b, rho_grid)
    n_lam = lam_grid.numel()
    at_bound = (li == 0) | (li == n_lam - 1)
    if refine >= 3:
        lo = torch.log(lam_grid[(li - 1).clamp(min=0)])
        hi = torch.log(lam_grid[(li + 1).clamp(max=n_lam - 1)])
        frac = torch.linspace(0.0, 1.0, refine, device=dev)
        lam_b = torch.exp(lo[:, None] + frac[None] * (hi - lo)[:, None])
        lam_fit, rho_fit, score, _, qi = _best(objective(lam_b), lam_b, rho_grid)
    at_bound = has & (at_bound | (qi == 0) | (qi == rho_grid.numel() - 1))
    params.d_white = torch.where(has, rho_fit * lam_fit**2, params.d_white)
    params.rho = torch.where(has, rho_fit, params.rho)
    return Calibration(params, has, counts, torch.where(has, score, zeros), at_bound)
