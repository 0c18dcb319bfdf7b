"""Benchmark: DDIM inversion round-trip accuracy (not a test; prints a table).

Known-image sampling inverts the prior scan to noise level L and samples back; with eta = 0 an exact
inversion would return the input. This measures the relative round-trip error ``|x_rec - x0| / |x0|`` and
the model calls of each inversion variant of :func:`tgrowth.diffusion.sampler.ddim_invert`:

* order 1: plain DDIM inversion (eps taken at the known, less noisy state; the authors' choice);
* order 2: eps extrapolated linearly in log-SNR from the last two evaluations (tgrowth's default; same calls);
* order 2 + 1 refinement: one fixed-point iteration per step (one more model call per step).

Denoisers: the analytic one of the tests (data from a known Gaussian, float64: the exact eps is known in
closed form), and optionally a trained tgrowth denoiser on real slices (``--denoiser model.pt --data DIR``).

    python benchmarks/inversion.py
    python benchmarks/inversion.py --denoiser runs/demo/denoiser/denoiser.pt --data runs/demo/data
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tgrowth.diffusion.analytic import GaussianDenoiser  # noqa: E402
from tgrowth.diffusion.sampler import sample_known_image  # noqa: E402
from tgrowth.diffusion.schedule import make_schedule  # noqa: E402

VARIANTS = [("order 1 (plain, authors')", 1, 0), ("order 2 (default)", 2, 0), ("order 2 + 1 refinement", 2, 1)]


class Counting(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x, t, y=None):
        self.calls += 1
        return self.net(x, t) if y is None else self.net(x, t, y)


def analytic_case(schedule_kind: str):
    g = torch.Generator().manual_seed(0)
    sched = make_schedule(schedule_kind)
    mu = (torch.randn(1, 2, 8, 8, generator=g) * 0.3).double()
    sd = (torch.rand(1, 2, 8, 8, generator=g) * 0.5 + 0.2).double()
    x0 = mu + sd * torch.randn(4, 2, 8, 8, generator=g).double()
    return sched, GaussianDenoiser(sched, mu, sd), x0, None


def trained_case(model_path: str, data_dir: str, n: int):
    from data_modules.formats import discover
    from data_modules.slices import load_slice
    from tgrowth.diffusion.checkpoints import load_denoiser

    net, sched, meta = load_denoiser(model_path)
    net.eval()
    ds = discover(data_dir)
    xs = [torch.as_tensor(load_slice(s.timepoints[0], contrasts=meta["contrasts"],
                                     image_size=int(meta["image_size"])).image) for s in ds.subjects[:n]]
    y = 1 if net.num_classes is not None else None
    return sched, net, torch.stack(xs).float(), y


def table(name, sched, net, x0, y, noise_level, steps_list):
    print(f"\n{name}: L = {noise_level}, {x0.shape[0]} images {tuple(x0.shape[1:])}, dtype {x0.dtype}")
    print("| inversion | steps | round-trip rel. error | model calls (invert + sample) | s |")
    print("|---|---|---|---|---|")
    model = Counting(net)
    for steps in steps_list:
        for label, order, refine in VARIANTS:
            model.calls = 0
            t0 = time.perf_counter()
            with torch.no_grad():
                rec = sample_known_image(model, sched, x0, noise_level, steps, y=y, invert_order=order,
                                         refine_iters=refine)
            dt = time.perf_counter() - t0
            err = float((rec - x0).norm() / x0.norm())
            print(f"| {label} | {steps} | {err:.2e} | {model.calls} | {dt:.1f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--noise-level", type=int, default=200)
    ap.add_argument("--steps", default="25,50,100,200")
    ap.add_argument("--denoiser", default=None, help="a tgrowth denoiser.pt (optional)")
    ap.add_argument("--data", default=None, help="data folder for --denoiser (first timepoint of each subject)")
    ap.add_argument("--n", type=int, default=4, help="slices for --denoiser")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = [int(s) for s in args.steps.split(",")]
    print(f"# command: python benchmarks/inversion.py {' '.join(sys.argv[1:])}")
    for kind in ("linear", "cosine"):
        table(f"analytic Gaussian denoiser, {kind} schedule", *analytic_case(kind), args.noise_level, steps)
    if args.denoiser:
        if not args.data:
            raise SystemExit("--denoiser needs --data")
        table(f"trained denoiser {args.denoiser}", *trained_case(args.denoiser, args.data, args.n),
              args.noise_level, steps)


if __name__ == "__main__":
    main()
