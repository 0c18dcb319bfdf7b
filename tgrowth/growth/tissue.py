"""White matter, grey matter and CSF from the scan itself: a 3-class Gaussian mixture, batched over subjects.

``estimate_tissue(images, brain_mask, exclude_mask, contrasts) -> TissueMaps`` (``wm``, ``gm``, ``csf``
probabilities ``[B, ...]``, summing to 1 inside the brain and 0 outside). No atlas, pure torch, 2D or 3D.

1. Contrasts: the t1n, t2w and t2f channels that are given (any non-empty subset; t1c is skipped: its
   enhancement is not a tissue contrast). Each channel is standardised per subject on the fitted voxels
   (brain minus ``exclude_mask``) to ``z = (x - median) / IQR`` and clipped to ``[-6, 6]``.
2. Fit: a 3-class Gaussian mixture with full covariances, EM (``n_iter`` iterations, covariances
   regularised by ``1e-3 I``; the first half of the iterations with spherical covariances, which keeps
   one wide class from covering both GM and WM), on the brain voxels outside ``exclude_mask`` (the tumour, e.g. the
   dilated segmentation: its oedema is bright on T2/FLAIR and dark on T1 and would pass for CSF). The
   start is a split of a T1-likeness score ``mean(z_t1n, -z_t2w)`` (``z_t2f`` alone when only FLAIR is
   given) at its 15th and 55th percentiles.
3. Labels: classes ordered by T1 mean (CSF < GM < WM); without t1n by T2w mean (CSF > GM > WM); with
   FLAIR alone CSF is the darkest class and WM the darker of the other two.
4. Outside ``exclude_mask`` the maps are the mixture posteriors. Inside it (within the brain) the
   WM:GM proportions are filled in from the surrounding posteriors layer by layer, inwards
   (:func:`tgrowth.growth.geometry.inward_fill`), and CSF is 0: the tumour occupies parenchyma (it grew
   in and spreads through white and grey matter), and its own intensities say nothing about the tissue
   it replaced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tgrowth.errors import TgrowthError
from tgrowth.growth.fk import spatial_ndim
from tgrowth.growth.geometry import inward_fill

#: contrasts that carry tissue contrast, and how T1-like each is (sign of its WM - CSF difference);
#: FLAIR is darkest in CSF but puts GM above WM, so it only starts the fit when it is alone
TISSUE_CONTRASTS = {"t1n": 1.0, "t2w": -1.0, "t2f": 0.0}
#: contrasts accepted and skipped
SKIPPED_CONTRASTS = ("t1c",)
#: start of the fit: fractions of the fitted voxels in the CSF / GM start classes (the rest WM)
START_SPLIT = (0.15, 0.55)


@dataclass
class TissueMaps:
    """Tissue probabilities ``[B, ...]`` (2D or 3D): white matter, grey matter, CSF; all 0 outside the brain."""

    wm: torch.Tensor
    gm: torch.Tensor
    csf: torch.Tensor

    @property
    def brain(self) -> torch.Tensor:
        return (self.wm + self.gm + self.csf) > 0

    def parenchyma(self) -> torch.Tensor:
        """Brain voxels with more tissue than fluid (``p_csf < 0.5``): where the tumour can live and move."""
        return self.brain & (self.csf < 0.5)

    def labels(self) -> torch.Tensor:
        """Hard labels ``[B, ...]`` (int64): 0 outside the brain, 1 CSF, 2 GM, 3 WM (argmax)."""
        lab = torch.stack([self.csf, self.gm, self.wm], 0).argmax(0) + 1
        return torch.where(self.brain, lab, torch.zeros_like(lab))

    def select(self, idx: torch.Tensor | list[int]) -> TissueMaps:
        return TissueMaps(self.wm[idx], self.gm[idx], self.csf[idx])

    def to(self, device: torch.device | str) -> TissueMaps:
        return TissueMaps(self.wm.to(device), self.gm.to(device), self.csf.to(device))


def _masked_quantiles(x: torch.Tensor, keep: torch.Tensor, qs: Sequence[float]) -> torch.Tensor:
    """Per-row quantiles (lower order statistic) of ``x [R, N]`` over ``keep [R, N]`` -> ``[R, len(qs)]``."""
    srt = torch.where(keep, x, torch.full_like(x, math.inf)).sort(dim=1).values
    n = keep.sum(1).clamp_min(1)
    idx = torch.stack([((n - 1).to(torch.float64) * q).floor().long() for q in qs], 1)
    return srt.gather(1, idx)


def _log_gauss(x: torch.Tensor, outer: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """``log N(x | mu_k, cov_k)`` up to a constant, ``[B, N, K]``, from ``x [B, N, C]``, ``outer = x x^T [B, N, C*C]``.

    Expanded as ``x^T P x - 2 (P mu)^T x + mu^T P mu`` (``P = cov^-1``) so that it is three matrix products.
    """
    bsz, k, c = mu.shape
    prec = torch.linalg.inv(cov)  # [B, K, C, C]
    pmu = (prec @ mu[..., None])[..., 0]  # [B, K, C]
    const = (pmu * mu).sum(-1) + torch.logdet(cov)  # [B, K]
    maha = outer @ prec.reshape(bsz, k, c * c).transpose(1, 2) - 2.0 * (x @ pmu.transpose(1, 2))
    return -0.5 * (maha + const[:, None, :])


def _m_step(x: torch.Tensor, outer: torch.Tensor, resp: torch.Tensor, reg: float,
            spherical: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixing weights, means and covariances from (already masked) responsibilities ``resp [B, N, K]``."""
    bsz, _, c = x.shape
    k = resp.shape[-1]
    nk = resp.sum(1).clamp_min(1e-6)  # [B, K]
    mu = (resp.transpose(1, 2) @ x) / nk[..., None]  # [B, K, C]
    second = (resp.transpose(1, 2) @ outer).reshape(bsz, k, c, c) / nk[..., None, None]
    cov = second - mu[..., :, None] * mu[..., None, :]
    eye = torch.eye(c, dtype=x.dtype, device=x.device)
    if spherical:
        cov = eye * cov.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]
    return nk / nk.sum(1, keepdim=True), mu, cov + reg * eye


