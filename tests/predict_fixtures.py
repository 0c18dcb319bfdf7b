"""Tiny data + models for the predict tests: a 3-subject longitudinal set (32x32x6) and real networks of the
three kinds exported in the real model-file format (tgrowth.diffusion.checkpoints.export_model).

The networks are small and only briefly fitted (a few optimiser steps each, here, in plain torch), so the
tests check the pipeline's plumbing, geometry, bookkeeping and reproducibility, not image quality (the
demo measures quality).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.factories import write_longitudinal
from tgrowth.vocab import CONTRASTS as VOCAB_CONTRASTS

SIZE = 32
CONTRASTS = list(VOCAB_CONTRASTS)


def make_data(root: Path) -> Path:
    # SUB01 train; SUB02, SUB03 test. The tumour grows 3 -> 4 -> 5.5 voxels radius; RT days 10-52.
    return write_longitudinal(root, n_subjects=3, n_timepoints=3, shape=(SIZE, SIZE, 6), radii=[3.0, 4.0, 5.5],
                              splits={"SUB01": "train", "SUB02": "test", "SUB03": "test"})


def _train(net, data, loss_fn, steps=4, lr=2e-3):
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(net, data).backward()
        opt.step()
    return net.eval()


def make_models(out: Path, data_root: Path, size: int = SIZE, seed: int = 0) -> dict[str, str]:
    """denoiser.pt / regressor.pt / segmenter.pt, each briefly fitted on the training subject's slices."""
    from data_modules.formats import discover
    from data_modules.slices import load_slice
    from tgrowth.diffusion.checkpoints import export_model
    from tgrowth.diffusion.schedule import make_schedule
    from tgrowth.diffusion.unet import EncoderRegressor, Segmenter, UNet

    torch.manual_seed(seed)
    ds = discover(data_root)
    sub = [s for s in ds.subjects if s.subject == "SUB01"][0]
    samples = [load_slice(tp, None, CONTRASTS, size) for tp in sub.timepoints]
    x = torch.stack([s.image for s in samples])
    seg = torch.stack([(s.seg > 0).float() for s in samples])
    frac = seg.flatten(1).mean(1) * 100.0
    sched = make_schedule("linear", 1000)
    out.mkdir(parents=True, exist_ok=True)
    common = {"image_size": size, "contrasts": CONTRASTS, "in_channels": 4}

    den_kw = dict(image_size=size, in_channels=4, model_channels=8, channel_mult=[1, 2], num_res_blocks=1,
                  attention_resolutions=[], num_classes=2)
    den = UNet(**den_kw)

    def den_loss(net, d):
        t = torch.randint(0, 1000, (d.shape[0],))
        noise = torch.randn_like(d)
        return (net(sched.q_sample(d, t, noise), t, torch.ones(d.shape[0], dtype=torch.long)) - noise).pow(2).mean()

    _train(den, x, den_loss)
    reg_kw = dict(image_size=size, in_channels=4, model_channels=8, channel_mult=[1, 2], num_res_blocks=1,
                  attention_resolutions=[], num_head_channels=8)
    reg = EncoderRegressor(**reg_kw)
    _train(reg, x, lambda net, d: (net(d, torch.zeros(d.shape[0], dtype=torch.long)) - frac).pow(2).mean())
    seg_kw = dict(image_size=size, in_channels=4, model_channels=8, channel_mult=[1, 2], num_res_blocks=1)
    segm = Segmenter(**seg_kw)
    _train(segm, x, lambda net, d: torch.nn.functional.binary_cross_entropy_with_logits(net(d)[:, 0], seg))
    paths = {
        "denoiser": export_model(out / "denoiser.pt", "denoiser", den, dict(
            common, network={"class": "UNet", "kwargs": den_kw}, schedule={"kind": "linear", "num_steps": 1000},
            class_labels=[0, 1])),
        "regressor": export_model(out / "regressor.pt", "regressor", reg, dict(
            common, network={"class": "EncoderRegressor", "kwargs": reg_kw},
            schedule={"kind": "linear", "num_steps": 1000}, area={"key": "area_frac", "scale": 100.0})),
        "segmenter": export_model(out / "segmenter.pt", "segmenter", segm, dict(
            common, network={"class": "Segmenter", "kwargs": seg_kw}, regions=["wt"])),
    }
    return {k: str(v) for k, v in paths.items()}


def predict_overrides(data_root: Path, models: dict[str, str], out: Path, *extra: str) -> list[str]:
    return [
        f"data.root={data_root}", f"output_dir={out}", f"data.image_size={SIZE}",
        f"checkpoints.denoiser={models['denoiser']}", f"checkpoints.regressor={models['regressor']}",
        f"checkpoints.segmenter={models['segmenter']}",
        "sampling.num_generations=4", "sampling.noise_level=100", "sampling.num_steps=10", "sampling.batch_size=16",
        "ode.n_bootstrap=8", "ode.steps=60", "ode.n_starts=2", "ode.compare_models=false", "ode.progress_bar=false",
        "ode.accelerator=cpu", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
        "wandb.enabled=false", "guidance.scale=5e4", *extra,
    ]


def record_calls(monkeypatch, module, name: str = "probability_map", results: list | None = None) -> list[dict]:
    """Wrap ``module.name`` so that every call's keyword arguments are appended to the returned list (and, with
    ``results``, every return value to that list); the real function still runs."""
    calls: list[dict] = []
    real = getattr(module, name)

    def spy(*args, **kw):
        calls.append(kw)
        out = real(*args, **kw)
        if results is not None:
            results.append(out)
        return out

    monkeypatch.setattr(module, name, spy)
    return calls
