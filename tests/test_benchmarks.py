"""The benchmark scripts still run (tiny smoke sizes; nothing here is timed or compared across machines)."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, timeout=600):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_sampling_benchmark_smoke_writes_every_row(tmp_path):
    out = _run("benchmarks/sampling.py", "--smoke", "--quick", "--threads", "1", "--rows", "baseline,fp32 50 steps",
               "--json", str(tmp_path / "s.json"))
    data = json.loads((tmp_path / "s.json").read_text())
    assert [r["row"] for r in data["rows"]] == ["baseline", "fp32 50 steps"] and data["smoke"]
    assert all(r["finite"] for r in data["rows"])
    assert "NON-FINITE" not in out and "| tgrowth fp32 50 steps |" in out


def test_work_per_map_counts_the_shared_inversion_and_respacing():
    out = _run("benchmarks/sampling.py", "--flops", "--size", "tiny", "--rows", "baseline,fp32,fp32 50 steps")
    per = dict(re.findall(r"(UNet forward|regressor forward\+backward|segmenter forward) ([\d.]+) GFLOP", out))
    u, r, s = (float(per[k]) for k in ("UNet forward", "regressor forward+backward", "segmenter forward"))
    tflop = {m[0]: float(m[1]) for m in re.findall(r"^\| (baseline|fp32|fp32 50 steps) \| \d+ \| ([\d.]+) \|", out, re.M)}
    assert tflop["baseline"] * 1e3 == _approx(50 * (400 * u + 200 * r + s))
    assert tflop["fp32"] * 1e3 == _approx(200 * u + 50 * 200 * (u + r) + 50 * s)
    assert tflop["fp32 50 steps"] * 1e3 == _approx(50 * u + 50 * 50 * (u + r) + 50 * s)
    sg = float(re.search(r"segmenter forward\+backward ([\d.]+) GFLOP", out).group(1))
    assert sg > s  # a backward pass costs more than nothing
    cpu = re.search(r"^\| predict_cpu recipe \(segmenter guidance, q-sample\) \| 25 \| ([\d.]+) \|", out, re.M)
    assert float(cpu.group(1)) * 1e3 == _approx(50 * 25 * (u + sg) + 50 * s)  # no inversion: q-sample encoding


def _approx(v):
    import pytest

    return pytest.approx(v, rel=1e-3)  # the table rounds to 1 GFLOP, the per-call counts to 1e-4 GFLOP


def test_inversion_benchmark_second_order_beats_plain():
    out = _run("benchmarks/inversion.py", "--steps", "50")
    plain = [float(x) for x in re.findall(r"\| order 1 \(plain, authors'\) \| 50 \| ([\de.+-]+) \| 100 \|", out)]
    second = [float(x) for x in re.findall(r"\| order 2 \(default\) \| 50 \| ([\de.+-]+) \| 100 \|", out)]
    assert len(plain) == len(second) == 2  # linear and cosine schedules, same model calls
    assert all(b < a / 5 for a, b in zip(plain, second))


def _norm(v):
    if isinstance(v, (list, tuple)):
        return tuple(float(x) for x in v)
    return v


def test_authors_size_in_the_benchmark_is_the_paper_presets():
    """The GPU benchmark builds its networks without omegaconf; they must be the ones users train."""
    import inspect

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from sampling import model_sizes

    from tgrowth.config.base import load_config
    from tgrowth.config.diffusion import TrainDenoiserConfig, TrainRegressorConfig, TrainSegmenterConfig
    from tgrowth.diffusion.train import build_denoiser, build_regressor, build_segmenter
    from tgrowth.diffusion.unet import EncoderRegressor, Segmenter, UNet

    sizes = model_sizes("authors")
    cases = [(TrainDenoiserConfig, build_denoiser, "denoiser_paper", "unet", UNet),
             (TrainRegressorConfig, build_regressor, "regressor_paper", "regressor", EncoderRegressor),
             (TrainSegmenterConfig, build_segmenter, "segmenter_paper", "segmenter", Segmenter)]
    for schema, build, preset, key, cls in cases:
        cfg = load_config(schema, [str(ROOT / "experiments" / "models" / f"{preset}.yaml")], [])
        _, meta = build(cfg)
        defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
        bench = {**defaults, **sizes[key]}
        for k, v in meta["network"]["kwargs"].items():  # every argument the preset passes
            assert _norm(bench[k]) == _norm(v), f"{preset}: {k} is {v!r} in the preset, {bench[k]!r} in the benchmark"


def test_spent_budget_skips_rows_and_says_so():
    out = _run("benchmarks/sampling.py", "--smoke", "--quick", "--rows", "fp32,baseline", "--budget", "1")
    assert out.count("skipped: the --budget of 1 s is spent") == 2 and "| tgrowth fp32 |" not in out


def test_guidance_units_benchmark_shows_the_factor_of_ten_thousand():
    out = _run("benchmarks/guidance_units.py", "--size", "tiny")
    assert "| before: target in the regressor's units, raw output |" in out
    assert "ratio before/after: 1e+04" in out
