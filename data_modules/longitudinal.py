"""``LongitudinalDataModule``: subjects over time for prediction and evaluation (the plan stage of
``tgrowth predict``), and the ODE's size table.

    dm = LongitudinalDataModule("data/phantom", image_size=64)      # or .from_config(cfg.data)
    dm.selected()                    # the chosen subjects: `subjects` if given, else those of `split`; name order
    dm.problems_of(subject)          # ["reason", ...]: discovery errors + timepoints off the subject's voxel grid
    dm.load_slice(timepoint, 12)     # SliceSample in model geometry (None: the timepoint's largest-tumour slice)
    dm.subjects                      # the selected subjects without known errors
    dm.sizes("SUB01")                # per timepoint: day, volume_mm3, max_area_mm2, max_area_slice, reference area
    dm.sizes_table("reference")      # rows subject, day, size, rt_start_day, rt_end_day -> tgrowth.ode.fit_cohort
    dm.load_slice("SUB01", "002")    # by names: the SliceSample at the subject's reference slice
    dm.pairs()                       # (prior timepoint, target timepoint) for every later scan

Sizes: ``volume`` (3D tumour volume, mm^3), ``largest`` (largest axial tumour area of each timepoint, mm^2,
possibly on different slices), ``reference`` (area in mm^2 on one slice per subject: ``slice_index`` if
given, else the largest-tumour slice of the subject's last segmented timepoint; the 2D pipeline generates
on that slice). Timepoints without a segmentation (to be predicted) have no size and are left out of the
table (they are listed by :meth:`sizes` with ``size`` None). Subjects with errors are reported in
``.problems`` and left out whole, unless ``strict=True``.

Every volume this module reads comes after the voxel-grid check of its subject (``check_subject_grid`` with
``grid_tolerance_mm`` and ``align``), so with ``align="resample"`` a timepoint off its subject's grid is read
resampled onto it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from data_modules.cache import SliceCache
from data_modules.formats import DataSet, Problem, Subject, Timepoint, discover, log_problems
from data_modules.geometry import SliceSample
from data_modules.preprocess import Preprocessing, SliceLoader
from data_modules.slices import LoaderDataModule
from data_modules.splits import assign_splits
from data_modules.volumes import Volume, check_subject_grid, tumour_area_per_slice, tumour_volume_mm3
from tgrowth.config.data import (
    LongitudinalDataConfig,
    SplitConfig,
    as_section,
    section_kwargs,
)
from tgrowth.errors import DataError
from tgrowth.io import write_csv

__all__ = ["LongitudinalDataModule", "TimepointSizes", "PredictionPair"]

log = logging.getLogger("tgrowth.data")
SIZE_MODES = ("reference", "largest", "volume")
_L = LongitudinalDataConfig()  # the schema's defaults are the constructor's


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


class LongitudinalDataModule(LoaderDataModule):
    """Longitudinal subjects in the models' geometry. The arguments are the fields of
    :class:`tgrowth.config.data.LongitudinalDataConfig` (same defaults; ``normalisation`` / ``splits`` as their
    dataclasses or dicts of their keys), plus ``strict`` (raise at the first error instead of leaving the subject
    out). Discovery runs here; splits, sizes, grids and volumes when first needed.
    """

    def __init__(self, root: str | Path | None = None, *, format: str = _L.format,  # noqa: A002
                 contrasts: Sequence[str] = tuple(_L.contrasts), image_size: int = _L.image_size,
                 resize: str = _L.resize, labels: Any = _L.labels, size: str = _L.size,
                 slice_index: int | None = _L.slice_index, normalisation: Any = None,
                 grid_tolerance_mm: float = _L.grid_tolerance_mm, align: str = _L.align,
                 splits: SplitConfig | dict | None = None, split: str | None = _L.split,
                 subjects: Sequence[str] = tuple(_L.subjects), cache_dir: str | Path | None = _L.cache_dir,
                 batch_size: int = _L.batch_size, num_workers: int = _L.num_workers, strict: bool = False,
                 **unknown: Any):
        super().__init__(root, unknown, LongitudinalDataConfig)
        if size not in SIZE_MODES:
            raise DataError(f"size must be one of {', '.join(SIZE_MODES)}, not {size!r}")
        self.size, self.slice_index = size, slice_index
        self.grid_tolerance_mm, self.align = float(grid_tolerance_mm), str(align)
        self.splits, self.split, self.subject_ids = as_section(splits, SplitConfig), split, list(subjects)
        self.batch_size, self.num_workers, self.strict = int(batch_size), int(num_workers), strict
        self.loader = SliceLoader(Preprocessing.of(contrasts, image_size, resize, normalisation), labels,
                                  SliceCache(cache_dir) if cache_dir else None)
        self.dataset: DataSet = discover(self.root, format, self.prep.contrasts, strict=strict)
        if self.dataset.format == "authors2d":
            raise DataError(f"{self.root}: the authors' 2D layout holds single slices without dates; "
                            "LongitudinalDataModule needs the longitudinal (or BraTS) format")
        self.problems.extend(self.dataset.problems)
        log_problems(self.dataset.problems)
        self._split_of: dict[str, str] | None = None
        self._sizes: dict[str, list[TimepointSizes]] = {}
        self._grid: dict[str, list[Problem]] = {}
        self._bad: set[str] = set(self.dataset.bad_subjects)

    @classmethod
    def from_config(cls, cfg: Any, strict: bool = False) -> LongitudinalDataModule:
        """From a ``LongitudinalDataConfig`` section; keys that a command's subclass of the section adds are ignored."""
        return cls(**section_kwargs(cfg, LongitudinalDataConfig), strict=strict)

    # ------------------------------------------------------------------ subjects
    @property
    def split_of(self) -> dict[str, str]:
        """``{subject: split}`` (``ROOT/splits.csv``, else the hash cut of ``splits``); read when first needed."""
        if self._split_of is None:
            sp = self.splits
            self._split_of, problems = assign_splits(self.dataset.subjects, self.dataset.root,
                                                     (sp.train, sp.val, sp.test), sp.seed, sp.file)
            self.problems.extend(problems)
            log_problems(problems)
        return self._split_of

    def selected(self) -> list[Subject]:
        """The chosen subjects in name order: ``subjects`` when given (unknown ids are a DataError), else those of
        ``split`` (None or ``all``: every subject; a split without subjects is a DataError). Subjects with errors
        are included: :meth:`problems_of` says why not to use one."""
        every = sorted(self.dataset.subjects, key=lambda s: s.subject)
        if self.subject_ids:
            missing = [s for s in self.subject_ids if s not in {x.subject for x in every}]
            if missing:
                raise DataError(f"data.subjects: {missing} not found in {self.root}")
            return [s for s in every if s.subject in set(self.subject_ids)]
        if self.split in (None, "", "all"):
            return every
        chosen = [s for s in every if self.split_of.get(s.subject) == self.split]
        if not chosen:
            raise DataError(f"data.split={self.split}: no subject of {self.root} is in the {self.split} split "
                            f"(splits: {sorted(set(self.split_of.values()))}); use data.split=all or data.subjects=[...]")
        return chosen

    @property
    def subjects(self) -> list[Subject]:
        """The selected subjects without known errors (discovery's, and those found reading their files)."""
        return [s for s in self.selected() if s.subject not in self._bad]

    def subject(self, name: str) -> Subject:
        return self.dataset.subject(name)

    def problems_of(self, subject: Subject) -> list[str]:
        """The error-level reasons not to use ``subject`` (empty: usable): what discovery found
        (``DataSet.subject_errors``) and timepoints off the first timepoint's voxel grid (``check_subject_grid``
        with ``grid_tolerance_mm`` / ``align``; with ``align="resample"`` these are warnings and the timepoints
        are read resampled), as ``tgrowth data-check`` reports them."""
        errors = self.dataset.subject_errors().get(subject.subject, [])
        return [*errors, *(str(p) for p in self.grid_problems(subject) if p.severity == "error")]

    def grid_problems(self, subject: Subject) -> list[Problem]:
        """``check_subject_grid`` of ``subject``, run once (it marks the timepoints to resample, so it runs before
        any of the subject's volumes is read)."""
        if subject.subject not in self._grid:
            self._grid[subject.subject] = check_subject_grid(subject, self.grid_tolerance_mm, self.align)
        return self._grid[subject.subject]

    def _fail(self, subject: str, exc: DataError) -> None:
        if self.strict:
            raise exc
        self._bad.add(subject)
        p = Problem(str(exc), subject)
        self.problems.append(p)
        log.warning("data error: %s (subject left out)", p)

    def _volume_checked(self, tp: Timepoint) -> None:
        """Run the grid check of ``tp``'s subject if ``tp`` is one of this data set's timepoints."""
        subject = next((s for s in self.dataset.subjects if s.subject == tp.subject), None)
        if subject is not None and any(t is tp for t in subject.timepoints):
            self.grid_problems(subject)

    def _volume(self, tp: Timepoint) -> Volume:
        """The volume of a timepoint, after its subject's grid check."""
        self._volume_checked(tp)
        return self.loader.volume(tp)

    # ------------------------------------------------------------------ sizes
    def sizes(self, subject: str) -> list[TimepointSizes]:
        """Tumour sizes of every timepoint of ``subject`` (reads and checks the segmentations)."""
        if subject in self._sizes:
            return self._sizes[subject]
        out = []
        for tp in self.dataset.subject(subject).timepoints:
            if tp.seg is None:
                out.append(TimepointSizes(subject, tp.timepoint, tp.day, None, None, None, None, float("nan")))
                continue
            vol = self._volume(tp)  # checks images too: a bad scan is a bad subject
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
        if self.slice_index is not None:
            return int(self.slice_index)
        segd = [s for s in self.sizes(subject) if s.areas_mm2 is not None]
        if not segd:
            raise DataError(f"subject {subject}: no timepoint has a segmentation, so there is no reference slice")
        for s in reversed(segd):
            if s.max_area_slice is not None:
                return s.max_area_slice
        raise DataError(f"subject {subject}: no tumour in any segmentation, so there is no reference slice")

    def sizes_table(self, size: str | None = None, slice_index: int | dict[str, int] | None = None,
                    slice_mode: str | None = None) -> list[dict]:
        """Rows ``subject, day, size, rt_start_day, rt_end_day`` (the ODE fit's input), one per segmented timepoint.

        ``size``: ``reference`` (mm^2 on the reference slice), ``largest`` (mm^2) or ``volume`` (mm^3);
        default the configured ``size``. ``slice_index`` overrides the reference slice (one int, or per subject).
        """
        size = size or slice_mode or self.size  # slice_mode: the name docs/architecture.md uses
        if size not in SIZE_MODES:
            raise DataError(f"size must be one of {', '.join(SIZE_MODES)}, not {size!r}")
        rows = []
        for subj in list(self.subjects):
            k = slice_index.get(subj.subject) if isinstance(slice_index, dict) else slice_index
            try:
                rows.extend(self._size_rows(subj, size, k))
            except DataError as exc:
                self._fail(subj.subject, exc)
        return rows

    def _size_rows(self, subj: Subject, size: str, k: int | None) -> list[dict]:
        """:meth:`sizes_table` rows of one subject (``k``: the slice for ``reference``; None: the reference slice)."""
        sizes = self.sizes(subj.subject)
        if size == "reference":
            k = self.reference_slice(subj.subject) if k is None else int(k)
        rows = []
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
            rows.append({"subject": subj.subject, "day": float(s.day), "size": float(v),
                         "rt_start_day": subj.rt_start_day, "rt_end_day": subj.rt_end_day})
        return rows

    def write_sizes_csv(self, path: str | Path, size: str | None = None) -> Path:
        return write_csv(path, self.sizes_table(size), ["subject", "day", "size", "rt_start_day", "rt_end_day"])

    # ------------------------------------------------------------------ images
    @overload
    def load_slice(self, timepoint: Timepoint, slice_index: int | None = None) -> SliceSample: ...

    @overload
    def load_slice(self, timepoint: str, slice_index: str, index: int | None = None) -> SliceSample: ...

    def load_slice(self, timepoint, slice_index=None, index=None):
        """``load_slice(timepoint, k)``: slice ``k`` of a :class:`Timepoint` of this data set in the model geometry
        (``image_size``, ``contrasts``, ``resize``, ``normalisation``; None: its largest-tumour slice of ``labels``),
        the same as ``data_modules.preprocess.load_slice`` with these settings, read through the cache when
        ``cache_dir`` is set, after the subject's grid check.

        ``load_slice(subject, timepoint, k=None)``: by names; None is the subject's reference slice.
        """
        if isinstance(timepoint, str):
            tp = self.dataset.subject(timepoint).timepoint(str(slice_index))
            return self.load_slice(tp, self.reference_slice(timepoint) if index is None else int(index))
        self._volume_checked(timepoint)
        return self.loader.load(timepoint, slice_index)

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
        return torch.utils.data.DataLoader(_PairDataset(self, self.pairs()), batch_size=self.batch_size,
                                           shuffle=False, num_workers=self.num_workers)


class _PairDataset(torch.utils.data.Dataset):
    def __init__(self, dm: LongitudinalDataModule, pairs: list[PredictionPair]):
        self.dm, self.pairs = dm, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        p = self.pairs[i]
        s = self.dm.load_slice(p.prior, p.slice_index)
        item = {
            "image": s.image, "prior_day": torch.tensor(p.prior.day), "target_day": torch.tensor(p.target.day),
            "meta": {"subject": p.subject, "prior_timepoint": p.prior.timepoint, "target_timepoint": p.target.timepoint,
                     "slice_index": p.slice_index, "spacing_mm": torch.tensor(s.spacing_mm, dtype=torch.float32)},
        }
        if s.seg is not None:
            item["seg"] = s.seg
        return item
