"""``LongitudinalDataModule``: subjects over time for prediction and evaluation, and the ODE's size table.

    dm = LongitudinalDataModule("data/phantom", image_size=64)      # or .from_config(cfg.data)
    dm.subjects                      # [Subject(subject, timepoints=[Timepoint(...)], rt_start_day, rt_end_day)]
    dm.sizes("SUB01")                # per timepoint: day, volume_mm3, max_area_mm2, max_area_slice, reference area
    dm.sizes_table("reference")      # rows subject, day, size, rt_start_day, rt_end_day -> tgrowth.ode.fit_cohort
    dm.load_slice("SUB01", "002")    # SliceSample at the subject's reference slice
    dm.pairs()                       # (prior timepoint, target timepoint) for every later scan

Sizes: ``volume`` (3D tumour volume, mm^3), ``largest`` (largest axial tumour area of each timepoint, mm^2,
possibly on different slices), ``reference`` (area in mm^2 on one slice per subject: ``slice_index`` if
given, else the largest-tumour slice of the subject's last segmented timepoint; the 2D pipeline generates
on that slice). Timepoints without a segmentation (to be predicted) have no size and are left out of the
table (they are listed by :meth:`sizes` with ``size`` None). Subjects with errors are reported in
``.problems`` and left out whole, unless ``strict=True``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_modules.formats import DataSet, Problem, Subject, Timepoint, discover
from data_modules.slices import (
    Preprocessing,
    SliceCache,
    SliceSample,
    _DataModuleBase,
    _plain,
    _report,
    preprocess_slices,
)
from data_modules.volumes import (
    label_set,
    load_volume,
    tumour_area_per_slice,
    tumour_volume_mm3,
)
from tgrowth.errors import DataError

__all__ = ["LongitudinalDataModule", "TimepointSizes", "PredictionPair"]

log = logging.getLogger("tgrowth.data")
SIZE_MODES = ("reference", "largest", "volume")


@dataclass
class TimepointSizes:
    subject: str
    timepoint: str
    day: float
    volume_mm3: float | None
    max_area_mm2: float | None
    max_area_slice: int | None
    areas_mm2: np.ndarray | None  # per axial slice (axial-last layout)
    slice_thickness_mm: float


@dataclass
class PredictionPair:
    """Predict ``target`` from ``prior`` (the latest earlier scan with a segmentation) at ``slice_index``."""

    subject: str
    prior: Timepoint
    target: Timepoint
    slice_index: int
    rt_start_day: float | None
    rt_end_day: float | None


class LongitudinalDataModule(_DataModuleBase):
    def __init__(self, root: str | Path | None = None, *, strict: bool = False, **kwargs: Any):
        super().__init__()
        from omegaconf import OmegaConf

        from tgrowth.config.data import LongitudinalDataConfig

        if root is not None:
            kwargs["root"] = str(root)
        try:
            self.cfg = OmegaConf.merge(OmegaConf.structured(LongitudinalDataConfig), OmegaConf.create(_plain(kwargs)))
        except Exception as exc:
            raise DataError(f"invalid LongitudinalDataModule settings: {exc}") from exc
        if OmegaConf.is_missing(self.cfg, "root"):
            raise DataError("LongitudinalDataModule needs a data root")
        if self.cfg.size not in SIZE_MODES:
            raise DataError(f"size must be one of {', '.join(SIZE_MODES)}, not {self.cfg.size!r}")
        self.strict = strict
        self.prep = Preprocessing.from_config(self.cfg)
        self.labels = label_set(self.cfg.labels if isinstance(self.cfg.labels, str) else list(self.cfg.labels))
        self.cache = SliceCache(self.cfg.cache_dir) if self.cfg.cache_dir else None
        self.problems: list[Problem] = []
        self.dataset: DataSet = discover(self.cfg.root, self.cfg.format, self.prep.contrasts, strict=strict)
        if self.dataset.format == "authors2d":
            raise DataError(f"{self.cfg.root}: the authors' 2D layout holds single slices without dates; "
                            "LongitudinalDataModule needs the longitudinal (or BraTS) format")
        self.problems.extend(self.dataset.problems)
        from data_modules.splits import assign_splits

        sp = self.cfg.splits
        self.split_of, sprob = assign_splits(self.dataset.subjects, self.dataset.root, (sp.train, sp.val, sp.test), sp.seed, sp.file)
        self.problems.extend(sprob)
        self._sizes: dict[str, list[TimepointSizes]] = {}
        self._bad: set[str] = set(self.dataset.bad_subjects)
        _report(self.dataset.problems + sprob)

    @classmethod
    def from_config(cls, cfg: Any, strict: bool = False) -> LongitudinalDataModule:
        """From a ``LongitudinalDataConfig`` section; keys that a command's subclass of the section adds are ignored."""
        from dataclasses import fields

        from tgrowth.config.data import LongitudinalDataConfig

        known = {f.name for f in fields(LongitudinalDataConfig)}
        return cls(strict=strict, **{k: v for k, v in _plain(cfg).items() if k in known})

    # ------------------------------------------------------------------ subjects
    @property
    def subjects(self) -> list[Subject]:
        """Subjects without errors (of the configured split, if any), in name order."""
        out = [s for s in self.dataset.subjects if s.subject not in self._bad]
        if self.cfg.split:
            out = [s for s in out if self.split_of.get(s.subject) == self.cfg.split]
        return out

    def subject(self, name: str) -> Subject:
        return self.dataset.subject(name)

    def _fail(self, subject: str, exc: DataError) -> None:
        if self.strict:
            raise exc
        self._bad.add(subject)
        p = Problem(str(exc), subject)
        self.problems.append(p)
        log.warning("data error: %s (subject left out)", p)

    # ------------------------------------------------------------------ sizes
    def sizes(self, subject: str) -> list[TimepointSizes]:
        """Tumour sizes of every timepoint of ``subject`` (reads and checks the segmentations)."""
        if subject in self._sizes:
            return self._sizes[subject]
        subj = self.dataset.subject(subject)
        out = []
        for tp in subj.timepoints:
            if tp.seg is None:
                out.append(TimepointSizes(subject, tp.timepoint, tp.day, None, None, None, None, float("nan")))
                continue
            vol = load_volume(tp, self.prep.contrasts)  # checks images too: a bad scan is a bad subject
            areas = tumour_area_per_slice(vol.seg, vol.spacing_mm, self.labels)
            k = int(np.argmax(areas)) if areas.max(initial=0) > 0 else None
            out.append(TimepointSizes(
                subject, tp.timepoint, tp.day, tumour_volume_mm3(vol.seg, vol.spacing_mm, self.labels),
                float(areas.max(initial=0.0)), k, areas, vol.slice_thickness_mm,
            ))
        self._sizes[subject] = out
        return out

    def reference_slice(self, subject: str) -> int:
        """``slice_index`` if configured, else the largest-tumour slice of the last segmented timepoint."""
        if self.cfg.slice_index is not None:
            return int(self.cfg.slice_index)
        segd = [s for s in self.sizes(subject) if s.areas_mm2 is not None]
        if not segd:
            raise DataError(f"subject {subject}: no timepoint has a segmentation, so there is no reference slice")
        last = segd[-1]
        if last.max_area_slice is None:
            for s in reversed(segd):
                if s.max_area_slice is not None:
                    return s.max_area_slice
            raise DataError(f"subject {subject}: no tumour in any segmentation, so there is no reference slice")
        return last.max_area_slice

    def sizes_table(self, size: str | None = None, slice_index: int | dict[str, int] | None = None,
                    slice_mode: str | None = None) -> list[dict]:
        """Rows ``subject, day, size, rt_start_day, rt_end_day`` (the ODE fit's input), one per segmented timepoint.

        ``size``: ``reference`` (mm^2 on the reference slice), ``largest`` (mm^2) or ``volume`` (mm^3);
        default the configured ``size``. ``slice_index`` overrides the reference slice (one int, or per subject).
        """
        size = size or slice_mode or self.cfg.size  # slice_mode: the name docs/architecture.md uses
        if size not in SIZE_MODES:
            raise DataError(f"size must be one of {', '.join(SIZE_MODES)}, not {size!r}")
        rows = []
        for subj in list(self.subjects):
            try:
                sizes = self.sizes(subj.subject)
                if size == "reference":
                    if isinstance(slice_index, dict):
                        k = slice_index.get(subj.subject)
                    else:
                        k = slice_index
                    k = self.reference_slice(subj.subject) if k is None else int(k)
                sub_rows = []
                for s in sizes:
                    if s.areas_mm2 is None:
                        continue
                    if size == "volume":
                        v = s.volume_mm3
                    elif size == "largest":
                        v = s.max_area_mm2
                    else:
                        if not 0 <= k < len(s.areas_mm2):
                            raise DataError(f"subject {subj.subject}: slice {k} is outside the {len(s.areas_mm2)} axial slices")
                        v = float(s.areas_mm2[k])
                    sub_rows.append({"subject": subj.subject, "day": float(s.day), "size": float(v),
                                     "rt_start_day": subj.rt_start_day, "rt_end_day": subj.rt_end_day})
            except DataError as exc:
                self._fail(subj.subject, exc)
                continue
            rows.extend(sub_rows)
        return rows

    def write_sizes_csv(self, path: str | Path, size: str | None = None) -> Path:
        from tgrowth.io import write_csv

        return write_csv(path, self.sizes_table(size), ["subject", "day", "size", "rt_start_day", "rt_end_day"])

    # ------------------------------------------------------------------ images
    def load_slice(self, subject: str, timepoint: str, slice_index: int | None = None) -> SliceSample:
        """A preprocessed slice (``image [C,H,W]`` in [-1, 1]); default slice: the reference slice."""
        tp = self.dataset.subject(subject).timepoint(timepoint)
        k = self.reference_slice(subject) if slice_index is None else int(slice_index)
        key = SliceCache.key(tp, self.prep) if self.cache is not None else None
        if key is not None:
            hit = self.cache.get(key, k)
            if hit is not None:
                return hit
        vol = load_volume(tp, self.prep.contrasts)
        s = preprocess_slices(vol, [k], self.prep)[0]
        if key is not None:
            self.cache.put(key, s)
        return s

    def pairs(self, targets: str = "all") -> list[PredictionPair]:
        """For each subject: ``all`` later timepoints, or only the ``last``, each with its latest earlier
        segmented scan as the prior (subjects without such a prior are reported and skipped)."""
        out = []
        for subj in list(self.subjects):
            try:
                k = self.reference_slice(subj.subject)
            except DataError as exc:
                self._fail(subj.subject, exc)
                continue
            tps = subj.timepoints[1:] if targets == "all" else subj.timepoints[-1:]
            for tgt in tps:
                priors = [t for t in subj.timepoints if t.day < tgt.day and t.seg is not None]
                if not priors:
                    self.problems.append(Problem("no earlier segmented scan to predict from", subj.subject, tgt.timepoint, None, "warning"))
                    continue
                out.append(PredictionPair(subj.subject, priors[-1], tgt, k, subj.rt_start_day, subj.rt_end_day))
        return out

    def predict_dataloader(self):
        """Batches of prior slices for :meth:`pairs` (``image``, ``prior_day``, ``target_day``, ``meta``)."""
        return torch.utils.data.DataLoader(_PairDataset(self, self.pairs()), batch_size=int(self.cfg.batch_size),
                                           shuffle=False, num_workers=int(self.cfg.num_workers))

    def error_rows(self) -> list[dict]:
        return [p.as_dict() for p in self.problems]


class _PairDataset(torch.utils.data.Dataset):
    def __init__(self, dm: LongitudinalDataModule, pairs: list[PredictionPair]):
        self.dm, self.pairs = dm, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        p = self.pairs[i]
        s = self.dm.load_slice(p.subject, p.prior.timepoint, p.slice_index)
        item = {
            "image": s.image, "prior_day": torch.tensor(p.prior.day), "target_day": torch.tensor(p.target.day),
            "meta": {"subject": p.subject, "prior_timepoint": p.prior.timepoint, "target_timepoint": p.target.timepoint,
                     "slice_index": p.slice_index, "spacing_mm": torch.tensor(s.spacing_mm, dtype=torch.float32)},
        }
        if s.seg is not None:
            item["seg"] = s.seg
        return item
