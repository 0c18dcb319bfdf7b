"""Slices per second through SliceDataModule with and without the on-disk cache (num_workers 0 and 2),
and the generation time of the synthetic demo set.

    python benchmarks/data_loading.py [--subjects 3] [--shape 128 128 64] [--image-size 128] [--epochs 2]

Two data sets: hand-made BraTS-format volumes from tests/factories.py (4 contrasts + seg), and the
synthetic demo set (`tgrowth synth -c experiments/synth_demo.yaml`, timed), both in a temporary folder. "no cache" decodes the NIfTI volume of every item (shuffled order, a 2-volume LRU
per worker); "cache" reads preprocessed slices (torch tensors) written during setup. Each configuration
runs in a fresh DataModule; setup time (discovery, slice selection, cache fill) is reported apart from
the epochs. The main process runs with 1 torch thread by default (--threads): on a busy 2-core machine,
2 OpenMP threads made the batch collation (torch.stack) 10-70x slower than 1 thread.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from data_modules.slices import SliceDataModule  # noqa: E402
from tests.factories import write_brats  # noqa: E402


def epoch(loader) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        n += batch["image"].shape[0]
    return n, time.perf_counter() - t0


def bench_loader(root: Path, cache: Path | None, workers: int, args, image_size: int, slices: dict) -> dict:
    if cache is not None and cache.exists():
        shutil.rmtree(cache)
    t0 = time.perf_counter()
    dm = SliceDataModule(root, image_size=image_size, batch_size=args.batch_size, num_workers=workers,
                         cache_dir=None if cache is None else str(cache), slices=slices,
                         splits={"train": 1.0, "val": 0.0, "test": 0.0, "file": ""})
    dm.setup()
    setup_s = time.perf_counter() - t0
    loader = dm.train_dataloader()
    rates = []
    for _ in range(args.epochs):
        n, dt = epoch(loader)
        rates.append(n / dt)
    return {"setup_s": setup_s, "n": n, "rates": rates}


def synth_time(out: Path) -> str:
    cfg = REPO / "experiments" / "synth_demo.yaml"
    if not (REPO / "tgrowth" / "synth" / "run.py").is_file() or not cfg.is_file():
        return "pending (tgrowth synth / experiments/synth_demo.yaml not on this branch yet)"
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tgrowth", "synth", "-c", str(cfg), f"output_dir={out}"],
                       cwd=REPO, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        return f"failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}"
    n_tp = sum(1 for p in out.iterdir() if p.is_dir())
    return f"{dt:.1f} s wall ({n_tp} timepoint folders)"


def table(root: Path, tmp: Path, args, image_size: int, slices: dict) -> None:
    head = f"{'cache':<8}{'workers':>8}{'slices':>8}{'setup s':>10}" + "".join(f"{'epoch ' + str(i + 1) + ' sl/s':>15}" for i in range(args.epochs))
    print(head)
    print("-" * len(head))
    for cache in (None, tmp / "cache"):
        for workers in (0, 2):
            r = bench_loader(root, cache, workers, args, image_size, slices)
            print(f"{'yes' if cache else 'no':<8}{workers:>8}{r['n']:>8}{r['setup_s']:>10.2f}"
                  + "".join(f"{x:>15.1f}" for x in r["rates"]))
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--shape", type=int, nargs=3, default=[128, 128, 64])
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--synth-image-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads of the main process (DataLoader workers always use 1)")
    ap.add_argument("--skip-synth", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="tgrowth-bench-"))
    try:
        t0 = time.perf_counter()
        root = write_brats(tmp / "data", n_subjects=args.subjects, shape=tuple(args.shape), spacing=(1.0, 1.0, 1.5),
                           radius=args.shape[2] * 0.2)
        write_s = time.perf_counter() - t0
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU core(s), "
              f"torch {torch.__version__} ({torch.get_num_threads()} intra-op thread(s)), "
              f"cuda {'yes' if torch.cuda.is_available() else 'no'}, load average {os.getloadavg()[0]:.1f}")
        print(f"data: {args.subjects} BraTS-format subjects, volumes {'x'.join(map(str, args.shape))}, 4 contrasts; "
              f"image_size {args.image_size}, batch {args.batch_size}; written in {write_s:.1f} s")
        print()
        print("hand-made BraTS-format volumes (tests/factories.py), slices: all tumour slices + 4 healthy per volume")
        table(root, tmp, args, args.image_size, {"tumour": "all", "healthy": 4})
        if args.skip_synth:
            print("synth demo set: skipped (--skip-synth)")
            return
        synth = tmp / "synth"
        print(f"synth demo set generation (tgrowth synth -c experiments/synth_demo.yaml): {synth_time(synth)}")
        if (synth / "timeline.csv").is_file():
            print()
            print(f"synth demo set, image_size {args.synth_image_size}, slices: largest-tumour + 2 healthy per timepoint")
            table(synth, tmp, args, args.synth_image_size, {"tumour": "largest", "healthy": 2})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