def estimate_tissue(
    images: torch.Tensor,
    brain_mask: torch.Tensor,
    exclude_mask: torch.Tensor | None,
    contrasts: Sequence[str],
    n_iter: int = 40,
    reg: float = 1e-3,
    subjects: Sequence[str] | None = None,
) -> TissueMaps:
    """WM / GM / CSF probability maps from a scan's contrasts (see the module docstring for the method).

    ``images [B, C, ...]`` (C channels named by ``contrasts``, 2 or 3 spatial axes; any intensity scale),
    ``brain_mask [B, ...]`` (bool), ``exclude_mask [B, ...]`` (bool, e.g. the dilated tumour segmentation;
    None: nothing excluded). ``subjects`` (optional) names the subjects in error messages.
    """
    use, brain, excl = _check_inputs(images, brain_mask, exclude_mask, contrasts, subjects)
    used = [str(contrasts[i]) for i in use]
    bsz = images.shape[0]
    spatial = tuple(images.shape[2:])
    fit = brain & ~excl
    x, keep, valid, order = _standardised_voxels(images, use, brain, fit)
    post, mu = _fit_mixture(x, keep, valid, used, n_iter, reg)
    cls = _class_order(mu, used)
    ordered = post.gather(2, cls[:, None, :].expand(-1, post.shape[1], -1))  # [B, M, 3]: csf, gm, wm
    full = torch.zeros((bsz, brain[0].numel(), 3), dtype=x.dtype, device=x.device)
    full.scatter_(1, order[..., None].expand(-1, -1, 3), ordered)  # padding rows write zeros to non-brain voxels
    maps = full.transpose(1, 2).reshape((bsz, 3) + spatial) * brain[:, None]

    region = brain & excl
    if bool(region.any()):
        maps = _fill_excluded(maps, fit, region)
    csf, gm, wm = maps.unbind(1)
    return TissueMaps(wm.contiguous(), gm.contiguous(), csf.contiguous())


def _check_inputs(images: torch.Tensor, brain_mask: torch.Tensor, exclude_mask: torch.Tensor | None,
                  contrasts: Sequence[str], subjects: Sequence[str] | None) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """(the tissue channels used, the brain mask, the excluded mask), or TgrowthError naming what is wrong."""
    if images.dim() < 4:
        raise TgrowthError(f"estimate_tissue: images must be [B, C, H, W] or [B, C, X, Y, Z], got shape {tuple(images.shape)}")
    names = [str(c) for c in contrasts]
    if len(names) != images.shape[1]:
        raise TgrowthError(f"estimate_tissue: {len(names)} contrast names {names} for {images.shape[1]} image channels")
    unknown = [c for c in names if c not in TISSUE_CONTRASTS and c not in SKIPPED_CONTRASTS]
    if unknown:
        raise TgrowthError(f"estimate_tissue: unknown contrast(s) {unknown}; expected some of t1n, t1c, t2w, t2f")
    use = [i for i, c in enumerate(names) if c in TISSUE_CONTRASTS]
    if not use:
        raise TgrowthError(f"estimate_tissue: needs at least one of t1n, t2w, t2f; got {names}")
    bsz = images.shape[0]
    spatial = tuple(images.shape[2:])
    spatial_ndim(images[:, 0], "images")
    brain = brain_mask.bool()
    if tuple(brain.shape) != (bsz,) + spatial:
        raise TgrowthError(f"estimate_tissue: brain_mask shape {tuple(brain.shape)} does not match the images {(bsz,) + spatial}")
    excl = torch.zeros_like(brain) if exclude_mask is None else exclude_mask.bool()
    if tuple(excl.shape) != tuple(brain.shape):
        raise TgrowthError(f"estimate_tissue: exclude_mask shape {tuple(excl.shape)} does not match the images {(bsz,) + spatial}")
    n_fit = (brain & ~excl).flatten(1).sum(1)
    for b in range(bsz):
        if int(n_fit[b]) < 30:
            who = subjects[b] if subjects is not None else f"subject {b}"
            raise TgrowthError(f"estimate_tissue: {who} has only {int(n_fit[b])} brain voxels outside the excluded region (need >= 30)")
    return use, brain, excl


