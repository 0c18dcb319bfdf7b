"""Which axial slices of a volume become samples: tumour slices (all or the largest), extra indices, healthy slices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from data_modules.volumes import axial_index, largest_tumour_slice, tumour_mask
from tgrowth.errors import DataError

__all__ = ["TUMOUR_SLICES", "select_slices"]

TUMOUR_SLICES = ("all", "largest", "none")


def select_slices(seg: np.ndarray | None, brain: np.ndarray, tumour: str = "all", indices: Sequence[int] = (),
                  healthy: int = 0, min_tumour_pixels: int = 1, min_brain_fraction: float = 0.1,
                  labels: Any = "whole") -> list[int]:
    """Axial slice indices (last axis) of one volume, sorted and unique.

    ``tumour``: ``all`` (every slice with >= ``min_tumour_pixels`` pixels of ``labels``), ``largest`` (the
    largest-tumour slice) or ``none``; ``indices`` are added as given (negative from the top); ``healthy``
    slices have no tumour of any label and >= ``min_brain_fraction`` brain, evenly spaced among those.
    Volumes with one slice (2D inputs) always give ``[0]``.
    """
    nz = brain.shape[-1]
    if nz == 1:
        return [0]
    if tumour not in TUMOUR_SLICES:
        raise DataError(f"slices.tumour must be all, largest or none, not {tumour!r}")
    chosen = {axial_index(i, nz) for i in indices}
    if seg is None:
        if tumour != "none" or healthy:
            raise DataError("slice selection needs a segmentation (tumour or healthy slices were asked for)")
        return sorted(chosen)
    counts = tumour_mask(seg, labels).sum(axis=(0, 1))
    if tumour == "all":
        chosen.update(np.flatnonzero(counts >= max(1, min_tumour_pixels)).tolist())
    elif tumour == "largest":
        k = largest_tumour_slice(seg, labels)
        if k is not None and counts[k] >= max(1, min_tumour_pixels):
            chosen.add(k)
    if healthy > 0:
        any_tumour = (seg > 0).sum(axis=(0, 1))
        frac = brain.sum(axis=(0, 1)) / float(brain.shape[0] * brain.shape[1])
        cand = np.flatnonzero((any_tumour == 0) & (frac >= min_brain_fraction))
        if len(cand):
            n = min(int(healthy), len(cand))
            pos = np.unique(np.round(np.linspace(0, len(cand) - 1, n + 2)[1:-1] if n < len(cand) else np.arange(len(cand))).astype(int))
            chosen.update(cand[pos].tolist())
    return sorted(int(c) for c in chosen)
