"""Mask geometry in mm, batched or single, 2D or 3D: distances, growing a mask to a size, the change zone, inward fills.

Torch (scipy's exact EDT on the CPU), spacing-aware. Growing the prior tumour along its signed distance is also the
honest geometric baseline of a growth prediction (no images, no learning): a method that synthesises
follow-up images must beat it to be worth its cost.

* :func:`signed_distance`: the signed Euclidean distance to a mask's boundary in mm (negative inside),
  spacing-aware, 2D or 3D.
* :func:`change_zone`: where anatomy-preserving sampling may change the image: the prior tumour dilated by a
  distance (mm) inside a region, with a soft edge; returns the ``keep`` weight (1 = keep the prior).
* :func:`grow_to_area`: the prior tumour mask grown (or shrunk) along its signed distance, restricted to a
  region (the brain), until it holds exactly the requested area (volume in 3D): the ``k`` voxels of the
  region with the smallest signed distance, ``k = round(target / voxel size)``. Growing adds a shell of
  equal distance around the tumour; shrinking peels the outermost voxels first. Ties (equal distances) are
  broken by voxel index, so the result is deterministic. An empty prior cannot be grown: the result is
  empty (there is nothing to say where a tumour would appear).

In ``tgrowth predict`` (``methods``): ``grow-to-target`` grows the prior to the ODE's target area,
``grow-to-truth`` to the true follow-up area (an oracle: what geometry alone achieves with a perfect size).

* :func:`enclosed_free`: the tumour-free voxels a mask encloses (its holes: on the phantom, CSF spaces the tumour
  surrounds but cannot infiltrate); ``sampling.keep_prior_holes`` keeps them tumour-free in every forecast.
* :func:`connected_to`: a probability map kept only on the connected parts of its support that touch a mask (the
  prior tumour; ``sampling.map_connected``): the growth models forecast one front grown from the prior tumour,
  so a part of the map apart from it is the segmenter's false positive on the prior's anatomy.
* :func:`distance_to`, :func:`size_mask`, :func:`inward_fill`: the batched torch primitives (``[B, ...]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from tgrowth.errors import TgrowthError
from tgrowth.growth.fk import as_spacing, spatial_ndim


def _min_plus_axis(f2: torch.Tensor, axis: int, h: float, chunk_elems: int = 1 << 24) -> torch.Tensor:
    """``out[i] = min_j f2[j] + (h (i - j))^2`` along ``axis`` (exact, as a batched min over all pairs, in chunks of lines)."""
    x = f2.movedim(axis, -1)
    shape = x.shape
    n = shape[-1]
    lines = x.reshape(-1, n)
    idx = torch.arange(n, device=f2.device, dtype=f2.dtype)
    cost = ((idx[:, None] - idx[None, :]) * h) ** 2  # [i, j]
    out = torch.empty_like(lines)
    step = max(1, chunk_elems // (n * n))
    for s in range(0, lines.shape[0], step):
        out[s : s + step] = (lines[s : s + step, None, :] + cost[None]).amin(-1)
    return out.reshape(shape).movedim(-1, axis)


def distance_to(mask: torch.Tensor, spacing: float | Sequence[float]) -> torch.Tensor:
    """Euclidean distance (mm) from every voxel centre to the nearest voxel of ``mask [B, ...]`` (0 on the mask).

    Exact, anisotropic, 2D or 3D; a subject with an empty mask gets ``inf`` everywhere. On the CPU:
    ``scipy.ndimage.distance_transform_edt`` per subject; on other devices: the same squared distance as a
    separable min-plus convolution with ``(h_a k)^2`` along one axis after the other (Felzenszwalb &
    Huttenlocher 2012), written as a batched all-pairs minimum per grid line (``O(N n)`` work).
    """
    nd = spatial_ndim(mask, "mask")
    h = as_spacing(spacing, nd)
    if mask.device.type == "cpu":
        return _distance_scipy(mask, h)
    return _distance_minplus(mask, h)


def _distance_scipy(mask: torch.Tensor, h: Sequence[float]) -> torch.Tensor:
    m = mask.bool().numpy()
    out = np.full(m.shape, np.inf, dtype=np.float32)
    for b in range(m.shape[0]):  # a C routine per subject (the EDT has no batch axis)
        if m[b].any():
            out[b] = ndimage.distance_transform_edt(~m[b], sampling=h)
    return torch.from_numpy(out)


def _distance_minplus(mask: torch.Tensor, h: Sequence[float]) -> torch.Tensor:
    f2 = torch.where(mask.bool(), 0.0, math.inf).to(torch.float32)
    for axis in range(1, mask.dim()):
        f2 = _min_plus_axis(f2, axis, h[axis - 1])
    return f2.sqrt()


def inward_fill(values: torch.Tensor, known: torch.Tensor, region: torch.Tensor, max_iter: int | None = None) -> torch.Tensor:
    """Fill ``values [B, K, ...]`` inside ``region [B, ...]`` from the ``known`` voxels around it, layer by layer.

    Each pass gives every region voxel that touches a known (or already filled) voxel the mean of those
    neighbours (``3^n`` box), so the fill moves inwards from the region's border like a nearest-neighbour
    interpolation. Region voxels that no known voxel reaches keep their input value.
    """
    nd = spatial_ndim(known, "known")
    pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
    m = known.bool()
    todo = region.bool() & ~m
    v = values * m[:, None]
    mf = m[:, None].to(values.dtype)
    out = values.clone()
    limit = max_iter if max_iter is not None else sum(known.shape[1:])
    for _ in range(limit):
        if not bool(todo.any()):
            break
        sv = pool(v, 3, stride=1, padding=1)
        sm = pool(mf, 3, stride=1, padding=1)
        new = todo & (sm[:, 0] > 0)
        if not bool(new.any()):
            break
        filled = sv / sm.clamp_min(1e-12)
        v = torch.where(new[:, None], filled, v)
        out = torch.where(new[:, None], filled, out)
        mf = torch.where(new[:, None], torch.ones_like(mf), mf)
        todo = todo & ~new
    return out


def size_mask(score: torch.Tensor, target_size: torch.Tensor | float | Sequence[float], spacing: float | Sequence[float],
              allowed: torch.Tensor | None = None, name: str = "size_mask") -> torch.Tensor:
    """The ``n = round(target_size / voxel volume)`` highest-scoring voxels of each subject: a bool mask of exactly
    that size (the one "grow a mask to a size" rule of the project).

    ``score [B, ...]``; ``target_size`` [B] (or one value) in mm^3 (3D) or mm^2 (2D). Ties are broken by voxel
    index, so the result is deterministic; ``allowed`` (optional bool ``[B, ...]``) restricts the choice and
    ``n`` is capped at the number of allowed voxels. Used with the FK density (:func:`tgrowth.growth.fk_mask`)
    and with minus the signed distance to the prior tumour (:func:`grow_to_area`).
    """
    nd = spatial_ndim(score, "score")
    h = as_spacing(spacing, nd)
    bsz = score.shape[0]
    vv = float(math.prod(h))
    target = torch.as_tensor(target_size, dtype=torch.float64, device=score.device).reshape(-1).expand(bsz)
    if not bool(torch.isfinite(target).all()) or bool((target < 0).any()):
        raise TgrowthError(f"{name}: target sizes must be finite and >= 0, got {target.tolist()}")
    n = torch.round(target / vv).long()
    s = score.flatten(1).to(torch.float32)
    if allowed is not None:
        ok = allowed.flatten(1).bool()
        s = torch.where(ok, s, torch.full_like(s, -math.inf))
        n = torch.minimum(n, ok.sum(1))
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand(bsz, -1).contiguous())
    return (rank < n[:, None]).reshape(score.shape)


def signed_distance(mask, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Distance in mm from each voxel to the mask's boundary: > 0 outside, <= 0 inside (2D or 3D).

    Outside voxels get the distance between voxel centres to the nearest mask voxel, inside voxels minus the
    distance to the nearest background voxel (so a mask voxel on the boundary is at minus one spacing). An
    empty mask gives +inf everywhere.
    """
    m = torch.as_tensor(np.asarray(mask).astype(bool))
    sp = tuple(1.0 for _ in range(m.dim())) if spacing is None else tuple(float(s) for s in spacing)
    if len(sp) != m.dim():
        raise ValueError(f"spacing has {len(sp)} values for a {m.dim()}-D mask")
    if not bool(m.any()):
        return np.full(tuple(m.shape), np.inf)
    both = distance_to(torch.stack([m, ~m]), sp).double().numpy()  # [outside distance, inside distance]
    return np.where(m.numpy(), -both[1], both[0])


