"""Intensity normalisation: brain mask, per-contrast percentiles over the whole volume's brain, scale to [-1, 1].

Per contrast, intensities are clipped at the ``lower`` / ``upper`` percentiles of the brain voxels of the whole
3D volume and scaled to [-1, 1] inside the brain; the background is -1.
"""

from __future__ import annotations

import numpy as np

from data_modules.volumes import Volume
from tgrowth.errors import DataError

__all__ = ["BRAIN_MASKS", "brain_mask", "intensity_stats", "normalise", "volume_brain"]

BRAIN_MASKS = ("nonzero", "otsu")


def brain_mask(images: np.ndarray, method: str = "nonzero") -> np.ndarray:
    """``images [C, ...]`` -> boolean brain mask ``[...]``."""
    if method == "nonzero":
        return np.any(images != 0, axis=0)
    if method == "otsu":
        from skimage.filters import threshold_otsu  # optional (scikit-image): otsu only

        mean = images.mean(axis=0)
        if float(mean.max()) == float(mean.min()):
            return np.zeros(mean.shape, dtype=bool)
        return mean > threshold_otsu(mean)
    raise DataError(f"unknown brain mask method {method!r} (nonzero or otsu)")


def intensity_stats(images: np.ndarray, mask: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Per-contrast ``[C, 2]`` (low, high) percentiles of the brain voxels."""
    if not mask.any():
        raise DataError("empty brain mask")
    vox = images[:, mask]  # [C, N]
    q = np.percentile(vox, [lower, upper], axis=1)  # [2, C], one partition pass
    return np.ascontiguousarray(q.T, dtype=np.float64)


def normalise(images: np.ndarray, mask: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """Clip each contrast to its (low, high), scale to [-1, 1] inside ``mask``; -1 outside.

    A contrast that is constant in the brain (high == low) becomes 0 inside the brain.
    """
    shape = (-1,) + (1,) * (images.ndim - 1)
    lo = stats[:, 0].reshape(shape)
    hi = stats[:, 1].reshape(shape)
    span = hi - lo
    safe = np.where(span > 0, span, 1.0)
    x = (np.clip(images, lo, hi) - lo) / safe * 2.0 - 1.0
    x = np.where(span > 0, x, 0.0)
    x = np.where(mask[None], x, -1.0)
    return x.astype(np.float32)


def volume_brain(vol: Volume, method: str = "nonzero") -> np.ndarray:
    """The brain mask ``[X, Y, Z]`` of a volume; an empty brain is a :class:`DataError` naming the subject,
    timepoint and file."""
    mask = brain_mask(vol.images, method)
    if not mask.any():
        tp = vol.timepoint
        raise DataError(f"subject {tp.subject}, timepoint {tp.timepoint}, file {next(iter(tp.images.values())).name}: "
                        "empty brain (no voxel inside the brain mask)")
    return mask
