"""Reading and validating the NIfTI files of one timepoint; tumour sizes from segmentations.

A :class:`Volume` holds the contrasts of one timepoint as ``images [C, X, Y, Z]`` (float32) and
``seg [X, Y, Z]`` with the axial (superior-inferior) voxel axis moved last, so ``images[..., k]`` is
axial slice ``k``. 2D files (the authors' layout) become ``Z = 1``. ``Volume.perm`` and
``Volume.file_shape`` undo that for writing results back in the input geometry.

Size functions work on numpy arrays and torch tensors alike and batch over leading dimensions.

Timepoints of one subject must share a voxel grid (co-registered: same shape, same affine within
``grid_tolerance_mm``): :func:`check_subject_grid` reads the headers and reports a timepoint that is off the
grid of the subject's first timepoint (or, with ``align="resample"``, marks it to be resampled onto that grid
when it is loaded: linear for images, nearest for the seg, in world coordinates from the two affines).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from data_modules.formats import Grid, Problem, Subject, Timepoint
from tgrowth.errors import ConfigError, DataError
from tgrowth.vocab import CONTRASTS, LABEL_SETS, LEGACY_ENHANCING, VALID_LABELS, label_set

__all__ = [
    "ALIGN_MODES",
    "axial_index",
    "axial_perm",
    "GRID_TOLERANCE_MM",
    "LABEL_SETS",
    "VALID_LABELS",
    "Volume",
    "label_set",
    "tumour_mask",
    "tumour_area_mm2",
    "tumour_volume_mm3",
    "tumour_area_per_slice",
    "largest_tumour_slice",
    "inspect_timepoint",
    "load_volume",
    "read_nifti",
    "read_grid",
    "timepoint_grid",
    "grid_difference",
    "check_subject_grid",
    "resample_to_grid",
]

AFFINE_ATOL_MM = 1e-3  # contrasts and seg of one timepoint: affines equal within this (elementwise)
GRID_TOLERANCE_MM = 0.1  # timepoints of one subject: every voxel centre within this distance (config: grid_tolerance_mm)
ALIGN_MODES: tuple[str, ...] = ("require", "resample")
_AXIS_NAME = {"L": "left-right", "R": "left-right", "A": "anterior-posterior", "P": "anterior-posterior",
              "S": "superior-inferior", "I": "superior-inferior"}


# --------------------------------------------------------------------------- sizes
def tumour_mask(seg, labels: str | Sequence[int] = "whole"):
    """Boolean mask of the voxels whose label is in ``labels`` (numpy or torch, any shape).

    A BraTS 2021 enhancing label 4 (never in checked data: ``load_volume`` accepts 0..3) counts as 3."""
    ls = label_set(labels)
    whole = ls == LABEL_SETS["whole"]
    if 3 in ls:
        ls = (*ls, LEGACY_ENHANCING)
    if hasattr(seg, "detach"):  # a torch tensor, so torch is loaded; data-check imports this module without it
        import torch

        return seg > 0 if whole else torch.isin(seg, torch.tensor(ls, device=seg.device, dtype=seg.dtype))
    seg = np.asarray(seg)
    return seg > 0 if whole else np.isin(seg, ls)


def tumour_area_mm2(seg, spacing_mm: Sequence[float], labels: str | Sequence[int] = "whole"):
    """Tumour area of 2D slice(s) ``[..., H, W]`` in mm^2: pixel count x row spacing x column spacing.

    Returns a float for one slice, else an array / tensor over the leading dimensions.
    """
    sr, sc = float(spacing_mm[0]), float(spacing_mm[1])
    m = tumour_mask(seg, labels)
    n = m.sum(dim=(-2, -1)) if hasattr(m, "detach") else m.sum(axis=(-2, -1))
    area = n * (sr * sc)
    if getattr(area, "ndim", 0) == 0:
        return float(area)
    return area


def tumour_volume_mm3(seg, spacing_mm: Sequence[float], labels: str | Sequence[int] = "whole") -> float:
    """Tumour volume of a 3D segmentation in mm^3 (voxel count x voxel volume)."""
    m = tumour_mask(seg, labels)
    n = int(m.sum())
    return n * float(spacing_mm[0]) * float(spacing_mm[1]) * float(spacing_mm[2])


def tumour_area_per_slice(seg_volume, spacing_mm: Sequence[float], labels="whole", axis: int = -1) -> np.ndarray:
    """Tumour area (mm^2) of every slice along ``axis`` of a 3D segmentation."""
    seg_volume = np.asarray(seg_volume)
    m = tumour_mask(seg_volume, labels)
    axis = axis % m.ndim
    others = [a for a in range(m.ndim) if a != axis]
    sp = [float(spacing_mm[a]) for a in others]
    return m.sum(axis=tuple(others)) * (sp[0] * sp[1])


def axial_index(index: int, n: int, where: str = "") -> int:
    """Axial slice ``index`` of ``n`` (negative: from the top) as 0..n-1; outside is a DataError (``where`` starts it)."""
    k = int(index) + n if int(index) < 0 else int(index)
    if not 0 <= k < n:
        raise DataError(f"{where}slice index {index} is outside the volume's {n} axial slices")
    return k


def largest_tumour_slice(seg_volume, labels: str | Sequence[int] = "whole", axis: int = -1) -> int | None:
    """Index of the axial slice (along ``axis``, last by default) with the most tumour voxels.

    Ties go to the lowest index; ``None`` when the volume has no tumour.
    """
    m = tumour_mask(np.asarray(seg_volume), labels)
    axis = axis % m.ndim
    counts = m.sum(axis=tuple(a for a in range(m.ndim) if a != axis))
    if counts.max(initial=0) == 0:
        return None
    return int(np.argmax(counts))


# --------------------------------------------------------------------------- reading
@dataclass
class Volume:
    timepoint: Timepoint
    contrasts: tuple[str, ...]
    images: np.ndarray  # [C, X, Y, Z] float32, axial last
    seg: np.ndarray | None  # [X, Y, Z] int16
    affine: np.ndarray  # the file's affine (4x4)
    spacing_mm: tuple[float, float, float]  # along the (permuted) X, Y, Z axes
    perm: tuple[int, int, int]  # permuted = file3d.transpose(perm)
    file_shape: tuple[int, ...]  # the file's spatial shape (2 or 3 dims)
    # arrays derived from this volume, kept while it lives (data_modules.preprocess: brain mask and intensity
    # statistics per normalisation setting, so that slices of one volume share them)
    derived: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def slice_thickness_mm(self) -> float:
        return self.spacing_mm[2]

    def to_file_layout(self, vol: np.ndarray) -> np.ndarray:
        """``[X, Y, Z, ...]`` in this (axial-last) layout -> the file's voxel layout."""
        inv = np.argsort(self.perm)
        extra = tuple(range(3, vol.ndim))
        out = np.transpose(vol, (*inv, *extra))
        if len(self.file_shape) == 2:
            out = out.reshape(self.file_shape + out.shape[3:])
        return out


