"""The command line: several files after one -c, repeated -c, overrides and bare arguments after -c."""

import pytest
from omegaconf import OmegaConf

from tgrowth.cli import main

REQUIRED = ["data.root=x", "checkpoints.denoiser=a", "checkpoints.regressor=b", "checkpoints.segmenter=c"]


def _yaml(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def _printed(capsys, argv):
    assert main(argv + ["--print-config"]) == 0
    return OmegaConf.create(capsys.readouterr().out)


def test_several_files_after_one_c_and_repeated_c(tmp_path, capsys):
    a = _yaml(tmp_path, "a.yaml", "seed: 1\nsampling:\n  num_steps: 7\n")
    b = _yaml(tmp_path, "b.yaml", "seed: 2\nguidance:\n  scale: 3.0\n")
    one = _printed(capsys, ["predict", "-c", a, b, "sampling.eta=0.25", *REQUIRED])
    assert one.seed == 2 and one.sampling.num_steps == 7 and one.guidance.scale == 3.0  # later file wins
    assert one.sampling.eta == 0.25 and one.data.root == "x"  # key=value after the files are overrides
    assert _printed(capsys, ["predict", "-c", a, "-c", b, "sampling.eta=0.25", *REQUIRED]) == one
    assert _printed(capsys, ["predict", "sampling.eta=0.25", "-c", a, b, *REQUIRED]) == one
    # file order decides, as with repeated -c
    assert _printed(capsys, ["predict", "-c", b, a, *REQUIRED]).seed == 1


def test_bare_argument_after_c_is_the_positional(tmp_path, capsys):
    f = _yaml(tmp_path, "check.yaml", "format: longitudinal\n")
    cfg = _printed(capsys, ["data-check", "-c", f, str(tmp_path / "007"), "contrasts=[t1c]"])
    assert cfg.root == str(tmp_path / "007") and cfg.format == "longitudinal" and list(cfg.contrasts) == ["t1c"]
    assert _printed(capsys, ["data-check", "007"]).root == "007"  # stays a string, not the number 7


def test_missing_file_after_c_is_named(tmp_path, capsys):
    assert main(["predict", "-c", str(tmp_path / "nope.yaml"), *REQUIRED]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_unexpected_bare_argument_is_refused(capsys):
    assert main(["fit-ode", "stray"]) == 2
    assert "unexpected argument(s) ['stray']" in capsys.readouterr().err


def test_command_help_prints_description_once(capsys):
    assert main(["fit-ode", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.count("Fit a mechanistic growth ODE") == 1 and "-c YAML [YAML ...]" in out
    assert "Config keys:" in out and "fit.n_bootstrap" in out


@pytest.mark.parametrize("argv", [["runs"], ["runs", "nope"]])
def test_two_word_command_needs_its_second_word(argv, capsys):
    assert main(argv) == 2
    assert "runs compare" in capsys.readouterr().err


@pytest.mark.parametrize("command,hint", [
    ("predict", "rerun the same command with resume=true to continue"),
    ("train-denoiser", "rerun with ckpt_path=last to continue from the last checkpoint"),
])
def test_ctrl_c_says_how_to_continue(command, hint, monkeypatch, capsys):
    import tgrowth.cli as cli

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_import", lambda ref: interrupted if ":run" in ref or ":train" in ref
                        else cli.importlib.import_module(ref.split(":")[0]).__dict__[ref.split(":")[1]])
    assert cli.main([command, "data.root=/x", "checkpoints.denoiser=a", "checkpoints.regressor=b",
                     "checkpoints.segmenter=c"] if command == "predict" else [command]) == 130
    assert capsys.readouterr().err.strip() == f"tgrowth {command}: interrupted; finished outputs are kept; {hint}"
