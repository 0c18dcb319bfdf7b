"""wandb tracking shared by every command: offline by default, stable metric names, resumable run ids.

- ``make_wandb_logger(cfg, command)``: a Lightning ``WandbLogger`` for training commands.
- ``start_wandb_run(cfg, command)``: a plain ``wandb`` run for commands without a Trainer (predict, fit-ode, sweep).
- ``trainer_kwargs(cfg.trainer)``: the ``trainer`` section as ``pytorch_lightning.Trainer`` kwargs.

The run's wandb config is the fully resolved config as flat keys; runs are grouped by experiment name
and tagged with the command. The run id is stored in ``<output_dir>/wandb_run_id`` so that resuming a
run (``ckpt_path=last`` or rerunning predict) continues the same wandb run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tgrowth.config.base import to_flat_dict

RUN_ID_FILE = "wandb_run_id"


def new_run_id() -> str:
    """A fresh wandb-style run id (8 lowercase letters/digits), made without wandb's private helpers."""
    import secrets

    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


def ensure_run_id(cfg: DictConfig) -> str:
    """The run id to use: ``wandb.run_id`` if set, else the one stored in ``<output_dir>/wandb_run_id``,
    else a new one that is stored there (so that resuming the run continues the same wandb run)."""
    if cfg.wandb.run_id:
        return str(cfg.wandb.run_id)
    path = Path(cfg.output_dir) / RUN_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    from tgrowth.io import atomic_write_text

    rid = new_run_id()
    atomic_write_text(path, rid + "\n")
    return rid


def _wandb_kwargs(cfg: DictConfig, command: str) -> dict[str, Any]:
    w = cfg.wandb
    mode = "disabled" if not w.enabled else str(w.mode)
    if mode not in ("offline", "online", "disabled"):
        from tgrowth.errors import ConfigError

        raise ConfigError(f"wandb.mode must be offline, online or disabled, got '{mode}'")
    save_dir = Path(w.dir or cfg.output_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    return dict(
        project=w.project,
        entity=w.entity,
        group=w.group or cfg.experiment,
        job_type=command,
        tags=sorted({command, *map(str, w.tags)}),
        name=f"{cfg.experiment}-{command}-{Path(cfg.output_dir).name}",
        dir=str(save_dir),
        mode=mode,
        id=ensure_run_id(cfg),
        resume="allow",
        config=to_flat_dict(cfg),
    )


def make_wandb_logger(cfg: DictConfig, command: str):
    """Lightning WandbLogger (None when wandb is disabled)."""
    if not cfg.wandb.enabled or cfg.wandb.mode == "disabled":
        return None
    from pytorch_lightning.loggers import WandbLogger

    kw = _wandb_kwargs(cfg, command)
    config = kw.pop("config")
    save_dir = kw.pop("dir")
    logger = WandbLogger(save_dir=save_dir, log_model=False, **kw)
    logger.log_hyperparams(config)
    return logger


def start_wandb_run(cfg: DictConfig, command: str):
    """A plain wandb run for commands without a Trainer; returns None when disabled."""
    if not cfg.wandb.enabled or cfg.wandb.mode == "disabled":
        return None
    import wandb

    return wandb.init(**_wandb_kwargs(cfg, command))


def trainer_kwargs(trainer_cfg: DictConfig) -> dict[str, Any]:
    """The ``trainer`` config section as keyword arguments for ``pytorch_lightning.Trainer``.

    Unset (None) keys are left to Lightning's defaults, except ``check_val_every_n_epoch: null``, which
    Lightning reads as "validate by steps across epochs" and is passed on. A whole-number
    ``val_check_interval`` > 1 means steps (the schema's float type would turn 200 into 200.0, which
    Lightning reads as a fraction of an epoch). Lightning's model summary table is off
    (``enable_model_summary=False``): training commands log the parameter count in one line instead.
    """
    from tgrowth.errors import ConfigError

    kw = OmegaConf.to_container(trainer_cfg, resolve=True)
    assert isinstance(kw, dict)
    out = {k: v for k, v in kw.items() if v is not None}
    out.setdefault("enable_model_summary", False)
    if "check_val_every_n_epoch" in kw and kw["check_val_every_n_epoch"] is None:
        out["check_val_every_n_epoch"] = None
    v = out.get("val_check_interval")
    if isinstance(v, float) and v > 1:
        if not v.is_integer():
            raise ConfigError(f"trainer.val_check_interval={v}: use a whole number of steps or a fraction <= 1")
        out["val_check_interval"] = int(v)
    return out
