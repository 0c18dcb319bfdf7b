"""Checkpoints: Lightning's best/last for resuming, and self-describing model files for the sampler.

A model file (``<output_dir>/<kind>.pt``, written by ``export_model``) is a plain dict of tensors and
primitive values, loaded with ``torch.load(..., weights_only=True)``::

    {"format": "tgrowth-model", "version": 1, "kind": "denoiser" | "regressor" | "segmenter",
     "meta": {"kind", "image_size", "contrasts", "in_channels", "network": {"class", "kwargs"},
              "schedule": {"kind", "num_steps"} (denoiser, regressor),
              "area": {"key", "scale"} (regressor: output = batch[key] * scale),
              "regions" (segmenter), "class_labels" (denoiser), "source", "step"},
     "state_dict": {...}}   # the denoiser's EMA weights

``load_denoiser(path, expect_image_size=None, expect_contrasts=None) -> (UNet, NoiseSchedule, meta)``,
``load_regressor(...) -> (EncoderRegressor, meta)`` and ``load_segmenter(...) -> (Segmenter, meta)``
rebuild the network from the stored arguments (no Lightning import) and return it in eval mode on
``map_location``. They also accept a Lightning ``.ckpt`` written by our training modules (the denoiser's
EMA weights are taken from it). Errors are :class:`~tgrowth.errors.TgrowthError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tgrowth.diffusion import unet as unet_mod
from tgrowth.diffusion.schedule import NoiseSchedule, make_schedule
from tgrowth.errors import TgrowthError

__all__ = [
    "FORMAT",
    "checkpoint_callbacks",
    "resolve_ckpt_path",
    "export_model",
    "export_from_lightning",
    "load_model_file",
    "load_denoiser",
    "load_regressor",
    "load_segmenter",
]

FORMAT = "tgrowth-model"
NETWORKS = {"UNet": unet_mod.UNet, "EncoderRegressor": unet_mod.EncoderRegressor, "Segmenter": unet_mod.Segmenter}
# which part of a LightningModule's state_dict holds the weights the sampler uses
_LIGHTNING_PREFIX = {"denoiser": "ema_model.", "regressor": "model.", "segmenter": "model."}


# --------------------------------------------------------------------------- Lightning side
def checkpoint_callbacks(output_dir: str | Path, monitor: str, mode: str):
    """ModelCheckpoint keeping the best (by ``monitor``) and the last checkpoint in ``output_dir/checkpoints``."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    return [ModelCheckpoint(
        dirpath=str(Path(output_dir) / "checkpoints"), filename="best-step{step}", auto_insert_metric_name=False,
        monitor=monitor, mode=mode, save_top_k=1, save_last=True,
    )]


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """``last`` / ``best`` -> the file in ``output_dir/checkpoints`` (None if there is no last one yet:
    a fresh start, so a requeued job can always pass ``ckpt_path=last``); other values must exist."""
    if not ckpt_path:
        return None
    folder = Path(output_dir) / "checkpoints"
    if ckpt_path == "last":
        p = folder / "last.ckpt"
        return str(p) if p.is_file() else None
    if ckpt_path == "best":
        best = sorted(folder.glob("best-*.ckpt"), key=lambda q: q.stat().st_mtime)
        if not best:
            raise TgrowthError(f"ckpt_path=best: no best-*.ckpt in {folder}")
        return str(best[-1])
    if not Path(ckpt_path).is_file():
        raise TgrowthError(f"ckpt_path {ckpt_path} does not exist")
    return str(ckpt_path)


# --------------------------------------------------------------------------- export
def export_model(path: str | Path, kind: str, net: nn.Module, meta: dict[str, Any]) -> Path:
    """Write a self-describing model file (atomically)."""
    from tgrowth.io import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    blob = {"format": FORMAT, "version": 1, "kind": kind, "meta": dict(meta, kind=kind), "state_dict": state}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(blob, tmp)
    return Path(path)