def read_nifti(path: Path, subject: str | None = None, timepoint: str | None = None):
    """``(data float32, affine, spacing)`` of a NIfTI file; ``DataError`` naming the file if unreadable."""
    path = Path(path)
    where = f"subject {subject}, timepoint {timepoint}, file {path.name}" if subject else f"file {path}"
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel, gzip, zlib, EOF errors all mean the same thing to the user
        raise DataError(f"{where}: cannot read NIfTI ({type(exc).__name__}: {exc}); is the file truncated or not a .nii.gz? ({path})") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise DataError(f"{where}: expected a 2D or 3D image, got shape {data.shape} ({path})")
    affine = np.asarray(img.affine, dtype=np.float64)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    zooms = img.header.get_zooms()
    spacing = tuple(float(zooms[i]) if i < min(len(zooms), data.ndim) and zooms[i] > 0 else spacing[i] for i in range(3))
    return data, affine, spacing


def axial_perm(affine: np.ndarray, ndim: int) -> tuple[int, int, int]:
    if ndim == 2:
        return (0, 1, 2)
    codes = nib.aff2axcodes(affine)
    axial = next((i for i, c in enumerate(codes) if c in ("S", "I")), 2)
    return tuple([a for a in range(3) if a != axial] + [axial])  # type: ignore[return-value]


