"""Subject-level train/val/test splits: deterministic, and never one subject in two splits.

Order of precedence: ``ROOT/splits.csv`` (columns ``subject,split``; split in train/val/test), then the
authors' 2D layout's folders (training/validation/testing), then a deterministic cut: subjects are ordered
by ``sha256(seed:subject)`` and the first ``n_train`` go to train, the next ``n_val`` to val, the rest to
test, with the sizes of :func:`split_sizes`.

:func:`ratio_split` is the one ratio cut: ``tgrowth synth`` uses it too (with its own seeded order) for the
``splits.csv`` it writes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from data_modules.formats import Problem, Subject
from tgrowth.errors import DataError
from tgrowth.io import read_csv

__all__ = ["SPLITS", "assign_splits", "hash_order", "ratio_split", "read_splits_file", "split_sizes"]

SPLITS = ("train", "val", "test")
_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
            "test": "test", "testing": "test"}


def hash_order(subjects: Sequence[str], seed: int = 0) -> list[str]:
    return sorted(subjects, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())


def split_sizes(n: int, ratios: Sequence[float]) -> dict[str, int]:
    """``{"train", "val", "test"}`` subject counts for ``n`` subjects and train/val/test ``ratios`` (normalised).

    ``round(n * ratio)`` for val and test; from 3 subjects at least one val and one test subject where its ratio
    is > 0; 2 subjects: one test subject (test ratio > 0), no val; 1 subject: train. Then val and test give
    subjects back (the larger first, val on a tie) until at least one is left for train (train ratio > 0).
    """
    tr, va, te = (float(r) for r in ratios)
    if min(tr, va, te) < 0 or tr + va + te <= 0:
        raise DataError(f"split ratios must be >= 0 and not all 0, got train={tr}, val={va}, test={te}")
    total = tr + va + te
    tr, va, te = tr / total, va / total, te / total
    n_val, n_test = int(round(n * va)), int(round(n * te))
    if n >= 3:
        n_val = max(n_val, 1 if va > 0 else 0)
        n_test = max(n_test, 1 if te > 0 else 0)
    elif n == 2:
        n_val, n_test = 0, (1 if te > 0 else 0)
    else:
        n_val = n_test = 0
    while n_val + n_test > n - (1 if tr > 0 else 0) and (n_val or n_test):
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def ratio_split(ranked: Sequence[str], ratios: Sequence[float], sequence: Sequence[str] = SPLITS) -> dict[str, str]:
    """``{subject: split}``: ``ranked`` cut into consecutive runs of :func:`split_sizes`, the splits in ``sequence``
    order (the first ``n_train`` subjects to train, ... for the default)."""
    sizes = split_sizes(len(ranked), ratios)
    names = [name for name in sequence for _ in range(sizes[name])]
    return dict(zip(ranked, names))


def assign_splits(subjects: Sequence[Subject], root: str | Path | None = None, ratios=(0.8, 0.1, 0.1),
                  seed: int = 0, file: str = "splits.csv") -> tuple[dict[str, str], list[Problem]]:
    """``{subject: split}`` for every subject, plus problems (unknown split names, unlisted subjects)."""
    names = [s.subject for s in subjects]
    path = Path(root) / file if root is not None and file else None
    if path is not None and path.is_file():
        out, problems = read_splits_file(path, names)
        rest = [n for n in names if n not in out]
        if rest:
            for s in rest:
                problems.append(Problem(f"not listed in {path.name}; assigned by the deterministic hash", s, None, path.name, "warning"))
            out.update(ratio_split(hash_order(rest, seed), ratios))
        return out, problems
    folder = {s.subject: s.split for s in subjects if s.split in SPLITS}
    if folder and len(folder) == len(names):
        return dict(folder), []
    return ratio_split(hash_order(names, seed), ratios), []


def read_splits_file(path: Path, names: Sequence[str]) -> tuple[dict[str, str], list[Problem]]:
    """``{subject: split}`` of the subjects of ``names`` that ``path`` (columns ``subject,split``) lists, plus its
    problems (unknown split names and subjects in two splits: errors; subjects not in ``names``: warnings)."""
    try:
        rows = read_csv(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if rows and not {"subject", "split"} <= set(rows[0]):
        raise DataError(f"{path}: needs columns subject,split (found {','.join(rows[0])})")
    known = set(names)
    out: dict[str, str] = {}
    problems: list[Problem] = []
    for i, r in enumerate(rows, start=2):
        s, sp = (r.get("subject") or "").strip(), (r.get("split") or "").strip().lower()
        if sp not in _ALIASES:
            problems.append(Problem(f"{path.name} row {i}: split {sp!r} is not one of train, val, test", s or None, None, path.name))
            continue
        if s in out and out[s] != _ALIASES[sp]:
            problems.append(Problem(f"{path.name} row {i}: subject {s} is listed in two splits ({out[s]} and {_ALIASES[sp]})", s, None, path.name))
            continue
        if s not in known:
            problems.append(Problem(f"{path.name} row {i}: subject {s} is not in the data set", s, None, path.name, "warning"))
            continue
        out[s] = _ALIASES[sp]
    return out, problems
