"""``tgrowth runs compare DIR [DIR ...]``: the key metrics of finished runs side by side, read from their files.

Reads what every command already writes, so it needs no wandb account, server or ``wandb sync``:

- ``predict`` (also each noise-level folder of a ``tgrowth sweep``): ``summary.json`` (mean, median and n per
  method and metric), or ``metrics.csv`` where summary.json is missing (an interrupted run); rows
  ``<method>/<metric>`` plus ``n subjects``;
- ``fit-ode``: ``summary.json`` (median and mean over subjects of R^2, nRMSE, the held-out and baseline
  errors); n from its ``metrics.csv`` (subjects with a finite value);
- ``train-denoiser|train-regressor|train-segmenter``: ``metrics.json`` (the last logged value of each metric).

One column per run, one row per metric: ``mean / median (n=...)`` (training: the value). ``--csv FILE`` also
writes the comparison in long form (one row per run and metric).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from tgrowth.errors import ConfigError, TgrowthError
from tgrowth.io import read_csv, write_csv
from tgrowth.predict.report import METRIC_COLUMNS, summarise

CSV_COLUMNS = ["run", "kind", "metric", "mean", "median", "n", "n_nonfinite"]
MODEL_KINDS = ("denoiser", "regressor", "segmenter")


@dataclass
class Stat:
    """One metric of one run: mean and median over subjects (training: ``mean`` is the logged value)."""

    mean: float | None = None
    median: float | None = None
    n: int | None = None
    n_nonfinite: int = 0


@dataclass
class RunMetrics:
    path: str
    kind: str
    metrics: dict[str, Stat] = field(default_factory=dict)


def _float(v: Any) -> float | None:
    try:
        return None if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TgrowthError(f"cannot read {path}: {exc}") from exc


def _predict(path: Path, summary: dict[str, Any] | None, methods: list[str]) -> RunMetrics:
    if summary is None:  # an interrupted run: the merged rows so far
        rows = [{k: (None if v == "" else v) for k, v in r.items()} for r in read_csv(path / "metrics.csv")]
        summary = summarise(rows)
    run = RunMetrics(str(path), "predict", {"n subjects": Stat(mean=_float(summary.get("n_subjects")))})
    for method, stats in summary.get("methods", {}).items():
        if methods and method not in methods:
            continue
        for col in METRIC_COLUMNS:
            st = stats.get(col) or {}
            n, bad = int(st.get("n") or 0), int(st.get("n_nonfinite") or 0)
            if n or bad:
                run.metrics[f"{method}/{col}"] = Stat(_float(st.get("mean")), _float(st.get("median")), n, bad)
    return run


def _fit_ode(path: Path, summary: dict[str, Any]) -> RunMetrics:
    per_subject = read_csv(path / "metrics.csv") if (path / "metrics.csv").is_file() else []
    run = RunMetrics(str(path), "fit-ode", {"n subjects": Stat(mean=_float(summary.get("subjects")))})
    names = [k[: -len(suffix)] for k in summary for suffix in ("_median", "_mean") if k.endswith(suffix)]
    for name in dict.fromkeys(names):
        vals = [_float(r.get(name)) for r in per_subject]
        n = sum(v is not None and math.isfinite(v) for v in vals) if per_subject else _float(summary.get("subjects"))
        run.metrics[name] = Stat(_float(summary.get(f"{name}_mean")), _float(summary.get(f"{name}_median")),
                                 None if n is None else int(n))
    return run


def _training(path: Path, metrics: dict[str, Any]) -> RunMetrics:
    kind = next((f"train-{k}" for k in MODEL_KINDS if (path / f"{k}.pt").is_file()), "training")
    run = RunMetrics(str(path), kind)
    for k, v in metrics.items():
        f = _float(v)
        if f is not None and not isinstance(v, bool):
            run.metrics[k] = Stat(mean=f)
    return run


def _runs_inside(path: Path) -> list[str]:
    found = set()
    for name in ("summary.json", "metrics.json", "metrics.csv"):
        found.update(str(p.parent) for p in path.glob(f"*/{name}"))
        found.update(str(p.parent) for p in path.glob(f"*/*/{name}"))
    return sorted(found)


def read_run(path: str | Path, methods: list[str] | tuple[str, ...] = ()) -> RunMetrics:
    """The key metrics of one run folder (predict, fit-ode or a training command), by the files it holds."""
    p = Path(path)
    if not p.is_dir():
        raise TgrowthError(f"run folder not found: {p}")
    summary = _read_json(p / "summary.json") if (p / "summary.json").is_file() else None
    if isinstance(summary, dict) and "methods" in summary:
        return _predict(p, summary, list(methods))
    if isinstance(summary, dict) and "r2_median" in summary:
        return _fit_ode(p, summary)
    if (p / "metrics.csv").is_file() and "method" in (read_csv(p / "metrics.csv") or [{}])[0]:
        return _predict(p, None, list(methods))
    if (p / "metrics.json").is_file():
        metrics = _read_json(p / "metrics.json")
        if isinstance(metrics, dict):
            return _training(p, metrics)
    inside = _runs_inside(p)
    hint = f"; run folders inside it: {', '.join(inside)}" if inside else ""
    raise TgrowthError(f"{p} is not a tgrowth run folder (no predict or fit-ode summary.json, predict metrics.csv "
                       f"or training metrics.json){hint}")


def _num(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4g}"


def _cell(s: Stat | None) -> str:
    if s is None:
        return ""
    if s.median is None and s.n is None:
        return _num(s.mean)
    text = f"{_num(s.mean)} / {_num(s.median)}"
    if s.n is not None:
        text += f" (n={s.n}" + (f", {s.n_nonfinite} inf" if s.n_nonfinite else "") + ")"
    return text


def format_table(runs: list[RunMetrics]) -> str:
    """One column per run, one row per metric (first-seen order)."""
    names = list(dict.fromkeys(k for r in runs for k in r.metrics))
    rows = [["run"] + [r.path for r in runs], ["kind"] + [r.kind for r in runs]]
    rows += [[m] + [_cell(r.metrics.get(m)) for r in runs] for m in names]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    lines.insert(2, "  ".join("-" * w for w in widths))
    lines.append("cells: mean / median over subjects (n = subjects with a finite value; inf = e.g. HD95 of an "
                 "empty map); training runs: the last logged value")
    return "\n".join(lines)


def table_rows(runs: list[RunMetrics]) -> list[dict[str, Any]]:
    return [{"run": r.path, "kind": r.kind, "metric": m, "mean": s.mean, "median": s.median, "n": s.n,
             "n_nonfinite": s.n_nonfinite} for r in runs for m, s in r.metrics.items()]


def run(cfg: DictConfig) -> int:
    dirs = [str(d) for d in cfg.dirs]
    if not dirs:
        raise ConfigError("give one or more run folders: tgrowth runs compare DIR [DIR ...]")
    runs = [read_run(d, [str(m) for m in cfg.methods]) for d in dirs]
    print(format_table(runs))
    if cfg.csv:
        path = write_csv(cfg.csv, table_rows(runs), CSV_COLUMNS)
        print(f"wrote {path}")
    return 0
