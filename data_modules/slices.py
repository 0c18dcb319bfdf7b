"""2D slice data for training: :class:`SliceDataset` and the Lightning :class:`SliceDataModule`.

Public API (see docs/architecture.md, "Contracts"); the pieces live in their own modules and the names the
docs use are importable from here too:

* :func:`load_slice` -> :class:`SliceSample` (``image [C,H,W]`` in [-1, 1], ``seg [H,W]``, ``spacing_mm``
  (row, col) of the output pixels, ``affine``/``volume_shape`` of the input file, ``slice_index``) and
  :meth:`SliceSample.to_volume` that puts an ``[H,W]`` / ``[C,H,W]`` array back into the input geometry
  (:mod:`data_modules.preprocess`, :mod:`data_modules.geometry`).
* :func:`tumour_area_mm2`, :func:`tumour_volume_mm3`, :func:`largest_tumour_slice` (from ``volumes``).
* :class:`SliceDataModule` (Lightning) batches ``image [B,C,H,W]``, ``seg [B,H,W]`` (long), ``area_mm2 [B]``,
  ``area_frac [B]`` (tumour pixels / H*W), ``label [B]`` (0 healthy, 1 diseased) and ``meta``.
* :class:`ResumableLoader` (:mod:`data_modules.resumable`): the training loader, resumable mid-epoch.

Slices are chosen per volume by :func:`data_modules.selection.select_slices`, preprocessed by a
:class:`data_modules.preprocess.SliceLoader` (normalisation, crop/pad/resize, the caches), and augmented on the
training split by a :class:`data_modules.augment.SliceAugmentation` built once and handed to the dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from data_modules.augment import SliceAugmentation
from data_modules.cache import SliceCache
from data_modules.formats import DataSet, Problem, Subject, Timepoint, discover, log_problems
from data_modules.geometry import SliceSample
from data_modules.normalise import volume_brain
from data_modules.preprocess import Preprocessing, SliceLoader, load_slice, preprocess_slices
from data_modules.resumable import ResumableLoader, mix_seed
from data_modules.selection import select_slices
from data_modules.splits import SPLITS, assign_splits
from data_modules.volumes import (
    largest_tumour_slice,
    load_volume,
    tumour_area_mm2,
    tumour_mask,
    tumour_volume_mm3,
)
from data_modules.window import Compose, TumourWindow
from tgrowth.config.data import (
    AugmentationConfig,
    SliceDataConfig,
    SliceSelectionConfig,
    SplitConfig,
    WindowConfig,
    as_section,
    reject_unknown,
    section_kwargs,
)
from tgrowth.errors import DataError
from tgrowth.io import write_csv

__all__ = [
    "LoaderDataModule",
    "ResumableLoader",
    "SliceDataModule",
    "SliceDataset",
    "SliceSample",
    "largest_tumour_slice",
    "load_slice",
    "mix_seed",
    "tumour_area_mm2",
    "tumour_volume_mm3",
]

log = logging.getLogger("tgrowth.data")
INCLUDE_TIMEPOINTS = ("with_seg", "first")
_S = SliceDataConfig()  # the schema's defaults are the constructor's


class SliceDataset(torch.utils.data.Dataset):
    """Items ``(timepoint, slice_index)`` read through ``loader``; ``transform`` (e.g. a :class:`SliceAugmentation`,
    built once) maps ``(image, seg, spacing_mm) -> (image, seg)``. Returns the batch dict of the module docstring."""

    def __init__(self, items: list[tuple[Timepoint, int]], loader: SliceLoader,
                 transform: Callable[[torch.Tensor, torch.Tensor, Sequence[float]], tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.items = list(items)
        self.loader = loader
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, i: int) -> SliceSample:
        tp, k = self.items[i]
        return self.loader.load(tp, k)

    def __getitem__(self, i: int) -> dict:
        s = self.sample(i)
        image, seg = s.image, s.seg
        if seg is None:
            raise DataError(f"subject {s.subject}, timepoint {s.timepoint}: no segmentation for slice {s.slice_index}")
        if self.transform is not None:
            image, seg = self.transform(image, seg, s.spacing_mm)
        tum = tumour_mask(seg, self.loader.labels)
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


class LoaderDataModule(pl.LightningDataModule):
    """A DataModule that reads slices through one :class:`SliceLoader` (``.loader``: its settings and caches) and
    collects what it finds wrong in ``.problems``."""

    loader: SliceLoader

    def __init__(self, root: str | Path | None, unknown: dict[str, Any], schema: type):
        """Check the settings: no keyword outside ``schema`` (the config section), and a data root."""
        super().__init__()
        reject_unknown(type(self).__name__, unknown, schema)
        if root is None or str(root) in ("", "???"):
            raise DataError(f"{type(self).__name__} needs a data root")
        self.root = str(root)
        self.problems: list[Problem] = []

    @property
    def prep(self) -> Preprocessing:
        return self.loader.prep

    @property
    def labels(self) -> tuple[int, ...]:
        return self.loader.labels

    def error_rows(self) -> list[dict]:
        """Rows for ``errors.csv`` (severity, subject, timepoint, file, message)."""
        return [p.as_dict() for p in self.problems]

    def write_errors_csv(self, path: str | Path) -> Path:
        return write_csv(path, self.error_rows(), ["severity", "subject", "timepoint", "file", "message"])


class SliceDataModule(LoaderDataModule):
    """2D slices for denoiser / regressor / segmenter training, split by subject.

    ``SliceDataModule(root, image_size=64, contrasts=["t1c"], slices={"healthy": 2}, cache_dir=...)`` or
    ``SliceDataModule.from_config(cfg.data)`` with a :class:`tgrowth.config.data.SliceDataConfig` section (its
    fields are this constructor's arguments, with the same defaults; nested sections as their dataclasses or
    dicts of their keys). ``seed``: the training order and augmentation draws (see ``ResumableLoader``).
    After :meth:`setup`: ``.dataset`` (discovery), ``.split_of`` (subject -> split), ``.items`` (split ->
    ``[(Timepoint, slice)]``), ``.problems`` (everything reported; subjects with errors are left out
    whole, unless ``strict=True``, which raises at the first error).
    """

    def __init__(self, root: str | Path | None = None, *, format: str = _S.format,  # noqa: A002
                 contrasts: Sequence[str] = tuple(_S.contrasts), image_size: int = _S.image_size,
                 resize: str = _S.resize, labels: Any = _S.labels, slices: SliceSelectionConfig | dict | None = None,
                 normalisation: Any = None, augmentation: AugmentationConfig | dict | None = None,
                 splits: SplitConfig | dict | None = None, window: WindowConfig | dict | None = None,
                 cache_dir: str | Path | None = _S.cache_dir,
                 batch_size: int = _S.batch_size, num_workers: int = _S.num_workers,
                 include_timepoints: str = _S.include_timepoints, strict: bool = False, seed: int = 0,
                 **unknown: Any):
        super().__init__(root, unknown, SliceDataConfig)
        if include_timepoints not in INCLUDE_TIMEPOINTS:
            raise DataError(f"include_timepoints must be with_seg or first, not {include_timepoints!r}")
        self.format, self.include_timepoints = str(format), include_timepoints
        self.slices = as_section(slices, SliceSelectionConfig)
        self.splits = as_section(splits, SplitConfig)
        self.augmentation = as_section(augmentation, AugmentationConfig)
        self.window = as_section(window, WindowConfig)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.strict, self.seed = strict, int(seed)
        self.loader = SliceLoader(Preprocessing.of(contrasts, image_size, resize, normalisation), labels,
                                  SliceCache(cache_dir) if cache_dir else None)
        self.dataset: DataSet | None = None
        self.split_of: dict[str, str] = {}
        self.items: dict[str, list[tuple[Timepoint, int]]] = {name: [] for name in SPLITS}
        self._datasets: dict[str, SliceDataset] = {}

    @classmethod
    def from_config(cls, cfg: Any, strict: bool = False, seed: int = 0) -> SliceDataModule:
        """From a ``SliceDataConfig`` section; keys that a command's subclass of the section adds are ignored."""
        return cls(**section_kwargs(cfg, SliceDataConfig), strict=strict, seed=seed)

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
        ds = discover(self.root, self.format, self.prep.contrasts, strict=self.strict)
        self.problems.extend(ds.problems)
        sp = self.splits
        self.split_of, sproblems = assign_splits(ds.subjects, ds.root, (sp.train, sp.val, sp.test), sp.seed, sp.file)
        for p in sproblems:
            self._problem(p)
        bad = ds.bad_subjects
        for subj in ds.subjects:
            if subj.subject not in bad:
                self.items[self.split_of[subj.subject]].extend(self._subject_items(subj))
        self.dataset = ds
        log_problems(self.problems)
        for name in SPLITS:
            self._datasets[name] = SliceDataset(self.items[name], self.loader, self._transform(name == "train"))
        n_bad = len({p.subject for p in self.problems if p.severity == "error" and p.subject})
        log.info("slice data %s (%s): %s slices train / %s val / %s test; %d subject(s) left out with errors",
                 self.root, ds.format, *(len(self.items[n]) for n in SPLITS), n_bad)

    def _transform(self, train: bool):
        """The dataset transform, built once: the tumour window (``resize=window``), then augmentation (train)."""
        window = None
        if self.prep.resize == "window":
            w = self.window
            window = TumourWindow(self.prep.image_size, self.labels, w.jitter_mm if train else 0.0,
                                  w.healthy_fraction if train else 0.0, random=train)
        augment = SliceAugmentation.from_config(self.augmentation) if train else None
        parts = [t for t in (window, augment) if t is not None]
        return None if not parts else parts[0] if len(parts) == 1 else Compose(parts)

    def _subject_items(self, subj: Subject) -> list[tuple[Timepoint, int]]:
        """The ``(timepoint, slice)`` items of a subject; none (and a problem) when a volume is bad."""
        tps = [t for t in subj.timepoints if t.seg is not None]
        for t in subj.timepoints:
            if t.seg is None:
                self._problem(Problem("no segmentation: left out of the slice data (labels and areas need it)",
                                      t.subject, t.timepoint, f"{t.subject}-{t.timepoint}-seg.nii.gz", "warning"))
        if self.include_timepoints == "first":
            tps = tps[:1]
        try:
            return [(t, k) for t in tps for k in self._index(t)]
        except DataError as exc:
            if self.strict:
                raise
            self.problems.append(Problem(str(exc), subj.subject, None, None))
            return []

    def _index(self, tp: Timepoint) -> list[int]:
        """Selected slices of a timepoint (cached); with a cache, also preprocesses them in one decode."""
        sel = {**asdict(self.slices), "labels": list(self.labels)}
        cache = self.loader.cache
        if cache is not None:
            hit = cache.get_index(self.loader.cache_key(tp), sel)
            if hit is not None:
                return hit
        vol = load_volume(tp, self.prep.contrasts)
        s = self.slices
        ks = select_slices(vol.seg, volume_brain(vol, self.prep.brain_mask), s.tumour, s.indices, int(s.healthy),
                           int(s.min_tumour_pixels), float(s.min_brain_fraction), sel["labels"])
        if cache is not None:
            for sample in preprocess_slices(vol, ks, self.prep):
                cache.put(self.loader.cache_key(tp), sample)
            cache.put_index(self.loader.cache_key(tp), sel, ks)
        return ks

    def dataset_for(self, split: str) -> SliceDataset:
        self.setup()
        if split not in self._datasets:
            raise DataError(f"unknown split {split!r} (train, val, test)")
        return self._datasets[split]

    def _loader(self, split: str, shuffle: bool) -> torch.utils.data.DataLoader:
        nw = self.num_workers
        return torch.utils.data.DataLoader(
            self.dataset_for(split), batch_size=self.batch_size, shuffle=shuffle, num_workers=nw,
            persistent_workers=nw > 0, pin_memory=False, drop_last=False,
        )

    def train_dataloader(self) -> ResumableLoader:
        nw = self.num_workers
        return ResumableLoader.for_trainer(self.trainer, self.dataset_for("train"), self.batch_size, self.seed,
                                           num_workers=nw, persistent_workers=nw > 0, pin_memory=False,
                                           drop_last=False)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def predict_dataloader(self):
        return self._loader("test", False)
