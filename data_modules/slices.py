"""Axial slices: selection, normalisation, crop/pad/resize (torchio), augmentation, caching, ``SliceDataModule``.

Public API (see docs/architecture.md, "Contracts"):

* :func:`load_slice` -> :class:`SliceSample` (``image [C,H,W]`` in [-1, 1], ``seg [H,W]``, ``spacing_mm``
  (row, col) of the output pixels, ``affine``/``volume_shape`` of the input file, ``slice_index``) and
  :meth:`SliceSample.to_volume` that puts an ``[H,W]`` / ``[C,H,W]`` array back into the input geometry.
* :func:`tumour_area_mm2`, :func:`tumour_volume_mm3`, :func:`largest_tumour_slice` (from ``volumes``).
* :class:`SliceDataModule` (Lightning) batches ``image [B,C,H,W]``, ``seg [B,H,W]`` (long), ``area_mm2 [B]``,
  ``area_frac [B]`` (tumour pixels / H*W), ``label [B]`` (0 healthy, 1 diseased) and ``meta``.
* :class:`ResumableLoader` (the training loader of :class:`SliceDataModule` and the toy blob set): the order
  and the augmentation draws are a pure function of ``(seed, epoch, position)``, and Lightning stores the
  loader's position in checkpoints, so a run resumed with ``ckpt_path=last`` sees the batches the
  uninterrupted run would have seen.

Preprocessing of one slice: per-contrast percentile clip computed over the brain voxels of the whole 3D
volume, scaled to [-1, 1] inside the brain, background -1; then centre crop/pad to ``image_size``
(``crop_or_pad``) or pad to a square and resample (``resize``) with torchio; ``auto`` pads when the slice
fits and resizes otherwise. Training augmentation works on the preprocessed (cached) tensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_modules.formats import CONTRASTS, DataSet, Problem, Timepoint, discover
from data_modules.volumes import (
    LABEL_SETS,
    Volume,
    label_set,
    largest_tumour_slice,
    load_volume,
    tumour_area_mm2,
    tumour_area_per_slice,
    tumour_mask,
    tumour_volume_mm3,
)
from tgrowth.errors import DataError

try:  # Lightning is a hard dependency of tgrowth; keep the pure functions importable without it.
    import pytorch_lightning as pl

    _DataModuleBase = pl.LightningDataModule
except ImportError:  # pragma: no cover
    _DataModuleBase = object  # type: ignore[misc,assignment]

__all__ = [
    "LABEL_SETS",
    "ResumableLoader",
    "mix_seed",
    "ResumableSampler",
    "SeededItems",
    "SliceCache",
    "SliceDataModule",
    "SliceDataset",
    "SliceSample",
    "Preprocessing",
    "brain_mask",
    "intensity_stats",
    "largest_tumour_slice",
    "load_slice",
    "normalise",
    "preprocess_slices",
    "select_slices",
    "tumour_area_mm2",
    "tumour_area_per_slice",
    "tumour_mask",
    "tumour_volume_mm3",
]

log = logging.getLogger("tgrowth.data")
CACHE_VERSION = 2


# --------------------------------------------------------------------------- settings
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
        if self.resize not in ("auto", "crop_or_pad", "resize"):
            raise DataError(f"resize must be auto, crop_or_pad or resize, not {self.resize!r}")
        if self.brain_mask not in ("nonzero", "otsu"):
            raise DataError(f"normalisation.brain_mask must be nonzero or otsu, not {self.brain_mask!r}")
        if not 0 <= self.lower_percentile < self.upper_percentile <= 100:
            raise DataError(f"need 0 <= lower_percentile < upper_percentile <= 100, got {self.lower_percentile}, {self.upper_percentile}")
        if int(self.image_size) < 4:
            raise DataError(f"image_size must be >= 4, got {self.image_size}")
        bad = [c for c in self.contrasts if c not in CONTRASTS]
        if bad or not self.contrasts:
            raise DataError(f"contrasts must be a non-empty subset of {', '.join(CONTRASTS)}, got {list(self.contrasts)}")

    @classmethod
    def from_config(cls, cfg: Any) -> Preprocessing:
        norm = _get(cfg, "normalisation", {}) or {}
        return cls(
            contrasts=tuple(_get(cfg, "contrasts", CONTRASTS)),
            image_size=int(_get(cfg, "image_size", 256)),
            resize=str(_get(cfg, "resize", "auto")),
            lower_percentile=float(_get(norm, "lower_percentile", 0.5)),
            upper_percentile=float(_get(norm, "upper_percentile", 99.5)),
            brain_mask=str(_get(norm, "brain_mask", "nonzero")),
        )

    def as_dict(self) -> dict:
        return {"contrasts": list(self.contrasts), "image_size": self.image_size, "resize": self.resize,
                "lower_percentile": self.lower_percentile, "upper_percentile": self.upper_percentile,
                "brain_mask": self.brain_mask}


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


# --------------------------------------------------------------------------- normalisation
def brain_mask(images: np.ndarray, method: str = "nonzero") -> np.ndarray:
    """``images [C, ...]`` -> boolean brain mask ``[...]``."""
    if method == "nonzero":
        return np.any(images != 0, axis=0)
    if method == "otsu":
        from skimage.filters import threshold_otsu

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


# --------------------------------------------------------------------------- selection
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
    if tumour not in ("all", "largest", "none"):
        raise DataError(f"slices.tumour must be all, largest or none, not {tumour!r}")
    chosen: set[int] = set()
    for i in indices:
        j = int(i) + nz if int(i) < 0 else int(i)
        if not 0 <= j < nz:
            raise DataError(f"slice index {i} is outside the volume's {nz} axial slices")
        chosen.add(j)
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


# --------------------------------------------------------------------------- geometry
def _axis_bounds(n: int, size: int) -> tuple[int, int]:
    """Signed (before, after): positive = pad, negative = crop, centred."""
    d = size - n
    b = d // 2 if d >= 0 else -((-d) // 2)
    return b, d - b


@dataclass
class SliceSample:
    """One preprocessed axial slice and what is needed to map results back to the input volume."""

    image: torch.Tensor  # [C, S, S] float32 in [-1, 1]
    seg: torch.Tensor | None  # [S, S] long (BraTS labels), None without a segmentation
    spacing_mm: tuple[float, float]  # (row, col) spacing of the output pixels
    affine: np.ndarray  # 4x4 affine of the input file
    volume_shape: tuple[int, ...]  # spatial shape of the input file (2D or 3D)
    slice_index: int  # axial index in the input volume (0 for 2D files)
    subject: str = ""
    timepoint: str = ""
    day: float = 0.0
    contrasts: tuple[str, ...] = CONTRASTS
    input_spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)  # in-plane row, col, slice thickness
    geometry: dict = field(default_factory=dict)  # internal: how to undo crop/pad/resize and the axis order

    @property
    def has_tumour(self) -> bool:
        return self.seg is not None and bool((self.seg > 0).any())

    @property
    def label(self) -> int:
        """1 diseased (any tumour label in the slice), 0 healthy."""
        return int(self.has_tumour)

    def area_mm2(self, labels: Any = "whole") -> float:
        if self.seg is None:
            raise DataError(f"subject {self.subject} timepoint {self.timepoint}: no segmentation, no tumour area")
        return float(tumour_area_mm2(self.seg, self.spacing_mm, labels))

    # -- back to the input geometry
    def to_plane(self, array, interpolation: str = "auto", fill: float = 0.0) -> np.ndarray:
        """``[H,W]`` / ``[C,H,W]`` at ``image_size`` -> the input slice grid ``[X,Y]`` / ``[C,X,Y]`` (numpy)."""
        arr = array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
        squeeze = arr.ndim == 2
        if squeeze:
            arr = arr[None]
        g = self.geometry
        S = int(g["image_size"])
        if arr.shape[-2:] != (S, S):
            raise DataError(f"to_volume: expected an array of size {S}x{S}, got shape {tuple(arr.shape)}")
        integer = np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool
        interp = interpolation if interpolation != "auto" else ("nearest" if integer else "linear")
        H, W = g["plane_shape"]
        if g["mode"] == "resize":
            import torchio as tio

            src = tio.ScalarImage(tensor=torch.as_tensor(arr.astype(np.float32))[..., None], affine=np.asarray(g["out_affine"]))
            res = tio.Resample(target=((H, W, 1), np.asarray(g["plane_affine"])), image_interpolation=interp)(src)
            out = res.data.numpy()[..., 0]
        else:
            out = np.full((arr.shape[0], H, W), fill, dtype=np.float32 if not integer else arr.dtype)
            src_sl, dst_sl = [], []
            for n, (b, _a) in zip((H, W), g["bounds"]):
                if b >= 0:  # padded: take the inner part back out
                    src_sl.append(slice(b, b + n))
                    dst_sl.append(slice(0, n))
                else:  # cropped: the output covers [-b, -b + S) of the input
                    src_sl.append(slice(0, S))
                    dst_sl.append(slice(-b, -b + S))
            out[(slice(None), *dst_sl)] = arr[(slice(None), *src_sl)]
        if integer:
            out = np.rint(out).astype(arr.dtype)
        return out[0] if squeeze else out

    def to_volume(self, array, interpolation: str = "auto", fill: float = 0.0) -> np.ndarray:
        """Put an ``[H,W]`` or ``[C,H,W]`` array back into the input file's voxel grid.

        Undoes resize / crop / pad and the axis reordering; the other slices are ``fill`` (0). Returns
        the file's spatial shape (``[X,Y,Z]``, or ``[X,Y]`` for 2D files), with channels last for a
        ``[C,H,W]`` input (``[X,Y,Z,C]``, the NIfTI convention). Integer / bool arrays (segmentations,
        masks) use nearest-neighbour interpolation, floats linear. Write with
        ``tgrowth.io.save_nifti(path, vol, sample.affine)``.
        """
        plane = self.to_plane(array, interpolation, fill)
        chan = plane.ndim == 3
        if not chan:
            plane = plane[None]
        g = self.geometry
        nx, ny, nz = g["perm_shape"]
        vol = np.full((nx, ny, nz, plane.shape[0]), fill, dtype=plane.dtype)
        vol[:, :, self.slice_index, :] = np.moveaxis(plane, 0, -1)
        inv = np.argsort(g["perm"])
        vol = np.transpose(vol, (*inv, 3))
        vol = vol.reshape(tuple(self.volume_shape) + (vol.shape[-1],))
        return vol if chan else vol[..., 0]

    # -- cache (plain tensors / lists only: loads with weights_only=True)
    def to_state(self) -> dict:
        meta = {
            "spacing_mm": list(self.spacing_mm), "affine": np.asarray(self.affine).tolist(),
            "volume_shape": list(self.volume_shape), "slice_index": self.slice_index,
            "subject": self.subject, "timepoint": self.timepoint, "day": self.day,
            "contrasts": list(self.contrasts), "input_spacing_mm": list(self.input_spacing_mm),
            "geometry": self.geometry,
        }
        # metadata as one JSON string: far cheaper to load under weights_only than nested lists
        return {"image": self.image, "seg": self.seg, "meta_json": json.dumps(meta)}

    @classmethod
    def from_state(cls, state: dict) -> SliceSample:
        m = json.loads(state["meta_json"])
        return cls(
            image=state["image"], seg=state["seg"], spacing_mm=tuple(m["spacing_mm"]), affine=np.asarray(m["affine"]),
            volume_shape=tuple(m["volume_shape"]), slice_index=int(m["slice_index"]), subject=m["subject"],
            timepoint=m["timepoint"], day=float(m["day"]), contrasts=tuple(m["contrasts"]),
            input_spacing_mm=tuple(m["input_spacing_mm"]), geometry=m["geometry"],
        )


def _spatial(image: np.ndarray, seg: np.ndarray | None, plane_affine: np.ndarray, prep: Preprocessing):
    """torchio crop/pad/resize of one normalised slice ``[C, X, Y]`` (+ seg ``[X, Y]``)."""
    import torchio as tio

    C, H, W = image.shape
    S = int(prep.image_size)
    mode = prep.resize
    if mode == "auto":
        mode = "crop_or_pad" if max(H, W) <= S else "resize"
    img = tio.ScalarImage(tensor=torch.from_numpy(image[..., None]), affine=plane_affine)
    lab = None if seg is None else tio.LabelMap(tensor=torch.from_numpy(seg.astype(np.int16)[None, ..., None]), affine=plane_affine)
    if mode == "crop_or_pad":
        bounds = [_axis_bounds(H, S), _axis_bounds(W, S)]
    else:
        Q = max(H, W)
        bounds = [_axis_bounds(H, Q), _axis_bounds(W, Q)]
    crop = tuple(v for b, a in bounds for v in (max(-b, 0), max(-a, 0))) + (0, 0)
    pad = tuple(v for b, a in bounds for v in (max(b, 0), max(a, 0))) + (0, 0)
    if any(crop):
        img, lab = tio.Crop(crop)(img), (None if lab is None else tio.Crop(crop)(lab))
    if any(pad):
        img = tio.Pad(pad, padding_mode=-1.0)(img)
        lab = None if lab is None else tio.Pad(pad, padding_mode=0)(lab)
    if mode == "resize" and img.shape[1] != S:
        rs = tio.Resize((S, S, 1), image_interpolation="linear", label_interpolation="nearest")
        img = rs(img)
        lab = None if lab is None else rs(lab)
    out_affine = np.asarray(img.affine, dtype=np.float64)
    spacing = tuple(float(v) for v in np.linalg.norm(out_affine[:3, :2], axis=0))
    geometry = {"mode": mode, "image_size": S, "plane_shape": [H, W], "bounds": [list(b) for b in bounds],
                "plane_affine": np.asarray(plane_affine).tolist(), "out_affine": out_affine.tolist()}
    out_img = img.data[..., 0].float().clamp_(-1.0, 1.0).contiguous()
    out_seg = None if lab is None else lab.data[0, ..., 0].round().long().contiguous()
    return out_img, out_seg, spacing, geometry


def _plane_affine(vol: Volume, k: int) -> np.ndarray:
    """Affine of axial slice ``k`` in the (axial-last) layout: permuted columns, origin at the slice."""
    perm_aff = np.eye(4)
    perm_aff[:3, :3] = vol.affine[:3, :3][:, list(vol.perm)] if len(vol.file_shape) == 3 else vol.affine[:3, :3]
    perm_aff[:3, 3] = vol.affine[:3, 3]
    shift = np.eye(4)
    shift[2, 3] = k
    return perm_aff @ shift


def preprocess_slices(vol: Volume, indices: Sequence[int], prep: Preprocessing) -> list[SliceSample]:
    """Normalise (stats over the whole volume's brain) and crop/pad/resize the given axial slices."""
    tp = vol.timepoint
    memo = vol.__dict__.setdefault("_norm_memo", {})  # mask + stats per setting, reused while the volume lives
    mkey = (prep.brain_mask, prep.lower_percentile, prep.upper_percentile)
    if mkey not in memo:
        mask = brain_mask(vol.images, prep.brain_mask)
        if not mask.any():
            raise DataError(f"subject {tp.subject}, timepoint {tp.timepoint}, file {next(iter(tp.images.values())).name}: empty brain (no voxel inside the brain mask)")
        memo[mkey] = (mask, intensity_stats(vol.images, mask, prep.lower_percentile, prep.upper_percentile))
    mask, stats = memo[mkey]
    nz = vol.shape[2]
    out = []
    for i in indices:
        k = int(i) + nz if int(i) < 0 else int(i)
        if not 0 <= k < nz:
            raise DataError(f"subject {tp.subject}, timepoint {tp.timepoint}: slice index {i} is outside the volume's {nz} axial slices")
        plane = normalise(vol.images[..., k], mask[..., k], stats)
        seg = None if vol.seg is None else vol.seg[..., k]
        image, segt, spacing, geometry = _spatial(plane, seg, _plane_affine(vol, k), prep)
        geometry.update({"perm": list(vol.perm), "perm_shape": list(vol.shape)})
        out.append(SliceSample(
            image=image, seg=segt, spacing_mm=spacing, affine=vol.affine, volume_shape=tuple(vol.file_shape),
            slice_index=k, subject=tp.subject, timepoint=tp.timepoint, day=float(tp.day), contrasts=vol.contrasts,
            input_spacing_mm=tuple(vol.spacing_mm), geometry=geometry,
        ))
    return out


# --------------------------------------------------------------------------- loading with a small LRU
class _VolumeLRU:
    def __init__(self, size: int = 2):
        self.size = size
        self.items: OrderedDict = OrderedDict()

    def get(self, tp: Timepoint, contrasts: tuple[str, ...]) -> Volume:
        key = (_fingerprint(tp), contrasts)
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        vol = load_volume(tp, contrasts)
        self.items[key] = vol
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return vol


_LRU = _VolumeLRU(2)


def load_slice(timepoint: Timepoint, slice_index: int | None = None, contrasts: Sequence[str] = CONTRASTS,
               image_size: int = 256, resize: str = "auto", normalisation: Any = None,
               labels: Any = "whole") -> SliceSample:
    """Load and preprocess one axial slice of a timepoint.

    ``slice_index=None`` takes the largest-tumour slice (of ``labels``), or the middle slice without
    tumour / segmentation; negative indices count from the top. ``normalisation``: a
    ``NormalisationConfig`` / dict (percentiles, brain mask method) or None for the defaults.
    """
    prep = Preprocessing(
        contrasts=tuple(contrasts), image_size=int(image_size), resize=resize,
        lower_percentile=float(_get(normalisation, "lower_percentile", 0.5)),
        upper_percentile=float(_get(normalisation, "upper_percentile", 99.5)),
        brain_mask=str(_get(normalisation, "brain_mask", "nonzero")),
    )
    vol = _LRU.get(timepoint, prep.contrasts)
    if slice_index is None:
        k = largest_tumour_slice(vol.seg, labels) if vol.seg is not None else None
        slice_index = vol.shape[2] // 2 if k is None else k
    return preprocess_slices(vol, [slice_index], prep)[0]


# --------------------------------------------------------------------------- cache
def _fingerprint(tp: Timepoint) -> tuple:
    out = []
    for p in tp.files:
        try:
            st = os.stat(p)
            out.append((str(Path(p).resolve()), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(p), -1, -1))
    if tp.align_to is not None:  # resampled onto another timepoint's grid (volumes.check_subject_grid)
        out.append(("align_to", tp.align_to.key()))
    return tuple(out)


class SliceCache:
    """Preprocessed slices on disk as ``torch.save`` tensors (loaded with ``weights_only=True``).

    Key: sha256 of the timepoint's files (resolved path, size, mtime) + the preprocessing settings + a
    version; so changing an input file or a setting never reuses a stale slice. Layout:
    ``<cache_dir>/<key[:2]>/<key>/slice_0042.pt`` and ``index-<selection hash>.json`` (selected slices).
    """

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir).expanduser()
        self.dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(tp: Timepoint, prep: Preprocessing) -> str:
        blob = json.dumps({"v": CACHE_VERSION, "files": _fingerprint(tp), "prep": prep.as_dict(),
                           "subject": tp.subject, "timepoint": tp.timepoint, "day": tp.day}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _folder(self, key: str) -> Path:
        return self.dir / key[:2] / key

    def slice_path(self, key: str, k: int) -> Path:
        return self._folder(key) / f"slice_{k:04d}.pt"

    def get(self, key: str, k: int) -> SliceSample | None:
        p = self.slice_path(key, k)
        if not p.is_file():
            return None
        try:
            return SliceSample.from_state(torch.load(p, map_location="cpu", weights_only=True))
        except Exception as exc:  # a damaged cache entry is rebuilt, not fatal
            log.warning("cache entry %s unreadable (%s); rebuilding it", p, exc)
            return None

    def put(self, key: str, sample: SliceSample) -> None:
        from tgrowth.io import atomic_path

        with atomic_path(self.slice_path(key, sample.slice_index), suffix=".pt") as tmp:
            torch.save(sample.to_state(), tmp)

    def get_index(self, key: str, selection: dict) -> list[int] | None:
        p = self._folder(key) / f"index-{_hash(selection)}.json"
        if not p.is_file():
            return None
        try:
            return [int(i) for i in json.loads(p.read_text())["slices"]]
        except (OSError, ValueError, KeyError):
            return None

    def put_index(self, key: str, selection: dict, slices: list[int]) -> None:
        from tgrowth.io import write_json

        write_json(self._folder(key) / f"index-{_hash(selection)}.json", {"selection": selection, "slices": slices})


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- augmentation
def _augment(image: torch.Tensor, seg: torch.Tensor, spacing: Sequence[float], aug: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Same random spatial transform on image and seg (torchio), then per-contrast intensity jitter."""
    import torchio as tio

    transforms = []
    if float(aug.flip_lr) > 0:
        transforms.append(tio.RandomFlip(axes=(0,), flip_probability=float(aug.flip_lr)))
    if float(aug.flip_ap) > 0:
        transforms.append(tio.RandomFlip(axes=(1,), flip_probability=float(aug.flip_ap)))
    if float(aug.affine_p) > 0:
        s, r, t = float(aug.scale), float(aug.rotation_deg), float(aug.translation_mm)
        transforms.append(tio.RandomAffine(
            scales=(1 - s, 1 + s, 1 - s, 1 + s, 1, 1), degrees=(0, 0, 0, 0, -r, r), translation=(-t, t, -t, t, 0, 0),
            isotropic=False, default_pad_value=-1.0, image_interpolation="linear", label_interpolation="nearest",
            p=float(aug.affine_p),
        ))
    if transforms:
        aff = np.diag([float(spacing[0]), float(spacing[1]), 1.0, 1.0])
        subj = tio.Subject(image=tio.ScalarImage(tensor=image[..., None].clone(), affine=aff),
                           seg=tio.LabelMap(tensor=seg[None, ..., None].clone(), affine=aff))
        subj = tio.Compose(transforms)(subj)
        image = subj["image"].data[..., 0].float()
        seg = subj["seg"].data[0, ..., 0].round().long()
    if float(aug.intensity_p) > 0 and float(torch.rand(())) < float(aug.intensity_p):
        C = image.shape[0]
        gain = 1.0 + float(aug.intensity_gain) * torch.randn(C, 1, 1)
        shift = float(aug.intensity_shift) * torch.randn(C, 1, 1)
        brain = image > -1.0
        jittered = ((image + 1.0) * gain - 1.0 + shift).clamp(-1.0, 1.0)
        image = torch.where(brain, jittered, image)
    return image.contiguous(), seg.contiguous()


# --------------------------------------------------------------------------- dataset
class SliceDataset(torch.utils.data.Dataset):
    """Items ``(timepoint, slice_index)``; returns the batch dict described in the module docstring."""

    def __init__(self, items: list[tuple[Timepoint, int]], prep: Preprocessing, labels: Any = "whole",
                 cache: SliceCache | None = None, augmentation: Any = None):
        self.items = list(items)
        self.prep = prep
        self.labels = label_set(labels)
        self.cache = cache
        self.augmentation = augmentation if (augmentation is not None and bool(_get(augmentation, "enabled", False))) else None
        self._lru = _VolumeLRU(2)
        self._keys: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, i: int) -> SliceSample:
        tp, k = self.items[i]
        if self.cache is not None:
            key = self._keys.get(id(tp)) or SliceCache.key(tp, self.prep)
            self._keys[id(tp)] = key
            hit = self.cache.get(key, k)
            if hit is not None:
                return hit
        s = preprocess_slices(self._lru.get(tp, self.prep.contrasts), [k], self.prep)[0]
        if self.cache is not None:
            self.cache.put(key, s)
        return s

    def __getitem__(self, i: int) -> dict:
        s = self.sample(i)
        image, seg = s.image, s.seg
        if seg is None:
            raise DataError(f"subject {s.subject}, timepoint {s.timepoint}: no segmentation for slice {s.slice_index}")
        if self.augmentation is not None:
            image, seg = _augment(image, seg, s.spacing_mm, self.augmentation)
        tum = tumour_mask(seg, self.labels)
        npx = float(tum.sum())
        H, W = seg.shape
        return {
            "image": image.float(),
            "seg": seg.long(),
            "area_mm2": torch.tensor(npx * s.spacing_mm[0] * s.spacing_mm[1], dtype=torch.float32),
            "area_frac": torch.tensor(npx / float(H * W), dtype=torch.float32),
            "label": torch.tensor(int(bool((seg > 0).any())), dtype=torch.long),
            "meta": {
                "subject": s.subject, "timepoint": s.timepoint, "slice_index": s.slice_index, "day": s.day,
                "spacing_mm": torch.tensor(s.spacing_mm, dtype=torch.float32),
                "affine": torch.as_tensor(np.asarray(s.affine), dtype=torch.float64),
            },
        }


# --------------------------------------------------------------------------- resumable training order
def mix_seed(*ints: int) -> int:
    """One 63-bit seed from non-negative integers (numpy's SeedSequence mixing: nearby inputs, unrelated seeds)."""
    a, b = np.random.SeedSequence([int(i) for i in ints]).generate_state(2, dtype=np.uint64)
    return int((int(a) ^ (int(b) >> 1)) & (2**63 - 1))


class ResumableSampler(torch.utils.data.distributed.DistributedSampler):
    """The training order as a pure function of ``(seed, epoch)``: yields ``(index, item_seed)`` pairs.

    Each epoch: a permutation of the ``n`` items drawn from ``(seed, epoch)`` (``shuffle=False``: in order),
    wrapped around to a multiple of ``num_replicas`` and dealt out by rank as ``DistributedSampler`` does,
    with one seed per position (augmentation draws, see :class:`SeededItems`). ``start`` items of the next
    pass are skipped (set by :class:`ResumableLoader` when it resumes mid-epoch). A ``DistributedSampler``
    subclass, so Lightning calls :meth:`set_epoch` and does not wrap it under DDP.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0):
        # DistributedSampler.__init__ wants a dataset and an initialised process group; set its fields directly
        self.dataset, self.n, self.seed, self.shuffle = range(int(n)), int(n), int(seed), bool(shuffle)
        self.num_replicas, self.rank, self.drop_last = int(num_replicas), int(rank), False
        self.epoch, self.start = 0, 0
        self.num_samples = math.ceil(self.n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's ``(indices, item seeds)`` for ``epoch``, each ``[num_samples]``."""
        if self.n == 0:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        idx = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        idx = idx.repeat(math.ceil(self.total_size / self.n))[: self.total_size]
        seeds = torch.randint(0, 2**62, (self.total_size,), generator=g)
        return idx[self.rank:: self.num_replicas], seeds[self.rank:: self.num_replicas]

    def __iter__(self):
        idx, seeds = self.order(self.epoch)
        start, self.start = self.start, 0
        return iter(list(zip(idx[start:].tolist(), seeds[start:].tolist())))

    def __len__(self) -> int:
        return self.num_samples


class SeededItems(torch.utils.data.Dataset):
    """``SeededItems(ds)[(index, seed)]`` is ``ds[index]`` drawn with torch's CPU generator seeded from ``seed``
    (and restored afterwards): random augmentation of an item depends on its place in the training order only,
    not on worker processes or on what was drawn before (so it repeats exactly after a resume)."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return self.dataset[int(index)]


class ResumableLoader(torch.utils.data.DataLoader):
    """A training DataLoader over a :class:`ResumableSampler` whose position Lightning saves in checkpoints.

    ``state_dict()`` -> ``{"epoch", "batches", "items", "seed", "batch_size", "world_size"}`` (batches of
    ``epoch`` already handed out); ``load_state_dict`` makes the next pass over that epoch skip them (if the
    items, seed, batch size or world size changed, the epoch restarts from its beginning, with a warning). Lightning calls both (a DataLoader with
    these methods is "stateful" to it), so ``ckpt_path=last`` continues an interrupted epoch exactly where the
    uninterrupted run would be. Use :meth:`for_trainer` to deal the order out by DDP rank.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, batch_size: int, seed: int = 0, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0, **kwargs: Any):
        sampler = ResumableSampler(len(dataset), seed, shuffle, num_replicas, rank)  # type: ignore[arg-type]
        super().__init__(SeededItems(dataset), batch_size=batch_size, sampler=sampler, **kwargs)
        self._epoch, self._batches = 0, 0
        self._resume: tuple[int, int] | None = None

    @classmethod
    def for_trainer(cls, trainer: Any, dataset: torch.utils.data.Dataset, batch_size: int, seed: int = 0,
                    **kwargs: Any) -> ResumableLoader:
        """Shard by the trainer's rank / world size (one process when ``trainer`` is None)."""
        rank, world = (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)
        return cls(dataset, batch_size, seed, num_replicas=world, rank=rank, **kwargs)

    def __iter__(self):
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        self._epoch, self._batches = sampler.epoch, 0
        if self._resume is not None and self._resume[0] == sampler.epoch:
            self._batches = self._resume[1]
            sampler.start = self._batches * int(self.batch_size)  # type: ignore[arg-type]
        self._resume = None
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        epoch, done = self._epoch, self._batches
        if done >= len(self):  # the epoch is complete: the next one starts from its beginning
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches": done, **self._layout()}

    def _layout(self) -> dict[str, int]:
        """What the meaning of "batches done" depends on."""
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        return {"items": sampler.n, "seed": sampler.seed, "batch_size": int(self.batch_size),  # type: ignore[arg-type]
                "world_size": sampler.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        epoch = int(state.get("epoch", 0))
        sampler.set_epoch(epoch)
        now = self._layout()
        then = {k: state.get(k) for k in now}
        if then != now:
            show = ", ".join(f"{k} {then[k]} -> {now[k]}" for k in now if then[k] != now[k])
            log.warning("the training data changed since the checkpoint (%s): the interrupted epoch %d restarts from "
                        "its first batch", show, epoch)
            return
        self._resume = (epoch, int(state.get("batches", 0)))


# --------------------------------------------------------------------------- DataModule
def _report(problems: Sequence[Problem]) -> None:
    for p in problems:
        (log.warning if p.severity == "error" else log.info)("data %s: %s", p.severity, p)


class SliceDataModule(_DataModuleBase):
    """2D slices for denoiser / regressor / segmenter training, split by subject.

    ``SliceDataModule(root, image_size=64, contrasts=["t1c"], slices={"healthy": 2}, cache_dir=...)`` or
    ``SliceDataModule.from_config(cfg.data)`` with a :class:`tgrowth.config.data.SliceDataConfig` section.
    After :meth:`setup`: ``.dataset`` (discovery), ``.split_of`` (subject -> split), ``.items`` (split ->
    ``[(Timepoint, slice)]``), ``.problems`` (everything reported; subjects with errors are left out
    whole, unless ``strict=True``, which raises at the first error).
    """

    def __init__(self, root: str | Path | None = None, *, strict: bool = False, seed: int = 0, **kwargs: Any):
        super().__init__()
        self.seed = int(seed)  # the training order and augmentation draws (see ResumableLoader)
        from omegaconf import OmegaConf

        from tgrowth.config.data import SliceDataConfig

        base = OmegaConf.structured(SliceDataConfig)
        if root is not None:
            kwargs["root"] = str(root)
        try:
            self.cfg = OmegaConf.merge(base, OmegaConf.create(_plain(kwargs)))
        except Exception as exc:
            raise DataError(f"invalid SliceDataModule settings: {exc}") from exc
        if OmegaConf.is_missing(self.cfg, "root"):
            raise DataError("SliceDataModule needs a data root")
        self.strict = strict
        self.prep = Preprocessing.from_config(self.cfg)
        self.labels = label_set(self.cfg.labels if isinstance(self.cfg.labels, str) else list(self.cfg.labels))
        self.cache = SliceCache(self.cfg.cache_dir) if self.cfg.cache_dir else None
        self.dataset: DataSet | None = None
        self.split_of: dict[str, str] = {}
        self.items: dict[str, list[tuple[Timepoint, int]]] = {"train": [], "val": [], "test": []}
        self.problems: list[Problem] = []
        self._datasets: dict[str, SliceDataset] = {}

    @classmethod
    def from_config(cls, cfg: Any, strict: bool = False, seed: int = 0) -> SliceDataModule:
        """From a ``SliceDataConfig`` section; keys that a command's subclass of the section adds are ignored."""
        from dataclasses import fields

        from tgrowth.config.data import SliceDataConfig

        known = {f.name for f in fields(SliceDataConfig)}
        return cls(strict=strict, seed=seed, **{k: v for k, v in _plain(cfg).items() if k in known})

    @property
    def num_channels(self) -> int:
        return len(self.prep.contrasts)

    @property
    def image_size(self) -> int:
        return self.prep.image_size

    def _problem(self, p: Problem) -> None:
        if self.strict and p.severity == "error":
            raise p.error()
        self.problems.append(p)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        from data_modules.splits import assign_splits

        cfg = self.cfg
        ds = discover(cfg.root, cfg.format, self.prep.contrasts, strict=self.strict)
        self.problems.extend(ds.problems)
        sp = cfg.splits
        self.split_of, sproblems = assign_splits(ds.subjects, ds.root, (sp.train, sp.val, sp.test), sp.seed, sp.file)
        for p in sproblems:
            self._problem(p)
        sel = {k: (list(v) if k == "indices" else v) for k, v in _plain(cfg.slices).items()}
        sel["labels"] = list(self.labels)
        bad = set(ds.bad_subjects)
        for subj in ds.subjects:
            if subj.subject in bad:
                continue
            tps = [t for t in subj.timepoints if t.seg is not None]
            for t in subj.timepoints:
                if t.seg is None:
                    self._problem(Problem("no segmentation: left out of the slice data (labels and areas need it)",
                                          t.subject, t.timepoint, f"{t.subject}-{t.timepoint}-seg.nii.gz", "warning"))
            if cfg.include_timepoints == "first":
                tps = tps[:1]
            elif cfg.include_timepoints != "with_seg":
                raise DataError(f"include_timepoints must be with_seg or first, not {cfg.include_timepoints!r}")
            chosen: list[tuple[Timepoint, int]] = []
            try:
                for t in tps:
                    chosen.extend((t, k) for k in self._index(t, sel))
            except DataError as exc:
                if self.strict:
                    raise
                self.problems.append(Problem(str(exc), subj.subject, None, None))
                bad.add(subj.subject)
                continue
            self.items[self.split_of[subj.subject]].extend(chosen)
        self.dataset = ds
        _report(self.problems)
        for name in ("train", "val", "test"):
            self._datasets[name] = SliceDataset(
                self.items[name], self.prep, self.labels, self.cache,
                augmentation=cfg.augmentation if name == "train" else None,
            )
        n_bad = len({p.subject for p in self.problems if p.severity == "error" and p.subject})
        log.info("slice data %s (%s): %s slices train / %s val / %s test; %d subject(s) left out with errors",
                 cfg.root, ds.format, *(len(self.items[n]) for n in ("train", "val", "test")), n_bad)

    def _index(self, tp: Timepoint, sel: dict) -> list[int]:
        """Selected slices of a timepoint (cached); with a cache, also preprocesses them in one decode."""
        key = SliceCache.key(tp, self.prep) if self.cache is not None else None
        if self.cache is not None:
            hit = self.cache.get_index(key, sel)
            if hit is not None:
                return hit
        vol = load_volume(tp, self.prep.contrasts)
        mask = brain_mask(vol.images, self.prep.brain_mask)
        if not mask.any():
            raise DataError(f"subject {tp.subject}, timepoint {tp.timepoint}, file {next(iter(tp.images.values())).name}: empty brain (no voxel inside the brain mask)")
        ks = select_slices(vol.seg, mask, sel["tumour"], sel["indices"], int(sel["healthy"]), int(sel["min_tumour_pixels"]),
                           float(sel["min_brain_fraction"]), sel["labels"])
        if self.cache is not None:
            for s in preprocess_slices(vol, ks, self.prep):
                self.cache.put(key, s)
            self.cache.put_index(key, sel, ks)
        return ks

    def dataset_for(self, split: str) -> SliceDataset:
        self.setup()
        if split not in self._datasets:
            raise DataError(f"unknown split {split!r} (train, val, test)")
        return self._datasets[split]

    def _loader(self, split: str, shuffle: bool) -> torch.utils.data.DataLoader:
        nw = int(self.cfg.num_workers)
        return torch.utils.data.DataLoader(
            self.dataset_for(split), batch_size=int(self.cfg.batch_size), shuffle=shuffle, num_workers=nw,
            persistent_workers=nw > 0, pin_memory=False, drop_last=False,
        )

    def train_dataloader(self) -> ResumableLoader:
        nw = int(self.cfg.num_workers)
        return ResumableLoader.for_trainer(self.trainer, self.dataset_for("train"), int(self.cfg.batch_size), self.seed,
                                           num_workers=nw, persistent_workers=nw > 0, pin_memory=False,
                                           drop_last=False)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def predict_dataloader(self):
        return self._loader("test", False)

    def error_rows(self) -> list[dict]:
        """Rows for ``errors.csv`` (severity, subject, timepoint, file, message)."""
        return [p.as_dict() for p in self.problems]

    def write_errors_csv(self, path: str | Path) -> Path:
        from tgrowth.io import write_csv

        return write_csv(path, self.error_rows(), ["severity", "subject", "timepoint", "file", "message"])


def _plain(cfg: Any) -> dict:
    """A DictConfig / dataclass / dict -> a plain dict."""
    from dataclasses import asdict, is_dataclass

    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return asdict(cfg)
    out = {}
    for k, v in dict(cfg).items():
        if isinstance(v, DictConfig) or (is_dataclass(v) and not isinstance(v, type)):
            v = _plain(v)
        out[k] = v
    return out