# --------------------------------------------------------------------------- voxel grids across timepoints
def read_grid(path: str | Path, timepoint: str = "") -> Grid:
    """The :class:`Grid` (spatial shape, affine) of a NIfTI file from its header (the voxels are not read)."""
    path = Path(path)
    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.shape)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # same as read_nifti: any failure means an unreadable file
        raise DataError(f"file {path}: cannot read the NIfTI header ({type(exc).__name__}: {exc})") from exc
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return Grid(shape, tuple(tuple(float(v) for v in row) for row in affine), timepoint, path.name)


def timepoint_grid(tp: Timepoint) -> Grid | None:
    """The grid of a timepoint: that of its first contrast file (in t1n, t1c, t2w, t2f order), else of its
    seg; None when no file header can be read (the voxel checks of ``inspect_timepoint`` report why).
    Contrasts and seg of one timepoint are checked against each other by ``inspect_timepoint``."""
    for path in [*(tp.images[m] for m in CONTRASTS if m in tp.images), *([tp.seg] if tp.seg is not None else [])]:
        try:
            return read_grid(path, tp.timepoint)
        except DataError:
            continue
    return None


def _x(values, fmt: str = "d") -> str:
    return "x".join(format(int(v) if fmt == "d" else float(v), fmt) for v in values)


def _corners(shape: Sequence[int]) -> np.ndarray:
    n = [*shape, *([1] * (3 - len(shape)))]
    return np.array([[i, j, k, 1.0] for i in (0, n[0] - 1) for j in (0, n[1] - 1) for k in (0, n[2] - 1)]).T


def grid_difference(ref: Grid, other: Grid, tolerance_mm: float = GRID_TOLERANCE_MM) -> str | None:
    """None when ``other`` is on ``ref``'s grid (same shape and every voxel centre within ``tolerance_mm``
    of the same voxel of ``ref``), else what differs, ``other``'s value first: ``"shape 20x24x12 vs
    24x20x12; axes swapped (orientation ARS vs RAS); ..."``, ``"flipped along left-right (orientation LAS
    vs RAS)"``, ``"voxel size 1x1x2 mm vs 1x1x1 mm"``, ``"rotated by 5 degrees"``, ``"affine differs by 40
    mm translation (origin moved by [40, 0, 0] mm)"``, and ``"voxel positions differ by up to X mm"``."""
    a, b = np.asarray(ref.affine, dtype=np.float64), np.asarray(other.affine, dtype=np.float64)
    same_shape = tuple(other.shape) == tuple(ref.shape)
    dist = float(np.linalg.norm(((b - a) @ _corners(ref.shape))[:3], axis=0).max()) if same_shape else math.inf
    if same_shape and dist <= tolerance_mm:
        return None
    parts = [] if same_shape else [f"shape {_x(other.shape)} vs {_x(ref.shape)}"]
    ca, cb = nib.aff2axcodes(a), nib.aff2axcodes(b)
    if [_AXIS_NAME[c] for c in cb] != [_AXIS_NAME[c] for c in ca]:
        parts.append(f"axes swapped (orientation {''.join(cb)} vs {''.join(ca)})")
    elif cb != ca:
        flipped = [_AXIS_NAME[x] for x, y in zip(ca, cb) if x != y]
        parts.append(f"flipped along {', '.join(flipped)} (orientation {''.join(cb)} vs {''.join(ca)})")
    else:
        za, zb = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
        if not np.allclose(za, zb, atol=1e-3):
            parts.append(f"voxel size {_x(zb, 'g')} mm vs {_x(za, 'g')} mm")
        cos = (np.trace((a[:3, :3] / za).T @ (b[:3, :3] / zb)) - 1.0) / 2.0
        angle = math.degrees(math.acos(min(1.0, max(-1.0, float(cos)))))
        if angle > 0.01:
            parts.append(f"rotated by {angle:.3g} degrees")
        shift = b[:3, 3] - a[:3, 3]
        if float(np.linalg.norm(shift)) > tolerance_mm:
            parts.append(f"affine differs by {float(np.linalg.norm(shift)):.3g} mm translation (origin moved by "
                         f"[{', '.join(f'{v:.3g}' for v in shift)}] mm)")
    if same_shape:
        parts.append(f"voxel positions differ by up to {dist:.3g} mm (tolerance {tolerance_mm:g} mm)")
    return "; ".join(parts)


