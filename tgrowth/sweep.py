"""`tgrowth sweep -c experiments/sweeps/guidance_scale.yaml`: a wandb sweep file run locally, scales batched.

The YAML is a wandb sweep definition (``wandb sweep FILE`` + ``wandb agent ID`` run it on a wandb server,
one ``tgrowth predict`` per grid point). Locally, without a server:

- the predict base config is the ``-c`` files named in ``command``;
- ``parameters`` with ``value`` are fixed overrides, those with ``values`` the grid;
- the ``guidance.scale`` axis (``scale_key``) is not looped over: every scale becomes one arm of a single
  batched sampling pass (per-sample scales), so S scales cost one pass of S x N generations per subject;
- the other axes (e.g. ``sampling.noise_level``) are looped over;
- the subjects are the validation split (``split=val``): a sweep chooses settings, so it never sees the test
  subjects unless ``allow_test=true``.

Writes ``sweep.csv`` (one row per grid point: mean HD95 / Dice / SSIM / PSNR / MAE / area errors over the
subjects), ``sweep.png`` (HD95, area error and SSIM against the scale, one line per other-axis setting), the
predict outputs of each setting under ``<output_dir>/<setting>/``, and one wandb run with the table.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tgrowth.errors import ConfigError, TgrowthError

SKIP_LOCAL = ("output_dir", "overwrite", "resume", "wandb.run_id")  # the local runner owns these


def base_files(command: list[str]) -> list[str]:
    """The ``-c``/``--config`` files of the sweep's command (the predict base config)."""
    files, it = [], iter(command)
    for tok in it:
        if tok in ("-c", "--config"):
            nxt = next(it, None)
            if nxt is None:
                raise ConfigError("sweep command ends with -c but no file")
            files.append(nxt)
        elif tok.startswith("--config="):
            files.append(tok.split("=", 1)[1])
    return files


def _fmt_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt_value(x) for x in v) + "]"
    if v is None:
        return "null"
    return str(v)


def parse_grid(parameters: dict[str, Any], scale_key: str) -> tuple[list[str], dict[str, list[Any]], list[float]]:
    """(fixed overrides, other grid axes, scale values) from a wandb ``parameters`` mapping."""
    fixed: list[str] = []
    axes: dict[str, list[Any]] = {}
    scales: list[float] = []
    for key, spec in parameters.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"sweep parameters.{key}: expected {{value: x}} or {{values: [...]}}, got {spec!r}")
        if "values" in spec:
            vals = list(spec["values"])
            if not vals:
                raise ConfigError(f"sweep parameters.{key}.values is empty")
            if key == scale_key:
                try:
                    scales = [float(v) for v in vals]
                except (TypeError, ValueError):
                    raise ConfigError(f"sweep parameters.{key}.values must be numbers, got {vals}") from None
            else:
                axes[key] = vals
        elif "value" in spec:
            if key in SKIP_LOCAL:
                continue
            if key == scale_key:
                scales = [float(spec["value"])]
            else:
                fixed.append(f"{key}={_fmt_value(spec['value'])}")
        else:
            raise ConfigError(f"sweep parameters.{key}: the local runner supports grids ({{values: [...]}}) and "
                              f"fixed values ({{value: x}}), not {sorted(spec)}")
    return fixed, axes, scales


def _setting_name(combo: dict[str, Any]) -> str:
    if not combo:
        return "grid"
    return "_".join(f"{k.split('.')[-1]}={_fmt_value(v)}" for k, v in combo.items()).replace("/", "-")


