"""Size tables -> validated per-subject series.

Input: a CSV path or a list of dicts with columns ``subject, day, size, rt_start_day, rt_end_day``
(size: area mm^2, volume mm^3 or voxel count; ``rt_*`` empty when the subject had no RT; when only one
of them is given the other is derived from ``rt_duration_days``, 42 by default). One subject's rows
must repeat the same RT days. Every problem names the file, subject and row (row 1 is the first data
row, i.e. line 2 of a CSV with its header).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tgrowth.errors import DataError

REQUIRED_COLUMNS = ("subject", "day", "size", "rt_start_day", "rt_end_day")


@dataclass
class SizeSeries:
    """One subject's measurements (days increasing) and RT window (None: no RT)."""

    subject: str
    days: list[float]
    sizes: list[float]
    rt_start_day: float | None = None
    rt_end_day: float | None = None
    rows: list[int] = field(default_factory=list)  # source row of each point (1 = first data row)

    @property
    def has_rt(self) -> bool:
        return self.rt_end_day is not None

    def __len__(self) -> int:
        return len(self.days)


@dataclass
class SubjectProblem:
    subject: str
    row: int | None
    message: str

    def as_row(self) -> dict[str, Any]:
        return {"subject": self.subject, "row": "" if self.row is None else self.row, "message": self.message}


def read_rows(source: str | Path | Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The raw rows and a name for messages. CSV problems (missing, empty, columns) raise DataError."""
    if isinstance(source, (str, Path)):
        import csv

        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise DataError(f"{name}: size table not found")
        with open(path, newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
        if not text.strip():
            raise DataError(f"{name}: empty file (expected a header with columns {', '.join(REQUIRED_COLUMNS)})")
        reader = csv.DictReader(text.splitlines())
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): v for k, v in r.items()} for r in reader]
    else:
        name = "rows"
        rows = [dict(r) for r in source]
        columns = list(rows[0].keys()) if rows else []
        if not rows:
            raise DataError(f"{name}: empty table (no rows)")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DataError(
            f"{name}: missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}; "
            f"expected {', '.join(REQUIRED_COLUMNS)}"
        )
    if not rows:
        raise DataError(f"{name}: empty file (a header but no data rows)")
    return rows, name


def _parse_float(raw: Any, what: str, subject: str, row: int, name: str, allow_empty: bool = False) -> float | None:
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        if allow_empty:
            return None
        raise DataError(f"{name}: subject '{subject}' row {row}: {what} is empty")
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise DataError(f"{name}: subject '{subject}' row {row}: {what} '{raw}' is not a number") from None


def validate_subject(subject: str, items: list[tuple[int, dict[str, Any]]], name: str,
                     rt_duration_days: float = 42.0, min_points: int = 2) -> SizeSeries:
    """Check one subject's rows; raise DataError naming subject and row."""
    days, sizes, rows = [], [], []
    rt_seen: tuple[float | None, float | None] | None = None
    for row, r in items:
        day = _parse_float(r.get("day"), "day", subject, row, name)
        size = _parse_float(r.get("size"), "size", subject, row, name)
        if not math.isfinite(day):
            raise DataError(f"{name}: subject '{subject}' row {row}: day {day} is not finite")
        if math.isnan(size):
            raise DataError(f"{name}: subject '{subject}' row {row}: size is NaN")
        if math.isinf(size):
            raise DataError(f"{name}: subject '{subject}' row {row}: size {size} is infinite")
        if size < 0:
            raise DataError(f"{name}: subject '{subject}' row {row}: size {size} is negative")
        if days:
            if day == days[-1]:
                raise DataError(f"{name}: subject '{subject}' row {row}: duplicate day {day:g} (also row {rows[-1]})")
            if day < days[-1]:
                raise DataError(
                    f"{name}: subject '{subject}' row {row}: days decrease ({day:g} after {days[-1]:g} in row {rows[-1]}); "
                    "sort each subject's rows by day"
                )
        rs = _parse_float(r.get("rt_start_day"), "rt_start_day", subject, row, name, allow_empty=True)
        re_ = _parse_float(r.get("rt_end_day"), "rt_end_day", subject, row, name, allow_empty=True)
        for what, v in (("rt_start_day", rs), ("rt_end_day", re_)):
            if v is not None and not math.isfinite(v):
                raise DataError(f"{name}: subject '{subject}' row {row}: {what} {v} is not finite")
        if rs is not None and re_ is not None and re_ < rs:
            raise DataError(f"{name}: subject '{subject}' row {row}: RT end day {re_:g} is before RT start day {rs:g}")
        if rt_seen is None:
            rt_seen = (rs, re_)
        elif rt_seen != (rs, re_):
            raise DataError(
                f"{name}: subject '{subject}' row {row}: RT days ({rs}, {re_}) differ from the subject's earlier rows {rt_seen}"
            )
        days.append(day)
        sizes.append(size)
        rows.append(row)
    if sizes and sizes[0] == 0:
        raise DataError(
            f"{name}: subject '{subject}' row {rows[0]}: first size is zero; sizes are normalised by the first "
            "measurement, so it must be positive"
        )
    if len(days) < min_points:
        raise DataError(
            f"{name}: subject '{subject}' row {rows[0] if rows else '?'}: only {len(days)} point(s); "
            f"at least {min_points} are needed to fit (or set fit.population_prior=true for a prior-only forecast)"
        )
    rs, re_ = rt_seen if rt_seen else (None, None)
    if re_ is None and rs is not None:
        re_ = rs + rt_duration_days
    if rs is None and re_ is not None:
        rs = re_ - rt_duration_days
    return SizeSeries(subject, days, sizes, rs, re_, rows)


def load_series(source, rt_duration_days: float = 42.0, min_points: int = 2,
                strict: bool = False) -> tuple[list[SizeSeries], list[SubjectProblem]]:
    """Validated series (input order of first appearance) and the problems of the subjects left out."""
    rows, name = read_rows(source)
    groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    problems: list[SubjectProblem] = []
    for i, r in enumerate(rows, start=1):
        subject = str(r.get("subject") or "").strip()
        if not subject:
            msg = f"{name}: row {i}: subject is empty"
            if strict:
                raise DataError(msg)
            problems.append(SubjectProblem("", i, msg))
            continue
        groups.setdefault(subject, []).append((i, r))
    series = []
    for subject, items in groups.items():
        try:
            series.append(validate_subject(subject, items, name, rt_duration_days, min_points))
        except DataError as exc:
            if strict:
                raise
            row = None
            msg = str(exc)
            import re

            m = re.search(r"row (\d+)", msg)
            if m:
                row = int(m.group(1))
            problems.append(SubjectProblem(subject, row, msg))
    return series, problems