def check_subject_grid(subject: Subject, tolerance_mm: float = GRID_TOLERANCE_MM, align: str = "require") -> list[Problem]:
    """Check that every timepoint of ``subject`` is on the voxel grid of its first timepoint (timepoints must be
    co-registered: same shape, and the same affine within ``tolerance_mm`` at every voxel centre).

    Reads file headers only. Returns one :class:`Problem` per timepoint off the grid, naming the subject, both
    timepoints and files, and what differs (see :func:`grid_difference`):

    * ``align="require"`` (default): severity ``error`` -- the subject must not be used.
    * ``align="resample"``: severity ``warning``, and the timepoint's ``align_to`` is set to the first
      timepoint's grid, so :func:`load_volume` (and ``load_slice``) resample it onto that grid (linear for the
      images, nearest for the seg, in world coordinates; outside the scan 0).

    Subjects with one timepoint, and the slice samples of the authors' 2D layout, have nothing to check.
    """
    if align not in ALIGN_MODES:
        raise ConfigError(f"align must be one of {', '.join(ALIGN_MODES)}, got {align!r}")
    if not tolerance_mm >= 0:
        raise ConfigError(f"grid_tolerance_mm must be >= 0, got {tolerance_mm!r}")
    tps = sorted((t for t in subject.timepoints if t.source_slice is None), key=lambda t: t.timepoint)
    grids = [(t, g) for t in tps if (g := timepoint_grid(t)) is not None]
    problems: list[Problem] = []
    if len(grids) < 2:
        return problems
    ref_tp, ref = grids[0]
    for tp, g in grids[1:]:
        tp.align_to = None
        diff = grid_difference(ref, g, tolerance_mm)
        if diff is None:
            continue
        head = f"not on the voxel grid of timepoint {ref_tp.timepoint} ({ref.file}): {diff}"
        if align == "resample":
            tp.align_to = ref
            problems.append(Problem(f"{head}; resampled onto that grid (align: resample)", subject.subject,
                                    tp.timepoint, g.file, "warning"))
        else:
            problems.append(Problem(f"{head}. The timepoints of a subject must be co-registered on one voxel grid "
                                    "(align: resample resamples them onto the first timepoint's grid)",
                                    subject.subject, tp.timepoint, g.file))
    return problems


def resample_to_grid(data: np.ndarray, affine: np.ndarray, grid: Grid, order: int = 1) -> np.ndarray:
    """``data`` (2D or 3D voxels with voxel-to-world ``affine``) sampled at the voxel centres of ``grid``, in world
    coordinates: ``order=1`` linear (images), ``order=0`` nearest (label maps); 0 outside the scan."""
    m = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(grid.affine, dtype=np.float64)
    m = np.round(m, 6)  # whole-voxel shifts and flips land exactly on source voxels
    src = data if data.ndim == 3 else data.reshape(*data.shape, *([1] * (3 - data.ndim)))
    out_shape = tuple(grid.shape) + (1,) * (3 - len(grid.shape))
    out = ndimage.affine_transform(src, m[:3, :3], offset=m[:3, 3], output_shape=out_shape, order=order,
                                   mode="constant", cval=0.0)
    return out.reshape(tuple(grid.shape))