def grow_to_area(prior_mask, target: float, spacing: Sequence[float] | None = None, region=None) -> np.ndarray:
    """The prior mask grown or shrunk along its signed distance to exactly ``round(target / voxel)`` voxels.

    Args:
        prior_mask: the prior tumour mask ``[H, W]`` or ``[D, H, W]``.
        target: the area (mm^2) or volume (mm^3) to reach, in the units of ``spacing``.
        spacing: voxel size per axis in mm (default 1).
        region: where the tumour may be (e.g. the brain mask); the prior's own voxels always count.
            Default: everywhere. When the region has fewer voxels than asked, all of it is returned.
    """
    m = np.asarray(prior_mask).astype(bool)
    sp = np.ones(m.ndim) if spacing is None else np.asarray(spacing, dtype=float)
    if sp.shape != (m.ndim,):
        raise ValueError(f"spacing has {sp.size} values for a {m.ndim}-D mask")
    if not np.isfinite(target) or target < 0:
        raise ValueError(f"target must be a finite size >= 0, got {target!r}")
    if not m.any():
        return np.zeros(m.shape, dtype=bool)
    allowed = np.ones(m.shape, bool) if region is None else (np.asarray(region).astype(bool) | m)
    score = -torch.from_numpy(signed_distance(m, sp))[None]
    return size_mask(score, float(target), tuple(sp), torch.from_numpy(allowed)[None], name="grow_to_area")[0].numpy()


