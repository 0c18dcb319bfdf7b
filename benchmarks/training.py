"""Training speed of the tiny presets (experiments/models/*_tiny.yaml) on this machine: optimiser steps/s.

Each row runs the real LightningModule's ``training_step`` + backward + AdamW step (no Trainer overhead) on
toy batches of the preset's shape (64x64, 4 contrasts), after one warm-up step. Baseline: torch's default
thread count, fp32, channels-first; compared with 1 thread and with channels_last in the same run.

    python benchmarks/training.py [--steps 5] [--kinds denoiser regressor segmenter]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from tgrowth.config.base import load_config
from tgrowth.config.diffusion import TrainDenoiserConfig, TrainRegressorConfig, TrainSegmenterConfig
from tgrowth.diffusion.toydata import make_blobs

PRESETS = {
    "denoiser": (TrainDenoiserConfig, "experiments/models/denoiser_tiny.yaml"),
    "regressor": (TrainRegressorConfig, "experiments/models/regressor_tiny.yaml"),
    "segmenter": (TrainSegmenterConfig, "experiments/models/segmenter_tiny.yaml"),
}


def build(kind: str, cfg, channels_last: bool):
    from tgrowth.diffusion import modules, train

    if kind == "denoiser":
        net, meta = train.build_denoiser(cfg)
        return modules.DenoiserModule(net, train._schedule(cfg), lr=cfg.optim.lr, channels_last=channels_last, meta=meta)
    if kind == "regressor":
        net, meta = train.build_regressor(cfg)
        return modules.RegressorModule(net, train._schedule(cfg), lr=cfg.optim.lr, channels_last=channels_last,
                                       t_max=int(cfg.diffusion.train_t_max) or None, meta=meta)
    net, meta = train.build_segmenter(cfg)
    return modules.SegmenterModule(net, regions=meta["regions"], lr=cfg.optim.lr, channels_last=channels_last, meta=meta)


def steps_per_s(kind: str, threads: int, channels_last: bool, steps: int) -> tuple[float, int, int]:
    schema, path = PRESETS[kind]
    cfg = load_config(schema, [path], [])
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    mod = build(kind, cfg, channels_last)
    bs, size, ch = int(cfg.data.batch_size), int(cfg.data.image_size), len(cfg.data.contrasts)
    batch = make_blobs(bs, size, ch, seed=0)
    opt = torch.optim.AdamW(mod.model.parameters(), lr=1e-4)

    def step():
        loss = mod.training_step(batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    return steps / dt, bs, sum(p.numel() for p in mod.model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--kinds", nargs="+", default=list(PRESETS))
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts besides the baseline (default: 1)")
    ap.add_argument("--no-channels-last", action="store_true", help="skip the channels_last row")
    args = ap.parse_args()
    import pytorch_lightning  # noqa: F401  (the modules need it; imported before timing)

    warnings.filterwarnings("ignore", message=".*self.log.*")  # modules log outside a Trainer here

    default_threads = torch.get_num_threads()
    rows = []
    for kind in args.kinds:
        settings = [(f"baseline: {default_threads} threads, fp32", default_threads, False)]
        settings += [(f"{n} thread(s), fp32", n, False) for n in (args.threads or [1])]
        if not args.no_channels_last:
            settings.append((f"{default_threads} threads, channels_last", default_threads, True))
        for label, threads, cl in settings:
            sps, bs, n = steps_per_s(kind, threads, cl, args.steps)
            rows.append((kind, f"{n / 1e6:.2f} M", bs, label, sps, sps * bs))
    print(f"{'preset':<10} {'params':>8} {'batch':>5}  {'setting':<30} {'steps/s':>8} {'images/s':>9}")
    for kind, n, bs, label, sps, ips in rows:
        print(f"{kind + '_tiny':<10} {n:>8} {bs:>5}  {label:<30} {sps:8.3f} {ips:9.1f}")


if __name__ == "__main__":
    main()
