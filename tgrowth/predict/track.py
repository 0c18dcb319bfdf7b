"""wandb logging of predict and sweep results (stable metric names shared across commands).

Summary keys (what a dashboard or a sweep optimises): ``predict/hd95``, ``predict/ssim``, ``predict/psnr``,
``predict/mae``, ``predict/dice``, ``predict/area_error`` (vs the true follow-up), ``predict/area_error_vs_target``,
``predict/ode_forecast_error`` for the tgrowth method (with ``volume=true``: ``predict/dice_3d``, ``predict/hd95_3d``,
``predict/volume_error``, ``predict/adjacent_dice``); ``predict/<method>/<metric>`` for every method.
Per subject: a ``predict/subjects`` table (one row per subject and method, with the panel PNG as an image)
and the panels as ``predict/panel/<subject>`` images.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

STABLE = {"hd95": "hd95", "ssim": "ssim", "ssim_brain": "ssim_brain", "psnr": "psnr", "mae": "mae", "dice": "dice",
          "area_error_vs_truth": "area_error", "area_error_vs_target": "area_error_vs_target",
          "ode_forecast_error": "ode_forecast_error",
          # volume=true runs (tgrowth.predict.volume); absent from 2D summaries, so nothing is logged for them there
          "dice_3d": "dice_3d", "hd95_3d": "hd95_3d", "volume_error_vs_truth": "volume_error",
          "adjacent_dice": "adjacent_dice"}


def start(cfg: DictConfig, command: str):
    """A wandb run (or None when disabled). Under a `wandb agent` the agent's run id is used."""
    from tgrowth.tracking import start_wandb_run

    if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID") and not cfg.wandb.run_id:
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.wandb.run_id = os.environ["WANDB_RUN_ID"]
    return start_wandb_run(cfg, command)


def summary_metrics(summary: dict[str, Any], main_method: str = "tgrowth") -> dict[str, float]:
    out: dict[str, float] = {}
    for method, stats in summary.get("methods", {}).items():
        for col, name in STABLE.items():
            if col not in stats:
                continue
            v = stats[col]["mean"]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            out[f"predict/{method}/{name}"] = v
            if method == main_method:
                out[f"predict/{name}"] = v
    return out


def log_predict(run: Any, rows: list[dict[str, Any]], infos: list[dict[str, Any]], summary: dict[str, Any],
                out: Path) -> None:
    """Per-subject table with panels, per-subject steps and the summary metrics."""
    if run is None:
        return
    import wandb

    panels = {i["subject"]: Path(out) / i["subject"] / i["files"]["panel"] for i in infos
              if i.get("files", {}).get("panel")}
    cols = ["subject", "method", "hd95", "ssim", "dice", "psnr", "mae", "area_error_vs_truth",
            "area_error_vs_target", "ode_forecast_error", "panel"]
    if any("dice_3d" in r for r in rows):  # volume=true
        cols = ["subject", "method", "hd95_3d", "dice_3d", "ssim", "volume_error_vs_truth", "volume_error_vs_target",
                "adjacent_dice", "adjacent_dice_truth", "panel"]
    table = wandb.Table(columns=cols)
    for r in rows:
        p = panels.get(r["subject"])
        img = wandb.Image(str(p)) if (p is not None and p.is_file() and r["method"] == "tgrowth") else None
        table.add_data(*[r.get(c) for c in cols[:-1]], img)
    for step, r in enumerate(x for x in rows if x["method"] == "tgrowth"):
        run.log({f"predict/subject_{STABLE[c]}": r[c] for c in STABLE if r.get(c) is not None} | {"subject_index": step})
    # the panels also as plain images: wandb 0.31 keeps images inside Tables only when online
    images = {f"predict/panel/{s}": wandb.Image(str(p), caption=s) for s, p in panels.items() if p.is_file()}
    metrics = summary_metrics(summary)
    run.log({"predict/subjects": table, **images, **metrics})
    for k, v in metrics.items():
        run.summary[k] = v
    run.summary["predict/n_subjects"] = summary.get("n_subjects", 0)


def offline_run_file(path: str | Path) -> Path:
    """The ``run-<id>.wandb`` file of ``path``: that file itself, an ``offline-run-*`` folder, a wandb folder
    holding ``offline-run-*`` folders, or a command's ``output_dir`` (its ``wandb/offline-run-*``). Where a
    folder holds several runs (a rerun or resume starts a new offline folder) the newest one is read."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such wandb run file or folder")
    for pattern in ("run-*.wandb", "offline-run-*/run-*.wandb", "wandb/offline-run-*/run-*.wandb"):
        found = sorted(p.glob(pattern), key=lambda f: (f.parent.name, f.stat().st_mtime))
        if found:
            return found[-1]
    raise FileNotFoundError(f"{p}: no offline wandb run in it (looked for run-*.wandb, offline-run-*/ and "
                            "wandb/offline-run-*/); was the run started with wandb.enabled=false or mode=online?")


def read_offline_run(path: str | Path) -> dict[str, Any]:
    """Read an offline wandb run: its config, history rows and summary, without syncing it.

    ``path``: the run file (``run-<id>.wandb``), its ``offline-run-*`` folder, or the command's ``output_dir``
    (see :func:`offline_run_file`). The file is wandb's transaction log (a 7-byte ``:W&B`` header, then
    LevelDB-log framed protobuf ``Record`` messages in 32 KiB blocks).
    """
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    run_file = offline_run_file(path)
    data = run_file.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{run_file} is not a wandb run file")
    block, pos, pending = 32768, 7, b""
    payloads: list[bytes] = []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
            pending = b""
    out: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "run": {}}

    def key(item: Any) -> str:
        return item.key or "/".join(item.nested_key)

    for p in payloads:
        rec = pb.Record()
        rec.ParseFromString(p)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out["summary"].update({key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "config":
            out["config"].update({key(i): json.loads(i.value_json) for i in rec.config.update})
        elif kind == "run":
            out["run"] = {"id": rec.run.run_id, "group": rec.run.run_group, "job_type": rec.run.job_type,
                          "tags": list(rec.run.tags), "project": rec.run.project}
            out["config"].update({key(i): json.loads(i.value_json) for i in rec.run.config.update})
    for row in out["history"]:  # wandb keeps the last logged value as the summary unless set explicitly
        for k, v in row.items():
            if not k.startswith("_"):
                out["summary"].setdefault(k, v)
    return out
