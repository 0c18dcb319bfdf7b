"""benchmarks/paper_smoke.py: the *_paper.yaml presets through training and predict (small widths here)."""

import importlib.util
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("paper_smoke", REPO / "benchmarks" / "paper_smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_paper_smoke_runs_every_stage(smoke, tmp_path, capsys):
    n = torch.get_num_threads()
    try:
        assert smoke.main(["--tiny", "--in-process", "--no-wandb", "--threads", "1", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    table = out[out.index("stage "):].splitlines()[2:7]
    stages = [ln for ln in table if ln.startswith(("data ", "train-", "predict:"))]
    assert [s.split(":")[0].split(" ")[0] for s in stages] == ["data", "train-denoiser", "train-regressor",
                                                                "train-segmenter", "predict"]
    assert all(s.endswith("  ok") for s in stages)
    from tgrowth.diffusion.checkpoints import load_denoiser, load_regressor, load_segmenter

    # the presets' structure reached the model files: learned sigma, classes, 3 regions, 4 contrasts, ADM levels
    unet, _, meta = load_denoiser(tmp_path / "denoiser" / "denoiser.pt", expect_image_size=64)
    assert meta["learn_sigma"] and unet.num_classes == 2 and meta["contrasts"] == ["t1n", "t1c", "t2w", "t2f"]
    assert meta["network"]["kwargs"]["attention_resolutions"] == [16]
    _, rmeta = load_regressor(tmp_path / "regressor" / "regressor.pt")
    assert rmeta["network"]["kwargs"]["attention_resolutions"] == [32, 16, 8]
    _, smeta = load_segmenter(tmp_path / "segmenter" / "segmenter.pt")
    assert smeta["regions"] == ["whole", "core", "enhancing"]
    rows = (tmp_path / "predict" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("subject,method") and {r.split(",")[1] for r in rows[1:]} == {"tgrowth", "no-change"}


def test_stage_runner_reports_time_peak_memory_and_exit_code(smoke, tmp_path):
    big = smoke.run_stage("alloc", ["-c", "x = bytearray(300 * 2**20)\nfor i in range(0, len(x), 4096): x[i] = 1"],
                          tmp_path / "a.log", {})
    assert big["code"] == 0 and 300 < big["peak_rss_mib"] < 400 and big["seconds"] > 0
    bad = smoke.run_stage("fail", ["-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "b.log", {})
    assert bad["code"] == 3 and bad["peak_rss_mib"] < 100 and (tmp_path / "b.log").read_text() == "boom\n"
