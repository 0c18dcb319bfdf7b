"""Caches of the slice pipeline, each owned by the loader that uses it (nothing module-global):

* :class:`SliceCache`: preprocessed slices on disk (``torch.save``, loaded with ``weights_only=True``), keyed by
  the timepoint's files and the preprocessing settings;
* :class:`VolumeLRU`: the last few decoded volumes in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from data_modules.formats import Timepoint
from data_modules.geometry import SliceSample
from data_modules.volumes import Volume, load_volume
from tgrowth.io import atomic_path, write_json

__all__ = ["CACHE_VERSION", "SliceCache", "VolumeLRU", "fingerprint"]

log = logging.getLogger("tgrowth.data")
CACHE_VERSION = 2


def fingerprint(tp: Timepoint) -> tuple:
    """The identity of a timepoint's files: resolved path, size and mtime of each (and the grid it is resampled
    onto, if any)."""
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
    def key(tp: Timepoint, settings: dict) -> str:
        """The entry of a timepoint preprocessed with ``settings`` (``Preprocessing.as_dict()``)."""
        blob = json.dumps({"v": CACHE_VERSION, "files": fingerprint(tp), "prep": settings,
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
        write_json(self._folder(key) / f"index-{_hash(selection)}.json", {"selection": selection, "slices": slices})


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class VolumeLRU:
    """The last ``size`` volumes read, keyed by the timepoint's files (:func:`fingerprint`) and the contrasts: a
    loader that asks for the same scan again (the prior of several targets, slices of one volume) decodes it once."""

    def __init__(self, size: int = 2):
        self.size = size
        self.items: OrderedDict = OrderedDict()

    def get(self, tp: Timepoint, contrasts: tuple[str, ...]) -> Volume:
        key = (fingerprint(tp), contrasts)
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        vol = load_volume(tp, contrasts)
        self.items[key] = vol
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return vol
