"""Mask geometry in mm: signed distances, growing a tumour to a size, the change zone of anatomy-preserving sampling.

Pure numpy + scipy, 2D or 3D, spacing-aware. Growing the prior tumour along its signed distance is also the
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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["signed_distance", "grow_to_area", "change_zone", "radial_growth_mm"]


def signed_distance(mask, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Distance in mm from each voxel to the mask's boundary: > 0 outside, <= 0 inside (2D or 3D).

    Outside voxels get the distance between voxel centres to the nearest mask voxel, inside voxels minus the
    distance to the nearest background voxel (so a mask voxel on the boundary is at minus one spacing). An
    empty mask gives +inf everywhere.
    """
    m = np.asarray(mask).astype(bool)
    sp = None if spacing is None else tuple(float(s) for s in spacing)
    if not m.any():
        return np.full(m.shape, np.inf)
    outside = ndimage.distance_transform_edt(~m, sampling=sp)
    inside = ndimage.distance_transform_edt(m, sampling=sp) if not m.all() else np.full(m.shape, np.inf)
    return np.where(m, -inside, outside)


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
    out = np.zeros(m.shape, dtype=bool)
    if not m.any():
        return out
    allowed = m.copy() if region is None else (np.asarray(region).astype(bool) | m)
    if region is None:
        allowed[...] = True
    k = int(round(float(target) / float(np.prod(sp))))
    sd = signed_distance(m, sp)[allowed]
    k = min(k, sd.size)
    if k == 0:
        return out
    order = np.argsort(sd, kind="stable")[:k]
    flat = np.flatnonzero(allowed.ravel())[order]
    out.ravel()[flat] = True
    return out


def radial_growth_mm(area_from: float, area_to: float, ndim: int = 2) -> float:
    """How far (mm) the boundary of a disc (ball in 3D) of size ``area_from`` moves to reach ``area_to``
    (mm^2 or mm^3); 0 when it shrinks."""
    if ndim == 2:
        r = lambda a: np.sqrt(max(a, 0.0) / np.pi)  # noqa: E731
    else:
        r = lambda a: np.cbrt(3.0 * max(a, 0.0) / (4.0 * np.pi))  # noqa: E731
    return float(max(0.0, r(area_to) - r(area_from)))


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