def _plot(path: Path, rows: list[dict[str, Any]], axes: list[str], baseline: dict[str, float]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tgrowth.io import save_figure

    fig, panels = plt.subplots(1, 3, figsize=(13, 3.8))
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(", ".join(f"{k}={r[k]}" for k in axes) or "grid", []).append(r)
    for (col, title), ax in zip([("hd95", "HD95 (mm), lower is better"),
                                 ("area_error_vs_target", "area error vs ODE target, lower is better"),
                                 ("ssim", "SSIM vs real follow-up, higher is better")], panels):
        for name, rs in groups.items():
            rs = sorted(rs, key=lambda r: r["scale"])
            ax.plot([r["scale"] for r in rs], [r[col] for r in rs], "o-", label=name)
        if col in baseline and baseline[col] is not None and math.isfinite(baseline[col]):
            ax.axhline(baseline[col], color="gray", ls="--", lw=1, label="no-change")
        ticks = sorted({r["scale"] for r in rows})
        ax.set_xscale("symlog", linthresh=max(1e-9, min([s for s in ticks if s > 0] or [1.0]) / 2))
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{s:g}" for s in ticks], fontsize=7)
        ax.set_xlabel("guidance scale")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    panels[0].legend(fontsize=7)
    fig.suptitle("guidance-scale sweep (means over subjects)", fontsize=10)
    return save_figure(fig, path)


def run(cfg: DictConfig) -> int:
    """Run the sweep's grid locally: one batched predict pass per setting of the other axes, then the table."""
    from tgrowth.config.base import save_resolved_config
    from tgrowth.io import write_csv
    from tgrowth.predict import report, state
    from tgrowth.predict.dist import launch
    from tgrowth.predict.methods import Arm
    from tgrowth.predict.pipeline import predict_run

    files, fixed, axes, scales = _grid_spec(cfg)
    dist = launch(cfg.trainer)
    out = Path(cfg.output_dir)
    _prepare_sweep_dir(cfg, dist, out)
    keys = list(axes)
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*(axes[k] for k in keys))] or [{}]
    trainer = [f"trainer.{k}={_fmt_value(v)}" for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
               if k in ("accelerator", "devices", "strategy", "num_nodes", "precision", "enable_progress_bar")]
    rows: list[dict[str, Any]] = []
    baseline: dict[str, float] = {}
    t0 = time.time()
    for i, combo in enumerate(combos):
        name = _setting_name(combo)
        pcfg = _setting_config(cfg, files, fixed, trainer, combo, scales, out / name)
        if dist.is_main:
            print(f"sweep {i + 1}/{len(combos)}: {name or 'grid'}: scales {scales} in one batched pass", flush=True)
            state.prepare_predict_dir(pcfg)
            save_resolved_config(pcfg, pcfg.output_dir)
        dist.barrier()
        arms = [Arm(f"tgrowth@{s:g}", "ode", s) for s in scales] + [Arm("no-change", "baseline")]
        res = predict_run(pcfg, dist, arms, command="sweep", console=dist.is_main)
        if res is None:
            continue
        ms = res["summary"]["methods"]
        if "no-change" in ms and not baseline:
            baseline = {c: ms["no-change"][c]["mean"] for c in report.METRIC_COLUMNS}
        rows += _setting_rows(ms, combo, scales)
    if not dist.is_main:
        return 0
    if not rows:
        raise TgrowthError(f"the sweep produced no metrics (see the errors.csv files under {out})")
    col, best = _best(cfg, rows)
    columns = keys + ["scale", "n_subjects", "hd95", "hd95_median", "dice", "ssim", "psnr", "mae",
                      "area_error_vs_truth", "area_error_vs_target", "ode_forecast_error"]
    write_csv(out / "sweep.csv", rows, columns)
    _plot(out / "sweep.png", rows, keys, baseline)
    _log_wandb(cfg, out, rows, columns, col, best)
    _print_report(cfg, rows, keys, baseline, col, best, out, t0)
    return 0


def _grid_spec(cfg: DictConfig) -> tuple[list[str], list[str], dict[str, list[Any]], list[float]]:
    """(predict base files, fixed overrides, other grid axes, scales) of the sweep file; ConfigError if it is no local grid."""
    raw_cmd = OmegaConf.to_container(cfg.command, resolve=False)  # wandb's ${env}/${args} macros unresolved
    if str(cfg.method) != "grid":
        raise ConfigError(f"tgrowth sweep runs grids locally; method={cfg.method} needs `wandb sweep` + `wandb agent`")
    if cfg.parameters is None:
        raise ConfigError("the sweep file has no parameters (guidance.scale values at least)")
    params = OmegaConf.to_container(cfg.parameters, resolve=True)
    fixed, axes, scales = parse_grid(params, str(cfg.scale_key))
    if not scales:
        raise ConfigError(f"sweep parameters have no {cfg.scale_key} values to sweep")
    files = base_files([str(s) for s in raw_cmd])
    return files, fixed, axes, scales


def _prepare_sweep_dir(cfg: DictConfig, dist: Any, out: Path) -> None:
    """Prepare ``out`` and save the resolved sweep config on the main process; every process raises its error."""
    from tgrowth.config.base import save_resolved_config
    from tgrowth.io import prepare_output_dir

    err = None
    if dist.is_main:
        try:
            prepare_output_dir(out, cfg.overwrite)
            save_resolved_config(cfg, out)
        except TgrowthError as exc:
            err = str(exc)
    err = dist.broadcast(err)
    if err:
        raise TgrowthError(err)


