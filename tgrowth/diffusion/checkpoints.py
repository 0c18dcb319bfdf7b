"""Checkpoints: Lightning's best/last for resuming, and self-describing model files for the sampler.

A model file (``<output_dir>/<kind>.pt``, written by ``export_model``) is a plain dict of tensors and
primitive values, loaded with ``torch.load(..., weights_only=True)``::

    {"format": "tgrowth-model", "version": 2, "kind": "denoiser" | "regressor" | "segmenter",
     "meta": {"kind", "image_size", "contrasts", "in_channels", "network": {"class", "kwargs"},
              "schedule": {"kind", "num_steps"} (denoiser, regressor),
              "area": {"key", "scale"} (regressor: output = batch[key] * scale),
              "regions" (segmenter), "class_labels" (denoiser), "source", "step"},
     "state_dict": {...},   # the denoiser's EMA weights
     "checksum": "sha256:..."}   # content_checksum(kind, meta, state_dict), verified on every load

Version-1 files (no checksum) still load, with a warning that their contents cannot be verified. The loaders
refuse a corrupted file with one line naming it (``... is corrupted: checksum mismatch``, ``... is empty
(0 bytes)``, ``... is truncated or not a tgrowth model file``, ``not a tgrowth model file: ... (a text file)``).
``file_digest(path)`` returns the verified content checksum (``meta["checksum"]`` of the loaders is the same
string): two files with the same weights and metadata have the same digest.

``load_denoiser(path, expect_image_size=None, expect_contrasts=None) -> (UNet, NoiseSchedule, meta)``,
``load_regressor(...) -> (EncoderRegressor, meta)`` and ``load_segmenter(...) -> (Segmenter, meta)``
rebuild the network from the stored arguments (no Lightning import) and return it in eval mode on
``map_location``. They also accept a Lightning ``.ckpt`` written by our training modules (the denoiser's
EMA weights are taken from it). Errors are :class:`~tgrowth.errors.TgrowthError` naming the file.
``check_resume_checkpoint(path, kind)`` refuses a Lightning checkpoint that cannot resume a run (empty,
truncated, another kind) before the Trainer starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tgrowth.diffusion import unet as unet_mod
from tgrowth.diffusion.schedule import NoiseSchedule, make_schedule
from tgrowth.errors import DataError, TgrowthError
from tgrowth.io import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "VERSION",
    "check_resume_checkpoint",
    "checkpoint_callbacks",
    "content_checksum",
    "file_digest",
    "resolve_ckpt_path",
    "export_model",
    "export_from_lightning",
    "load_model_file",
    "load_denoiser",
    "load_regressor",
    "load_segmenter",
]

FORMAT = "tgrowth-model"
VERSION = 2  # 2: with a content checksum; 1: without (still loaded)
NETWORKS = {"UNet": unet_mod.UNet, "EncoderRegressor": unet_mod.EncoderRegressor, "Segmenter": unet_mod.Segmenter}
# which part of a LightningModule's state_dict holds the weights the sampler uses
_LIGHTNING_PREFIX = {"denoiser": "ema_model.", "regressor": "model.", "segmenter": "model."}


# --------------------------------------------------------------------------- Lightning side
def checkpoint_callbacks(output_dir: str | Path, monitor: str, mode: str):
    """ModelCheckpoint keeping the best (by ``monitor``) and the last checkpoint in ``output_dir/checkpoints``."""
    # Lightning only here: the loaders (and ``import tgrowth.diffusion``) must work with torch alone
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
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    meta = dict(meta, kind=kind)
    blob = {"format": FORMAT, "version": VERSION, "kind": kind, "meta": meta, "state_dict": state,
            "checksum": content_checksum(kind, meta, state)}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(blob, tmp)
    return Path(path)


def content_checksum(kind: str, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    """``sha256:<hex>`` over the kind, the metadata (canonical JSON) and every tensor's name, dtype, shape
    and bytes, in name order: independent of how the file was written, changed by any changed byte."""
    h = hashlib.sha256(json.dumps({"kind": kind, "meta": meta}, sort_keys=True, default=str).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return "sha256:" + h.hexdigest()


def _looks_like(head: bytes) -> str:
    """What a file that is not a zip archive seems to be, for the error message."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a PyTorch zip archive"
    if "\0" in text:
        return "not a PyTorch zip archive"
    first = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f"a text file: {first!r}" if first else "a text file"


