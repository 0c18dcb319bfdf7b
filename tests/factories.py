"""Tiny hand-made NIfTI data sets in each of the three formats, for tests (any engineer's).

Everything is deterministic and small (a 24x20x12 box by default), so a whole data set writes in well
under a second. The brain is an ellipsoid (background exactly 0), each contrast has its own intensity
level plus a smooth gradient and a little noise; the tumour is a sphere of labels 1 (core), 3 (enhancing
rim) and 2 (oedema shell), centred at ``center`` with radius ``radius`` voxels (0: no tumour).

    from tests.factories import write_longitudinal, write_brats, write_authors2d, write_nifti
    root = write_longitudinal(tmp_path / "long", n_subjects=3, n_timepoints=3)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tgrowth.vocab import CONTRASTS

LEVELS = {"t1n": 100.0, "t1c": 120.0, "t2w": 80.0, "t2f": 90.0}
TUMOUR_GAIN = {"t1n": 0.8, "t1c": 1.6, "t2w": 1.5, "t2f": 1.4}


def affine_for(spacing: Sequence[float] = (1.0, 1.0, 1.0), origin: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    aff = np.diag([*map(float, spacing[:3]), 1.0]) if len(spacing) >= 3 else np.diag([*map(float, spacing), 1.0, 1.0])
    aff[: len(origin), 3] = origin[: 3]
    return aff


def write_nifti(path: str | Path, arr: np.ndarray, affine: np.ndarray | None = None,
                spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> Path:
    """Write ``arr`` as NIfTI (float32, or int16 for integer arrays) with ``affine`` (default: diag(spacing))."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(arr)
    arr = arr.astype(np.int16) if np.issubdtype(arr.dtype, np.integer) else arr.astype(np.float32)
    aff = affine if affine is not None else affine_for(spacing)
    img = nib.Nifti1Image(arr, aff)
    img.header.set_zooms(tuple(float(s) for s in np.linalg.norm(aff[:3, :3], axis=0))[: arr.ndim])
    nib.save(img, str(path))
    return path


def tumour_seg(shape: Sequence[int], center: Sequence[float], radius: float) -> np.ndarray:
    """Labels: 1 inside 0.4 r, 3 up to 0.7 r, 2 up to r (whole-tumour sphere of ``radius`` voxels)."""
    grid = np.indices(tuple(shape), dtype=np.float64)
    d = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, center)))
    seg = np.zeros(tuple(shape), dtype=np.int16)
    if radius <= 0:
        return seg
    seg[d <= radius] = 2
    seg[d <= 0.7 * radius] = 3
    seg[d <= 0.4 * radius] = 1
    return seg


def brain_mask(shape: Sequence[int]) -> np.ndarray:
    grid = np.indices(tuple(shape), dtype=np.float64)
    c = [(n - 1) / 2.0 for n in shape]
    r = [max(n * 0.42, 1.0) for n in shape]
    return sum(((g - cc) / rr) ** 2 for g, cc, rr in zip(grid, c, r)) <= 1.0