def _setting_config(cfg: DictConfig, files: list[str], fixed: list[str], trainer: list[str], combo: dict[str, Any],
                    scales: list[float], setting_out: Path) -> DictConfig:
    """The predict config of one grid setting, written to ``setting_out``; refuses to tune on the test split."""
    from tgrowth.config.base import load_config
    from tgrowth.config.predict import PredictConfig

    over = [f"data.split={cfg.split}"] + fixed + list(cfg.overrides) + [
        f"{k}={_fmt_value(v)}" for k, v in combo.items()] + trainer + [
        f"output_dir={setting_out}", "overwrite=true", "resume=false", "wandb.enabled=false",
        f"{cfg.scale_key}={scales[0]}", f"seed={cfg.seed}", f"experiment={cfg.experiment}"]
    pcfg = load_config(PredictConfig, files, over)
    if str(pcfg.data.split) == "test" and not cfg.allow_test:
        raise ConfigError("this sweep would tune on the test subjects (data.split=test): sweeps choose settings, "
                          "so they run on validation subjects (split=val, the default); pass allow_test=true "
                          "only if you mean it")
    return pcfg


def _setting_rows(ms: dict[str, Any], combo: dict[str, Any], scales: list[float]) -> list[dict[str, Any]]:
    """One sweep.csv row per scale of a setting: its other-axis values and the mean metrics over the subjects."""
    from tgrowth.predict import report

    rows = []
    for s in scales:
        st = ms.get(f"tgrowth@{s:g}")
        if st is None:
            continue
        row = {**combo, "scale": s, "n_subjects": st["n_subjects"]}
        for c in report.METRIC_COLUMNS:
            row[c] = st[c]["mean"]
        row["hd95_median"] = st["hd95"]["median"]
        rows.append(row)
    return rows


def _best(cfg: DictConfig, rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any] | None]:
    """The sweep.csv column of the sweep's metric and the best row by it (None when no row has a finite value)."""
    metric = str(cfg.metric.name).split("/")[-1]
    col = {"area_error": "area_error_vs_truth"}.get(metric, metric)
    sign = 1 if str(cfg.metric.goal).startswith("min") else -1
    finite = [r for r in rows if r.get(col) is not None and math.isfinite(r[col])]
    best = min(finite, key=lambda r: sign * r[col]) if finite else None
    return col, best


def _log_wandb(cfg: DictConfig, out: Path, rows: list[dict[str, Any]], columns: list[str], col: str,
               best: dict[str, Any] | None) -> None:
    """Log the grid table, the plot and the best setting to one wandb run (when wandb is enabled)."""
    from tgrowth.predict import track

    wb = track.start(cfg, "sweep")
    if wb is not None:
        import wandb

        table = wandb.Table(columns=columns)
        for r in rows:
            table.add_data(*[r.get(c) for c in columns])
        wb.log({"sweep/grid": table, "sweep/plot": wandb.Image(str(out / "sweep.png"))})
        if best is not None:
            wb.summary[f"sweep/best_{col}"] = best[col]
            wb.summary["sweep/best_scale"] = best["scale"]
        wb.finish()


def _print_report(cfg: DictConfig, rows: list[dict[str, Any]], keys: list[str], baseline: dict[str, float], col: str,
                  best: dict[str, Any] | None, out: Path, t0: float) -> None:
    """Print the grid table, the no-change baseline, the best setting and where the files are."""
    print()
    head = keys + ["scale", "HD95", "Dice", "SSIM", "AreaErr/true", "AreaErr/ODE"]
    print("  ".join(f"{h:>12}" for h in head))
    for r in rows:
        vals = [str(r[k]) for k in keys] + [f"{r['scale']:g}"] + [
            "-" if r.get(c) is None or (isinstance(r[c], float) and math.isnan(r[c])) else f"{r[c]:.3f}"
            for c in ("hd95", "dice", "ssim", "area_error_vs_truth", "area_error_vs_target")]
        print("  ".join(f"{v:>12}" for v in vals))
    if baseline:
        print(f"no-change baseline: HD95 {baseline.get('hd95', float('nan')):.3f}, SSIM {baseline.get('ssim', float('nan')):.3f}")
    if best is not None:
        print(f"best by {cfg.metric.name} ({cfg.metric.goal}): scale {best['scale']:g}"
              + "".join(f", {k}={best[k]}" for k in keys) + f" -> {best[col]:.3f}")
    print(f"sweep: {len(rows)} grid point(s) in {time.time() - t0:.1f} s; {out / 'sweep.csv'}, {out / 'sweep.png'}")