class _TimepointReader:
    """Reads the files of one timepoint, collecting problems that name the subject, timepoint and file. ``ref``:
    the first file read well, ``(contrast, shape, affine, spacing, file name)``, that the others must agree with."""

    def __init__(self, tp: Timepoint):
        self.tp = tp
        self.problems: list[Problem] = []
        self.ref: tuple | None = None

    def bad(self, msg: str, file: Path | str | None) -> None:
        self.problems.append(Problem(msg, self.tp.subject, self.tp.timepoint, None if file is None else Path(file).name))

    def image(self, m: str, path: Path) -> np.ndarray | None:
        """One contrast, checked for finite voxels and against ``ref``; None (and a problem) when bad."""
        try:
            data, affine, spacing = read_nifti(path, self.tp.subject, self.tp.timepoint)
        except DataError as exc:
            self.bad(str(exc).split(": ", 1)[-1], path)
            return None
        nonfinite = int(data.size - np.isfinite(data).sum())
        if nonfinite:
            self.bad(f"{nonfinite} NaN/Inf voxel(s) in {m} ({path.name})", path)
            return None
        ref = self.ref
        if ref is None:
            self.ref = (m, data.shape, affine, spacing, path.name)
        elif data.shape != ref[1]:
            self.bad(f"shape {data.shape} of {m} ({path.name}) differs from shape {ref[1]} of {ref[0]} ({ref[4]})", path)
            return None
        elif not np.allclose(affine, ref[2], atol=AFFINE_ATOL_MM):
            self.bad(f"affine of {m} ({path.name}) differs from the affine of {ref[0]} ({ref[4]}): "
                     f"{np.round(affine, 3).tolist()} vs {np.round(ref[2], 3).tolist()}", path)
            return None
        return data

    def seg(self, path: Path) -> np.ndarray | None:
        """The segmentation: finite, on the images' grid, labels in {0,1,2,3}; None (and a problem) when bad."""
        try:
            sdata, saff, spacing = read_nifti(path, self.tp.subject, self.tp.timepoint)
        except DataError as exc:
            self.bad(str(exc).split(": ", 1)[-1], path)
            return None
        ref = self.ref
        if not np.isfinite(sdata).all():
            self.bad(f"NaN/Inf voxel(s) in the segmentation ({path.name})", path)
        elif ref is not None and sdata.shape != ref[1]:
            self.bad(f"segmentation shape {sdata.shape} ({path.name}) differs from image shape {ref[1]} ({ref[4]})", path)
        elif ref is not None and not np.allclose(saff, ref[2], atol=AFFINE_ATOL_MM):
            self.bad(f"segmentation affine ({path.name}) differs from the image affine ({ref[4]})", path)
        else:
            wrong = [v for v in np.unique(sdata).tolist() if v not in VALID_LABELS]
            if wrong:
                shown = ", ".join(f"{v:g}" for v in wrong[:8]) + (" ..." if len(wrong) > 8 else "")
                self.bad(f"segmentation labels outside {{0,1,2,3}}: {shown} ({path.name})", path)
                return None
            if ref is None:
                self.ref = ("seg", sdata.shape, saff, spacing, path.name)
            return sdata.astype(np.int16)
        return None

    def check_not_empty(self, arrays: dict[str, np.ndarray], n_contrasts: int) -> None:
        """An all-zero contrast is an error; all of them at once: an empty brain."""
        zero = [m for m, a in arrays.items() if not np.any(a)]
        if arrays and len(arrays) == n_contrasts and len(zero) == len(arrays):
            self.bad(f"empty brain: every voxel of every contrast ({', '.join(p.name for p in self.tp.images.values())}) "
                     "is zero", next(iter(self.tp.images.values())))
        else:
            for m in zero:
                self.bad(f"contrast {m} ({self.tp.images[m].name}) is all zero: an empty or failed image", self.tp.images[m])


