"""`tgrowth predict` refuses settings that cannot work before any work: config values, then the model files."""

from __future__ import annotations

import pytest
import torch

from tests.predict_fixtures import predict_overrides
from tgrowth.cli import main
from tgrowth.config.base import load_config
from tgrowth.config.predict import PredictConfig, predict_config_problems

BASE = ["data.root=/nowhere", "checkpoints.denoiser=a", "checkpoints.regressor=b", "checkpoints.segmenter=c"]


@pytest.mark.parametrize("override,message", [
    ("guidance.scale=nan", "config key 'guidance.scale' must be a finite number >= 0, got nan"),
    ("guidance.scale=inf", "config key 'guidance.scale' must be a finite number >= 0, got inf"),
    ("guidance.scale=-1", "config key 'guidance.scale' must be a finite number >= 0, got -1.0"),
    ("guidance.form=squared", "config key 'guidance.form' must be one of authors, loss, x0, x0_detached, segmenter, got 'squared'"),
    ("guidance.target=mean", "config key 'guidance.target' must be one of median, bootstrap, quantiles, got 'mean'"),
    ("sampling.threshold=1.5", "config key 'sampling.threshold' must be strictly between 0 and 1, got 1.5"),
    ("sampling.threshold=0", "config key 'sampling.threshold' must be strictly between 0 and 1, got 0.0"),
    ("sampling.eta=-0.1", "config key 'sampling.eta' must be a finite number >= 0, got -0.1"),
    ("sampling.num_steps=2000", "config key 'sampling.num_steps' must be in 1..sampling.noise_level (200) or null, "
                                "got 2000"),
    ("sampling.noise_level=0", "config key 'sampling.noise_level' must be >= 1 (a step of the noise schedule), got 0"),
    ("sampling.num_generations=0", "config key 'sampling.num_generations' must be >= 1, got 0"),
    ("sampling.batch_size=0", "config key 'sampling.batch_size' must be >= 1, got 0"),
    ("sampling.encode=ddpm", "config key 'sampling.encode' must be one of noise, invert, got 'ddpm'"),
    ("methods=[]", "config key 'methods' must name at least one of tgrowth, unguided, oracle-area, no-change, "
                   "no-change-segmenter, segmenter-on-truth, grow-to-target, grow-to-truth, fk, fk-to-truth, got []"),
    ("methods=[tgrowth,magic]", "config key 'methods' has unknown method(s) ['magic']"),
    ("target.days=[30,-5]", "config key 'target.days' must be positive numbers of days after the prior scan"),
    ("sampling.zone=atlas", "config key 'sampling.zone' must be one of isotropic, fk, got 'atlas'"),
    ("sampling.zone_fk_level=0", "config key 'sampling.zone_fk_level' must be strictly between 0 and 0.2 (the FK "
                                 "model's visible threshold), got 0.0"),
    ("sampling.clip_denoised=0", "config key 'sampling.clip_denoised' must be a finite number > 0 (or null: no clamp)"),
    ("sampling.clip_denoised=inf", "config key 'sampling.clip_denoised' must be a finite number > 0"),
    ("sampling.clip_stage=after", "config key 'sampling.clip_stage' must be one of step, denoiser, got 'after'"),
    ("sampling.zone_fk_level=0.3", "config key 'sampling.zone_fk_level' must be strictly between 0 and 0.2"),
    ("sampling.zone_fk_level=nan", "config key 'sampling.zone_fk_level' must be strictly between 0 and 0.2"),
    ("guidance.spatial_weight=-1", "config key 'guidance.spatial_weight' must be a finite number >= 0, got -1.0"),
    ("guidance.spatial_weight=inf", "config key 'guidance.spatial_weight' must be a finite number >= 0, got inf"),
    ("guidance.spatial_tolerance=1", "config key 'guidance.spatial_tolerance' must be in [0, 1), got 1.0"),
    ("guidance.spatial_schedule=late", "config key 'guidance.spatial_schedule' must be one of constant, "
                                       "sqrt_one_minus_abar, one_minus_abar, abar, got 'late'"),
    ("guidance.spatial_target=own", "config key 'guidance.spatial_target' must be one of median, generation, got 'own'"),
    ("guidance.spatial_target=generation", "config key 'guidance.spatial_target' other than median needs volume: true"),
    ("checkpoints.regressor=null", "config key 'checkpoints.regressor' is needed by guidance.form=authors (only "
                                   "form=segmenter works without one), got None"),
])
def test_each_bad_value_is_named(override, message):
    problems = predict_config_problems(load_config(PredictConfig, [], BASE + [override]))
    assert len(problems) == 1 and message in problems[0]


