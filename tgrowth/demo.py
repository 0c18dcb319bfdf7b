"""`tgrowth demo -c experiments/demo.yaml` (``make demo``): the whole pipeline on the synthetic phantom.

Stages, each an ordinary tgrowth command run in-process with its own YAML files (so every stage can be
rerun by hand with the same files): ``synth`` -> ``train-denoiser``, ``train-regressor``,
``train-segmenter`` (on the training split) -> ``predict`` (the held-out test subjects; tgrowth vs the
no-change, unguided and oracle-area baselines). Outputs under ``output_dir``: ``data/``, ``denoiser/``,
``regressor/``, ``segmenter/``, ``predict/`` and ``demo_summary.json`` (stage wall times, the metrics, the
verdicts).

The verdicts compare tgrowth with the baselines subject by subject (:func:`paired_verdict`): the mean paired
difference with its 95 % confidence interval over the subjects, so a difference smaller than the spread over
a handful of subjects is reported as a tie, not a win.

The same runner executes other pipeline YAMLs (e.g. ``experiments/paper_brats2d.yaml``: no synth,
``train_root`` / ``predict_root`` set to real data).
"""

from __future__ import annotations

import importlib
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from scipy.stats import t as student_t

from tgrowth.errors import ConfigError, TgrowthError
from tgrowth.io import read_csv

REPO = Path(__file__).resolve().parents[1]