def inspect_timepoint(tp: Timepoint, contrasts: Sequence[str] = CONTRASTS, read_seg: bool = True,
                      report_missing: bool = True) -> tuple[Volume | None, list[Problem]]:
    """Read and check every file of a timepoint; returns the volume (None on errors) and all problems.

    ``report_missing=False`` leaves missing modality files out of the problems (discovery reported them).
    A contrast whose voxels are all zero is an error naming its file. When ``tp.align_to`` is set (by
    :func:`check_subject_grid` with ``align="resample"``) the checked arrays are resampled onto that grid
    and the volume carries its affine and shape.
    """
    contrasts = tuple(contrasts)
    r = _TimepointReader(tp)
    arrays: dict[str, np.ndarray] = {}
    for m in contrasts:
        path = tp.images.get(m)
        if path is None:
            if report_missing:
                r.bad(f"missing modality {m}", f"{tp.subject}-{tp.timepoint}-{m}.nii.gz")
            continue
        data = r.image(m, path)
        if data is not None:
            arrays[m] = data
    seg = r.seg(tp.seg) if read_seg and tp.seg is not None else None
    r.check_not_empty(arrays, len(contrasts))
    if any(p.severity == "error" for p in r.problems) or r.ref is None or len(arrays) != len(contrasts) or not arrays:
        return None, r.problems
    _, shape, affine, spacing, _ = r.ref
    if tp.align_to is not None:  # off the subject's grid, align=resample: onto the first timepoint's grid
        grid = tp.align_to
        arrays = {m: resample_to_grid(a, affine, grid, order=1).astype(np.float32) for m, a in arrays.items()}
        if seg is not None:
            seg = resample_to_grid(seg.astype(np.float32), affine, grid, order=0).astype(np.int16)
        if all(not np.any(a) for a in arrays.values()):
            r.bad(f"no voxel of this scan lies inside the grid of timepoint {grid.timepoint} ({grid.file}) it is "
                  "resampled onto: the two scans do not overlap in world coordinates", next(iter(tp.images.values())))
            return None, r.problems
        affine, shape = np.asarray(grid.affine, dtype=np.float64), tuple(grid.shape)
        spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    return _axial_last(tp, contrasts, arrays, seg, affine, spacing, shape), r.problems


def _axial_last(tp: Timepoint, contrasts: tuple[str, ...], arrays: dict[str, np.ndarray], seg: np.ndarray | None,
                affine: np.ndarray, spacing: Sequence[float], shape: tuple[int, ...]) -> Volume:
    """The :class:`Volume` of checked arrays: contrasts stacked, the axial voxel axis moved last (2D: ``Z = 1``)."""
    perm = axial_perm(affine, len(shape))
    images = np.stack([arrays[m] for m in contrasts])
    if images.ndim == 3:
        images = images[..., None]
        seg = None if seg is None else seg[..., None]
    images = np.ascontiguousarray(np.transpose(images, (0, *(p + 1 for p in perm))))
    if seg is not None:
        seg = np.ascontiguousarray(np.transpose(seg, perm))
    sp = tuple(float(spacing[p]) for p in perm)
    return Volume(tp, contrasts, images, seg, affine, sp, perm, tuple(shape))  # type: ignore[arg-type]


def load_volume(tp: Timepoint, contrasts: Sequence[str] = CONTRASTS, read_seg: bool = True) -> Volume:
    """Like :func:`inspect_timepoint` but raises :class:`DataError` (all problems in the message)."""
    vol, problems = inspect_timepoint(tp, contrasts, read_seg)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise DataError("; ".join(str(p) for p in errors))
    assert vol is not None
    return vol
