"""Voxel-grid geometry for the growth prior: distance transforms and inward fills, batched, 2D or 3D, pure torch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

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