def _import(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _find(path: str) -> str:
    p = Path(path).expanduser()
    if p.is_file() or p.is_absolute():
        return str(p)
    alt = REPO / p
    return str(alt) if alt.is_file() else str(p)


def _has(schema: type, key: str) -> bool:
    return is_dataclass(schema) and key in {f.name for f in fields(schema)}


# (metrics.csv column, words, unit, baselines): every metric lower is better
VERDICTS = (
    ("hd95", "map HD95", " mm", ("no-change", "unguided")),
    ("area_error_vs_truth", "area error vs the true follow-up", "", ("no-change", "unguided")),
    ("area_error_vs_target", "area error vs the ODE target", "", ("unguided",)),
)


def _value(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def paired_verdict(rows: Sequence[dict[str, Any]], metric: str, baseline: str, method: str = "tgrowth",
                   level: float = 0.95, lower_is_better: bool = True) -> dict[str, Any] | None:
    """``method`` against ``baseline`` on ``metric`` (lower is better, or higher with
    ``lower_is_better=False``, e.g. Dice), paired over the same subjects.

    Pairs are (subject, target) rows where both values are finite. The verdict: ``better`` / ``worse`` when
    the ``level`` confidence interval of the mean paired difference (Student t) excludes 0, ``tie`` when it
    holds 0, ``too few`` with fewer than 2 pairs. None when no pair exists.
    """
    def key(r: dict[str, Any]) -> tuple:
        return r["subject"], str(r.get("target_timepoint") or ""), str(r.get("target_day") or "")

    base = {key(r): _value(r.get(metric)) for r in rows if r["method"] == baseline}
    pairs = [(a, base[key(r)]) for r in rows if r["method"] == method
             for a in [_value(r.get(metric))] if a is not None and base.get(key(r)) is not None]
    if not pairs:
        return None
    n = len(pairs)
    diffs = [a - b for a, b in pairs]
    out: dict[str, Any] = {
        "method": method, "baseline": baseline, "metric": metric, "n": n,
        "mean_method": statistics.fmean(a for a, _ in pairs), "mean_baseline": statistics.fmean(b for _, b in pairs),
        "diff": statistics.fmean(diffs), "sd": None, "ci": None, "level": level, "verdict": "too few"}
    if n >= 2:
        sd = statistics.stdev(diffs)
        half = float(student_t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
        lo, hi = out["diff"] - half, out["diff"] + half
        below, above = ("better", "worse") if lower_is_better else ("worse", "better")
        out.update(sd=sd, ci=[lo, hi], verdict=below if hi < 0 else above if lo > 0 else "tie")
    return out


def verdict_line(v: dict[str, Any], words: str, unit: str = "") -> str:
    """``tgrowth vs no-change, map HD95 over n=4 subjects: mean 4.99 vs 5.51 mm, paired difference -0.52 mm
    (sd 1.3, 95% CI -2.6..1.6): a tie within the spread``."""
    head = (f"{v['method']} vs {v['baseline']}, {words} over n={v['n']} subject{'s' if v['n'] != 1 else ''}: "
            f"mean {v['mean_method']:.3g} vs {v['mean_baseline']:.3g}{unit}, paired difference {v['diff']:.2g}{unit}")
    if v["verdict"] == "too few":
        return f"{head}: one subject, no spread to judge by (not a verdict)"
    lo, hi = v["ci"]
    spread = f" (sd {v['sd']:.2g}, {v['level']:.0%} CI {lo:.2g}..{hi:.2g})"
    says = {"better": f"{v['method']} better (the CI excludes 0)", "worse": f"{v['method']} worse (the CI excludes 0)",
            "tie": "a tie within the spread"}[v["verdict"]]
    return f"{head}{spread}: {says}"


def verdicts(rows: Sequence[dict[str, Any]], method: str = "tgrowth") -> list[tuple[dict[str, Any], str]]:
    """Every (metric, baseline) of :data:`VERDICTS` present in ``rows``: (the numbers, the line)."""
    out = []
    for metric, words, unit, baselines in VERDICTS:
        for b in baselines:
            v = paired_verdict(rows, metric, b, method)
            if v is not None:
                out.append((v, verdict_line(v, words, unit)))
    return out


def run_stage(command: str, files: list[str], overrides: list[str]) -> tuple[int, DictConfig]:
    """Run one tgrowth command in-process: its schema, YAML files and overrides, then its run function."""
    from tgrowth.cli import COMMANDS
    from tgrowth.config.base import load_config

    cmd = COMMANDS[command]
    cfg = load_config(_import(cmd.schema), [_find(f) for f in files], overrides)
    return int(_import(cmd.run)(cfg) or 0), cfg


def run(cfg: DictConfig) -> int:
    """Run the pipeline's stages in order (synth, training, predict), then write and print the summary and verdicts."""
    from tgrowth.io import prepare_output_dir, write_json

    t_all = time.time()
    out = prepare_output_dir(cfg.output_dir, cfg.overwrite)
    from tgrowth.config.base import save_resolved_config

    save_resolved_config(cfg, out)
    data_dir = out / "data"
    train_root = str(cfg.train_root) if cfg.train_root else str(data_dir)
    predict_root = str(cfg.predict_root) if cfg.predict_root else str(data_dir)
    if not cfg.synth.enabled and (not cfg.train_root or not cfg.predict_root):
        raise ConfigError("synth.enabled=false needs train_root and predict_root (the data to train on and predict)")
    timings: dict[str, float] = {}
    stages = _stages(cfg, out, data_dir, train_root)
    n_total = len(stages) + 1
    for i, stage in enumerate(stages, start=1):
        _run_data_stage(cfg, stage, f"[demo {i}/{n_total}] {stage[0]} ({stage[1]})", timings)

    pred_out = out / "predict"
    summary = _run_predict_stage(cfg, out, pred_out, predict_root, f"[demo {n_total}/{n_total}] predict", timings)
    wall = time.time() - t_all
    mp = pred_out / "metrics.csv"
    found = verdicts(read_csv(mp)) if (cfg.predict.enabled and mp.is_file()) else []
    write_json(out / "demo_summary.json", {"wall_seconds": round(wall, 1), "stage_seconds": timings,
                                           "predict_summary": summary, "verdicts": [v for v, _ in found]})
    _print_summary(out, data_dir, pred_out, wall, timings, found)
    return 0


def _common_overrides(cfg: DictConfig, command: str, stage_out: Path) -> list[str]:
    """The overrides every stage gets: its output_dir, the seed, the experiment and (if it logs) the wandb settings."""
    from tgrowth.cli import COMMANDS

    schema = _import(COMMANDS[command].schema)
    o = [f"output_dir={stage_out}", f"seed={cfg.seed}", f"experiment={cfg.experiment}"]
    if _has(schema, "wandb"):
        o += [f"wandb.enabled={str(cfg.wandb.enabled).lower()}", f"wandb.mode={cfg.wandb.mode}",
              f"wandb.project={cfg.wandb.project}"]
    return o


def _stages(cfg: DictConfig, out: Path, data_dir: Path, train_root: str) -> list[tuple[str, str, Any, Path, Path, list[str]]]:
    """The stages before predict: (name, command, config section, output dir, file that marks it done, overrides)."""
    return [
        ("synth", "synth", cfg.synth, data_dir, data_dir / "timeline.csv", []),
        ("denoiser", "train-denoiser", cfg.denoiser, out / "denoiser", out / "denoiser" / "denoiser.pt",
         [f"data.root={train_root}", "ckpt_path=last", "overwrite=true"]),
        ("regressor", "train-regressor", cfg.regressor, out / "regressor", out / "regressor" / "regressor.pt",
         [f"data.root={train_root}", "ckpt_path=last", "overwrite=true"]),
        ("segmenter", "train-segmenter", cfg.segmenter, out / "segmenter", out / "segmenter" / "segmenter.pt",
         [f"data.root={train_root}", "ckpt_path=last", "overwrite=true"]),
    ]


def _run_data_stage(cfg: DictConfig, stage: tuple[str, str, Any, Path, Path, list[str]], head: str,
                    timings: dict[str, float]) -> None:
    """Run one stage of :func:`_stages` (unless disabled or already done) and record its wall time in ``timings``."""
    name, command, st, stage_out, done, extra = stage
    if not st.enabled:
        print(f"{head}: disabled", flush=True)
        return
    if st.skip_if_done and done.is_file():
        print(f"{head}: reusing {done} (set {name}.skip_if_done=false to redo)", flush=True)
        return
    print(f"{head} -> {stage_out}", flush=True)
    t0 = time.time()
    over = _common_overrides(cfg, command, stage_out) + extra + (["overwrite=true"] if name == "synth" else []) + list(st.overrides)
    rc, _ = run_stage(command, list(st.configs), over)
    timings[name] = round(time.time() - t0, 1)
    if rc:
        raise TgrowthError(f"demo stage {name} ({command}) exited with code {rc}")
    if not done.is_file():
        raise TgrowthError(f"demo stage {name} finished but {done} is missing")
    print(f"{head}: done in {timings[name]:.0f} s", flush=True)


def _run_predict_stage(cfg: DictConfig, out: Path, pred_out: Path, predict_root: str, head: str,
                       timings: dict[str, float]) -> dict[str, Any]:
    """Run predict with the trained checkpoints (when enabled); its summary.json ({} when none)."""
    summary: dict[str, Any] = {}
    if cfg.predict.enabled:
        print(f"{head} -> {pred_out}", flush=True)
        t0 = time.time()
        over = _common_overrides(cfg, "predict", pred_out) + [
            f"data.root={predict_root}", "overwrite=true",
            f"checkpoints.denoiser={out / 'denoiser' / 'denoiser.pt'}",
            f"checkpoints.regressor={out / 'regressor' / 'regressor.pt'}",
            f"checkpoints.segmenter={out / 'segmenter' / 'segmenter.pt'}"] + list(cfg.predict.overrides)
        rc, _ = run_stage("predict", list(cfg.predict.configs), over)
        timings["predict"] = round(time.time() - t0, 1)
        if rc:
            raise TgrowthError(f"demo stage predict exited with code {rc}")
        sp = pred_out / "summary.json"
        summary = json.loads(sp.read_text()) if sp.is_file() else {}
    return summary


def _print_summary(out: Path, data_dir: Path, pred_out: Path, wall: float, timings: dict[str, float],
                   found: list[tuple[dict[str, Any], str]]) -> None:
    """Print the wall times, where the outputs are and the verdicts."""
    print()
    print(f"demo finished in {wall / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ")")
    print(f"  synthetic data:   {data_dir}  (timeline.csv, splits.csv, ground_truth.csv, NIfTI per timepoint)")
    print(f"  models:           {out}/{{denoiser,regressor,segmenter}}/*.pt (+ checkpoints/, validation PNGs)")
    print(f"  predictions:      {pred_out}/<subject>/prob_map.nii.gz, pred_mean.nii.gz, pred_std.nii.gz, "
          "panel.png, growth_curve.png, info.json")
    print(f"  metrics:          {pred_out}/metrics.csv, summary.json")
    runs = sorted(str(p) for p in out.glob("*/wandb/offline-run-*"))
    if runs:
        print(f"  wandb (offline):  {len(runs)} run(s) under {out}/*/wandb/; upload with `wandb sync {out}/*/wandb/offline-run-*`")
    if found:
        print("verdicts (paired over the same subjects; lower is better):")
        for _, line in found:
            print(f"  {line}")
