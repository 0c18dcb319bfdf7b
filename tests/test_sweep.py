"""The guidance-scale sweep file: what `wandb agent` would run parses as predict configs; local grid parsing."""

import itertools
import json
from pathlib import Path

import pytest
import yaml

from tgrowth.config.base import load_config
from tgrowth.config.predict import PredictConfig, SweepConfig
from tgrowth.errors import ConfigError
from tgrowth.sweep import base_files, parse_grid

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "experiments" / "sweeps" / "guidance_scale.yaml"


def agent_argv(sweep: dict, values: dict) -> list[str]:
    """The argv `wandb agent` builds for one grid point (wandb's own helpers + its macro expansion)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    args = {k: {"value": v} for k, v in values.items()}
    cmd = sweep_utils.create_sweep_command(list(sweep["command"]))
    var = sweep_utils.create_sweep_command_args({"args": args})
    var.update(interpreter=["python"], program=[sweep["program"]], env=["/usr/bin/env"])
    out = []
    for c in map(str, cmd):
        out += (var.get(c[2:-1]) or []) if c.startswith("${") and c.endswith("}") else [c]
    return out


def test_wandb_agent_command_parses_as_predict_config(monkeypatch, tmp_path):
    sweep = yaml.safe_load(SWEEP.read_text())
    assert sweep["method"] == "grid" and sweep["metric"] == {"name": "predict/hd95", "goal": "minimize"}
    grid = {k: v["values"] for k, v in sweep["parameters"].items() if "values" in v}
    assert set(grid) == {"guidance.scale", "sampling.noise_level"}
    fixed = {k: v["value"] for k, v in sweep["parameters"].items() if "value" in v}
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")  # the agent sets it for each run
    for scale, level in itertools.product(grid["guidance.scale"], grid["sampling.noise_level"]):
        argv = agent_argv(sweep, {**fixed, "guidance.scale": scale, "sampling.noise_level": level})
        assert argv[:5] == ["/usr/bin/env", "python", "-m", "tgrowth", "predict"]
        files = [str(REPO / f) for f in base_files(argv)]
        overrides = [a for a in argv[7:]]
        cfg = load_config(PredictConfig, files, overrides)
        assert cfg.guidance.scale == float(scale) and cfg.sampling.noise_level == level
        assert list(cfg.methods) == ["tgrowth", "no-change"] and cfg.data.split == "val"
        assert cfg.output_dir == "runs/sweep/abc123" and cfg.overwrite is True


def test_sweep_yaml_loads_locally_and_grid_parses():
    cfg = load_config(SweepConfig, [str(SWEEP)], ["output_dir=x"])
    from omegaconf import OmegaConf

    params = OmegaConf.to_container(cfg.parameters, resolve=False)
    fixed, axes, scales = parse_grid(params, "guidance.scale")
    assert scales == [0.0, 5e5, 1e6, 2e6, 4e6, 8e6]
    assert axes == {"sampling.noise_level": [100, 200]}
    assert "data.root=runs/demo/data" in fixed and "methods=[tgrowth,no-change]" in fixed
    assert "data.split=val" in fixed and cfg.split == "val" and cfg.allow_test is False
    assert not any(f.startswith(("output_dir=", "overwrite=")) for f in fixed)  # the local runner owns them
    assert base_files(list(OmegaConf.to_container(cfg.command, resolve=False))) == ["experiments/predict_demo.yaml"]


def test_bad_grid_specs():
    with pytest.raises(ConfigError, match=r"parameters\.guidance\.scale\.values must be numbers"):
        parse_grid({"guidance.scale": {"values": ["big"]}}, "guidance.scale")
    with pytest.raises(ConfigError, match=r"supports grids .* not \['distribution', 'max', 'min'\]"):
        parse_grid({"sampling.eta": {"distribution": "uniform", "min": 0, "max": 1}}, "guidance.scale")
    with pytest.raises(ConfigError, match="ends with -c"):
        base_files(["tgrowth", "predict", "-c"])


def test_local_sweep_batches_scales(tiny_predict, tmp_path):
    """Two noise levels x three scales on one subject: each level one batched pass; CSV + plot written."""
    import csv

    import torch

    from tests.predict_fixtures import predict_overrides
    from tgrowth.cli import main

    root, models = tiny_predict
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "program": "tgrowth", "method": "grid", "metric": {"name": "predict/hd95", "goal": "minimize"},
        "parameters": {"guidance.scale": {"values": [0, 5, 50]}, "sampling.noise_level": {"values": [40, 60]},
                       "data.subjects": {"value": ["SUB02"]}, "sampling.num_generations": {"value": 2}},
        "command": ["${env}", "${interpreter}", "-m", "tgrowth", "predict", "-c", str(REPO / "experiments" / "predict.yaml"),
                    "${args_no_hyphens}"]}))
    base = [o for o in predict_overrides(root, models, tmp_path / "unused") if not o.startswith(
        ("output_dir=", "sampling.num_generations=", "guidance.scale=", "trainer.", "wandb."))]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["sweep", "-c", str(sweep), f"output_dir={tmp_path / 'out'}", "wandb.enabled=false",
                   "trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
                   "overrides=[" + ",".join(f'"{o}"' for o in base) + "]"])
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "sweep.csv")))
    assert [(r["sampling.noise_level"], float(r["scale"])) for r in rows] == [
        (lv, s) for lv in ("40", "60") for s in (0.0, 5.0, 50.0)]
    assert all(float(r["area_error_vs_target"]) >= 0 and r["hd95"] != "" for r in rows)
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 1000
    # one predict run per noise level, holding every scale as a method of the same batched pass
    info = json.loads((tmp_path / "out" / "noise_level=40" / "SUB02" / "info.json").read_text())
    assert set(info["methods"]) == {"tgrowth@0", "tgrowth@5", "tgrowth@50", "no-change"}


def test_sweep_refuses_the_test_split_unless_asked(tmp_path, capsys):
    from tgrowth.cli import main

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "program": "tgrowth", "method": "grid", "parameters": {"guidance.scale": {"values": [0, 5]},
                                                              "data.split": {"value": "test"}},
        "command": ["tgrowth", "predict", "-c", str(REPO / "experiments" / "predict.yaml")]}))
    rc = main(["sweep", "-c", str(sweep), f"output_dir={tmp_path / 'out'}", "wandb.enabled=false",
               "overrides=[data.root=/nowhere,checkpoints.denoiser=a,checkpoints.regressor=b,checkpoints.segmenter=c]"])
    assert rc == 2
    assert "this sweep would tune on the test subjects (data.split=test)" in capsys.readouterr().err
