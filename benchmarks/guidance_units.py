"""How strong is the guidance correction at the authors' scale? Before and after the units fix (not a test).

The authors' guidance scale (5e4 to 2e5) is defined with the tumour area as a FRACTION of the slice. tgrowth's
regressors output percent (``area_frac * 100``, the model file's ``meta["area"]``). Before the fix, predict
converted only the target to percent and used the regressor's raw output, so at the same scale the eps
correction ``sqrt(1 - abar_t) * scale * (target - pred) * grad pred`` was 100^2 = 10^4 times stronger. Now
``AreaGuidance(regressor_scale=100)`` reads the regressor in fractions, whatever its output scaling.

Prints, for one noisy prior slice at t = 199 and a target 20 % above the regressor's reading, the mean
|delta eps| per pixel at ``--scale`` in both conventions, and the eps norm for comparison.

    python benchmarks/guidance_units.py                                   # paper-size regressor, random weights
    python benchmarks/guidance_units.py --regressor runs/demo/regressor/regressor.pt --data runs/demo/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch

    from tgrowth.diffusion.guidance import AreaGuidance
    from tgrowth.diffusion.sampler import DiffusionStep
    from tgrowth.diffusion.schedule import make_schedule

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regressor", help="a regressor model file (default: the authors' size, random weights)")
    ap.add_argument("--data", help="a longitudinal data root for a real prior slice (with --regressor)")
    ap.add_argument("--size", choices=["authors", "tiny"], default="authors", help="random-weight regressor size")
    ap.add_argument("--scale", type=float, default=5e4)
    ap.add_argument("--t", type=int, default=199)
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.regressor:
        from tgrowth.diffusion.checkpoints import load_regressor

        reg, meta = load_regressor(args.regressor)
        size, contrasts = int(meta["image_size"]), list(meta["contrasts"])
        out_scale = float(meta["area"]["scale"])
        where = args.regressor
    else:
        from benchmarks.sampling import model_sizes
        from tgrowth.diffusion.unet import EncoderRegressor

        sizes = model_sizes(args.size)
        reg, size, contrasts, out_scale = EncoderRegressor(**sizes["regressor"]), sizes["image_size"], None, 100.0
        where = (f"EncoderRegressor at the {args.size} size"
                 f"{' (experiments/models/regressor_paper.yaml)' if args.size == 'authors' else ''}, random weights")
    reg = reg.eval().requires_grad_(False)
    if args.data:
        from data_modules.formats import discover
        from data_modules.slices import load_slice

        subj = next(s for s in discover(args.data, contrasts=contrasts).subjects if len(s.timepoints) >= 2)
        prior = load_slice(subj.timepoints[-2], None, contrasts, size).image[None].float()
        where += f"; prior slice of {subj.subject}"
    else:
        from benchmarks.sampling import phantom_slice

        prior = phantom_slice(size)
    sched = make_schedule("linear")
    t = torch.tensor([args.t])
    x = sched.q_sample(prior, t, torch.randn(prior.shape, generator=torch.Generator().manual_seed(0)))
    a = sched.abar(t, like=x)
    eps = torch.randn(prior.shape, generator=torch.Generator().manual_seed(1))

    def step():
        return DiffusionStep(x, t, t - 1, a, a, eps, sched.predict_x0(x, eps, t), 0, 1,
                             torch.tensor([0]), prior, None, {})

    with torch.no_grad():
        reading = float(reg(x, t).reshape(-1)[0])  # in the regressor's own units (percent)
    target_raw = 1.2 * reading
    before = AreaGuidance(reg, target_raw, args.scale)(step()) - eps  # target in percent, raw regressor output
    after = AreaGuidance(reg, target_raw / out_scale, args.scale, regressor_scale=out_scale)(step()) - eps
    print(f"regressor: {where}; output = area fraction x {out_scale:g}; t = {args.t}, scale = {args.scale:g}, "
          f"target = 1.2 x reading ({reading:.3g} -> {target_raw:.3g} in its units)")
    print("| convention | mean abs delta eps per pixel | max abs delta eps |")
    print("|---|---|---|")
    print(f"| before: target in the regressor's units, raw output | {before.abs().mean():.3g} | {before.abs().max():.3g} |")
    print(f"| after: fraction of the slice (regressor_scale={out_scale:g}) | {after.abs().mean():.3g} | "
          f"{after.abs().max():.3g} |")
    print(f"ratio before/after: {float(before.abs().mean() / after.abs().mean()):.4g}; "
          f"for scale: mean abs eps = {eps.abs().mean():.3g}")


if __name__ == "__main__":
    main()
