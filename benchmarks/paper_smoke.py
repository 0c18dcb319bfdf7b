"""Paper-size smoke run: the authors' networks go through every code path once, at batch 1, on this machine.

So that a GPU user's first run of the ``*_paper.yaml`` presets is not the first time that code runs:

1. a tiny longitudinal data set at the presets' 256x256 (``tests/factories.py``: 3 subjects x 3 scans, 4
   axial slices each; SUB01 train, SUB02 val, SUB03 test);
2. ``tgrowth train-denoiser|train-regressor|train-segmenter -c experiments/models/<kind>_paper.yaml`` (the
   networks the presets build, through the real LightningModules and Trainer): two optimisation steps at
   batch 1 (validation after a step count needs a whole number > 1: ``trainer.val_check_interval=1`` is
   read as "once per epoch"), one validation batch (the denoiser's reconstruction in 2 DDIM steps),
   checkpoints and the exported model file;
3. ``tgrowth predict -c experiments/predict.yaml`` with those three model files on the test subject:
   ODE fit, DDIM inversion and 2 guided steps, 2 generations (tgrowth and no-change), outputs and metrics.

Each stage is the real command in its own process; the table gives its wall time (process start and imports
included) and its peak resident memory (the process's max RSS). On CPU the presets' ``bf16-mixed`` becomes
``32-true``; ``--device cuda`` keeps the presets' precision (the GPU memory is not measured here).

    python benchmarks/paper_smoke.py [--device cpu|cuda] [--out runs/paper_smoke]
    python benchmarks/paper_smoke.py --tiny --in-process --no-wandb   # small widths at 64x64, one process (CI)
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.factories import write_longitudinal  # noqa: E402

KINDS = ("denoiser", "regressor", "segmenter")
# --tiny: the presets' structure (levels from the ADM table, attention, learned sigma, classes, regions) at
# small widths
TINY = {
    "denoiser": ["model.model_channels=8", "model.num_res_blocks=1"],
    "regressor": ["model.model_channels=8", "model.num_res_blocks=1", "model.num_head_channels=8"],
    "segmenter": ["model.model_channels=4", "model.num_res_blocks=1"],
}


# Runs `python -m MODULE ARGS` or `python -c CODE ARGS` and, at exit, writes the process's own peak resident
# memory (VmHWM: the peak of this program's memory image; a fork's ru_maxrss would include the parent's).
WRAPPER = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def peak():
    try:
        with open("/proc/self/status") as fh:
            kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
        with open(out, "w") as fh:
            fh.write(str(kib))
    except (OSError, StopIteration):
        pass
atexit.register(peak)
flag, what = sys.argv[1], sys.argv[2]
sys.argv = [what] + sys.argv[3:]
if flag == "-m":
    runpy.run_module(what, run_name="__main__", alter_sys=True)
else:
    exec(compile(what, "<-c>", "exec"), {"__name__": "__main__"})
"""


def run_stage(name: str, args: list[str], log: Path, env: dict[str, str]) -> dict:
    """``python ARGS`` (``-m module ...`` or ``-c code ...``) in its own process: wall seconds, exit code and that
    program's peak resident memory (VmHWM where /proc exists, else the process's ru_maxrss)."""
    hwm = log.with_suffix(".peak_kib")
    hwm.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(hwm), *args], cwd=REPO, stdout=fh,
                                stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    kib = int(hwm.read_text()) if hwm.is_file() else usage.ru_maxrss
    return {"stage": name, "seconds": seconds, "peak_rss_mib": kib / 1024.0, "code": code, "log": log}


def run_in_process(name: str, argv: list[str]) -> dict:
    """``--in-process``: the same command through tgrowth.cli.main in this process (no per-stage memory)."""
    from tgrowth.cli import main as tgrowth_main

    t0 = time.perf_counter()
    code = tgrowth_main(argv[2:])  # drop "-m tgrowth"
    return {"stage": name, "seconds": time.perf_counter() - t0, "peak_rss_mib": float("nan"), "code": code, "log": None}


