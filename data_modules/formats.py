"""Discovery of the three on-disk formats -> one record list (``DataSet`` of ``Subject``/``Timepoint``).

Formats (see docs/data.md):

* ``brats``: BraTS 2023 cross-sectional, ``ROOT/<ID>/<ID>-{t1n,t1c,t2w,t2f,seg}.nii.gz``; one timepoint
  ``000`` at day 0 per subject.
* ``longitudinal`` (our public format): ``ROOT/timeline.csv`` (``subject,timepoint,day,rt_start_day,rt_end_day``)
  and ``ROOT/<SUBJECT>-<TP>/<SUBJECT>-<TP>-{t1n,t1c,t2w,t2f,seg}.nii.gz``; seg optional per timepoint.
* ``authors2d``: the paper authors' 2D slice layout, ``ROOT/{training,validation,testing}/<pid>_<slice>/
  brats_train_<pid>_<mod>_<slice>_w.nii.gz`` with labels of validation/testing in
  ``ROOT/test_labels/<pid>_<slice>-label.nii.gz``; every slice folder is one ``Timepoint`` (day 0,
  ``timepoint`` ``"000"``, ``source_slice`` = the slice number), the folder gives the split.

Discovery checks only what file names and ``timeline.csv`` tell (fast); voxel-level checks (readable,
shapes/affines agree, finite, labels) happen when a timepoint is loaded (:mod:`data_modules.volumes`).
Problems are collected, never silently dropped: each names subject, timepoint and file.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tgrowth.errors import DataError
from tgrowth.vocab import CONTRASTS

__all__ = [
    "CONTRASTS",
    "FORMATS",
    "DataSet",
    "Grid",
    "Problem",
    "Subject",
    "Timepoint",
    "discover",
    "detect_format",
    "log_problems",
    "TIMELINE_COLUMNS",
]

log = logging.getLogger("tgrowth.data")
FORMATS: tuple[str, ...] = ("brats", "longitudinal", "authors2d")
TIMELINE_COLUMNS: tuple[str, ...] = ("subject", "timepoint", "day", "rt_start_day", "rt_end_day")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
AUTHORS_SPLIT_FOLDERS = {"training": "train", "validation": "val", "testing": "test"}


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Grid:
    """The voxel grid of a scan: spatial ``shape`` and the 4x4 voxel-to-world ``affine`` (mm), from a file header.

    ``timepoint`` and ``file`` say where it was read (for messages).
    """

    shape: tuple[int, ...]
    affine: tuple[tuple[float, ...], ...]  # 4x4, as nested tuples (hashable; np.asarray(grid.affine) for maths)
    timepoint: str = ""
    file: str = ""

    def key(self) -> tuple:
        """A hashable, JSON-able identity of the grid (shape + affine rounded to 1e-6 mm)."""
        return (tuple(int(n) for n in self.shape), tuple(round(float(v), 6) for row in self.affine for v in row))


@dataclass
class Timepoint:
    """One scan: the files of one subject at one date."""

    subject: str
    timepoint: str  # "000", "001", ... in time order
    day: float  # days since the first scan
    images: dict[str, Path]  # contrast -> file (present files only; missing ones are problems)
    seg: Path | None = None
    source_slice: int | None = None  # authors2d: the slice number the 2D file was cut at
    split: str | None = None  # authors2d: from the folder
    # set by data_modules.volumes.check_subject_grid(..., align="resample") when this scan is not on the grid of
    # its subject's first timepoint: loading it (load_volume / load_slice) then resamples it onto that grid
    align_to: Grid | None = None

    @property
    def name(self) -> str:
        s = f"{self.subject} timepoint {self.timepoint}"
        return s if self.source_slice is None else f"{s} slice {self.source_slice}"

    @property
    def files(self) -> list[Path]:
        return [*self.images.values(), *([self.seg] if self.seg is not None else [])]


@dataclass
class Subject:
    subject: str
    timepoints: list[Timepoint] = field(default_factory=list)
    rt_start_day: float | None = None
    rt_end_day: float | None = None
    split: str | None = None  # authors2d only; other formats use data_modules.splits

    def timepoint(self, tp: str) -> Timepoint:
        for t in self.timepoints:
            if t.timepoint == tp:
                return t
        raise DataError(f"subject {self.subject}: no timepoint {tp!r} (has {[t.timepoint for t in self.timepoints]})")


@dataclass
class Problem:
    """A problem found in the data; ``severity`` is ``error`` (subject unusable) or ``warning``."""

    message: str
    subject: str | None = None
    timepoint: str | None = None
    file: str | None = None
    severity: str = "error"

    def __str__(self) -> str:
        where = []
        if self.subject is not None:
            where.append(f"subject {self.subject}")
        if self.timepoint is not None:
            where.append(f"timepoint {self.timepoint}")
        if self.file is not None:
            where.append(f"file {self.file}")
        head = ", ".join(where)
        return f"{head}: {self.message}" if head else self.message

    def as_dict(self) -> dict:
        return {
            "severity": self.severity,
            "subject": self.subject,
            "timepoint": self.timepoint,
            "file": self.file,
            "message": self.message,
            "text": str(self),
        }

    def error(self) -> DataError:
        return DataError(str(self))


def log_problems(problems: Sequence[Problem]) -> None:
    """Errors as warnings, warnings as info lines, on the ``tgrowth.data`` logger."""
    for p in problems:
        (log.warning if p.severity == "error" else log.info)("data %s: %s", p.severity, p)


@dataclass
class DataSet:
    root: Path
    format: str
    subjects: list[Subject]
    problems: list[Problem] = field(default_factory=list)

    @property
    def bad_subjects(self) -> set[str]:
        return {p.subject for p in self.problems if p.severity == "error" and p.subject is not None}

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def subject_errors(self) -> dict[str, list[str]]:
        """``{subject: [message, ...]}``: the error-level problems discovery found, per subject.

        The same problems ``tgrowth data-check`` reports from discovery (duplicate or unparsable
        ``timeline.csv`` rows, days that do not increase with the timepoint number, RT days that differ
        between a subject's rows or end before they start, ``<SUBJECT>-<TP>`` folders without a row and rows
        without a folder, missing contrasts). A subject listed here must not be used (skip it with these
        reasons, or stop under ``strict``). Keys may name a subject that has no :class:`Subject` record (a
        folder whose subject has no row at all). Errors that belong to no subject (a row with an empty
        subject) are in :attr:`errors` with ``subject`` None. Messages are ``str(Problem)``: they name the
        subject, timepoint and file. Voxel-level checks need the files read: see
        :func:`data_modules.volumes.check_subject_grid` (timepoints on one grid) and ``load_volume``.
        """
        out: dict[str, list[str]] = {}
        for p in self.problems:
            if p.severity == "error" and p.subject is not None:
                out.setdefault(p.subject, []).append(str(p))
        return out

    def good_subjects(self) -> list[Subject]:
        bad = self.bad_subjects
        return [s for s in self.subjects if s.subject not in bad]

    def subject(self, name: str) -> Subject:
        for s in self.subjects:
            if s.subject == name:
                return s
        raise DataError(f"{self.root}: no subject {name!r}")


# --------------------------------------------------------------------------- helpers
class _Collector:
    def __init__(self, strict: bool):
        self.strict = strict
        self.problems: list[Problem] = []

    def add(self, message: str, subject=None, timepoint=None, file=None, severity="error") -> None:
        p = Problem(message, subject, timepoint, None if file is None else str(file), severity)
        if self.strict and severity == "error":
            raise p.error()
        self.problems.append(p)


def _nifti(folder: Path, stem: str) -> Path | None:
    for suf in NIFTI_SUFFIXES:
        p = folder / f"{stem}{suf}"
        if p.is_file():
            return p
    return None


def _float_or_none(text: str | None, what: str, where: str) -> float | None:
    if text is None or str(text).strip() == "":
        return None
    try:
        v = float(text)
    except ValueError as exc:
        raise ValueError(f"{where}: {what} is {text!r}, not a number") from exc
    if not math.isfinite(v):
        raise ValueError(f"{where}: {what} is {text!r}, not a finite number")
    return v


def detect_format(root: str | Path) -> str:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a folder")
    if (root / "timeline.csv").is_file():
        return "longitudinal"
    if any((root / d).is_dir() for d in AUTHORS_SPLIT_FOLDERS):
        return "authors2d"
    for sub in sorted(root.iterdir()):
        if sub.is_dir() and any(_nifti(sub, f"{sub.name}-{m}") for m in (*CONTRASTS, "seg")):
            return "brats"
    raise DataError(
        f"{root}: cannot tell the data format: no timeline.csv (longitudinal), no training/validation/testing"
        " folders (authors' 2D layout), and no <ID>/<ID>-t1n.nii.gz folders (BraTS)"
    )


# --------------------------------------------------------------------------- discovery
def discover(root: str | Path, format: str = "auto", contrasts=CONTRASTS, strict: bool = False) -> DataSet:  # noqa: A002
    """Find every subject and timepoint under ``root``; file-level problems go to ``DataSet.problems``.

    ``strict=True`` raises :class:`DataError` at the first error instead.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a folder")
    fmt = detect_format(root) if format in ("auto", None, "") else format
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; one of: auto, {', '.join(FORMATS)}")
    contrasts = tuple(contrasts)
    bad = [c for c in contrasts if c not in CONTRASTS]
    if bad:
        raise DataError(f"unknown contrast(s) {bad}; contrasts are {', '.join(CONTRASTS)}")
    col = _Collector(strict)
    if fmt == "brats":
        subjects = _discover_brats(root, contrasts, col)
    elif fmt == "longitudinal":
        subjects = _discover_longitudinal(root, contrasts, col)
    else:
        subjects = _discover_authors2d(root, contrasts, col)
    if not subjects and not col.problems:
        col.add(f"no subjects found in {root} ({fmt} format)")
    return DataSet(root=root, format=fmt, subjects=subjects, problems=col.problems)