def _read_torch(p: Path, label: str, mmap: bool = False) -> Any:
    """``torch.load(p, weights_only=True)`` with one clear line for each usual way a file is broken."""
    if not p.is_file():
        raise TgrowthError(f"{label} not found: {p}")
    size = p.stat().st_size
    if size == 0:
        raise DataError(f"{p} is empty (0 bytes)")
    with open(p, "rb") as fh:
        head = fh.read(512)
    if not head.startswith(b"PK\x03\x04"):  # torch.save writes a zip archive
        raise DataError(f"not a {label}: {p} ({_looks_like(head)})")
    if not zipfile.is_zipfile(p):
        raise DataError(f"{p} is truncated or not a {label} ({size} bytes, the zip archive has no end record)")
    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # unpickling refused, damaged records
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        raise DataError(f"{p} is corrupted or not a {label} ({lines[0] if lines else type(exc).__name__})") from exc


def _verify(blob: dict[str, Any], p: Path) -> str:
    """The content checksum of a model-file blob, checked against the stored one."""
    version = blob.get("version")
    if not isinstance(version, int) or not 1 <= version <= VERSION:
        raise TgrowthError(f"{p}: model file version {version!r} is not one this tgrowth reads (1-{VERSION}); "
                           "update tgrowth or re-export the model")
    kind, meta, state = blob.get("kind"), blob.get("meta"), blob.get("state_dict")
    if not isinstance(meta, dict) or not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise DataError(f"{p} is corrupted: its metadata or weights are not where a tgrowth model file keeps them")
    actual = content_checksum(str(kind), meta, state)
    stored = blob.get("checksum")
    if version >= 2 or stored is not None:
        if stored != actual:
            why = "no checksum stored" if stored is None else "checksum mismatch"
            raise DataError(f"{p} is corrupted: {why} (the weights or metadata changed after it was written); "
                            "export or copy it again")
    else:
        log.warning("%s is a version-1 model file without a checksum: loaded without verifying its contents "
                    "(re-export it to add one)", p)
    return actual


def _load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    blob = _read_torch(p, "tgrowth model file")
    if not isinstance(blob, dict):
        raise DataError(f"not a tgrowth model file: {p} (it holds a {type(blob).__name__}, not a dict)")
    if blob.get("format") == FORMAT:
        return dict(blob, checksum=_verify(blob, p))
    hp = blob.get("hyper_parameters")
    if isinstance(hp, dict) and isinstance(hp.get("meta"), dict) and "state_dict" in blob:
        meta = hp["meta"]
        kind = meta.get("kind")
        prefix = _LIGHTNING_PREFIX.get(kind, "model.")
        state = {k[len(prefix):]: v for k, v in blob["state_dict"].items() if k.startswith(prefix)}
        meta = dict(meta, step=int(blob.get("global_step", -1)))
        checksum = content_checksum(str(kind), meta, state)  # Lightning checks nothing: the digest of what is there
        return {"format": FORMAT, "version": VERSION, "kind": kind, "meta": dict(meta, source=str(p)),
                "state_dict": state, "checksum": checksum}
    raise TgrowthError(f"{p} is not a tgrowth model file (no '{FORMAT}' header and no tgrowth Lightning hyper-parameters)")


def file_digest(path: str | Path) -> str:
    """The verified content checksum (``sha256:<hex>``) of a model file or of one of our Lightning checkpoints.

    The same string as ``meta["checksum"]`` of the loaders; it changes with any weight or metadata byte, not
    with how or where the file was written. Raises like the loaders on a missing, broken or corrupted file.
    """
    return _load(path)["checksum"]


def check_resume_checkpoint(path: str | Path, kind: str) -> None:
    """Refuse a Lightning checkpoint that cannot resume a ``kind`` training run, before the Trainer starts:
    missing, empty, truncated, not a checkpoint, or written by another kind of run. Reads lazily (mmap)."""
    p = Path(path)
    blob = _read_torch(p, "checkpoint", mmap=True)
    if not isinstance(blob, dict) or "state_dict" not in blob or "loops" not in blob:
        raise DataError(f"not a Lightning training checkpoint: {p} (no model state and training progress)")
    meta = (blob.get("hyper_parameters") or {}).get("meta") or {}
    got = meta.get("kind") if isinstance(meta, dict) else None
    if got != kind:
        raise TgrowthError(f"{p} is a {got or 'non-tgrowth'} checkpoint; it cannot resume a {kind} run")


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
    return net, dict(meta, path=str(p), checksum=blob["checksum"])


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