def radial_growth_mm(area_from: float, area_to: float, ndim: int = 2) -> float:
    """How far (mm) the boundary of a disc (ball in 3D) of size ``area_from`` moves to reach ``area_to``
    (mm^2 or mm^3); 0 when it shrinks."""
    if ndim == 2:
        r = lambda a: np.sqrt(max(a, 0.0) / np.pi)  # noqa: E731
    else:
        r = lambda a: np.cbrt(3.0 * max(a, 0.0) / (4.0 * np.pi))  # noqa: E731
    return float(max(0.0, r(area_to) - r(area_from)))


def enclosed_free(mask) -> np.ndarray:
    """The voxels outside ``mask`` that it encloses, 2D or 3D: the background components (face-connected) that do
    not reach the array's border."""
    m = np.asarray(mask).astype(bool)
    return ndimage.binary_fill_holes(m) & ~m


def change_zone(prior_mask, distance_mm: float, spacing: Sequence[float] | None = None, region=None,
                edge_mm: float = 0.0) -> np.ndarray:
    """The ``keep`` weight of anatomy-preserving sampling: 0 in the change zone, 1 where the prior is kept.

    The zone is every voxel within ``distance_mm`` of the prior tumour (its signed distance <= distance_mm,
    so the tumour itself is inside it), restricted to ``region`` (e.g. the brain; outside it the prior is
    kept). ``edge_mm`` > 0 blends linearly from 0 to 1 over that width outside the zone. An empty prior
    tumour gives no zone (keep everywhere).
    """
    m = np.asarray(prior_mask).astype(bool)
    if not np.isfinite(distance_mm) or distance_mm < 0 or edge_mm < 0:
        raise ValueError(f"distance_mm and edge_mm must be >= 0, got {distance_mm!r}, {edge_mm!r}")
    sd = signed_distance(m, spacing)
    keep = np.clip((sd - distance_mm) / edge_mm, 0.0, 1.0) if edge_mm > 0 else (sd > distance_mm).astype(float)
    if region is not None:
        keep = np.where(np.asarray(region).astype(bool) | m, keep, 1.0)
    return keep


def connected_to(prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``prob`` (any shape, 2D or 3D) set to 0 on every face-connected component of its support (``prob > 0``)
    that neither overlaps ``mask`` nor has a face neighbour in it; the rest unchanged. Independent of any map
    threshold (the support is ``prob > 0``). An empty ``mask`` keeps nothing."""
    p = torch.as_tensor(prob)
    m = torch.as_tensor(mask).bool()
    if p.shape != m.shape:
        raise ValueError(f"prob {tuple(p.shape)} and mask {tuple(m.shape)} must have the same shape")
    support = (p > 0).cpu().numpy()
    labels, n = ndimage.label(support)
    if n == 0:
        return p.clone()
    near = ndimage.binary_dilation(m.cpu().numpy()) & support
    touching = np.zeros(n + 1, dtype=bool)
    touching[np.unique(labels[near])] = True
    touching[0] = False
    keep = torch.from_numpy(touching[labels]).to(p.device)
    return torch.where(keep, p, torch.zeros_like(p))
