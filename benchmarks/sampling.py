"""Benchmark: a tumour probability map of N guided generations from one prior slice (not a test).

Compares, in one run on one machine, tgrowth's batched sampler (one shared DDIM inversion, N generations
per batch, eta > 0 so they differ) in fp32, then with bf16 autocast, channels_last, torch.compile and 50
respaced steps, against a baseline loop written like the authors' reference: batch 1, fp32, one generation
after another, each inverting the prior (200 steps) and running 200 guided steps.

Models have random weights (timing only): the UNet's zero-initialised output layer is re-drawn small so
that eps is not identically 0. Because the regressor is random, "area err" is measured with the regressor
itself at t = 0 on the generated images: |pred - target| / |target - pred(prior)|, i.e. the fraction of the
requested area change that guidance did not achieve (mean over generations) -- it compares the
configurations' guidance accuracy, not a trained model's real tumour-area accuracy.

Each configuration runs in its own subprocess (clean peak memory; compile caches not shared). Peak memory is
``torch.cuda.max_memory_allocated`` on GPU and, on CPU, the process's peak RSS minus its RSS after the models
were built (so on CPU a compile row's figure includes the compiler's own memory). Timed runs exclude a short warm-up (for compile rows, compilation is reported apart).

    python benchmarks/sampling.py --quick                # small CPU run (N=4, 1 baseline generation)
    python benchmarks/sampling.py                        # CPU: tiny model 64x64, N=50 (slow on 2 cores)
    python benchmarks/sampling.py --device cuda          # GPU: the authors' model size at 256x256, N=50
    python benchmarks/sampling.py --device cuda --smoke --row-timeout 300   # GPU: every row's code path
    python benchmarks/sampling.py --flops --size authors   # work per map of each row (counted; any machine)

The baseline inverts with plain DDIM (``invert_order=1``), as the authors do; tgrowth rows use the default
second-order inversion (same number of model calls). On a GPU with a time limit, ``--row-timeout`` and
``--json`` keep what finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ROWS = {
    # name: (kind, steps, bf16, channels_last, compile)
    "baseline": ("baseline", 200, False, False, False),
    "fp32": ("tgrowth", 200, False, False, False),
    "fp32+cl": ("tgrowth", 200, False, True, False),
    "fp32+compile": ("tgrowth", 200, False, False, True),
    "bf16": ("tgrowth", 200, True, False, False),
    "bf16+cl": ("tgrowth", 200, True, True, False),
    "bf16+cl+compile": ("tgrowth", 200, True, True, True),
    "fp32 50 steps": ("tgrowth", 50, False, False, False),
    "fp32+cl 50 steps": ("tgrowth", 50, False, True, False),
    "bf16 50 steps": ("tgrowth", 50, True, False, False),
    "fp32+compile 50 steps": ("tgrowth", 50, False, False, True),
    "bf16+cl+compile 50 steps": ("tgrowth", 50, True, True, True),
}
# CPUs without native bf16 (this project's 2-core machines) run bf16 autocast far slower than fp32, so the
# default CPU rows are fp32; pass --rows to run any row anywhere.
DEFAULT_ROWS = {
    "cpu": ["baseline", "fp32", "fp32+cl", "fp32+compile", "fp32 50 steps", "fp32+compile 50 steps"],
    "cuda": ["baseline", "fp32", "bf16", "bf16+cl", "bf16+cl+compile", "fp32 50 steps",
             "bf16+cl+compile 50 steps"],
}


def model_sizes(size: str) -> dict:
    if size == "authors":  # experiments/models/*_paper.yaml (the authors' sizes; tests/test_benchmarks.py checks)
        return dict(
            image_size=256,
            unet=dict(image_size=256, in_channels=4, model_channels=128, num_res_blocks=2,
                      attention_resolutions=(16,), num_heads=1, learn_sigma=True, num_classes=2),
            regressor=dict(image_size=256, in_channels=4, model_channels=32, num_res_blocks=4,
                           attention_resolutions=(32, 16, 8), num_head_channels=64),
            segmenter=dict(image_size=256, in_channels=4, model_channels=32, channel_mult=(1, 2, 4, 8, 8),
                           num_res_blocks=2, attention_resolutions=(), num_regions=3),
        )
    return dict(  # a tiny CPU size
        image_size=64,
        unet=dict(image_size=64, in_channels=4, model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                  attention_resolutions=(16,), num_classes=2),
        regressor=dict(image_size=64, in_channels=4, model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                       attention_resolutions=(16,), num_head_channels=16),
        segmenter=dict(image_size=64, in_channels=4, model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1),
    )


def phantom_slice(size: int):
    """A 4-contrast slice in [-1, 1]: an elliptic brain with a bright round tumour."""
    import torch

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    brain = ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1).float()
    tumour = ((xx - 0.2) ** 2 + (yy + 0.1) ** 2 < 0.04).float()
    levels = torch.tensor([0.3, 0.5, 0.4, 0.6]).view(4, 1, 1)
    return (-1 + brain * (1 + levels) * 0.7 + tumour * 0.5).clamp(-1, 1)[None]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(cfg: dict) -> dict:
    import torch

    from tgrowth.diffusion.guidance import AreaGuidance
    from tgrowth.diffusion.sampler import sample_known_image
    from tgrowth.diffusion.schedule import make_schedule
    from tgrowth.diffusion.unet import EncoderRegressor, Segmenter, UNet
    from tgrowth.probability import probability_map, segmenter_from_logits

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    dev = torch.device(cfg["device"])
    kind, steps, bf16, cl, comp = ROWS[cfg["row"]]
    if cfg.get("smoke"):
        steps = 2
    trained = load_trained(cfg["models"], cfg["data"], cfg["subject"]) if cfg.get("models") else None
    sizes = model_sizes(cfg.get("size", "tiny"))
    torch.manual_seed(0)
    if trained:
        unet, reg, seg_net = trained["denoiser"], trained["regressor"], trained["segmenter"]
    else:
        unet = UNet(**sizes["unet"])
        torch.nn.init.normal_(unet.out[-1].weight, std=0.02)  # random weights; eps not identically zero
        reg = EncoderRegressor(**sizes["regressor"])
        seg_net = Segmenter(**sizes["segmenter"])
    unet, reg, seg_net = (m.to(dev).eval().requires_grad_(False) for m in (unet, reg, seg_net))
    if cl:
        unet, reg, seg_net = (m.to(memory_format=torch.channels_last) for m in (unet, reg, seg_net))
    if comp:
        unet = torch.compile(unet, dynamic=False, mode=cfg["compile_mode"])
        reg = torch.compile(reg, dynamic=False, mode=cfg["compile_mode"])
    sched = (trained["schedule"] if trained else make_schedule("linear")).to(dev)
    prior = (trained["prior"] if trained else phantom_slice(sizes["image_size"])).to(dev)
    y = 1  # diseased
    ac = torch.bfloat16 if bf16 else None
    with torch.no_grad():
        p0 = float(reg(prior, torch.zeros(1, device=dev)).float())
    # random regressor: ask for a fixed change of its output; trained: the follow-up's true tumour area
    target = trained["target_units"] if trained else p0 + cfg["delta"]
    n, L = cfg["n"], cfg["noise_level"]
    segment = segmenter_from_logits(seg_net, autocast_dtype=ac)  # sigmoid of channel 0: the whole tumour

    def guidance():
        return [AreaGuidance(reg, target, cfg["scale"], form="authors", boost=0.15, autocast_dtype=ac)]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def run_map(num_gen, num_steps, seed=0):
        if kind == "baseline":
            imgs = []
            for _ in range(num_gen):  # like the reference: one generation after another, inversion each time
                x = sample_known_image(unet, sched, prior, L, num_steps, eta=0.0, encode="invert",
                                       callbacks=guidance(), y=y, invert_order=1)  # plain DDIM inversion
                segment(x)
                imgs.append(x)
            return torch.cat(imgs)
        pm = probability_map(unet, sched, prior[0], segment, num_generations=num_gen, chunk_size=cfg["chunk"],
                             seed=seed, noise_level=L, num_steps=num_steps, eta=cfg["eta"], encode="invert",
                             callbacks=guidance(), y=y, autocast_dtype=ac, channels_last=cl,
                             keep_generations=True)
        return pm.images.to(dev)

    rss0 = _rss_mib()  # models built; the warm-up below has the timed shapes, so it is inside the peak
    # warm-up (compiles the graphs of the timed shapes for compile rows)
    t0 = time.perf_counter()
    run_map(1 if kind == "baseline" else min(n, cfg["chunk"] or n), 2)
    sync()
    warm_s = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    gens = min(n, cfg["baseline_gens"]) if kind == "baseline" else n
    t0 = time.perf_counter()
    imgs = run_map(gens, steps)
    sync()
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    with torch.no_grad():
        final = torch.cat([reg(imgs[i:i + 10].float(), torch.zeros(imgs[i:i + 10].shape[0], device=dev)).float()
                           for i in range(0, imgs.shape[0], 10)])
    err = ((final - target).abs() / abs(target - p0)).mean().item()
    seg_err = None
    if trained:  # the tumour the segmenter finds in each generation vs the follow-up's true area
        with torch.no_grad():
            areas = torch.cat([segment(imgs[i:i + 10].float()).flatten(1).sum(1).float()
                               for i in range(0, imgs.shape[0], 10)])
        seg_err = ((areas - trained["target_px"]).abs() / trained["target_px"]).mean().item()
    spread = imgs.float().std(0).mean().item() if imgs.shape[0] > 1 else float("nan")
    return dict(row=cfg["row"], kind=kind, steps=steps, n=n, gens_timed=gens, seconds=elapsed,
                seconds_per_map=elapsed * n / gens, extrapolated=gens < n, peak_mib=peak, area_err=err,
                spread=spread, warmup_s=warm_s, finite=bool(torch.isfinite(imgs).all()), seg_area_err=seg_err,
                subject=trained["subject"] if trained else None, target_px=trained["target_px"] if trained else None)


def load_trained(models: str, data: str, subject: str | None) -> dict:
    """Trained tgrowth models (``<models>/{denoiser,regressor,segmenter}/<kind>.pt``) and a real slice pair:
    the prior is the last-but-one timepoint's largest-tumour slice of ``subject`` (default: the first
    subject with 2+ timepoints), the target the tumour area of the last timepoint on the same slice."""
    import torch

    from data_modules.formats import discover
    from data_modules.slices import load_slice
    from tgrowth.diffusion.checkpoints import load_denoiser, load_regressor, load_segmenter

    root = Path(models)
    den, sched, meta = load_denoiser(root / "denoiser" / "denoiser.pt")
    reg, rmeta = load_regressor(root / "regressor" / "regressor.pt", expect_image_size=meta["image_size"])
    seg, _ = load_segmenter(root / "segmenter" / "segmenter.pt", expect_image_size=meta["image_size"])
    size, contrasts = int(meta["image_size"]), meta["contrasts"]
    subjects = [s for s in discover(data, contrasts=contrasts).subjects if len(s.timepoints) >= 2]
    subj = next((s for s in subjects if s.subject == subject), None) if subject else (subjects[0] if subjects else None)
    if subj is None:
        raise SystemExit(f"no subject {subject or ''} with 2+ timepoints in {data}")
    before = load_slice(subj.timepoints[-2], contrasts=contrasts, image_size=size)
    after = load_slice(subj.timepoints[-1], slice_index=before.slice_index, contrasts=contrasts, image_size=size)
    target_px = float((torch.as_tensor(after.seg) > 0).sum())
    key, scale = rmeta["area"]["key"], float(rmeta["area"]["scale"])
    if key != "area_frac":
        raise SystemExit(f"{root}: regressor target {key!r}; this benchmark converts pixel areas for area_frac only")

    return dict(denoiser=den, regressor=reg, segmenter=seg, schedule=sched,
                prior=torch.as_tensor(before.image)[None].float(), target_px=target_px,
                target_units=target_px / size**2 * scale, subject=subj.subject)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def device_name(device: str, threads: int | None = None) -> str:
    if device == "cuda":
        import torch

        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{threads or torch.get_num_threads()} torch thread(s) per run (torch {torch.__version__}), no GPU")


def predict_cpu_steps() -> int:
    """``sampling.num_steps`` of experiments/predict_cpu.yaml (read as text: GPU machines lack omegaconf)."""
    import re

    m = re.search(r"^\s+num_steps:\s*(\d+)", (ROOT / "experiments" / "predict_cpu.yaml").read_text(), re.M)
    if m is None:
        raise SystemExit("experiments/predict_cpu.yaml has no sampling.num_steps")
    return int(m.group(1))


def work_per_map(size: str, n: int, rows: list[str]) -> list[dict]:
    """Floating-point work of one map per row (device-independent; counted, not timed).

    torch's FlopCounterMode counts one batch-1 call of each network: the UNet forward, the regressor's
    forward + backward to the input (what guidance costs per step) and the segmenter forward. A row's map
    then costs: tgrowth = one shared inversion (``steps`` UNet calls) + N x steps x (UNet + regressor
    fwd/bwd) + N segmentations; baseline = N x (2 x steps UNet + steps regressor fwd/bwd + 1 segmentation).
    A last row counts the recipe of ``experiments/predict_cpu.yaml`` at this size: q-sample encoding (no
    inversion), its ``sampling.num_steps``, guidance by the segmenter's soft area on the x0 prediction
    (segmenter forward + backward to the input per step): N x steps x (UNet + segmenter fwd/bwd) + N
    segmentations. Anatomy preservation and the prior-hole rule cost no network call.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tgrowth.diffusion.unet import EncoderRegressor, Segmenter, UNet

    sizes = model_sizes(size)
    torch.manual_seed(0)
    unet, reg, seg = UNet(**sizes["unet"]).eval(), EncoderRegressor(**sizes["regressor"]).eval(), \
        Segmenter(**sizes["segmenter"]).eval()
    for m in (unet, reg, seg):
        m.requires_grad_(False)
    x = torch.randn(1, 4, sizes["image_size"], sizes["image_size"])
    t = torch.zeros(1, dtype=torch.long)

    def count(fn) -> float:
        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops() / 1e9

    def reg_grad():
        xi = x.clone().requires_grad_(True)
        reg(xi, t).sum().backward()  # grads reach the input only (weights are frozen)

    def seg_grad():
        xi = x.clone().requires_grad_(True)
        seg(xi)[:, 0].sigmoid().sum().backward()  # the soft area's gradient (segmenter guidance)

    with torch.no_grad():
        g_unet = count(lambda: unet(x, t, torch.ones(1, dtype=torch.long)))
        g_seg = count(lambda: seg(x))
    g_reg, g_segg = count(reg_grad), count(seg_grad)
    out = []
    for r in rows:
        kind, steps = ROWS[r][0], ROWS[r][1]
        if kind == "baseline":
            g = n * (2 * steps * g_unet + steps * g_reg + g_seg)
        else:
            g = steps * g_unet + n * steps * (g_unet + g_reg) + n * g_seg
        out.append(dict(row=r, kind=kind, steps=steps, gflop=g))
    cpu_steps = predict_cpu_steps()
    out.append(dict(row="predict_cpu recipe (segmenter guidance, q-sample)", kind="segmenter", steps=cpu_steps,
                    gflop=n * cpu_steps * (g_unet + g_segg) + n * g_seg))
    base = next((x["gflop"] for x in out if x["kind"] == "baseline"), None)
    print(f"# work per map, {size} size, N={n}: UNet forward {g_unet:.4f} GFLOP, regressor forward+backward "
          f"{g_reg:.4f} GFLOP, segmenter forward {g_seg:.4f} GFLOP, segmenter forward+backward {g_segg:.4f} GFLOP per image (torch FlopCounterMode)")
    print("| config | steps | TFLOP per map | work vs baseline |")
    print("|---|---|---|---|")
    for x in out:
        ratio = "1 (the baseline)" if x["kind"] == "baseline" else (f"{base / x['gflop']:.2f}x less" if base else "n/a")
        print(f"| {x['row']} | {x['steps']} | {x['gflop'] / 1e3:.3f} | {ratio} |")
    print("(bf16, channels_last and compile change the speed of this work, not its amount.)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small CPU run: N=4, 1 baseline generation")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--n", type=int, default=None, help="generations per map (default 50; --quick 4)")
    ap.add_argument("--noise-level", type=int, default=200)
    ap.add_argument("--baseline-gens", type=int, default=None,
                    help="baseline generations actually run; the map time is extrapolated to N when fewer "
                         "(default: 5 on cuda, 2 on cpu, 1 with --quick)")
    ap.add_argument("--chunk", type=int, default=None, help="generations per batch (default: all N)")
    ap.add_argument("--eta", type=float, default=0.5)
    ap.add_argument("--scale", type=float, default=None,
                    help="guidance scale (default 1e6 for the random regressor, 200 with --models as in the demo)")
    ap.add_argument("--models", default=None,
                    help="trained models folder (e.g. runs/demo: denoiser/, regressor/, segmenter/) instead of "
                         "random weights; the area error is then also measured by the segmenter against a real "
                         "follow-up")
    ap.add_argument("--data", default=None, help="with --models: data folder (default <models>/data)")
    ap.add_argument("--subject", default=None, help="with --models: subject (default: the first with 2+ timepoints)")
    ap.add_argument("--delta", type=float, default=0.05, help="requested change of the regressor output")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode (e.g. max-autotune)")
    ap.add_argument("--rows", default=None, help=f"comma-separated subset of: {', '.join(ROWS)}")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--size", default=None, choices=["tiny", "authors"],
                    help="model size (default: authors on cuda, tiny on cpu)")
    ap.add_argument("--smoke", action="store_true", help="2 sampling steps per row: checks the code path, no timing")
    ap.add_argument("--json", default=None, help="also write the results (after every row, atomically) to this file")
    ap.add_argument("--row-timeout", type=float, default=None,
                    help="seconds a row may take (subprocess killed, row reported as failed; the others go on)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole run: later rows get only what is left, and rows that cannot "
                         "start are reported as skipped (for a device call with a hard time limit)")
    ap.add_argument("--flops", action="store_true",
                    help="only count the floating-point work per map of each row (no timing; any machine)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    n = args.n or (4 if args.quick else 50)
    bgens = args.baseline_gens or (5 if args.device == "cuda" else (1 if args.quick else 2))
    rows = args.rows.split(",") if args.rows else list(DEFAULT_ROWS[args.device])
    if args.no_compile:
        rows = [r for r in rows if "compile" not in r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {list(ROWS)}")
    size = args.size or ("authors" if args.device == "cuda" and not args.models else "tiny")
    sizes = model_sizes(size)
    if args.flops:
        work_per_map(size, n, list(dict.fromkeys(r.replace("bf16", "fp32").replace("+cl", "").replace("+compile", "")
                                                 for r in rows)))
        return
    scale = args.scale if args.scale is not None else (200.0 if args.models else 1e6)
    data = args.data or (str(Path(args.models) / "data") if args.models else None)
    print(f"# probability map: N={n} generations, L={args.noise_level}, guided (authors' form, scale "
          f"{scale:g}, +15% boost above t=20), eta={args.eta} for tgrowth rows; device: {args.device}")
    if args.models:
        print(f"# models: trained, from {args.models}; prior and follow-up slices from {data}")
    else:
        print(f"# models (random weights): UNet {sizes['unet']}; regressor {sizes['regressor']}")
    print(f"# command: python benchmarks/sampling.py {' '.join(sys.argv[1:])}")
    if args.smoke:
        print("# SMOKE RUN: 2 sampling steps per row; the figures below are not timings of a map")
    results = []
    started = time.perf_counter()
    for r in rows:
        timeout = args.row_timeout
        if args.budget is not None:
            left = args.budget - (time.perf_counter() - started)
            if left < 5:
                print(f"# row {r!r} skipped: the --budget of {args.budget:g} s is spent", flush=True)
                continue
            timeout = left if timeout is None else min(timeout, left)
        cfg = dict(row=r, device=args.device, n=n, noise_level=args.noise_level, baseline_gens=bgens,
                   chunk=args.chunk, eta=args.eta, scale=scale, delta=args.delta, threads=args.threads,
                   compile_mode=args.compile_mode, size=size, smoke=args.smoke, models=args.models, data=data,
                   subject=args.subject)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True,
                                  text=True, cwd=ROOT, timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"# row {r!r} failed: over its time limit of {timeout:.0f} s (--row-timeout / --budget)", flush=True)
            continue
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"# row {r!r} failed ({time.perf_counter() - t0:.0f} s): {proc.stderr.strip()[-800:]}", flush=True)
            continue
        res = json.loads(line[-1][7:])
        results.append(res)
        if args.json:
            _write_json(Path(args.json), dict(command=sys.argv[1:], device=device_name(args.device, args.threads),
                                              smoke=args.smoke, rows=results))
        print(f"# {r}: {res['seconds']:.1f} s timed ({res['gens_timed']} generation(s)), warm-up "
              f"{res['warmup_s']:.1f} s", flush=True)
    base = next((x for x in results if x["kind"] == "baseline"), None)
    mem = "peak GPU MiB" if args.device == "cuda" else "peak RSS +MiB"
    print()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"device: {device_name(args.device, args.threads)}" + (f"; load average at the end {load[0]:.1f}" if load else ""))
    seg_col = bool(args.models)
    if seg_col and results:
        print(f"prior: subject {results[0]['subject']}, last-but-one timepoint; target: the last timepoint's "
              f"tumour on the same slice, {results[0]['target_px']:.0f} px")
    print(f"| config | steps | s / map | speedup vs baseline | {mem} | area err |"
          + (" seg. area err |" if seg_col else "") + " gen. spread | warm-up s |")
    print("|---|---|---|---|---|---|" + ("---|" if seg_col else "") + "---|---|")
    for x in results:
        name = "baseline: authors-style loop (batch 1, fp32)" if x["kind"] == "baseline" else f"tgrowth {x['row']}"
        spm = f"{x['seconds_per_map']:.1f}"
        if x["extrapolated"]:
            spm += f" (extrapolated from {x['gens_timed']} of {x['n']})"
        sp = f"{base['seconds_per_map'] / x['seconds_per_map']:.1f}x" if base else "n/a"
        spread = "n/a" if x["spread"] != x["spread"] else f"{x['spread']:.3f}"
        seg = f" {x['seg_area_err']:.3f} |" if seg_col else ""
        print(f"| {name} | {x['steps']} | {spm} | {sp} | {x['peak_mib']:.0f} | {x['area_err']:.3f} |{seg} {spread} "
              f"| {x['warmup_s']:.1f} |" + ("" if x["finite"] else " NON-FINITE OUTPUT"))
    print("\narea err: |regressor(x0) - target| / |target - regressor(prior)|, mean over the timed generations "
          "(random regressor: compares configurations only)."
          + (" seg. area err: |segmented area - follow-up's true area| / true area, mean over generations." if seg_col else "")
          + " gen. spread: mean per-pixel std over generations "
          "(0 = identical generations, as in the authors' loop).")


if __name__ == "__main__":
    main()
