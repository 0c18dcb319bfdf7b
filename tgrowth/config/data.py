"""Config schema of `tgrowth data-check` and the data sections other commands reuse (owned by the data work).

Training commands embed :class:`SliceDataConfig` as their ``data`` section, predict/evaluation commands
:class:`LongitudinalDataConfig`; both build their DataModule with ``SliceDataModule.from_config(cfg.data)``
/ ``LongitudinalDataModule.from_config(cfg.data)``. The fields of these sections are the DataModules'
constructor arguments (with the same defaults); :func:`section_kwargs` turns a section into those arguments and
:func:`as_section` a nested section (a dict or DictConfig) into its dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tgrowth.config.base import RunConfig, doc
from tgrowth.errors import DataError
from tgrowth.vocab import CONTRASTS

__all__ = [
    "AugmentationConfig",
    "DataCheckConfig",
    "LongitudinalDataConfig",
    "NormalisationConfig",
    "SliceDataConfig",
    "SliceSelectionConfig",
    "SplitConfig",
    "as_section",
    "reject_unknown",
    "section_kwargs",
]

T = TypeVar("T")
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
class WindowConfig:
    """Training windows of ``resize: window`` (native-resolution ``image_size`` windows centred on the tumour)."""

    jitter_mm: float = doc(8.0, "Training windows: the centre moves uniformly by up to this much (mm) per axis.")
    healthy_fraction: float = doc(0.2, "Training windows centred on a random brain pixel instead of the tumour "
                                  "(slices without tumour always are), so the models also see healthy tissue.")


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
    contrasts: list[str] = doc(list(CONTRASTS), "MRI contrasts, in channel order (any subset of t1n, t1c, t2w, t2f).")
    image_size: int = doc(256, "Output slice size (square); 256 for real data, small for demos.")
    resize: str = doc("auto", "auto (crop_or_pad when the slice fits, else resize), crop_or_pad (centre), resize (pad to square, then resample), window (native resolution: image_size windows centred on the tumour, see window.*; never resampled).")
    labels: Any = doc("whole", "Tumour label set for areas: whole (1,2,3), core (1,3), enhancing (3) or a list of labels.")
    slices: SliceSelectionConfig = doc(SliceSelectionConfig(), "Slice selection.")
    normalisation: NormalisationConfig = doc(NormalisationConfig(), "Intensity normalisation.")
    augmentation: AugmentationConfig = doc(AugmentationConfig(), "Training augmentation.")
    window: WindowConfig = doc(WindowConfig(), "Tumour windows (resize=window).")
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
    contrasts: list[str] = doc(list(CONTRASTS), "MRI contrasts, in channel order.")
    image_size: int = doc(256, "Slice size (square) given to the models.")
    resize: str = doc("auto", "auto, crop_or_pad, resize or window (see the slice data section; window: the prior's tumour centres the window of both scans).")
    labels: Any = doc("whole", "Tumour label set for sizes: whole, core, enhancing or a list of labels.")
    size: str = doc("reference", "Tumour size for the ODE table: reference (area at one slice per subject: the largest-tumour slice of its last segmented timepoint), largest (largest axial area of each timepoint), volume (3D volume, mm^3).")
    slice_index: int | None = doc(None, "Fixed axial slice for size=reference and for predictions (None: per subject, as above).")
    normalisation: NormalisationConfig = doc(NormalisationConfig(), "Intensity normalisation.")
    grid_tolerance_mm: float = doc(0.1, _GRID_TOL_HELP)
    align: str = doc("require", _ALIGN_HELP)
    splits: SplitConfig = doc(SplitConfig(), "Subject splits (for choosing evaluation subjects).")
    split: str | None = doc(None, "Use only subjects of this split (train, val, test); None or all: every subject.")
    subjects: list[str] = doc([], "Only these subject ids (wins over split; empty: the subjects of split).")
    cache_dir: str | None = doc(None, "Cache folder for preprocessed slices; None: no cache.")
    batch_size: int = doc(1, "Batch size of predict_dataloader.")
    num_workers: int = doc(0, "DataLoader worker processes.")


@dataclass
class DataCheckConfig(RunConfig):
    """``tgrowth data-check ROOT [--json]``: validate a data set before a long run."""

    root: str = doc("???", "Data set folder (a bare argument sets it).")
    json: bool = doc(False, "Print machine-readable JSON instead of text (--json).")
    format: str = doc("auto", "Data format: auto, brats, longitudinal, authors2d.")
    contrasts: list[str] = doc(list(CONTRASTS), "Contrasts that every timepoint must have.")
    grid_tolerance_mm: float = doc(0.1, _GRID_TOL_HELP)
    align: str = doc("require", _ALIGN_HELP + " resample turns the error into a warning.")
    output_dir: str | None = doc(None, "If set, also write report.json and errors.csv there.")


def _merged(value: Any, schema: type, keep: list[str] | None = None) -> DictConfig:
    """``value`` (dict, DictConfig or dataclass instance; only its ``keep`` keys if given) over ``schema``'s defaults,
    values converted to the field types; unknown keys and wrong types are a DataError naming them."""
    try:
        cfg = value if isinstance(value, DictConfig) else OmegaConf.create(value)
        if keep is not None:
            cfg = OmegaConf.masked_copy(cfg, [k for k in keep if k in cfg])
        return OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except OmegaConfBaseException as exc:
        raise DataError(f"invalid {schema.__name__} settings: {exc}") from exc


def as_section(value: Any, schema: type[T]) -> T:
    """A nested config section as an instance of ``schema``: None -> the defaults; an instance as it is; a dict,
    DictConfig or other dataclass instance merged over the defaults (``{"healthy": 2}`` -> ``SliceSelectionConfig(
    healthy=2)``)."""
    if value is None:
        return schema()
    if isinstance(value, schema):
        return value
    return OmegaConf.to_object(_merged(value, schema))  # type: ignore[return-value]


def section_kwargs(section: Any, schema: type) -> dict[str, Any]:
    """A config section (DictConfig, dataclass instance or dict) -> the keyword arguments of the constructor it
    configures: ``schema``'s fields (nested sections as their dataclasses, lists as lists). Keys that a command's
    subclass of the section adds are left out, and so are missing values (``???``: the constructor says what is
    missing)."""
    if is_dataclass(section) and not isinstance(section, type):
        section = OmegaConf.structured(section)
    names = [f.name for f in fields(schema)]
    merged = _merged(section, schema, keep=names)
    present = [n for n in names if not OmegaConf.is_missing(merged, n)]
    return OmegaConf.to_object(OmegaConf.masked_copy(merged, present))  # type: ignore[return-value]


def reject_unknown(owner: str, unknown: dict[str, Any], schema: type) -> None:
    """A DataError naming the keyword arguments of ``owner`` that are not settings of ``schema``."""
    if unknown:
        known = ", ".join(f.name for f in fields(schema))
        raise DataError(f"invalid {owner} settings: unknown key(s) {', '.join(sorted(unknown))} (settings: {known})")