def count_params(path: Path) -> float:
    import torch

    blob = torch.load(path, map_location="cpu", weights_only=True)
    return sum(v.numel() for v in blob["state_dict"].values() if v.is_floating_point()) / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="small widths at 64x64 (CI smoke: seconds)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--out", default="runs/paper_smoke", help="work folder (replaced)")
    ap.add_argument("--size", type=int, default=None, help="image size (default 256; --tiny: 64)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads per stage (0: torch's default)")
    ap.add_argument("--in-process", action="store_true",
                    help="run the commands in this process (faster start; no per-stage time of imports or memory)")
    ap.add_argument("--no-wandb", action="store_true", help="wandb.enabled=false (default: offline runs, as the presets)")
    args = ap.parse_args(argv)
    size = args.size or (64 if args.tiny else 256)
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", TGROWTH_LOG="WARNING", MPLBACKEND="Agg")
    if args.in_process:
        os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", MPLBACKEND="Agg")

    def stage(name: str, cmd: list[str], log: Path) -> dict:
        return run_in_process(name, cmd) if args.in_process else run_stage(name, cmd, log, env)

    t0 = time.perf_counter()
    r = size / 256.0
    data = write_longitudinal(out / "data", n_subjects=3, n_timepoints=3, shape=(size, size, 4),
                              radii=[20 * r, 28 * r, 36 * r],
                              splits={"SUB01": "train", "SUB02": "val", "SUB03": "test"})
    rows = [{"stage": f"data {size}x{size}x4, 3 subjects x 3 scans (in this process)",
             "seconds": time.perf_counter() - t0, "peak_rss_mib": float("nan"), "code": 0, "log": None}]

    gpu = args.device == "cuda"
    trainer = ["trainer.accelerator=gpu" if gpu else "trainer.accelerator=cpu", "trainer.devices=1",
               "trainer.strategy=auto"] + ([] if gpu else ["trainer.precision=32-true"]) + (
                   ["wandb.enabled=false"] if args.no_wandb else [])
    models: dict[str, Path] = {}
    params: dict[str, float] = {}
    for kind in KINDS:
        stage_out = out / kind
        cmd = ["-m", "tgrowth", f"train-{kind}", "-c", f"experiments/models/{kind}_paper.yaml",
               f"data.root={data}", f"data.image_size={size}", "data.batch_size=1", "data.num_workers=0",
               f"output_dir={stage_out}", "trainer.max_steps=2", "trainer.val_check_interval=2",
               "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
               f"num_threads={args.threads}", "val_images=1", *trainer]
        if kind == "denoiser":
            cmd += ["val_reconstruction.num_steps=2", "val_reconstruction.batches=1"]
        if args.tiny:
            cmd += TINY[kind]
        row = stage(f"train-{kind}: 2 steps at batch 1 + 1 val batch", cmd, out / f"train-{kind}.log")
        rows.append(row)
        models[kind] = stage_out / f"{kind}.pt"
        if row["code"] == 0 and not models[kind].is_file():
            row["code"] = 1
        if row["code"]:
            break
        params[kind] = count_params(models[kind])
        row["stage"] += f" ({params[kind]:.2f} M parameters)"

    if all(r["code"] == 0 for r in rows):
        cmd = ["-m", "tgrowth", "predict", "-c", "experiments/predict.yaml",
               f"data.root={data}", f"data.image_size={size}", "data.subjects=[SUB03]", f"output_dir={out / 'predict'}",
               *(f"checkpoints.{k}={p}" for k, p in models.items()),
               "sampling.num_generations=2", "sampling.num_steps=2", "sampling.noise_level=200",
               "sampling.batch_size=2", "methods=[tgrowth,no-change]", "ode.n_bootstrap=8", "ode.progress_bar=false",
               f"num_threads={args.threads}", *trainer]
        rows.append(stage("predict: 2 generations, inversion + 2 guided steps", cmd, out / "predict.log"))
        if rows[-1]["code"] == 0 and not (out / "predict" / "metrics.csv").is_file():
            rows[-1]["code"] = 1

    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU core(s), torch {torch.__version__}, "
          f"device {args.device}, load average {os.getloadavg()[0]:.1f}")
    print(f"presets: experiments/models/*_paper.yaml at {size}x{size}" + (" with small widths (--tiny)" if args.tiny else ""))
    width = max(len(r["stage"]) for r in rows)
    print(f"{'stage':<{width}}  {'seconds':>8}  {'peak RSS MiB':>12}  result")
    print("-" * (width + 32))
    for r in rows:
        rss = "-" if r["peak_rss_mib"] != r["peak_rss_mib"] else f"{r['peak_rss_mib']:.0f}"
        print(f"{r['stage']:<{width}}  {r['seconds']:>8.1f}  {rss:>12}  {'ok' if r['code'] == 0 else 'FAILED'}")
    if args.in_process:
        print(f"(all commands in this process, peak RSS of the whole run: "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")
    else:
        print("(each command in its own process: seconds include the process start and imports; peak RSS is that "
              "process's maximum resident memory)")
    failed = [r for r in rows if r["code"]]
    for r in failed:
        tail = r["log"].read_text()[-3000:] if r["log"] and r["log"].is_file() else ""
        print(f"\n{r['stage']} FAILED (exit {r['code']}); the end of {r['log']}:\n{tail}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