@pytest.mark.parametrize("uses", ["methods=[fk]", "sampling.zone=fk", "guidance.spatial_weight=2"])
def test_the_fk_prior_needs_a_tissue_contrast(uses):
    """The FK prior estimates tissue from t1n / t2w / t2f: with only t1c every way of using it is refused."""
    problems = predict_config_problems(load_config(PredictConfig, [], BASE + ["data.contrasts=[t1c]", "methods=[tgrowth]",
                                                                          uses]))
    why = {"methods=[fk]": "methods has fk", "sampling.zone=fk": "sampling.zone=fk",
           "guidance.spatial_weight=2": "guidance.spatial_weight > 0"}[uses]
    assert problems == [f"config key 'data.contrasts' must include one of t1n, t2w, t2f for the FK prior's tissue "
                        f"estimate ({why}), got ['t1c']"]
    assert predict_config_problems(load_config(PredictConfig, [], BASE + ["data.contrasts=[t1c]",
                                                                          "methods=[tgrowth]"])) == []


def test_config_constants_mirror_the_growth_module():
    """The schema does not import torch (fast --help): its copies of the FK constants must match tgrowth.growth,
    its clamp stages the sampler's, its schedule names the guidance module's."""
    from tgrowth.config.predict import CLIP_STAGES, FK_VISIBLE, SCALE_SCHEDULES, TISSUE_CONTRASTS
    from tgrowth.diffusion.guidance import SCALE_SCHEDULES as GUIDANCE_SCHEDULES
    from tgrowth.diffusion.sampler import CLIP_STAGES as SAMPLER_CLIP_STAGES
    from tgrowth.growth import VISIBLE_THRESHOLD
    from tgrowth.growth.tissue import TISSUE_CONTRASTS as GROWTH_TISSUE

    assert FK_VISIBLE == VISIBLE_THRESHOLD and set(TISSUE_CONTRASTS) == set(GROWTH_TISSUE)
    assert CLIP_STAGES == SAMPLER_CLIP_STAGES
    assert SCALE_SCHEDULES == tuple(GUIDANCE_SCHEDULES)


def test_defaults_are_valid_and_all_problems_come_in_one_message(tmp_path, capsys):
    assert predict_config_problems(load_config(PredictConfig, [], BASE)) == []
    no_regressor = [b for b in BASE if "regressor" not in b] + ["guidance.form=segmenter"]
    assert predict_config_problems(load_config(PredictConfig, [], no_regressor)) == []
    out = tmp_path / "run"
    rc = main(["predict", *BASE, f"output_dir={out}", "guidance.scale=nan", "sampling.noise_level=0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("tgrowth predict: error:") == 1
    assert "'guidance.scale' must be a finite number" in err and "'sampling.noise_level' must be >= 1" in err
    assert not out.exists()  # refused before the output folder is made, and before the models are read


def _variant(src: str, dst, drop: tuple[str, ...] = (), **meta_changes) -> str:
    """A model file like ``src`` with changed metadata, re-checksummed (a valid file, not a corrupted one)."""
    from tgrowth.diffusion.checkpoints import content_checksum

    blob = torch.load(src, weights_only=True)
    meta = {k: v for k, v in {**blob["meta"], **meta_changes}.items() if k not in drop}
    blob.update(meta=meta, checksum=content_checksum(blob["kind"], meta, blob["state_dict"]))
    torch.save(blob, dst)
    return str(dst)


def test_model_files_checked_against_the_config_before_any_subject(tiny_predict, tmp_path, capsys):
    root, models = tiny_predict

    def run(out, *extra, **files):
        m = {**models, **files}
        return main(["predict", "-c", "experiments/predict.yaml", *predict_overrides(root, m, tmp_path / out, *extra)])

    assert run("a", "sampling.noise_level=1001", "sampling.num_steps=10") == 2
    assert "config key 'sampling.noise_level' must be in 1..1000 (the denoiser's schedule), got 1001" in \
        capsys.readouterr().err
    den = _variant(models["denoiser"], tmp_path / "den_tmax.pt", train_t_max=300)
    assert run("b", "sampling.noise_level=400", denoiser=den) == 2
    assert "config key 'sampling.noise_level' is 400, above the denoiser's train_t_max 300" in capsys.readouterr().err
    reg = _variant(models["regressor"], tmp_path / "reg_cos.pt", schedule={"kind": "cosine", "num_steps": 1000},
                   labels=[1, 3])
    assert run("c", regressor=reg) == 2
    err = capsys.readouterr().err
    assert "the regressor " + reg + " was trained with the noise schedule {'kind': 'cosine'" in err
    assert "was trained on tumour labels [1, 3], but data.labels='whole' means [1, 2, 3]" in err
    noarea = _variant(models["regressor"], tmp_path / "reg_noarea.pt", drop=("area",))
    assert run("d", regressor=noarea) == 1
    assert "does not say what it outputs (meta 'area' with 'key' and 'scale')" in capsys.readouterr().err
    for out in "abcd":
        assert not (tmp_path / out / "SUB02").exists()
