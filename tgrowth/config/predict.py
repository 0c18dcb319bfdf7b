# ruff: noqa: UP045  (Optional[...] keeps `tgrowth <cmd> --help` printing "int?" like the base schemas)
"""Config schemas of `tgrowth predict`, `tgrowth sweep` and `tgrowth demo` (owned by the end-to-end work).

Every key has its help text here, so `tgrowth predict --help` documents it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import DictConfig

from tgrowth.config.base import RunConfig, TrainerConfig, WandbConfig, doc
from tgrowth.config.data import LongitudinalDataConfig
from tgrowth.config.ode import FitSettings
from tgrowth.errors import ConfigError

# the methods' names (their implementations: tgrowth.predict.methods), each with what it is
METHODS = {
    "tgrowth": "guided generations toward the growth ODE's forecast area (guidance.scale)",
    "unguided": "the same sampler without guidance (scale 0)",
    "oracle-area": "guided toward the TRUE follow-up area (what a perfect ODE would give)",
    "no-change": "the prior scan and its tumour as the forecast",
    "no-change-segmenter": "the prior scan, its tumour found by the learned segmenter",
    "segmenter-on-truth": "the learned segmenter on the real follow-up (the measurement floor; an oracle)",
    "grow-to-target": "the prior tumour grown along its signed distance to the ODE target area (no images)",
    "grow-to-truth": "the same to the true follow-up area (an oracle)",
    "fk": "the patient Fisher-Kolmogorov model (tissue from the prior scan, calibrated on the earlier scans) run to "
          "the ODE target area: its densest pixels, inside the brain (no images)",
    "fk-to-truth": "the same FK forecast at the TRUE follow-up size (an oracle: the FK shape with a perfect size "
                   "clock; oracle-area against it asks whether the generator adds shape beyond the FK prior)",
}
GUIDANCE_FORMS = ("authors", "loss", "x0", "x0_detached", "segmenter")
GUIDANCE_TARGETS = ("median", "bootstrap", "quantiles")
SPATIAL_TARGETS = ("median", "generation")
ENCODE_MODES = ("noise", "invert")
ZONES = ("isotropic", "fk")
CLIP_STAGES = ("step", "denoiser")  # tgrowth.diffusion.sampler.CLIP_STAGES
SCALE_SCHEDULES = ("constant", "sqrt_one_minus_abar", "one_minus_abar", "abar")  # tgrowth.diffusion.guidance
VOLUME_DISTRIBUTIONS = ("fk", "prior")
#: the FK model's visible threshold (tgrowth.growth.VISIBLE_THRESHOLD): a zone level must lie below it
FK_VISIBLE = 0.2
#: contrasts the tissue estimate of the FK prior can use (tgrowth.growth.tissue.TISSUE_CONTRASTS)
TISSUE_CONTRASTS = ("t1n", "t2w", "t2f")


@dataclass
class PredictDataConfig(LongitudinalDataConfig):
    """The longitudinal data section (data_modules) plus the slice choice of predict.

    ``contrasts`` and ``image_size`` must match the checkpoints (a mismatch is an error naming both).
    """

    slice: str = doc("largest_prior", "Axial slice when slice_index is null: largest_prior (largest tumour on the prior "
                     "scan's seg: known at prediction time), largest_target (on the real follow-up's seg), or an integer.")


@dataclass
class CheckpointsConfig:
    """Trained models (written by tgrowth train-denoiser|train-regressor|train-segmenter)."""

    denoiser: str = doc("???", "Denoiser checkpoint (.ckpt).")
    regressor: Optional[str] = doc(None, "Noisy tumour-area regressor model file (.pt); needed by every guidance.form "
                                   "except segmenter (which measures the tumour with the segmenter instead).")
    segmenter: str = doc("???", "Tumour segmenter checkpoint (.ckpt).")


@dataclass
class TargetConfig:
    """What to predict: a follow-up timepoint of the data set, or sizes at future days."""

    timepoint: Optional[str] = doc(None, "Target timepoint as in timeline.csv (e.g. '004'); None: the last one. "
                                   "The ODE is fitted on the timepoints before it; the one just before is the prior.")
    days: list[float] = doc([], "Days after the prior scan to predict at (e.g. [30,60,90]); when set, every "
                            "timepoint with a seg is used for the fit, no metrics, and a montage over time.")
    min_timepoints: int = doc(2, "Fewer usable timepoints (with a seg) before the target: the subject is skipped "
                              "with a reason (or fitted with the population prior if ode.population_prior=true).")


@dataclass
class GuidanceConfig:
    """Regressor guidance toward the ODE-forecast tumour area."""

    scale: float = doc(5.0e4, "Guidance scale in the authors' units: tumour area as a FRACTION of the slice "
                       "(0..1), whatever the regressor's output scaling (its model file says how to convert). "
                       "The authors use 5e4 to 2e5 at 256x256; the demo chooses its own on validation subjects.")
    target: str = doc("median", "Per-generation targets: median (ODE median for all N), bootstrap "
                      "(generation n uses bootstrap replicate n mod B of the ODE fit, so the ODE uncertainty reaches "
                      "the map; no resampling with replacement) or quantiles (generation n of N uses the (n + 0.5) / N "
                      "quantile of the replicates: the same uncertainty, stratified, so N generations cannot all "
                      "land in one tail by chance).")
    form: str = doc("authors", "Guidance term: authors (regressor on x_t: (target - pred) * grad pred), loss (grad of "
                    "0.5 (target-pred)^2), x0 (regressor on the denoiser's x0 prediction, differentiated through the "
                    "denoiser), x0_detached (the same with eps held fixed: no denoiser backward pass) or segmenter (the "
                    "trained segmenter's soft tumour area on the x0 prediction, eps held fixed; the regressor is not "
                    "used); as tgrowth.diffusion.guidance.AreaGuidance / SoftArea.")
    segmenter_temperature: float = doc(1.0, "form=segmenter: the soft area is sigmoid(logit / temperature); > 1 gives "
                                       "gradients further from the tumour boundary.")
    high_noise_boost: float = doc(0.15, "Raise the target by this fraction at high noise (authors: 15 %).")
    boost_above_t: int = doc(20, "Apply high_noise_boost while t > this step (authors: 20).")
    spatial_weight: float = doc(0.0, "Spatial guidance toward the patient Fisher-Kolmogorov forecast (0: off): eps += "
                                "w sqrt(1-abar) grad 0.5 mean_p (s - m)^2, s the segmenter's soft mask "
                                "(segmenter_temperature) on the x0 prediction, m the fk method's mask at the arm's "
                                "target (tgrowth.diffusion.guidance.SpatialGuidance); composes with the area "
                                "guidance; same units as scale. Not applied to unguided nor to a prior slice without "
                                "tumour.")
    spatial_tolerance: float = doc(0.0, "Spatial guidance: per-pixel errors |s - m| up to this are not pushed "
                                   "(the loss is 0.5 relu(|s - m| - tolerance)^2; 0: the squared error). Just under "
                                   "0.5 pushes only the pixels the segmenter puts on the wrong side of the FK mask.")
    spatial_target: str = doc("median", "3D spatial guidance: the FK mask each generation is steered toward: median "
                              "(the fk method's mask at the ODE's median target, every generation) or generation "
                              "(the FK mask at generation g's own size target of guidance.target, so the area and "
                              "the spatial guidance ask for the same tumour; the slice targets and the FK-filled "
                              "slices then follow each generation's mask too). volume: true only.")
    spatial_schedule: str = doc("constant", "Spatial guidance: the weight times f(t, abar_t), one of "
                                "tgrowth.diffusion.guidance.SCALE_SCHEDULES (one_minus_abar: strong at high noise, "
                                "vanishing as the image gets clean).")


@dataclass
class SamplingConfig:
    """Known-image DDIM sampling from the prior scan and the probability map."""

    num_generations: int = doc(50, "N generations per subject and method (authors: 50 to 100); batched.")
    noise_level: int = doc(200, "L: encode the prior scan to step L (of the schedule's T) and denoise back.")
    num_steps: Optional[int] = doc(None, "DDIM steps from L to 0 (None: L steps, no respacing).")
    eta: float = doc(0.0, "DDIM eta (0: deterministic steps).")
    encode: str = doc("noise", "How the prior is brought to step L: noise (stochastic q-sample, distinct "
                      "generations) or invert (deterministic DDIM inversion).")
    invert_order: int = doc(2, "encode=invert: 1 = plain DDIM inversion (the authors'), 2 = eps extrapolated in "
                            "log-SNR (same model calls, 5-20x smaller round-trip error).")
    invert_refine_iters: int = doc(0, "encode=invert: fixed-point refinements per inversion step (each one more "
                                   "model call per step; 1 makes inversion + eta=0 sampling near exact).")
    batch_size: int = doc(64, "Generations per forward pass (all methods and targets share batches).")
    threshold: float = doc(0.5, "Probability-map threshold for Dice / HD95 / area.")
    preserve_anatomy: bool = doc(False, "Anatomy-preserving sampling: only the change zone (see zone: by default the "
                                 "prior tumour dilated by the radial growth of the ODE's 95th-percentile forecast plus "
                                 "zone_margin_mm, inside the brain) is generated; elsewhere every step is the prior on its "
                                 "own noise trajectory, so the output equals the prior scan there.")
    zone_margin_mm: float = doc(6.0, "Change zone: margin (mm) added to the radial growth of the ODE's upper band.")
    zone_edge_mm: float = doc(4.0, "Change zone: width (mm) of the soft blend between generated and kept pixels.")
    zone: str = doc("isotropic", "Change zone shape: isotropic (the prior tumour dilated by the radial growth of the "
                    "ODE's upper band + zone_margin_mm) or fk (where the patient Fisher-Kolmogorov forecast at the "
                    "same upper-band size exceeds zone_fk_level, with the prior tumour, inside the brain; "
                    "zone_margin_mm unused); the same soft edge zone_edge_mm.")
    keep_prior_holes: bool = doc(False, "Tumour-free pixels enclosed by the prior tumour (its holes; on the phantom, CSF "
                                 "spaces the tumour surrounds but cannot infiltrate) stay tumour-free: left out of "
                                 "every method's tumour mask (generated, segmenter and geometric rows alike) and, "
                                 "with preserve_anatomy, kept from the prior scan.")
    clip_denoised: Optional[float] = doc(None, "Clamp the denoiser's x0 prediction to [-c, c] at every step (images "
                                         "are in [-1, 1]: 1.0 stops strong guidance from driving a sample out of "
                                         "range); None: no clamp (the authors').")
    clip_stage: str = doc("step", "Where clip_denoised clamps: step (the x0 of each DDIM step, after guidance, as "
                          "guided-diffusion; the clamp can take back part of a guidance step) or denoiser (the "
                          "denoiser's own x0 prediction, before guidance, whose step is then kept as it is).")
    zone_fk_level: float = doc(0.05, "zone=fk: tumour-cell density level (0 < level < 0.2, the FK model's visible "
                               "threshold) bounding the zone: lower reaches further beyond the forecast tumour.")
    map_connected: bool = doc(False, "Every method's probability map is kept only on the connected parts of its "
                              "support (prob > 0; face-connected, across slices in 3D) that touch the prior tumour: "
                              "the ODE x FK forecast is one front grown from it, and a part apart from it is the "
                              "segmenter's false positive on the prior's anatomy (tgrowth.growth.geometry.connected_to).")


@dataclass
class PredictConfig(RunConfig):
    """`tgrowth predict`: ODE forecast + guided diffusion -> probability maps, predicted images, metrics."""

    data: PredictDataConfig = doc(PredictDataConfig(), "Input data set and slices.")
    checkpoints: CheckpointsConfig = doc(CheckpointsConfig(), "Trained models.")
    ode: FitSettings = doc(FitSettings(), "Growth ODE fit (same keys as `tgrowth fit-ode`'s fit section).")
    target: TargetConfig = doc(TargetConfig(), "What to predict.")
    guidance: GuidanceConfig = doc(GuidanceConfig(), "Regressor guidance.")
    sampling: SamplingConfig = doc(SamplingConfig(), "DDIM sampling and probability maps.")
    methods: list[str] = doc(list(METHODS), "Methods in metrics.csv, all on the same subjects and slices: "
                             + "; ".join(f"{k} ({v})" for k, v in METHODS.items()) + ".")
    volume: bool = doc(False, "3D prediction: every axial slice holding tumour on the prior scan (the range from the "
                       "first to the last, plus volume_margin_slices each side) is generated in one batched pass "
                       "(slices x generations); the growth ODE is fitted to tumour VOLUMES (mm^3) and each slice's "
                       "guidance target is the ODE volume distributed over the slices (volume_distribution); maps "
                       "and 3D metrics (dice_3d, hd95_3d, volume_error_vs_truth) in the input geometry "
                       "(docs/predict.md, '3D prediction'). Not with target.days nor data.slice_index.")
    volume_margin_slices: int = doc(1, "volume=true: extra axial slices generated above and below the prior tumour.")
    volume_fill_slices: int = doc(0, "volume=true: up to this many further axial slices each side, beyond the generated "
                                  "ones (no prior tumour there, so the guidance has no gradient to start a tumour), "
                                  "are predicted by the 3D FK forecast instead: each guided method's map there is the "
                                  "fk method's mask at its own target volume (the ODE's, or the true one for "
                                  "oracle-area; unguided: no tumour), its image the prior. The FK model, the slice "
                                  "shares of the volume and the baselines then cover the whole stack. 0: off.")
    volume_distribution: str = doc("fk", "volume=true: how the ODE's volume is split into per-slice target areas: fk "
                                   "(the slices' shares of the patient Fisher-Kolmogorov forecast, run in 3D on the "
                                   "generated slices to the ODE's median volume) or prior (the prior tumour's slice "
                                   "areas scaled by the ODE's volume ratio: margin slices get no tumour).")
    num_threads: Optional[int] = doc(None, "torch intra-op CPU threads (None: torch's default; 1 is fastest for tiny "
                                     "models on a busy 2-core machine).")
    resume: bool = doc(False, "Continue an interrupted run in output_dir: finished subjects are kept, not redone.")
    plots: bool = doc(True, "Write the PNG panel, growth curve and montage per subject.")
    method_maps: bool = doc(False, "Also write every method's tumour probability map (the baselines' are 0/1 masks) "
                            "as methods/<method>.nii.gz per subject, in the input geometry (info.json files.methods), "
                            "to compare methods in a viewer or score them again without re-running.")
    trainer: TrainerConfig = doc(TrainerConfig(), "Devices: predict splits subjects across ranks "
                                 "(accelerator, devices, strategy, num_nodes, precision are used).")
    wandb: WandbConfig = doc(WandbConfig(), "Experiment tracking (offline by default).")


# --------------------------------------------------------------------------- sweep
@dataclass
class SweepMetricConfig:
    """wandb sweep metric."""

    name: str = doc("predict/hd95", "Metric the sweep optimises (a summary key of the predict run).")
    goal: str = doc("minimize", "minimize or maximize.")


@dataclass
class SweepConfig(RunConfig):
    """`tgrowth sweep`: the wandb sweep file, run locally (no wandb server) with guidance scales batched.

    The same YAML works with `wandb sweep FILE` + `wandb agent ID`: wandb reads program/method/metric/
    parameters/command; the local runner reads the `-c` files of `command` as the predict base config,
    the parameters with `value` as fixed overrides and those with `values` as the grid.
    """

    program: str = doc("tgrowth", "wandb: the program (the command below names the real invocation).")
    name: Optional[str] = doc(None, "wandb: sweep name.")
    description: Optional[str] = doc(None, "wandb: sweep description.")
    project: Optional[str] = doc(None, "wandb: project of the sweep (local runs use wandb.project).")
    method: str = doc("grid", "Search method; the local runner supports grid.")
    metric: SweepMetricConfig = doc(SweepMetricConfig(), "Metric to optimise.")
    # Any, not dict[str, Any]: OmegaConf 2.4 refuses new keys in a struct Dict node, even an open one
    parameters: Any = doc(None, "wandb parameters: {key: {values: [...]}} (grid axes) or {key: {value: x}} "
                                     "(fixed); keys are predict config keys, e.g. guidance.scale, sampling.noise_level.")
    command: list[str] = doc(["${env}", "${interpreter}", "-m", "tgrowth", "predict", "-c", "experiments/predict.yaml",
                              "${args_no_hyphens}"], "wandb agent command; its -c files are the predict base config.")
    # wandb's command macros: the agent substitutes them; locally they resolve to these placeholders (OmegaConf
    # reads ${env} as an interpolation, so the keys must exist for the file to load)
    env: str = doc("/usr/bin/env", "wandb command macro ${env} (placeholder; filled in by wandb agent).")
    interpreter: str = doc("python", "wandb command macro ${interpreter} (placeholder).")
    args: str = doc("", "wandb command macro ${args} (placeholder).")
    args_no_hyphens: str = doc("", "wandb command macro ${args_no_hyphens}: the grid point's key=value overrides (placeholder).")
    args_no_boolean_flags: str = doc("", "wandb command macro ${args_no_boolean_flags} (placeholder).")
    args_json: str = doc("", "wandb command macro ${args_json} (placeholder).")
    args_json_file: str = doc("", "wandb command macro ${args_json_file} (placeholder).")
    scale_key: str = doc("guidance.scale", "Grid axis batched into one sampling pass (per-sample scales).")
    split: str = doc("val", "Subjects the sweep tunes on (data.split of every grid point; a data.split parameter or "
                     "override wins). Tune on validation subjects, report on test subjects: test is refused unless "
                     "allow_test=true.")
    allow_test: bool = doc(False, "Allow a sweep on the test split (a sweep chooses settings: doing so on test subjects "
                           "makes their results optimistic).")
    overrides: list[str] = doc([], "Local runner only: extra predict key=value overrides (e.g. data.root=...).")
    trainer: TrainerConfig = doc(TrainerConfig(), "Devices for the local predict runs.")
    wandb: WandbConfig = doc(WandbConfig(), "Tracking of the local sweep (one run with a table and plot).")


# --------------------------------------------------------------------------- demo / pipelines
@dataclass
class StageConfig:
    """One pipeline stage: a tgrowth command with its YAML files and overrides."""

    enabled: bool = doc(True, "Run this stage.")
    configs: list[str] = doc([], "Experiment YAMLs for the stage's command (relative to the repository root or absolute).")
    overrides: list[str] = doc([], "key=value overrides for the stage (data.root / output_dir are set by the pipeline).")
    skip_if_done: bool = doc(True, "Reuse the stage's outputs when they already exist (rerunning the demo is quick).")


@dataclass
class DemoConfig(RunConfig):
    """`tgrowth demo`: synthetic data -> tiny denoiser/regressor/segmenter -> predict -> metrics table.

    Stages write into output_dir: data/, denoiser/, regressor/, segmenter/, predict/. A pipeline config for
    real data (e.g. experiments/paper_brats2d.yaml) disables synth and names train_root / predict_root.
    """

    train_root: Optional[str] = doc(None, "Training data root (None: the synthetic data set of the synth stage).")
    predict_root: Optional[str] = doc(None, "Longitudinal root to predict (None: the synthetic data set).")
    synth: StageConfig = doc(StageConfig(configs=["experiments/synth_demo.yaml"]), "tgrowth synth stage.")
    denoiser: StageConfig = doc(StageConfig(configs=["experiments/models/denoiser_tiny.yaml"]), "tgrowth train-denoiser stage.")
    regressor: StageConfig = doc(StageConfig(configs=["experiments/models/regressor_tiny.yaml"]), "tgrowth train-regressor stage.")
    segmenter: StageConfig = doc(StageConfig(configs=["experiments/models/segmenter_tiny.yaml"]), "tgrowth train-segmenter stage.")
    predict: StageConfig = doc(StageConfig(configs=["experiments/predict.yaml"], skip_if_done=False), "tgrowth predict stage.")
    wandb: WandbConfig = doc(WandbConfig(), "Tracking (mode, enabled, project) passed to every stage; offline by default.")


# --------------------------------------------------------------------------- validation
def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def predict_config_problems(cfg: DictConfig) -> list[str]:
    """Every value of a predict config that cannot work, as ``config key 'k' ...`` messages (no models needed).

    The checks that need the model files (noise level against the schedule and ``train_t_max``, the regressor's
    schedule and label set) are in :func:`tgrowth.predict.models.check_models`.
    """
    out: list[str] = []

    def bad(key: str, why: str, value: Any) -> None:
        out.append(f"config key '{key}' {why}, got {value!r}")

    g, s = cfg.guidance, cfg.sampling
    if not _finite(g.scale) or float(g.scale) < 0:
        bad("guidance.scale", "must be a finite number >= 0", g.scale)
    if str(g.form) not in GUIDANCE_FORMS:
        bad("guidance.form", f"must be one of {', '.join(GUIDANCE_FORMS)}", g.form)
    if str(g.form) in GUIDANCE_FORMS and str(g.form) != "segmenter" and not cfg.checkpoints.regressor:
        bad("checkpoints.regressor", f"is needed by guidance.form={g.form} (only form=segmenter works without one)",
            cfg.checkpoints.regressor)
    if str(g.target) not in GUIDANCE_TARGETS:
        bad("guidance.target", f"must be one of {', '.join(GUIDANCE_TARGETS)}", g.target)
    if not _finite(g.segmenter_temperature) or float(g.segmenter_temperature) <= 0:
        bad("guidance.segmenter_temperature", "must be a finite number > 0", g.segmenter_temperature)
    if not _finite(g.high_noise_boost) or float(g.high_noise_boost) <= -1:
        bad("guidance.high_noise_boost", "must be a finite number > -1", g.high_noise_boost)
    if int(s.num_generations) < 1:
        bad("sampling.num_generations", "must be >= 1", s.num_generations)
    if int(s.batch_size) < 1:
        bad("sampling.batch_size", "must be >= 1", s.batch_size)
    if int(s.noise_level) < 1:
        bad("sampling.noise_level", "must be >= 1 (a step of the noise schedule)", s.noise_level)
    if s.num_steps is not None and not 1 <= int(s.num_steps) <= max(1, int(s.noise_level)):
        bad("sampling.num_steps", f"must be in 1..sampling.noise_level ({s.noise_level}) or null", s.num_steps)
    if not _finite(s.eta) or float(s.eta) < 0:
        bad("sampling.eta", "must be a finite number >= 0", s.eta)
    if not _finite(s.threshold) or not 0 < float(s.threshold) < 1:
        bad("sampling.threshold", "must be strictly between 0 and 1", s.threshold)
    if str(s.encode) not in ENCODE_MODES:
        bad("sampling.encode", f"must be one of {', '.join(ENCODE_MODES)}", s.encode)
    if int(s.invert_order) not in (1, 2):
        bad("sampling.invert_order", "must be 1 or 2", s.invert_order)
    if int(s.invert_refine_iters) < 0:
        bad("sampling.invert_refine_iters", "must be >= 0", s.invert_refine_iters)
    for key in ("zone_margin_mm", "zone_edge_mm"):
        if not _finite(s[key]) or float(s[key]) < 0:
            bad(f"sampling.{key}", "must be a finite number >= 0", s[key])
    if s.clip_denoised is not None and (not _finite(s.clip_denoised) or float(s.clip_denoised) <= 0):
        bad("sampling.clip_denoised", "must be a finite number > 0 (or null: no clamp)", s.clip_denoised)
    if str(s.clip_stage) not in CLIP_STAGES:
        bad("sampling.clip_stage", f"must be one of {', '.join(CLIP_STAGES)}", s.clip_stage)
    if str(s.zone) not in ZONES:
        bad("sampling.zone", f"must be one of {', '.join(ZONES)}", s.zone)
    if not _finite(s.zone_fk_level) or not 0 < float(s.zone_fk_level) < FK_VISIBLE:
        bad("sampling.zone_fk_level", f"must be strictly between 0 and {FK_VISIBLE} (the FK model's visible "
            "threshold)", s.zone_fk_level)
    if not _finite(g.spatial_weight) or float(g.spatial_weight) < 0:
        bad("guidance.spatial_weight", "must be a finite number >= 0", g.spatial_weight)
    if not _finite(g.spatial_tolerance) or not 0 <= float(g.spatial_tolerance) < 1:
        bad("guidance.spatial_tolerance", "must be in [0, 1)", g.spatial_tolerance)
    if str(g.spatial_target) not in SPATIAL_TARGETS:
        bad("guidance.spatial_target", f"must be one of {', '.join(SPATIAL_TARGETS)}", g.spatial_target)
    elif str(g.spatial_target) != "median" and not cfg.volume:
        bad("guidance.spatial_target", "other than median needs volume: true (a 3D option; in 2D the mask is the "
            "median's)", g.spatial_target)
    if str(g.spatial_schedule) not in SCALE_SCHEDULES:
        bad("guidance.spatial_schedule", f"must be one of {', '.join(SCALE_SCHEDULES)}", g.spatial_schedule)
    methods = [str(m) for m in cfg.methods]
    if not methods:
        bad("methods", f"must name at least one of {', '.join(METHODS)}", methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        bad("methods", f"has unknown method(s) {unknown}; choose from {', '.join(METHODS)}", methods)
    if len(set(methods)) != len(methods):
        bad("methods", "lists a method twice", methods)
    uses_fk = [why for why, on in (("methods has fk", "fk" in methods), ("sampling.zone=fk", str(s.zone) == "fk"),
                                   ("guidance.spatial_weight > 0", _finite(g.spatial_weight)
                                    and float(g.spatial_weight) > 0)) if on]
    if uses_fk and not any(str(c) in TISSUE_CONTRASTS for c in cfg.data.contrasts):
        bad("data.contrasts", f"must include one of {', '.join(TISSUE_CONTRASTS)} for the FK prior's tissue estimate "
            f"({'; '.join(uses_fk)})", list(cfg.data.contrasts))
    out += _volume_problems(cfg)
    if int(cfg.target.min_timepoints) < 1:
        bad("target.min_timepoints", "must be >= 1", cfg.target.min_timepoints)
    if any(not _finite(d) or float(d) <= 0 for d in cfg.target.days):
        bad("target.days", "must be positive numbers of days after the prior scan", list(cfg.target.days))
    return out


def _volume_problems(cfg: DictConfig) -> list[str]:
    """The ``volume`` keys' problems (none when volume is false: the keys are then unused)."""
    if int(cfg.volume_margin_slices) < 0:
        return [f"config key 'volume_margin_slices' must be >= 0, got {cfg.volume_margin_slices!r}"]
    if int(cfg.volume_fill_slices) < 0:
        return [f"config key 'volume_fill_slices' must be >= 0, got {cfg.volume_fill_slices!r}"]
    if str(cfg.volume_distribution) not in VOLUME_DISTRIBUTIONS:
        return [f"config key 'volume_distribution' must be one of {', '.join(VOLUME_DISTRIBUTIONS)}, "
                f"got {cfg.volume_distribution!r}"]
    if not cfg.volume:
        return []
    out = []
    if list(cfg.target.days):
        out.append(f"config key 'target.days' is not supported with volume=true (3D prediction needs a real "
                   f"follow-up timepoint), got {list(cfg.target.days)!r}")
    if cfg.data.slice_index is not None:
        out.append(f"config key 'data.slice_index' picks one slice, but volume=true generates every tumour slice: "
                   f"set it to null, got {cfg.data.slice_index!r}")
    if cfg.sampling.keep_prior_holes:
        out.append("config key 'sampling.keep_prior_holes' is 2D only for now: set it to false with volume=true")
    fk_keys = [k for k, on in (("volume_distribution=fk", str(cfg.volume_distribution) == "fk"),
                               ("volume_fill_slices > 0", int(cfg.volume_fill_slices) > 0)) if on]
    if fk_keys and not any(str(c) in TISSUE_CONTRASTS for c in cfg.data.contrasts):
        out.append(f"config key 'data.contrasts' must include one of {', '.join(TISSUE_CONTRASTS)} for "
                   f"{' and '.join(fk_keys)} (the FK model's tissue estimate), got {list(cfg.data.contrasts)!r}")
    return out


def check_predict_config(cfg: DictConfig) -> None:
    """Raise one :class:`ConfigError` listing every problem of :func:`predict_config_problems`."""
    problems = predict_config_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
