from dataclasses import dataclass
from typing import Any

import pytest

from tgrowth.cli import COMMANDS, main
from tgrowth.config.base import RunConfig, TrainerConfig, describe_schema, doc, load_config, to_flat_dict
from tgrowth.errors import ConfigError


@dataclass
class FitSection:
    n_bootstrap: int = doc(100, "replicates")
    noise: float = doc(0.1, "noise level")


@dataclass
class ToyConfig(RunConfig):
    fit: FitSection = doc(FitSection(), "fit settings")
    trainer: TrainerConfig = doc(TrainerConfig(), "trainer")
    days: list[float] = doc([30.0], "target days")
    extra: dict[str, Any] = doc({}, "free-form mapping")


def test_defaults_files_and_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("fit:\n  n_bootstrap: 7\nseed: 3\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text("extends: base.yaml\nfit:\n  noise: 0.2\n")
    cfg = load_config(ToyConfig, [str(exp)], ["fit.n_bootstrap=9", "days=[30,60]"])
    assert cfg.fit.n_bootstrap == 9 and cfg.fit.noise == 0.2 and cfg.seed == 3
    assert list(cfg.days) == [30.0, 60.0]
    flat = to_flat_dict(cfg)
    assert flat["fit.n_bootstrap"] == 9 and flat["trainer.max_steps"] == -1


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(ToyConfig, [], ["fit.n_bootstrp=5"])
    msg = str(e.value)
    assert "unknown config key 'fit.n_bootstrp'" in msg
    assert "Did you mean 'fit.n_bootstrap'?" in msg
    assert "Valid keys under 'fit': n_bootstrap, noise" in msg
    f = tmp_path / "bad.yaml"
    f.write_text("outptu_dir: x\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'outptu_dir'.*output_dir"):
        load_config(ToyConfig, [str(f)])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"invalid value for config key 'fit.n_bootstrap'"):
        load_config(ToyConfig, [], ["fit.n_bootstrap=many"])


def test_missing_file_and_cycle(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(ToyConfig, [str(tmp_path / "nope.yaml")])
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\n")
    b.write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(ToyConfig, [str(a)])


def test_describe_schema_lists_help():
    lines = describe_schema(ToyConfig)
    assert any(line.startswith("fit.n_bootstrap (int, default 100): replicates") for line in lines)
    assert any(line.startswith("trainer.precision") for line in lines)


def test_cli_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out
    assert main(["no-such-command"]) == 2


def test_atomic_writes_have_normal_permissions(tmp_path):
    import os
    import stat

    from tgrowth.io import write_json

    umask = os.umask(0)
    os.umask(umask)
    p = write_json(tmp_path / "a.json", {"x": 1})
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert p.read_text().strip().startswith("{")


def test_trainer_kwargs_keeps_lightning_semantics(tmp_path):
    from omegaconf import OmegaConf

    from tgrowth.tracking import ensure_run_id, trainer_kwargs

    cfg = load_config(ToyConfig, [], ["trainer.val_check_interval=200", "trainer.check_val_every_n_epoch=null"])
    kw = trainer_kwargs(cfg.trainer)
    assert kw["val_check_interval"] == 200 and isinstance(kw["val_check_interval"], int)
    assert "check_val_every_n_epoch" in kw and kw["check_val_every_n_epoch"] is None
    assert "max_epochs" not in kw  # unset keys are left to Lightning
    run = OmegaConf.create({"output_dir": str(tmp_path), "wandb": {"run_id": None}})
    rid = ensure_run_id(run)
    assert len(rid) == 8 and rid.isalnum() and ensure_run_id(run) == rid  # stored, then reused


def test_free_form_mapping_takes_new_keys_typed_sections_do_not():
    cfg = load_config(ToyConfig, [], ["extra.anything=3", "extra.nested.k=x"])
    assert cfg.extra.anything == 3 and cfg.extra.nested.k == "x"
    with pytest.raises(ConfigError, match="unknown config key 'fit.extra'"):
        load_config(ToyConfig, [], ["fit.extra=1"])


def test_a_value_where_a_section_belongs_names_the_section(tmp_path):
    from tgrowth.config.ode import FitOdeConfig

    f = tmp_path / "bad.yaml"
    f.write_text("fit: 3\n")
    for files, over, src in (([str(f)], [], str(f)), ([], ["fit=3"], "command line")):
        with pytest.raises(ConfigError) as e:
            load_config(FitOdeConfig, files, over)
        msg = str(e.value)
        assert msg.startswith(f"{src}: config key 'fit' is a section of keys (model, candidates, ")
        assert "got 3. Set its keys instead, e.g. fit.<key>=..." in msg and "'?'" not in msg
