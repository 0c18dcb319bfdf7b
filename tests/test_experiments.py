"""The shipped experiment files say what they do: the paper pipeline is the authors' settings, tgrowth's apart."""

from __future__ import annotations

from pathlib import Path

from tgrowth.config.base import load_config
from tgrowth.config.predict import DemoConfig, PredictConfig, predict_config_problems

REPO = Path(__file__).resolve().parents[1]
NEEDED = ["data.root=/d", "checkpoints.denoiser=a", "checkpoints.regressor=b", "checkpoints.segmenter=c"]


def _predict_stage(pipeline: str):
    demo = load_config(DemoConfig, [str(REPO / "experiments" / pipeline)], ["train_root=/t", "predict_root=/p"])
    stage = demo.predict
    return load_config(PredictConfig, [str(REPO / f) for f in stage.configs], list(stage.overrides) + NEEDED)


def test_paper_pipeline_predicts_with_the_authors_inference():
    cfg = _predict_stage("paper_brats2d.yaml")
    s, g = cfg.sampling, cfg.guidance
    assert (s.encode, s.invert_order, s.invert_refine_iters, s.eta) == ("invert", 1, 0, 0.0)
    assert (s.noise_level, s.num_steps, s.num_generations) == (200, 200, 50)
    assert (g.scale, g.form, g.target, g.high_noise_boost, g.boost_above_t) == (5e4, "authors", "median", 0.15, 20)
    assert cfg.ode.model == "exponential_rt" and cfg.data.image_size == 256
    assert predict_config_problems(cfg) == []


def test_tgrowth_paper_pipeline_differs_only_in_inference():
    ours = _predict_stage("paper_brats2d_tgrowth.yaml")
    assert (ours.sampling.encode, ours.guidance.target) == ("noise", "bootstrap")
    assert ours.data.image_size == 256 and predict_config_problems(ours) == []
    a = load_config(DemoConfig, [str(REPO / "experiments" / "paper_brats2d.yaml")], ["train_root=/t", "predict_root=/p"])
    b = load_config(DemoConfig, [str(REPO / "experiments" / "paper_brats2d_tgrowth.yaml")],
                    ["train_root=/t", "predict_root=/p"])
    for stage in ("denoiser", "regressor", "segmenter"):
        assert a[stage] == b[stage]  # the same networks and training


def test_the_cpu_predict_configs_load_clean_and_differ_only_as_documented():
    """predict_cpu.yaml and predict_cpu_fk.yaml pass the predict checks; the _fk one adds the spatial weight and
    tolerance chosen on validation subjects (1e6, 0.45) and keeps the x0 clamp at the step, nothing else."""
    cfgs = {name: load_config(PredictConfig, [str(REPO / "experiments" / f"{name}.yaml")], NEEDED)
            for name in ("predict_cpu", "predict_cpu_fk")}
    for cfg in cfgs.values():
        assert predict_config_problems(cfg) == []
    cpu, fk = cfgs["predict_cpu"], cfgs["predict_cpu_fk"]
    assert cpu.sampling.keep_prior_holes and cpu.sampling.clip_denoised == 1.0 and cpu.guidance.spatial_weight == 0
    assert cpu.sampling.clip_stage == "denoiser" and fk.sampling.clip_stage == "step"
    assert cpu.sampling.zone == "fk" and cpu.sampling.zone_fk_level == 0.15 and fk.sampling.zone == "fk"
    assert fk.guidance.spatial_weight == 1.0e6 and fk.guidance.spatial_tolerance == 0.45
    assert fk.guidance.spatial_schedule == "constant" and fk.experiment == "predict_cpu_fk"
    fk.guidance.spatial_weight, fk.guidance.spatial_tolerance = 0.0, 0.0
    fk.experiment, fk.sampling.clip_stage = cpu.experiment, "denoiser"
    assert fk == cpu


def test_the_cpu_volume_config_is_the_fk_one_in_3d():
    """predict_cpu_volume.yaml passes the predict checks (keep_prior_holes off: refused in 3D) and differs from
    predict_cpu_fk.yaml only in the 3D keys and N: the spatial tolerance and the FK zone are the 2D preset's."""
    vol, fk = (load_config(PredictConfig, [str(REPO / "experiments" / f"{n}.yaml")], NEEDED)
               for n in ("predict_cpu_volume", "predict_cpu_fk"))
    assert predict_config_problems(vol) == []
    assert vol.volume and vol.volume_margin_slices == 1 and vol.volume_distribution == "fk"
    assert not vol.sampling.keep_prior_holes and vol.sampling.num_generations == 4
    assert vol.guidance.spatial_tolerance == 0.45 and vol.sampling.zone == "fk"
    vol.volume, vol.sampling.keep_prior_holes, vol.experiment = False, True, fk.experiment
    vol.sampling.num_generations = fk.sampling.num_generations
    assert vol == fk
