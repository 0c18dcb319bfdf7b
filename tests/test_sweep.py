"""The guidance-scale sweep file: what `wandb agent` would run parses as predict configs; local grid parsing."""

import itertools
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
        assert list(cfg.methods) == ["tgrowth", "no-change"]
        assert cfg.output_dir == "runs/sweep/abc123" and cfg.overwrite is True


def test_sweep_yaml_loads_locally_and_grid_parses():
    cfg = load_config(SweepConfig, [str(SWEEP)], ["output_dir=x"])
    from omegaconf import OmegaConf

    params = OmegaConf.to_container(cfg.parameters, resolve=False)
    fixed, axes, scales = parse_grid(params, "guidance.scale")
    assert scales == [0.0, 5.0, 10.0, 20.0, 40.0, 80.0]
    assert axes == {"sampling.noise_level": [150, 250]}
    assert "data.root=runs/demo/data" in fixed and "methods=[tgrowth,no-change]" in fixed
    assert not any(f.startswith(("output_dir=", "overwrite=")) for f in fixed)  # the local runner owns them
    assert base_files(list(OmegaConf.to_container(cfg.command, resolve=False))) == ["experiments/predict_demo.yaml"]


def test_bad_grid_specs():
    with pytest.raises(ConfigError, match=r"parameters\.guidance\.scale\.values must be numbers"):
        parse_grid({"guidance.scale": {"values": ["big"]}}, "guidance.scale")
    with pytest.raises(ConfigError, match=r"supports grids .* not \['distribution', 'max', 'min'\]"):
        parse_grid({"sampling.eta": {"distribution": "uniform", "min": 0, "max": 1}}, "guidance.scale")
    with pytest.raises(ConfigError, match="ends with -c"):
        base_files(["tgrowth", "predict", "-c"])
