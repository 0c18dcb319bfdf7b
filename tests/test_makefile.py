"""`make test` / `make demo` install into a project .venv unless an environment is active (PEP 668 systems)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
# what an outer `make test` passes down (MAKELEVEL would add "Entering directory" lines) and the environments
OUTER = ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")


def clean_env(**extra):
    return {**{k: v for k, v in os.environ.items() if k not in OUTER}, **extra}


def dry_run(tmp_path, target, **env_extra):
    """`make -n TARGET` on a copy of the Makefile (so the real .venv state does not matter)."""
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    res = subprocess.run(["make", "-n", "--no-print-directory", target], cwd=tmp_path, env=clean_env(**env_extra),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


def test_without_an_active_environment_make_uses_a_project_venv(tmp_path):
    lines = dry_run(tmp_path, "test")
    assert lines[0] == "python3 -m venv .venv"
    assert lines[1] == '.venv/bin/python -m pip install -q "torch==2.13.0"'  # pinned torch first
    assert lines[2] == '.venv/bin/python -m pip install -q -e ".[dev]"'
    assert lines[-1] == ".venv/bin/python -m pytest -q tests"
    assert not any(ln.startswith(("python -m pip", "python3 -m pip")) for ln in lines)  # never the system pip
    demo = dry_run(tmp_path, "demo")
    assert demo[-1] == ".venv/bin/python -m tgrowth demo -c experiments/demo.yaml output_dir=runs/demo overwrite=true"


def test_installed_venv_is_reused(tmp_path):
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").write_text("")
    lines = dry_run(tmp_path, "test")  # created, not yet installed
    assert "-m venv" not in "\n".join(lines) and "pip install" in "\n".join(lines)
    (tmp_path / ".venv" / ".tgrowth-installed").write_text("")
    os.utime(tmp_path / ".venv" / ".tgrowth-installed", (2e9, 2e9))  # newer than pyproject.toml
    assert dry_run(tmp_path, "test") == [".venv/bin/python -m pytest -q tests"]


@pytest.mark.parametrize("var", ["VIRTUAL_ENV", "CONDA_PREFIX"])
def test_an_active_environment_is_used_as_it_is(tmp_path, var):
    lines = dry_run(tmp_path, "test", **{var: "/opt/myenv"})
    text = "\n".join(lines)
    assert "-m venv" not in text and ".venv" not in text
    assert '/opt/myenv/bin/python -m pip install -q -e ".[dev]"' in lines
    assert lines[-1] == "/opt/myenv/bin/python -m pytest -q tests"


def test_python_on_the_command_line_wins(tmp_path):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    res = subprocess.run(["make", "-n", "--no-print-directory", "test", "PYTHON=/usr/bin/python3.12"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env=clean_env())
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "/usr/bin/python3.12 -m pytest -q tests" and "-m venv" not in res.stdout
