"""One preprocessed slice from a timepoint: the settings, the steps, and the loader that owns the caches.

Preprocessing of one slice: per-contrast percentile clip computed over the brain voxels of the whole 3D
volume, scaled to [-1, 1] inside the brain, background -1 (:mod:`data_modules.normalise`); then crop/pad or
resize to ``image_size`` (:func:`data_modules.geometry.fit_plane`).

* :class:`Preprocessing`: every setting that determines a preprocessed slice (and so the cache key).
* :func:`preprocess_slices`: a volume + axial indices -> :class:`SliceSample` s.
* :class:`SliceLoader`: timepoint + index -> :class:`SliceSample` in one model geometry, through its own volume
  LRU and (with a ``SliceCache``) the slices on disk.
* :func:`load_slice`: the same for one call (a fresh loader, no disk cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_modules.cache import SliceCache, VolumeLRU
from data_modules.formats import Timepoint
from data_modules.geometry import RESIZE_MODES, SliceSample, fit_plane, plane_affine
from data_modules.normalise import BRAIN_MASKS, intensity_stats, normalise, volume_brain
from data_modules.volumes import Volume, axial_index, largest_tumour_slice
from tgrowth.config.data import NormalisationConfig, as_section
from tgrowth.errors import DataError
from tgrowth.vocab import CONTRASTS, label_set

__all__ = ["Preprocessing", "SliceLoader", "default_slice", "load_slice", "preprocess_slices"]


@dataclass(frozen=True)
class Preprocessing:
    """Everything that determines a preprocessed slice (and therefore the cache key)."""

    contrasts: tuple[str, ...] = CONTRASTS
    image_size: int = 256
    resize: str = "auto"
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    brain_mask: str = "nonzero"

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise DataError(f"resize must be auto, crop_or_pad or resize, not {self.resize!r}")
        if self.brain_mask not in BRAIN_MASKS:
            raise DataError(f"normalisation.brain_mask must be nonzero or otsu, not {self.brain_mask!r}")
        if not 0 <= self.lower_percentile < self.upper_percentile <= 100:
            raise DataError(f"need 0 <= lower_percentile < upper_percentile <= 100, got {self.lower_percentile}, {self.upper_percentile}")
        if int(self.image_size) < 4:
            raise DataError(f"image_size must be >= 4, got {self.image_size}")
        bad = [c for c in self.contrasts if c not in CONTRASTS]
        if bad or not self.contrasts:
            raise DataError(f"contrasts must be a non-empty subset of {', '.join(CONTRASTS)}, got {list(self.contrasts)}")

    @classmethod
    def of(cls, contrasts: Sequence[str], image_size: int, resize: str, normalisation: Any = None) -> Preprocessing:
        """From the data settings; ``normalisation``: a ``NormalisationConfig``, a dict / DictConfig of its keys,
        or None for the defaults."""
        norm = as_section(normalisation, NormalisationConfig)
        return cls(contrasts=tuple(contrasts), image_size=int(image_size), resize=str(resize),
                   lower_percentile=float(norm.lower_percentile), upper_percentile=float(norm.upper_percentile),
                   brain_mask=str(norm.brain_mask))

    def as_dict(self) -> dict:
        return {"contrasts": list(self.contrasts), "image_size": self.image_size, "resize": self.resize,
                "lower_percentile": self.lower_percentile, "upper_percentile": self.upper_percentile,
                "brain_mask": self.brain_mask}


def brain_and_stats(vol: Volume, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """The brain mask and per-contrast intensity statistics of ``vol`` under ``prep`` (kept in ``vol.derived``)."""
    key = ("brain", prep.brain_mask, prep.lower_percentile, prep.upper_percentile)
    if key not in vol.derived:
        mask = volume_brain(vol, prep.brain_mask)
        vol.derived[key] = (mask, intensity_stats(vol.images, mask, prep.lower_percentile, prep.upper_percentile))
    return vol.derived[key]


def preprocess_slices(vol: Volume, indices: Sequence[int], prep: Preprocessing) -> list[SliceSample]:
    """Normalise (stats over the whole volume's brain) and crop/pad/resize the given axial slices."""
    tp = vol.timepoint
    mask, stats = brain_and_stats(vol, prep)
    nz = vol.shape[2]
    out = []
    for i in indices:
        k = axial_index(i, nz, f"subject {tp.subject}, timepoint {tp.timepoint}: ")
        plane = normalise(vol.images[..., k], mask[..., k], stats)
        seg = None if vol.seg is None else vol.seg[..., k]
        image, segt, spacing, geometry = fit_plane(plane, seg, plane_affine(vol, k), prep.image_size, prep.resize)
        geometry.update({"perm": list(vol.perm), "perm_shape": list(vol.shape)})
        out.append(SliceSample(
            image=image, seg=segt, spacing_mm=spacing, affine=vol.affine, volume_shape=tuple(vol.file_shape),
            slice_index=k, subject=tp.subject, timepoint=tp.timepoint, day=float(tp.day), contrasts=vol.contrasts,
            input_spacing_mm=tuple(vol.spacing_mm), geometry=geometry,
        ))
    return out


def default_slice(vol: Volume, labels: Any = "whole") -> int:
    """The largest-tumour axial slice (of ``labels``), or the middle slice without tumour or segmentation."""
    k = largest_tumour_slice(vol.seg, labels) if vol.seg is not None else None
    return vol.shape[2] // 2 if k is None else k


class SliceLoader:
    """Preprocessed slices of timepoints in one model geometry.

    ``SliceLoader(prep, labels, cache)``: :meth:`load` ``(timepoint, slice_index)`` -> :class:`SliceSample`, reading
    through the loader's own :class:`VolumeLRU` and, when ``cache`` is set, the preprocessed slices on disk.
    """

    def __init__(self, prep: Preprocessing, labels: Any = "whole", cache: SliceCache | None = None, volumes: int = 2):
        self.prep = prep
        self.labels = label_set(labels)
        self.cache = cache
        self.volumes = VolumeLRU(volumes)
        self._keys: dict[int, str] = {}  # id(timepoint) -> cache key (the key stats every file)

    def volume(self, tp: Timepoint) -> Volume:
        return self.volumes.get(tp, self.prep.contrasts)

    def cache_key(self, tp: Timepoint) -> str:
        key = self._keys.get(id(tp)) or SliceCache.key(tp, self.prep.as_dict())
        self._keys[id(tp)] = key
        return key

    def load(self, tp: Timepoint, slice_index: int | None = None) -> SliceSample:
        """Slice ``slice_index`` of ``tp`` (negative: from the top; None: :func:`default_slice`)."""
        k = default_slice(self.volume(tp), self.labels) if slice_index is None else int(slice_index)
        if self.cache is not None:
            hit = self.cache.get(self.cache_key(tp), k)
            if hit is not None:
                return hit
        s = preprocess_slices(self.volume(tp), [k], self.prep)[0]
        if self.cache is not None:
            self.cache.put(self.cache_key(tp), s)
        return s


def load_slice(timepoint: Timepoint, slice_index: int | None = None, contrasts: Sequence[str] = CONTRASTS,
               image_size: int = 256, resize: str = "auto", normalisation: Any = None,
               labels: Any = "whole") -> SliceSample:
    """Load and preprocess one axial slice of a timepoint.

    ``slice_index=None`` takes the largest-tumour slice (of ``labels``), or the middle slice without
    tumour / segmentation; negative indices count from the top. ``normalisation``: a
    ``NormalisationConfig`` / dict (percentiles, brain mask method) or None for the defaults. Each call reads the
    volume again: to load many slices, keep a :class:`SliceLoader` (or use ``LongitudinalDataModule.load_slice``).
    """
    return SliceLoader(Preprocessing.of(contrasts, image_size, resize, normalisation), labels).load(timepoint, slice_index)
