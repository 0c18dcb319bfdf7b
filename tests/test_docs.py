"""Every ```python block of README.md and docs/*.md runs, and every ``tgrowth`` line of every ```bash block
resolves, so the documentation cannot drift from the code.

How the paths the docs use are provided: each block runs with a fresh sandbox folder as the current
directory, in which these paths exist, linked to tiny factory-made stand-ins (tests/predict_fixtures.py):

- ``experiments/`` -> the repository's ``experiments/``;
- ``runs/demo/data`` -> a 3-subject longitudinal set (32x32x6 volumes, SUB01 train, SUB02/SUB03 test), the
  stand-in for the phantom ``make demo`` writes;
- ``runs/demo/<kind>/<kind>.pt`` and ``runs/{den,reg,seg}/<kind>.pt`` -> tiny 64x64 networks in the real
  model-file format (kind: denoiser, regressor, segmenter), as ``make demo`` / docs/training.md write them;
- ``runs/demo/predict``, ``runs/demo/predict_l100`` -> predict run folders (summary.json, metrics.csv).

Python blocks run as written except for :data:`SHRINK`, which lowers the generation and step counts of the
sampling example so that it takes seconds, not minutes (each entry must occur in the docs).

Bash blocks: continuation lines are joined and comments dropped; the placeholders ROOT and DIR become
``runs/demo/data`` and ``runs/out``. ``tgrowth ... --help`` and ``tgrowth runs compare ...`` lines run as they
are; every other ``tgrowth`` line runs with ``--print-config`` (its files exist, its keys and values fit the
command's schema). A line that is not a tgrowth command must match :data:`SKIP`, which says why it cannot run
here; anything else fails the test.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from tgrowth.cli import main

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.M | re.S)
PLACEHOLDERS = {"ROOT": "runs/demo/data", "DIR": "runs/out"}
# bash lines that are not run here: (start of the line, why)
SKIP = (
    ("make demo", "the whole demo takes about 10 minutes; its stages are the tgrowth commands checked here"),
    ("make test", "this test suite itself"),
    ("wandb sweep", "needs a wandb server and account"),
    ("wandb agent", "needs a wandb server and account"),
    ("wandb sync", "needs `wandb login`"),
    ("sbatch", "needs SLURM"),
    ("torchrun", "starts several processes on GPUs"),
)
# python text -> its stand-in in the test (the same code path at a size that runs in seconds)
SHRINK = (("N = 50  ", "N = 2  "), ("num_steps=50,", "num_steps=2,"))
KINDS = ("denoiser", "regressor", "segmenter")
SHORT = {"denoiser": "den", "regressor": "reg", "segmenter": "seg"}


def blocks(lang: str) -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in BLOCK.finditer(text):
            if m.group(1) == lang:
                line = text[: m.start()].count("\n") + 1
                out.append((f"{page.relative_to(REPO)}:{line}", m.group(2)))
    return out


def bash_commands(code: str) -> list[list[str]]:
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append([_fill(w) for w in words])
    return out


def _fill(word: str) -> str:
    """``ROOT`` or ``key=ROOT`` -> the sandbox path (DIR likewise)."""
    key, eq, value = word.rpartition("=")
    return f"{key}{eq}{PLACEHOLDERS.get(value, value)}"


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """The data, model files and run folders the docs name (built once)."""
    from tests.predict_fixtures import make_data, make_models
    from tgrowth.predict.report import write_tables

    base = tmp_path_factory.mktemp("docs_stand_ins")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = make_data(base / "data")
        models = make_models(base / "models", root, size=64)
    finally:
        torch.set_num_threads(n)
    runs = {}
    for name, shift in (("predict", 0.0), ("predict_l100", 1.0)):
        rows = [{"subject": s, "method": m, "hd95": h + shift, "dice": 0.6, "area_error_vs_truth": 0.2}
                for s, h in (("SUB02", 3.0), ("SUB03", 6.0)) for m in ("tgrowth", "no-change")]
        write_tables(base / name, rows, [], ["tgrowth", "no-change"])
        runs[name] = base / name
    return root, models, runs


@pytest.fixture
def sandbox(stand_ins, tmp_path, monkeypatch):
    root, models, runs = stand_ins
    (tmp_path / "experiments").symlink_to(REPO / "experiments")
    demo = tmp_path / "runs" / "demo"
    demo.mkdir(parents=True)
    (demo / "data").symlink_to(root)
    for kind in KINDS:
        for folder in (demo / kind, tmp_path / "runs" / SHORT[kind]):
            folder.mkdir()
            (folder / f"{kind}.pt").symlink_to(models[kind])
    for name, path in runs.items():
        (demo / name).symlink_to(path)
    monkeypatch.chdir(tmp_path)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(n)


def test_the_pages_have_blocks():
    assert len(blocks("python")) >= 5 and len(blocks("bash")) >= 5
    assert not blocks("sh") and not blocks("shell") and not blocks("py")  # would escape the tests below


@pytest.mark.parametrize("where,code", blocks("python"), ids=[w for w, _ in blocks("python")])
def test_python_block_runs(where, code, sandbox):
    for old, new in SHRINK:
        code = code.replace(old, new)
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})


def test_shrink_entries_are_still_in_the_docs():
    text = "".join(code for _, code in blocks("python"))
    assert [old for old, _ in SHRINK if old not in text] == []


@pytest.mark.parametrize("where,code", blocks("bash"), ids=[w for w, _ in blocks("bash")])
def test_bash_block_commands_resolve(where, code, sandbox, capsys):
    for words in bash_commands(code):
        line = " ".join(words)
        if words[0] != "tgrowth":
            assert any(line.startswith(s) for s, _ in SKIP), f"{where}: no way to check `{line}`: add it to SKIP"
            continue
        argv = words[1:] if ("--help" in words or words[1:3] == ["runs", "compare"]) else words[1:] + ["--print-config"]
        code_ = main(argv)
        printed = capsys.readouterr()
        assert code_ == 0, f"{where}: `{line}` exited {code_}: {printed.err}"
        assert printed.out.strip(), f"{where}: `{line}` printed nothing"


def test_bash_parsing_joins_continuations_and_fills_placeholders():
    got = bash_commands("tgrowth predict -c a.yaml data.root=ROOT \\\n    output_dir=DIR  # a note\n# a comment\n"
                        "tgrowth data-check ROOT --json\n")
    assert got == [["tgrowth", "predict", "-c", "a.yaml", "data.root=runs/demo/data", "output_dir=runs/out"],
                   ["tgrowth", "data-check", "runs/demo/data", "--json"]]
