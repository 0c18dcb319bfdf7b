"""Slice geometry: crop/pad/resize of a slice to the model size (torchio), native-resolution windows, and
:class:`SliceSample`, which carries a preprocessed slice with what is needed to put results back into the input
file's voxel grid.

``auto`` crops/pads (centred) when the slice fits in ``image_size`` and otherwise pads to a square and
resamples (linear for images, nearest for the seg); ``crop_or_pad`` and ``resize`` force one of the two.
``window`` keeps the scan's own pixels: the slice is padded to a square canvas (never resampled, never
cropped), and :meth:`SliceSample.window` then cuts an ``image_size`` window at a centre (the tumour), padding
with background where the window leaves the canvas; results are pasted back through the same bookkeeping.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from data_modules.volumes import Volume, tumour_area_mm2
from tgrowth.errors import DataError
from tgrowth.vocab import CONTRASTS

__all__ = ["RESIZE_MODES", "SliceSample", "fit_plane", "plane_affine", "window_bounds", "crop_window", "centroid"]

RESIZE_MODES = ("auto", "crop_or_pad", "resize", "window")


def window_bounds(center: float, size: int, n: int) -> tuple[int, int]:
    """Signed (before, after) of a ``size`` window centred at ``center`` on an axis of ``n`` pixels, in the
    convention of :func:`_axis_bounds` (positive = pad, negative = crop): pixel i of the window is pixel
    ``i - before`` of the axis."""
    start = int(np.floor(float(center) - size / 2.0 + 0.5))
    return -start, (size - n) + start


def _overlap(b: int, n: int, size: int) -> tuple[slice, slice]:
    """(window slice, axis slice) of the pixels a window with bounds ``b`` shares with an axis of ``n``."""
    lo, hi = max(0, b), min(size, n + b)
    return slice(lo, max(lo, hi)), slice(lo - b, max(lo, hi) - b)


def crop_window(image: torch.Tensor, seg: torch.Tensor | None, center: Sequence[float], size: int,
                image_fill: float = -1.0) -> tuple[torch.Tensor, torch.Tensor | None, list[list[int]]]:
    """The ``size x size`` window of ``image [C,H,W]`` (and ``seg [H,W]``) centred at ``center`` (row, col);
    outside the image: ``image_fill`` (the background, -1) and label 0. Returns (image, seg, bounds)."""
    H, W = image.shape[-2:]
    bounds = [list(window_bounds(center[0], size, H)), list(window_bounds(center[1], size, W))]
    (wr, ar), (wc, ac) = _overlap(bounds[0][0], H, size), _overlap(bounds[1][0], W, size)
    out = torch.full((image.shape[0], size, size), image_fill, dtype=image.dtype)
    out[:, wr, wc] = image[:, ar, ac]
    oseg = None
    if seg is not None:
        oseg = torch.zeros((size, size), dtype=seg.dtype)
        oseg[wr, wc] = seg[ar, ac]
    return out, oseg, bounds


def centroid(mask) -> tuple[float, float] | None:
    """(row, col) centre of mass of a 2D mask; None when empty."""
    m = torch.as_tensor(mask).bool()
    if not bool(m.any()):
        return None
    rows, cols = torch.nonzero(m, as_tuple=True)
    return float(rows.double().mean()), float(cols.double().mean())


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
        integer = np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool
        if "window" in g:  # back onto the canvas first
            w = g["window"]
            if arr.shape[-2:] != (w["size"], w["size"]):
                raise DataError(f"to_volume: expected an array of size {w['size']}x{w['size']}, got shape {tuple(arr.shape)}")
            canvas = np.full((arr.shape[0], g["image_size"], g["image_size"]), fill,
                             dtype=np.float32 if not integer else arr.dtype)
            (wr, ar), (wc, ac) = (_overlap(b[0], g["image_size"], w["size"]) for b in w["bounds"])
            canvas[:, ar, ac] = arr[:, wr, wc]
            arr = canvas
        S = int(g["image_size"])
        if arr.shape[-2:] != (S, S):
            raise DataError(f"to_volume: expected an array of size {S}x{S}, got shape {tuple(arr.shape)}")
        interp = interpolation if interpolation != "auto" else ("nearest" if integer else "linear")
        H, W = g["plane_shape"]
        if g["mode"] == "resize":
            import torchio as tio  # heavy: on use (crop/pad results never need it)

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

    def window(self, center: Sequence[float], size: int) -> SliceSample:
        """This slice's ``size x size`` window centred at ``center`` (row, col; pixels of this sample), at the same
        pixel spacing; ``to_plane``/``to_volume`` of the window paste results back where it was cut."""
        if "window" in self.geometry:
            raise DataError(f"subject {self.subject}, timepoint {self.timepoint}: the slice is already a window")
        image, seg, bounds = crop_window(self.image, self.seg, center, int(size))
        return replace(self, image=image, seg=seg,
                       geometry={**self.geometry, "window": {"size": int(size), "bounds": bounds}})

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


def fit_plane(image: np.ndarray, seg: np.ndarray | None, plane_affine: np.ndarray, image_size: int, resize: str = "auto"):
    """torchio crop/pad/resize of one normalised slice ``[C, X, Y]`` (+ seg ``[X, Y]``) to ``image_size``.

    Returns ``(image [C,S,S] float32 in [-1, 1], seg [S,S] long or None, (row, col) spacing in mm, geometry)``;
    ``geometry`` is what :meth:`SliceSample.to_plane` needs to undo it.
    """
    import torchio as tio  # heavy: on use (cached slices never need it)

    C, H, W = image.shape
    S = int(image_size)
    mode = resize
    if mode == "auto":
        mode = "crop_or_pad" if max(H, W) <= S else "resize"
    if mode == "window":  # the native canvas: pad to a square, never crop or resample (windows are cut later)
        mode, S = "crop_or_pad", max(H, W)
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


def plane_affine(vol: Volume, k: int) -> np.ndarray:
    """Affine of axial slice ``k`` in the (axial-last) layout: permuted columns, origin at the slice."""
    perm_aff = np.eye(4)
    perm_aff[:3, :3] = vol.affine[:3, :3][:, list(vol.perm)] if len(vol.file_shape) == 3 else vol.affine[:3, :3]
    perm_aff[:3, 3] = vol.affine[:3, 3]
    shift = np.eye(4)
    shift[2, 3] = k
    return perm_aff @ shift
