"""Config schema of `tgrowth data-check` and the data sections other commands reuse (owned by the data work).

Training commands embed :class:`SliceDataConfig` as their ``data`` section, predict/evaluation commands
:class:`LongitudinalDataConfig`; both build their DataModule with ``SliceDataModule.from_config(cfg.data)``
/ ``LongitudinalDataModule.from_config(cfg.data)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tgrowth.config.base import RunConfig, doc

__all__ = [
    "AugmentationConfig",
    "DataCheckConfig",
    "LongitudinalDataConfig",
    "NormalisationConfig",
    "SliceDataConfig",
    "SliceSelectionConfig",
    "SplitConfig",
]

_CONTRASTS = ["t1n", "t1c", "t2w", "t2f"]
_GRID_TOL_HELP = ("Timepoints of a subject must share a voxel grid (co-registered): same shape, and every voxel centre"
                  " within this distance (mm) of the first timepoint's.")
_ALIGN_HELP = ("A timepoint off its subject's grid: require (an error: the subject is not used) or resample (resampled"
               " onto the first timepoint's grid in world coordinates; linear for images, nearest for the seg).")


@dataclass
class NormalisationConfig:
    """Per-modality intensity normalisation inside the brain, to [-1, 1] (background -1)."""

    lower_percentile: float = doc(0.5, "Clip each contrast at this percentile of its brain voxels (maps to -1).")
    upper_percentile: float = doc(99.5, "Clip each contrast at this percentile of its brain voxels (maps to +1).")
    brain_mask: str = doc("nonzero", "Brain mask: nonzero (any contrast != 0, skull-stripped data such as BraTS) or otsu (Otsu threshold of the mean contrast, for noisy backgrounds).")


@dataclass
class SliceSelectionConfig:
    """Which axial slices of each 3D volume become samples (2D inputs pass through as they are)."""

    tumour: str = doc("all", "Tumour slices per volume: all (every axial slice with at least min_tumour_pixels tumour pixels), largest (the largest-tumour slice only) or none.")
    indices: list[int] = doc([], "Extra axial slice indices taken from every volume (negative counts from the top).")
    healthy: int = doc(0, "Tumour-free slices per volume (label 0), evenly spaced over the slices with enough brain.")
    min_tumour_pixels: int = doc(1, "A slice counts as a tumour slice from this many tumour pixels (of the label set).")
    min_brain_fraction: float = doc(0.1, "Healthy slices need at least this fraction of brain pixels.")


@dataclass
class AugmentationConfig:
    """Training-time augmentation (torchio; the same spatial transform on images and seg). Off for val/test."""

    enabled: bool = doc(False, "Augment training samples.")
    flip_lr: float = doc(0.5, "Probability of a left-right flip (first in-plane axis).")
    flip_ap: float = doc(0.0, "Probability of an anterior-posterior flip (second in-plane axis).")
    affine_p: float = doc(0.5, "Probability of a small in-plane affine transform.")
    rotation_deg: float = doc(5.0, "Maximum in-plane rotation in degrees.")
    scale: float = doc(0.05, "Maximum relative scaling (0.05: factors in [0.95, 1.05]).")
    translation_mm: float = doc(2.0, "Maximum in-plane translation in mm.")
    intensity_p: float = doc(0.5, "Probability of intensity jitter (per contrast gain and offset inside the brain).")
    intensity_gain: float = doc(0.05, "Std of the multiplicative gain jitter (x * (1 + N(0, s))).")
    intensity_shift: float = doc(0.05, "Std of the additive shift jitter, in [-1, 1] units.")


@dataclass
class SplitConfig:
    """Subject-level splits. ROOT/splits.csv (columns subject,split) wins where present; else these ratios."""

    train: float = doc(0.8, "Fraction of subjects for training.")
    val: float = doc(0.1, "Fraction of subjects for validation.")
    test: float = doc(0.1, "Fraction of subjects for testing.")
    seed: int = doc(0, "Seed of the deterministic subject hash that orders subjects before the ratio cut.")
    file: str = doc("splits.csv", "Splits file inside the data root (ignored when absent).")


@dataclass
class SliceDataConfig:
    """2D slice data for denoiser / regressor / segmenter training (``data_modules.slices.SliceDataModule``)."""

    root: str = doc("???", "Data set folder (BraTS, longitudinal or the authors' 2D layout).")
    format: str = doc("auto", "Data format: auto, brats, longitudinal, authors2d.")
    contrasts: list[str] = doc(list(_CONTRASTS), "MRI contrasts, in channel order (any subset of t1n, t1c, t2w, t2f).")
    image_size: int = doc(256, "Output slice size (square); 256 for real data, small for demos.")
    resize: str = doc("auto", "auto (crop_or_pad when the slice fits, else resize), crop_or_pad (centre), resize (pad to square, then resample).")
    labels: Any = doc("whole", "Tumour label set for areas: whole (1,2,3), core (1,3), enhancing (3) or a list of labels.")
    slices: SliceSelectionConfig = doc(SliceSelectionConfig(), "Slice selection.")
    normalisation: NormalisationConfig = doc(NormalisationConfig(), "Intensity normalisation.")
    augmentation: AugmentationConfig = doc(AugmentationConfig(), "Training augmentation.")
    splits: SplitConfig = doc(SplitConfig(), "Subject splits.")
    cache_dir: str | None = doc(None, "Folder for preprocessed slices (torch tensors), keyed by input files + preprocessing config; None: no cache.")
    batch_size: int = doc(8, "Batch size.")
    num_workers: int = doc(0, "DataLoader worker processes.")
    include_timepoints: str = doc("with_seg", "Longitudinal data: which timepoints give slices: with_seg (all that have a seg) or first (the first scan of each subject).")


@dataclass
class LongitudinalDataConfig:
    """Longitudinal data for prediction / evaluation (``data_modules.longitudinal.LongitudinalDataModule``)."""

    root: str = doc("???", "Data set folder (longitudinal format; BraTS gives one timepoint per subject).")
    format: str = doc("auto", "Data format: auto, longitudinal, brats.")
    contrasts: list[str] = doc(list(_CONTRASTS), "MRI contrasts, in channel order.")
    image_size: int = doc(256, "Slice size (square) given to the models.")
    resize: str = doc("auto", "auto, crop_or_pad or resize (see the slice data section).")
    labels: Any = doc("whole", "Tumour label set for sizes: whole, core, enhancing or a list of labels.")
    size: str = doc("reference", "Tumour size for the ODE table: reference (area at one slice per subject: the largest-tumour slice of its last segmented timepoint), largest (largest axial area of each timepoint), volume (3D volume, mm^3).")
    slice_index: int | None = doc(None, "Fixed axial slice for size=reference and for predictions (None: per subject, as above).")
    normalisation: NormalisationConfig = doc(NormalisationConfig(), "Intensity normalisation.")
    grid_tolerance_mm: float = doc(0.1, _GRID_TOL_HELP)
    align: str = doc("require", _ALIGN_HELP)
    splits: SplitConfig = doc(SplitConfig(), "Subject splits (for choosing evaluation subjects).")
    split: str | None = doc(None, "Use only subjects of this split (train, val, test); None: all.")
    cache_dir: str | None = doc(None, "Cache folder for preprocessed slices; None: no cache.")
    batch_size: int = doc(1, "Batch size of predict_dataloader.")
    num_workers: int = doc(0, "DataLoader worker processes.")


@dataclass
class DataCheckConfig(RunConfig):
    """``tgrowth data-check ROOT [--json]``: validate a data set before a long run."""

    root: str = doc("???", "Data set folder (a bare argument sets it).")
    json: bool = doc(False, "Print machine-readable JSON instead of text (--json).")
    format: str = doc("auto", "Data format: auto, brats, longitudinal, authors2d.")
    contrasts: list[str] = doc(list(_CONTRASTS), "Contrasts that every timepoint must have.")
    grid_tolerance_mm: float = doc(0.1, _GRID_TOL_HELP)
    align: str = doc("require", _ALIGN_HELP + " resample turns the error into a warning.")
    output_dir: str | None = doc(None, "If set, also write report.json and errors.csv there.")
