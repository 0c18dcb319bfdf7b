"""Subject-level train/val/test splits: deterministic, and never one subject in two splits.

Order of precedence: ``ROOT/splits.csv`` (columns ``subject,split``; split in train/val/test), then the
authors' 2D layout's folders (training/validation/testing), then a deterministic cut: subjects are ordered
by ``sha256(seed:subject)`` and the first ``round(n * train)`` go to train, the next ``round(n * val)`` to
val, the rest to test (with at least one val and one test subject when their ratio is > 0 and n >= 3).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from data_modules.formats import Problem, Subject
from tgrowth.errors import DataError

__all__ = ["SPLITS", "assign_splits", "hash_order"]

SPLITS = ("train", "val", "test")
_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
            "test": "test", "testing": "test"}


def hash_order(subjects: Sequence[str], seed: int = 0) -> list[str]:
    return sorted(subjects, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())


def _ratio_cut(names: Sequence[str], ratios: Sequence[float], seed: int) -> dict[str, str]:
    tr, va, te = (float(r) for r in ratios)
    if min(tr, va, te) < 0 or tr + va + te <= 0:
        raise DataError(f"split ratios must be >= 0 and not all 0, got train={tr}, val={va}, test={te}")
    total = tr + va + te
    tr, va, te = tr / total, va / total, te / total
    order = hash_order(names, seed)
    n = len(order)
    n_val = round(n * va)
    n_test = round(n * te)
    if n >= 3:
        n_val = max(n_val, 1 if va > 0 else 0)
        n_test = max(n_test, 1 if te > 0 else 0)
    n_train = n - n_val - n_test
    if tr > 0 and n_train < 1 and n >= 1:
        n_train = 1
        if n_test > n_val:
            n_test -= 1
        else:
            n_val -= 1
    out = {}
    for i, s in enumerate(order):
        out[s] = "train" if i < n_train else ("val" if i < n_train + max(n_val, 0) else "test")
    return out


def assign_splits(subjects: Sequence[Subject], root: str | Path | None = None, ratios=(0.8, 0.1, 0.1),
                  seed: int = 0, file: str = "splits.csv") -> tuple[dict[str, str], list[Problem]]:
    """``{subject: split}`` for every subject, plus problems (unknown split names, unlisted subjects)."""
    problems: list[Problem] = []
    names = [s.subject for s in subjects]
    out: dict[str, str] = {}
    path = Path(root) / file if root is not None and file else None
    if path is not None and path.is_file():
        from tgrowth.io import read_csv

        try:
            rows = read_csv(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from exc
        if rows and not {"subject", "split"} <= set(rows[0]):
            raise DataError(f"{path}: needs columns subject,split (found {','.join(rows[0])})")
        known = set(names)
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
        rest = [n for n in names if n not in out]
        if rest:
            for s in rest:
                problems.append(Problem(f"not listed in {path.name}; assigned by the deterministic hash", s, None, path.name, "warning"))
            out.update(_ratio_cut(rest, ratios, seed))
        return out, problems
    folder = {s.subject: s.split for s in subjects if s.split in SPLITS}
    if folder and len(folder) == len(names):
        return dict(folder), problems
    out.update(_ratio_cut(names, ratios, seed))
    return out, problems