def phantom(shape: Sequence[int] = (24, 20, 12), center: Sequence[float] | None = None, radius: float = 3.0,
            seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({contrast: volume}, seg)`` of one hand-made scan (2D when ``shape`` has two entries)."""
    shape = tuple(shape)
    rng = np.random.default_rng(seed)
    brain = brain_mask(shape)
    center = tuple((n - 1) / 2.0 for n in shape) if center is None else tuple(center)
    seg = tumour_seg(shape, center, radius)
    seg[~brain] = 0
    ramp = np.indices(shape, dtype=np.float64)[0] / max(shape[0] - 1, 1)
    images = {}
    for m in CONTRASTS:
        v = LEVELS[m] * (1.0 + 0.3 * ramp) + rng.normal(0.0, 2.0, shape)
        v = np.where(seg > 0, v * TUMOUR_GAIN[m], v)
        images[m] = np.where(brain, v, 0.0).astype(np.float32)
    return images, seg


def write_scan(folder: Path, prefix: str, images: dict, seg: np.ndarray | None, affine: np.ndarray,
               contrasts: Sequence[str] = CONTRASTS) -> None:
    for m in contrasts:
        write_nifti(folder / f"{prefix}-{m}.nii.gz", images[m], affine)
    if seg is not None:
        write_nifti(folder / f"{prefix}-seg.nii.gz", seg, affine)


def write_brats(root: str | Path, n_subjects: int = 3, shape: Sequence[int] = (24, 20, 12),
                spacing: Sequence[float] = (1.0, 1.0, 1.0), radius: float = 3.0, prefix: str = "BraTS-GLI",
                seed: int = 0) -> Path:
    """``ROOT/<ID>/<ID>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` for IDs ``BraTS-GLI-0000k-000``."""
    root = Path(root)
    for i in range(n_subjects):
        sid = f"{prefix}-{i:05d}-000"
        images, seg = phantom(shape, radius=radius, seed=seed + i)
        write_scan(root / sid, sid, images, seg, affine_for(spacing))
    return root


def write_longitudinal(root: str | Path, n_subjects: int = 3, n_timepoints: int = 3, shape: Sequence[int] = (24, 20, 12),
                       spacing: Sequence[float] = (1.0, 1.0, 1.0), days: Sequence[float] | None = None,
                       radii: Sequence[float] | None = None, rt: tuple[float, float] | None = (10.0, 52.0),
                       splits: dict[str, str] | None = None, seg_missing: Sequence[tuple[str, str]] = (),
                       subject_prefix: str = "SUB", seed: int = 0) -> Path:
    """Format 2: ``timeline.csv`` + ``ROOT/<S>-<TP>/<S>-<TP>-<mod>.nii.gz``; the tumour grows by ``radii``.

    ``splits``: write ``splits.csv`` with these ``{subject: split}``; ``seg_missing``: (subject, tp) pairs
    written without a seg (timepoints to be predicted).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    days = list(days) if days is not None else [0.0, 30.0, 75.0, 120.0, 180.0][:n_timepoints]
    radii = list(radii) if radii is not None else [2.0 + 1.0 * t for t in range(n_timepoints)]
    lines = ["subject,timepoint,day,rt_start_day,rt_end_day"]
    for i in range(n_subjects):
        s = f"{subject_prefix}{i + 1:02d}"
        for t in range(n_timepoints):
            tp = f"{t:03d}"
            images, seg = phantom(shape, radius=radii[t], seed=seed + 100 * i + t)
            keep_seg = (s, tp) not in set(map(tuple, seg_missing))
            write_scan(root / f"{s}-{tp}", f"{s}-{tp}", images, seg if keep_seg else None, affine_for(spacing))
            rs, re_ = ("", "") if rt is None else (f"{rt[0]:g}", f"{rt[1]:g}")
            lines.append(f"{s},{tp},{days[t]:g},{rs},{re_}")
    (root / "timeline.csv").write_text("\n".join(lines) + "\n")
    if splits:
        (root / "splits.csv").write_text("subject,split\n" + "".join(f"{k},{v}\n" for k, v in splits.items()))
    return root


def write_authors2d(root: str | Path, patients: dict[str, tuple[str, Sequence[int], float]] | None = None,
                    size: Sequence[int] = (24, 20), seed: int = 0) -> Path:
    """The authors' layout: ``{training,validation,testing}/<pid>_<slice>/brats_train_<pid>_<mod>_<slice>_w.nii.gz``.

    ``patients``: ``{pid: (folder, slices, tumour radius)}``; training slices carry their seg inside the
    folder, validation/testing ones in ``test_labels/<pid>_<slice>-label.nii.gz`` (as in the real sample).
    """
    root = Path(root)
    patients = patients or {"00000001": ("training", [3, 4], 0.0), "00000002": ("validation", [5], 0.0),
                            "00000003": ("testing", [7, 8], 4.0)}
    for j, (pid, (folder, slices, radius)) in enumerate(patients.items()):
        for sl in slices:
            images, seg = phantom(tuple(size), radius=radius, seed=seed + 10 * j + sl)
            d = root / folder / f"{pid}_{sl}"
            for m in CONTRASTS:
                v = images[m] / (images[m].max() or 1.0)  # the authors' files are already in [0, 1]
                write_nifti(d / f"brats_train_{pid}_{m}_{sl}_w.nii.gz", v.astype(np.float64), affine_for((1.0, 1.0)))
            if folder == "training":
                write_nifti(d / f"brats_train_{pid}_seg_{sl}_w.nii.gz", seg, affine_for((1.0, 1.0)))
            else:
                write_nifti(root / "test_labels" / f"{pid}_{sl}-label.nii.gz", seg, affine_for((1.0, 1.0)))
    return root


def truncate(path: str | Path, keep: float = 0.5) -> Path:
    """Cut a file to a fraction of its bytes (a truncated download)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path
