"""The three trained networks of a predict run, loaded once and checked against the config and each other.

:func:`load_models` reads the model files (kind, image size, contrasts, the regressor's output units);
:func:`check_models` refuses settings the files cannot honour before any subject is touched;
:func:`guidance_units` converts between mm^2 on a slice and the guidance's units (fractions of the slice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from data_modules.volumes import label_set
from tgrowth.diffusion.checkpoints import load_denoiser, load_regressor, load_segmenter
from tgrowth.errors import ConfigError, TgrowthError

__all__ = ["Models", "load_models", "check_models", "guidance_units", "autocast_dtype"]


@dataclass
class Models:
    denoiser: torch.nn.Module
    schedule: Any
    regressor: torch.nn.Module | None  # None: guidance.form=segmenter without a regressor file
    segmenter: torch.nn.Module
    image_size: int
    contrasts: list[str]
    area_key: str  # what the regressor outputs: area_frac or area_mm2 ...
    area_scale: float  # ... times this
    class_label: int | None  # 1 (diseased) for a class-conditioned denoiser
    meta: dict[str, Any] = field(default_factory=dict)


def load_models(cfg: DictConfig, device: torch.device) -> Models:
    """Load the model files, checking paths, kinds, image sizes and contrasts against each other.

    The regressor is optional with ``guidance.form=segmenter`` (``checkpoints.regressor`` null)."""
    for key in ("denoiser", "regressor", "segmenter"):
        p = cfg.checkpoints[key]
        if key == "regressor" and not p and str(cfg.guidance.form) == "segmenter":
            continue
        if not p or not Path(str(p)).is_file():
            raise TgrowthError(f"checkpoints.{key}: file not found: {p} (train it with `tgrowth train-{key}` "
                               f"and pass checkpoints.{key}=<output_dir>/{key}.pt)")
    want_size = cfg.data.image_size
    want_contrasts = list(cfg.data.contrasts) if cfg.data.contrasts else None
    den, schedule, dmeta = load_denoiser(cfg.checkpoints.denoiser, want_size, want_contrasts, map_location=device)
    size, contrasts = int(dmeta["image_size"]), list(dmeta.get("contrasts") or want_contrasts or [])
    seg, smeta = load_segmenter(cfg.checkpoints.segmenter, size, contrasts, map_location=device)
    for net in (den, seg):
        net.eval().requires_grad_(False)
    label = 1 if getattr(den, "num_classes", None) else None
    if not cfg.checkpoints.regressor:
        return Models(den, schedule, None, seg, size, contrasts, "area_frac", 1.0, label,
                      {"denoiser": dmeta, "regressor": {}, "segmenter": smeta})
    reg, rmeta = load_regressor(cfg.checkpoints.regressor, size, contrasts, map_location=device)
    reg.eval().requires_grad_(False)
    area = rmeta.get("area")
    if not isinstance(area, dict) or "key" not in area or "scale" not in area:
        raise TgrowthError(f"{cfg.checkpoints.regressor}: the regressor's model file does not say what it outputs "
                           "(meta 'area' with 'key' and 'scale'), so guidance.scale cannot be put in its units; "
                           "re-export it with this version of tgrowth")
    key, area_scale = str(area["key"]), float(area["scale"])
    if key not in ("area_frac", "area_mm2") or not area_scale > 0:
        raise TgrowthError(f"{cfg.checkpoints.regressor}: regressor output {key!r} x {area_scale} is not an area "
                           "(area_frac or area_mm2 times a positive scale)")
    return Models(den, schedule, reg, seg, size, contrasts, key, area_scale, label,
                  {"denoiser": dmeta, "regressor": rmeta, "segmenter": smeta})


def check_models(cfg: DictConfig, models: Models) -> None:
    """Config against the model files, before any subject is touched: one ConfigError listing every problem."""
    dmeta, rmeta, smeta = (models.meta[k] for k in ("denoiser", "regressor", "segmenter"))
    problems: list[str] = []
    T = models.schedule.num_train_steps
    L = int(cfg.sampling.noise_level)
    if not 1 <= L <= T:
        problems.append(f"config key 'sampling.noise_level' must be in 1..{T} (the denoiser's schedule), got {L}")
    for kind, meta in (("denoiser", dmeta), ("regressor", rmeta)):
        t_max = meta.get("train_t_max")
        if t_max is not None and L > int(t_max):
            problems.append(f"config key 'sampling.noise_level' is {L}, above the {kind}'s train_t_max {int(t_max)} "
                            f"({cfg.checkpoints[kind]} never saw noisier inputs); use sampling.noise_level<={int(t_max)}")
    dsched, rsched = dmeta.get("schedule") or {}, rmeta.get("schedule") or {}
    if dsched and rsched and (dsched.get("kind"), int(dsched.get("num_steps", 0))) != (
            rsched.get("kind"), int(rsched.get("num_steps", 0))):
        problems.append(f"the regressor {cfg.checkpoints.regressor} was trained with the noise schedule {rsched}, the "
                        f"denoiser {cfg.checkpoints.denoiser} with {dsched}: guidance would read the wrong noise level")
    want = label_set(cfg.data.labels)
    for kind, meta in (("denoiser", dmeta), ("regressor", rmeta), ("segmenter", smeta)):
        if meta.get("labels") is not None and label_set(meta["labels"]) != want:
            problems.append(f"the {kind} {cfg.checkpoints[kind]} was trained on tumour labels "
                            f"{list(label_set(meta['labels']))}, but data.labels={cfg.data.labels!r} means {list(want)}")
    if problems:
        raise ConfigError("; ".join(problems))


def guidance_units(models: Models, pixel_area: float) -> tuple[float, float]:
    """(mm^2 per unit of slice fraction, regressor output per unit of slice fraction) on this slice.

    ``guidance.scale`` is defined with areas as a fraction of the slice (the authors' units), whatever the
    regressor outputs: targets are converted mm^2 -> fraction, and the regressor's output is divided by the
    second number (``AreaGuidance(regressor_scale=...)``), from its model file's ``area`` metadata.
    """
    mm2_per_frac = pixel_area * float(models.image_size**2)
    if models.area_key == "area_frac":
        return mm2_per_frac, models.area_scale
    return mm2_per_frac, models.area_scale * mm2_per_frac


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``trainer.precision`` -> the networks' autocast dtype (the sampling state itself stays float32)."""
    if precision in ("bf16-mixed", "bf16", "bf16-true"):
        return torch.bfloat16
    if precision in ("16-mixed", "16", "16-true") and device.type == "cuda":
        return torch.float16
    return None