def _check_files(folder: Path, prefix: str, subject: str, tp: str, contrasts, col: _Collector, seg_required: bool,
                 first: bool = False):
    images: dict[str, Path] = {}
    for m in contrasts:
        p = _nifti(folder, f"{prefix}-{m}")
        if p is None:
            col.add(f"missing modality {m}: {folder / (prefix + '-' + m + '.nii.gz')} not found",
                    subject, tp, f"{prefix}-{m}.nii.gz")
        else:
            images[m] = p
    seg = _nifti(folder, f"{prefix}-seg")
    if seg is None:
        if seg_required:
            why = ""
        elif first:
            why = (" (the first timepoint is never a timepoint to be predicted, and without a seg it cannot be used"
                   " for the growth fit)")
        else:
            why = " (fine for a timepoint to be predicted; it is left out of the growth fit)"
        col.add(f"no segmentation {prefix}-seg.nii.gz{why}", subject, tp, f"{prefix}-seg.nii.gz", severity="warning")
    return images, seg


def _discover_brats(root: Path, contrasts, col: _Collector) -> list[Subject]:
    subjects = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        sid = sub.name
        images, seg = _check_files(sub, sid, sid, "000", contrasts, col, seg_required=True)
        subjects.append(Subject(sid, [Timepoint(sid, "000", 0.0, images, seg)]))
    return subjects