def _standardised_voxels(images: torch.Tensor, use: list[int], brain: torch.Tensor,
                         fit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each subject's brain voxels packed to the front, standardised per channel on the fitted voxels.

    Returns ``x [B, M, C]`` (robust z-scores clipped to [-6, 6]), ``keep [B, M]`` (fitted voxels), ``valid [B, M]``
    (brain voxels, not padding) and ``order [B, M]`` (their flat voxel indices)."""
    # the brain voxels of each subject, packed to the front (padding has weight 0)
    bsz, c = images.shape[0], len(use)
    n_brain = brain.flatten(1).sum(1)
    m = int(n_brain.max())
    order = torch.argsort((~brain.flatten(1)).to(torch.uint8), dim=1, stable=True)[:, :m]  # [B, M]
    valid = torch.arange(m, device=order.device)[None] < n_brain[:, None]
    x = images[:, use].to(torch.float32).flatten(2).transpose(1, 2)  # [B, N, C]
    x = x.gather(1, order[..., None].expand(-1, -1, c))  # [B, M, C]
    keep = fit.flatten(1).gather(1, order) & valid  # fitted voxels
    q = _masked_quantiles(x.transpose(1, 2).reshape(bsz * c, -1), keep.repeat_interleave(c, 0), (0.25, 0.5, 0.75))
    q = q.reshape(bsz, c, 3)
    scale = (q[..., 2] - q[..., 0]).clamp_min(1e-6)
    x = ((x - q[:, None, :, 1]) / scale[:, None, :]).clamp(-6.0, 6.0)
    return x, keep, valid, order


def _fit_mixture(x: torch.Tensor, keep: torch.Tensor, valid: torch.Tensor, used: list[str], n_iter: int,
                 reg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """EM of the 3-class mixture on the fitted voxels: (posteriors ``[B, M, K]`` of every brain voxel, means ``[B, K, C]``)."""
    bsz, m, c = x.shape
    # start: split a T1-likeness score at its START_SPLIT percentiles (CSF, GM, WM)
    signs = torch.tensor([TISSUE_CONTRASTS[n] for n in used], dtype=x.dtype, device=x.device)
    if bool((signs != 0).any()):
        score = (x * signs).sum(-1) / float((signs != 0).sum())
    else:  # FLAIR alone: CSF darkest
        score = x[..., 0]
    cut = _masked_quantiles(score, keep, START_SPLIT)  # [B, 2]
    start = torch.stack([score <= cut[:, :1], (score > cut[:, :1]) & (score <= cut[:, 1:]), score > cut[:, 1:]], -1)
    w = keep.to(x.dtype)[..., None]
    resp = start.to(x.dtype) * w
    outer = (x[..., :, None] * x[..., None, :]).reshape(bsz, m, c * c)
    # EM: spherical covariances first (a full-covariance start can lock one wide class over GM and WM), then full
    for it in range(n_iter):
        pi, mu, cov = _m_step(x, outer, resp, reg, spherical=it < n_iter // 2)
        logp = _log_gauss(x, outer, mu, cov) + torch.log(pi)[:, None, :]
        resp = torch.softmax(logp, -1) * w
    post = torch.softmax(logp, -1) * valid[..., None]  # [B, M, K]: every brain voxel
    return post, mu


def _class_order(mu: torch.Tensor, used: list[str]) -> torch.Tensor:
    """The (csf, gm, wm) class indices per subject ``[B, 3]``, from the class means of the used contrasts."""
    if "t1n" in used:
        return mu[..., used.index("t1n")].argsort(-1)  # ascending T1: CSF, GM, WM
    if "t2w" in used:
        return (-mu[..., used.index("t2w")]).argsort(-1)  # descending T2: CSF, GM, WM
    flair = mu[..., used.index("t2f")]
    asc = flair.argsort(-1)  # CSF darkest, then WM, then GM
    return torch.stack([asc[:, 0], asc[:, 2], asc[:, 1]], -1)


def _fill_excluded(maps: torch.Tensor, fit: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``maps [B, 3, ...]`` (csf, gm, wm) with CSF 0 in the excluded brain ``region`` and GM:WM filled in from around it."""
    filled = inward_fill(maps[:, 1:], fit, region)  # gm, wm from the surroundings
    tot = filled.sum(1, keepdim=True)
    even = torch.full_like(filled, 0.5)
    frac = torch.where(tot > 1e-3, filled / tot.clamp_min(1e-3), even)  # among CSF only: half and half
    inside = region[:, None]
    return torch.cat([torch.where(region[:, None], torch.zeros_like(maps[:, :1]), maps[:, :1]),
                      torch.where(inside, frac, maps[:, 1:])], 1)
