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
    predict_cpu_fk.yaml only in the 3D keys, N, the volume ODE's model, the connected maps, the stratified
    targets and the per-generation spatial target (chosen on the validation subjects in 3D): the spatial
    tolerance and the FK zone are the 2D preset's."""
    vol, fk = (load_config(PredictConfig, [str(REPO / "experiments" / f"{n}.yaml")], NEEDED)
               for n in ("predict_cpu_volume", "predict_cpu_fk"))
    assert predict_config_problems(vol) == []
    assert vol.volume and vol.volume_margin_slices == 0 and vol.volume_distribution == "fk"
    assert not vol.sampling.keep_prior_holes and vol.sampling.num_generations == 4
    assert vol.guidance.spatial_tolerance == 0.45 and vol.sampling.zone == "fk"
    assert vol.volume_fill_slices == 3 and vol.sampling.map_connected and vol.ode.model == "linear_radial_rt"
    assert vol.guidance.target == "quantiles" and fk.guidance.target == "bootstrap"
    assert vol.guidance.spatial_target == "generation" and fk.guidance.spatial_target == "median"
    vol.guidance.target, vol.guidance.spatial_target = fk.guidance.target, fk.guidance.spatial_target
    vol.volume_margin_slices = fk.volume_margin_slices
    vol.volume, vol.sampling.keep_prior_holes, vol.experiment = False, True, fk.experiment
    vol.sampling.num_generations = fk.sampling.num_generations
    vol.volume_fill_slices, vol.sampling.map_connected, vol.ode.model = 0, False, fk.ode.model
    assert vol == fk


# The phantoms of docs/benchmarks.md: cohort A (training / validation), cohort B (held-out test) and the stress
# cohorts. Their configs are the record of how the documented cohorts were made, so a machine that lost them can
# rebuild them; these tests pin what the documents say about them without generating anything.
COHORTS = REPO / "experiments" / "cohorts"
STRESS = REPO / "experiments" / "stress"


def _synth(path: Path):
    from omegaconf import OmegaConf

    from tgrowth.config.synth import SynthConfig

    return OmegaConf.to_container(load_config(SynthConfig, [str(path)], []))


def test_cohort_a_yields_the_documented_validation_subjects():
    from tgrowth.synth.cohort import assign_splits

    cfg = _synth(COHORTS / "cohortA.yaml")
    assert (cfg["seed"], cfg["n_subjects"], cfg["subject_prefix"]) == (11, 72, "SYN")
    subjects = [f"SYN-{i:05d}" for i in range(1, 73)]
    splits = assign_splits(subjects, cfg["split_fractions"], cfg["seed"])
    val = sorted(s for s, v in splits.items() if v == "val")
    assert val == [f"SYN-{i:05d}" for i in (13, 25, 34, 37, 41, 44, 45, 51, 57, 58, 59, 67)]
    assert sum(v == "train" for v in splits.values()) == 60 and "test" not in splits.values()


def test_cohorts_differ_from_cohort_b_only_where_documented():
    a, b = _synth(COHORTS / "cohortA.yaml"), _synth(COHORTS / "cohortB.yaml")
    assert (b["seed"], b["n_subjects"], b["subject_prefix"], b["split_fractions"]) == (23, 16, "TST", [0.0, 0.0, 1.0])
    own = {"output_dir", "seed", "n_subjects", "subject_prefix", "split_fractions", "threads"}
    assert {k for k in b if a[k] != b[k]} <= own
    stress_growth = {"control": None, "aniso": "anisotropy", "gwratio": "grey_white_ratio", "mass": "mass_effect"}
    for name, key in stress_growth.items():
        s = _synth(STRESS / f"{name}.yaml")
        assert (s["seed"], s["n_subjects"], s["subject_prefix"]) == (31, 36, "STR"), name
        assert {k for k in b if s[k] != b[k]} <= own | {"growth"}, name
        changed = {k for k in b["growth"] if s["growth"][k] != b["growth"][k]}
        assert changed == (set() if key is None else {key}), name