_TP_FOLDER = re.compile(r"^(?P<subject>.+)-(?P<tp>\d{3})$")


def _discover_longitudinal(root: Path, contrasts, col: _Collector) -> list[Subject]:
    tl = root / "timeline.csv"
    by_subject = _timeline_rows(tl, col)
    seen = {(s, row["timepoint"]) for s, items in by_subject.items() for _, row in items}
    folders = _timepoint_folders(root, tl.name, seen, col)
    subjects = [_longitudinal_subject(s, items, folders, root, tl.name, contrasts, col) for s, items in by_subject.items()]
    subjects.sort(key=lambda x: x.subject)
    return subjects


def _timeline_rows(tl: Path, col: _Collector) -> dict[str, list[tuple[int, dict]]]:
    """The rows of ``timeline.csv`` by subject, as ``(line number, row)`` (timepoints zero-padded to 3 digits);
    empty subjects, malformed timepoints and duplicate rows are problems and left out."""
    try:
        # utf-8-sig: a UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped; newline="" lets csv take
        # \n, \r\n and \r line ends alike
        with open(tl, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {tl}: {exc}") from exc
    missing = [c for c in TIMELINE_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{tl}: missing column(s) {', '.join(missing)}; the header must be {','.join(TIMELINE_COLUMNS)} (found {','.join(header)})")
    by_subject: dict[str, list[tuple[int, dict]]] = {}
    seen: set[tuple[str, str]] = set()
    for i, raw in enumerate(rows, start=2):  # line 1 is the header
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        s, tp = row["subject"], row["timepoint"]
        if not s:
            col.add(f"{tl.name} row {i}: empty subject", file=tl.name)
            continue
        if not re.fullmatch(r"\d{3}", tp):
            if re.fullmatch(r"\d+", tp) and len(tp) < 3:
                tp = tp.zfill(3)
            else:
                col.add(f"{tl.name} row {i}: timepoint {tp!r} is not a 3-digit number like 000", s, tp or None, tl.name)
                continue
        if (s, tp) in seen:
            col.add(f"{tl.name} row {i}: duplicate row for subject {s} timepoint {tp}", s, tp, tl.name)
            continue
        seen.add((s, tp))
        by_subject.setdefault(s, []).append((i, {**row, "timepoint": tp}))
    return by_subject


def _timepoint_folders(root: Path, timeline: str, seen: set[tuple[str, str]], col: _Collector) -> dict[tuple[str, str], Path]:
    """``{(subject, tp): folder}`` of the ``<SUBJECT>-<TP>`` folders; other folders and folders without a row in
    the timeline (``seen``) are problems."""
    folders: dict[tuple[str, str], Path] = {}
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        m = _TP_FOLDER.match(p.name)
        if m is None:
            col.add(f"folder {p.name} does not match <SUBJECT>-<TP> (TP three digits); it is ignored",
                    file=p.name, severity="warning")
            continue
        folders[(m["subject"], m["tp"])] = p
    for (s, tp), p in folders.items():
        if (s, tp) not in seen:
            col.add(f"folder {p.name} has no row in {timeline} (add subject={s}, timepoint={tp})", s, tp, p.name)
    return folders


def _longitudinal_subject(s: str, items: list[tuple[int, dict]], folders: dict[tuple[str, str], Path], root: Path,
                          timeline: str, contrasts, col: _Collector) -> Subject:
    """One subject from its timeline rows and folders: days, RT days and files checked (problems to ``col``)."""
    subj = Subject(s)
    first_tp = min(row["timepoint"] for _, row in items)
    rts: set[tuple] = set()
    for i, row in items:
        tp = row["timepoint"]
        where = f"{timeline} row {i} (subject {s}, timepoint {tp})"
        try:
            day = _float_or_none(row["day"], "day", where)
            rt = (_float_or_none(row["rt_start_day"], "rt_start_day", where),
                  _float_or_none(row["rt_end_day"], "rt_end_day", where))
        except ValueError as exc:
            col.add(str(exc), s, tp, timeline)
            continue
        if day is None:
            col.add(f"{where}: day is empty", s, tp, timeline)
            continue
        rts.add(rt)
        prefix = f"{s}-{tp}"
        folder = folders.get((s, tp))
        if folder is None:
            col.add(f"{where}: folder {prefix}/ not found in {root}", s, tp, prefix)
            images, seg = {}, None
        else:
            images, seg = _check_files(folder, prefix, s, tp, contrasts, col, seg_required=False, first=tp == first_tp)
        subj.timepoints.append(Timepoint(s, tp, day, images, seg))
    if len(rts) > 1:
        col.add(f"{timeline}: rt_start_day/rt_end_day differ between rows of subject {s}: {sorted(rts, key=str)}",
                s, None, timeline)
    elif rts:
        subj.rt_start_day, subj.rt_end_day = next(iter(rts))
        if subj.rt_start_day is not None and subj.rt_end_day is not None and subj.rt_end_day < subj.rt_start_day:
            col.add(f"{timeline}: rt_end_day {subj.rt_end_day} is before rt_start_day {subj.rt_start_day}",
                    s, None, timeline)
    subj.timepoints.sort(key=lambda t: t.timepoint)
    for a, b in zip(subj.timepoints, subj.timepoints[1:]):
        if not b.day > a.day:
            col.add(f"{timeline}: days must increase with the timepoint number, but timepoint {b.timepoint} has day"
                    f" {b.day:g} after timepoint {a.timepoint} with day {a.day:g}", s, b.timepoint, timeline)
    return subj


_AUTHORS_FOLDER = re.compile(r"^(?P<pid>.+)_(?P<slice>\d+)$")


def _discover_authors2d(root: Path, contrasts, col: _Collector) -> list[Subject]:
    subjects: dict[str, Subject] = {}
    labels = root / "test_labels"
    for folder_name, split in AUTHORS_SPLIT_FOLDERS.items():
        base = root / folder_name
        if not base.is_dir():
            continue
        for p in sorted(base.iterdir()):
            if not p.is_dir():
                continue
            m = _AUTHORS_FOLDER.match(p.name)
            if m is None:
                col.add(f"folder {folder_name}/{p.name} does not match <pid>_<slice>; it is ignored",
                        file=f"{folder_name}/{p.name}", severity="warning")
                continue
            pid, sl = m["pid"], int(m["slice"])
            images: dict[str, Path] = {}
            for mod in contrasts:
                hits = sorted(p.glob(f"*_{mod}_{m['slice']}_w.nii*"))
                if not hits:
                    col.add(f"missing modality {mod}: no *_{mod}_{m['slice']}_w.nii.gz in {folder_name}/{p.name}",
                            pid, "000", f"{folder_name}/{p.name}/brats_train_{pid}_{mod}_{m['slice']}_w.nii.gz")
                else:
                    images[mod] = hits[0]
            seg_hits = sorted(p.glob(f"*_seg_{m['slice']}_w.nii*"))
            seg = seg_hits[0] if seg_hits else _nifti(labels, f"{p.name}-label")
            if seg is None:
                col.add(f"no segmentation for slice {sl} (looked in {folder_name}/{p.name} and test_labels/)",
                        pid, "000", f"test_labels/{p.name}-label.nii.gz", severity="warning")
            subj = subjects.setdefault(pid, Subject(pid, split=split))
            if subj.split != split:
                col.add(f"patient {pid} appears in two split folders ({subj.split} and {split})", pid, None, folder_name)
            subj.timepoints.append(Timepoint(pid, "000", 0.0, images, seg, source_slice=sl, split=split))
    for s in subjects.values():
        s.timepoints.sort(key=lambda t: t.source_slice)
    return [subjects[k] for k in sorted(subjects)]