def _load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise TgrowthError(f"model file not found: {p}")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused or a corrupt file
        raise TgrowthError(f"cannot read {p} as a tgrowth model file: {str(exc).splitlines()[0]}") from exc
    if not isinstance(blob, dict):
        raise TgrowthError(f"{p} is not a tgrowth model file")
    if blob.get("format") == FORMAT:
        return blob
    hp = blob.get("hyper_parameters")
    if isinstance(hp, dict) and isinstance(hp.get("meta"), dict) and "state_dict" in blob:
        meta = hp["meta"]
        kind = meta.get("kind")
        prefix = _LIGHTNING_PREFIX.get(kind, "model.")
        state = {k[len(prefix):]: v for k, v in blob["state_dict"].items() if k.startswith(prefix)}
        meta = dict(meta, source=str(p), step=int(blob.get("global_step", -1)))
        return {"format": FORMAT, "version": 1, "kind": kind, "meta": meta, "state_dict": state}
    raise TgrowthError(f"{p} is not a tgrowth model file (no '{FORMAT}' header and no tgrowth Lightning hyper-parameters)")


def export_from_lightning(ckpt: str | Path, path: str | Path) -> Path:
    """Turn one of our Lightning checkpoints into a model file (denoiser: its EMA weights)."""
    blob = _load(ckpt)
    net = _build(blob, Path(ckpt))
    return export_model(path, blob["kind"], net, blob["meta"])


# --------------------------------------------------------------------------- load
def _build(blob: dict[str, Any], path: Path) -> nn.Module:
    net_spec = blob["meta"].get("network") or {}
    cls = NETWORKS.get(net_spec.get("class"))
    if cls is None:
        raise TgrowthError(f"{path}: unknown network class {net_spec.get('class')!r}")
    net = cls(**net_spec.get("kwargs", {}))
    try:
        net.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise TgrowthError(f"{path}: weights do not fit the stored network arguments: {str(exc).splitlines()[0]}") from exc
    return net


def load_model_file(path: str | Path, kind: str, expect_image_size: int | None = None,
                    expect_contrasts: list[str] | tuple[str, ...] | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load any of the three kinds, checking kind, image size and contrasts."""
    p = Path(path)
    blob = _load(p)
    meta = blob["meta"]
    got = blob.get("kind")
    if got != kind:
        raise TgrowthError(f"{p} is a {got} checkpoint, expected a {kind}")
    size = int(meta.get("image_size", -1))
    if expect_image_size is not None and size != int(expect_image_size):
        raise TgrowthError(f"{p} was trained on {size}x{size} images, expected {int(expect_image_size)}x{int(expect_image_size)}")
    if expect_contrasts is not None and list(meta.get("contrasts", [])) != list(expect_contrasts):
        raise TgrowthError(f"{p} was trained on contrasts {list(meta.get('contrasts', []))}, expected {list(expect_contrasts)}")
    net = _build(blob, p).to(map_location).eval()
    return net, dict(meta, path=str(p))


def load_denoiser(path, expect_image_size=None, expect_contrasts=None, map_location="cpu") -> tuple[nn.Module, NoiseSchedule, dict[str, Any]]:
    """(UNet with the EMA weights, its NoiseSchedule, meta). ``net(x, t, y) -> eps``."""
    net, meta = load_model_file(path, "denoiser", expect_image_size, expect_contrasts, map_location)
    sched = meta.get("schedule", {})
    schedule = make_schedule(sched.get("kind", "linear"), int(sched.get("num_steps", 1000))).to(map_location)
    return net, schedule, meta


def load_regressor(path, expect_image_size=None, expect_contrasts=None, map_location="cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(EncoderRegressor, meta); ``net(x_t, t) -> [B]`` = meta['area']['key'] * meta['area']['scale']."""
    return load_model_file(path, "regressor", expect_image_size, expect_contrasts, map_location)


def load_segmenter(path, expect_image_size=None, expect_contrasts=None, map_location="cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(Segmenter, meta); ``net(x) -> logits [B, R, H, W]``, ``net.segment(x) -> whole-tumour mask``."""
    return load_model_file(path, "segmenter", expect_image_size, expect_contrasts, map_location)
