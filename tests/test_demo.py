"""The demo's verdict lines: tgrowth against each baseline, paired over subjects, with the spread."""

import pytest
from scipy import stats

from tgrowth.demo import paired_verdict, verdict_line, verdicts


def rows_of(metric, tg, base, baseline="no-change"):
    rows = []
    for i, (a, b) in enumerate(zip(tg, base)):
        rows.append({"subject": f"S{i}", "method": "tgrowth", metric: a, "target_timepoint": "004"})
        rows.append({"subject": f"S{i}", "method": baseline, metric: b, "target_timepoint": "004"})
    return rows


def test_tie_within_the_spread_states_n_means_and_ci():
    tg, nc = [4.0, 6.0, 3.0, 7.0], [5.0, 5.0, 5.0, 6.0]  # differences -1, 1, -2, 1
    v = paired_verdict(rows_of("hd95", tg, nc), "hd95", "no-change")
    ci = stats.ttest_rel(tg, nc).confidence_interval(0.95)
    assert v["n"] == 4 and v["diff"] == pytest.approx(-0.25) and v["sd"] == pytest.approx(1.5)
    assert v["ci"] == pytest.approx([ci.low, ci.high]) and v["verdict"] == "tie"
    assert verdict_line(v, "map HD95", " mm") == (
        "tgrowth vs no-change, map HD95 over n=4 subjects: mean 5 vs 5.25 mm, paired difference -0.25 mm "
        "(sd 1.5, 95% CI -2.6..2.1): a tie within the spread")


def test_win_and_loss_when_the_ci_excludes_zero():
    tg, ug = [0.1, 0.2, 0.3], [0.3, 0.4, 0.55]
    win = paired_verdict(rows_of("area_error_vs_target", tg, ug, "unguided"), "area_error_vs_target", "unguided")
    assert win["verdict"] == "better" and win["ci"][1] < 0
    assert verdict_line(win, "area error vs the ODE target").endswith("tgrowth better (the CI excludes 0)")
    loss = paired_verdict(rows_of("area_error_vs_target", ug, tg, "unguided"), "area_error_vs_target", "unguided")
    assert loss["verdict"] == "worse" and loss["ci"][0] > 0 and loss["diff"] == pytest.approx(-win["diff"])


def test_pairs_need_both_values_and_one_pair_is_no_verdict():
    rows = rows_of("hd95", [1.0, float("inf"), 2.0], [2.0, 3.0, ""])  # S1: inf, S2: baseline missing
    v = paired_verdict(rows, "hd95", "no-change")
    assert v["n"] == 1 and v["verdict"] == "too few" and v["ci"] is None
    assert "over n=1 subject:" in verdict_line(v, "map HD95", " mm") and "not a verdict" in verdict_line(v, "x")
    assert paired_verdict(rows, "hd95", "unguided") is None  # no such method: no line


def test_verdicts_cover_truth_and_target_for_present_baselines():
    rows = rows_of("hd95", [4.0, 5.0], [5.0, 6.0])
    for r in rows:
        r["area_error_vs_truth"] = 0.3 if r["method"] == "tgrowth" else 0.4
        r["area_error_vs_target"] = 0.1 if r["method"] == "tgrowth" else 0.2
    lines = [line for _, line in verdicts(rows)]
    assert [ln.split(" over ")[0] for ln in lines] == [
        "tgrowth vs no-change, map HD95", "tgrowth vs no-change, area error vs the true follow-up"]
    assert all("over n=2 subjects" in ln for ln in lines)


def test_demo_prints_the_verdicts_after_predict(tiny_predict, tmp_path, capsys):
    """The demo runner with its training stages disabled, predicting the tiny set with the tiny models."""
    import json

    import torch

    from tests.predict_fixtures import predict_overrides
    from tgrowth.config.base import load_config
    from tgrowth.config.predict import DemoConfig
    from tgrowth.demo import run

    root, models = tiny_predict
    out = tmp_path / "demo"
    cfg = load_config(DemoConfig, ["experiments/demo.yaml"], [
        f"output_dir={out}", "overwrite=true", f"train_root={root}", f"predict_root={root}", "wandb.enabled=false",
        "synth.enabled=false", "denoiser.enabled=false", "regressor.enabled=false", "segmenter.enabled=false",
        "predict.configs=[experiments/predict.yaml]"])
    cfg.predict.overrides = predict_overrides(root, models, out / "predict")  # later than the demo's checkpoints
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run(cfg) == 0
    finally:
        torch.set_num_threads(n)
    printed = capsys.readouterr().out
    tail = printed[printed.index("verdicts (paired over the same subjects; lower is better):"):].splitlines()[1:]
    assert [ln.strip().split(" over ")[0] for ln in tail] == [
        "tgrowth vs no-change, map HD95", "tgrowth vs unguided, map HD95",
        "tgrowth vs no-change, area error vs the true follow-up", "tgrowth vs unguided, area error vs the true follow-up",
        "tgrowth vs unguided, area error vs the ODE target"]
    assert all("over n=2 subjects: mean " in ln and "95% CI" in ln for ln in tail)
    saved = json.loads((out / "demo_summary.json").read_text())["verdicts"]
    assert len(saved) == 5 and saved[0]["metric"] == "hd95" and saved[0]["n"] == 2


def test_higher_is_better_metrics_turn_the_verdict_around():
    tg, nc = [0.9, 0.92, 0.88, 0.91], [0.8, 0.81, 0.79, 0.8]  # Dice: tgrowth higher in every pair
    rows = rows_of("dice", tg, nc)
    assert paired_verdict(rows, "dice", "no-change")["verdict"] == "worse"  # read as lower-is-better
    assert paired_verdict(rows, "dice", "no-change", lower_is_better=False)["verdict"] == "better"
