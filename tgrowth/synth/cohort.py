"""Cohort generation: draw subjects, simulate growth, render, write the longitudinal format.

``generate_cohort(cfg_or_kwargs) -> dict`` is the Python API (``tgrowth synth`` calls it). Written under
``output_dir``:

- ``timeline.csv``: ``subject,timepoint,day,rt_start_day,rt_end_day`` (days since the first scan;
  ``rt_*`` the same on every row of a subject, empty when the subject has no RT);
- ``<SUBJECT>-<TP>/<SUBJECT>-<TP>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (TP = 000, 001, ... in time order; int16
  images, uint8 BraTS labels, RAS affine with the real voxel size in mm);
- ``splits.csv``: ``subject,split`` (train/val/test);
- ``ground_truth.csv``: one row per scan with the subject's drawn parameters and the volumes measured
  on the written segmentation (whole tumour, core, enhancing, necrosis, oedema), the largest axial area,
  and the simulated tumour-cell volume (sum of cell density x voxel volume);
- ``montage.png`` (one subject over time), ``summary.json``, ``config.yaml``.

Every random draw of subject ``i`` comes from ``numpy.random.SeedSequence([seed, i])`` (and torch
generators seeded from it), and the simulation step does not depend on the batch, so the same seed gives
byte-identical arrays, and a subject's data do not depend on ``n_subjects`` or ``batch_size``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_modules.splits import ratio_split
from tgrowth.errors import ConfigError
from tgrowth.growth.fk import gaussian_blur, pregrowth_days_per_step, stable_steps_per_day
from tgrowth.synth import anatomy as A
from tgrowth.synth.growth import Schedule, simulate
from tgrowth.synth.render import render, smooth_noise
from tgrowth.vocab import CONTRASTS, LABEL_SETS

#: seed regions in (approximately) MNI mm: centre and half extent; midline ones mimic paediatric DMG
MIDLINE_REGIONS = {
    "pons": ((0.0, -26.0, -32.0), (5.0, 6.0, 7.0)),
    "thalamus": ((0.0, -16.0, 6.0), (14.0, 6.0, 4.0)),
}
OEDEMA_SIGMA_MAX_MM = 5.0
MASS_SIGMA_MM = 8.0  # smoothing of the tumour burden whose gradient displaces tissue (mass effect)
HEMISPHERIC_BOX = ((20.0, 45.0), (-60.0, 30.0), (0.0, 42.0))  # |x|, y, z ranges
ANISOTROPY_STREAM = 7919  # third SeedSequence entry of the anisotropy draws (growth.anisotropy)


# --------------------------------------------------------------------------- config
def _as_config(cfg: Any = None, **kwargs: Any):
    """A validated SynthConfig DictConfig from a DictConfig, a SynthConfig, a dict or a YAML path, and keyword overrides."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from tgrowth.config.base import _check_keys
    from tgrowth.config.synth import SynthConfig

    if isinstance(cfg, (str, Path)):  # a YAML file (with its extends: bases)
        from tgrowth.config.base import load_config

        cfg = load_config(SynthConfig, [str(cfg)])
    base = OmegaConf.structured(SynthConfig)
    OmegaConf.set_struct(base, True)
    extra = None
    if kwargs:  # keyword overrides; dotted keys ("growth.rho_per_day") reach into sections
        extra = OmegaConf.create({})
        for key, value in kwargs.items():
            OmegaConf.update(extra, key, value, force_add=True)
    for source, data in (("config", cfg), ("arguments", extra)):
        if data is None:
            continue
        if isinstance(data, DictConfig):
            node = data
        elif isinstance(data, dict):
            node = OmegaConf.create(data)
        else:
            node = OmegaConf.structured(data)
        _check_keys(base, node, source)
        try:
            base = OmegaConf.merge(base, node)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{source}: invalid value for config key '{getattr(exc, 'full_key', '?')}': {str(exc).splitlines()[0]}") from exc
    validate(base)
    return base


def _range(cfg: Any, key: str, positive: bool = True, integer: bool = False) -> tuple[float, float]:
    node = cfg
    for part in key.split("."):
        node = node[part]
    vals = list(node)
    if len(vals) != 2:
        raise ConfigError(f"config key '{key}' must be a [low, high] pair, got {vals}")
    lo, hi = vals
    if lo > hi:
        raise ConfigError(f"config key '{key}': low {lo} is above high {hi}")
    if positive and lo <= 0:
        raise ConfigError(f"config key '{key}' must be positive, got {vals}")
    if not positive and lo < 0:
        raise ConfigError(f"config key '{key}' must not be negative, got {vals}")
    return lo, hi


def validate(cfg: Any) -> None:
    """Raise ConfigError naming the key for any value the phantom cannot use."""
    if cfg.n_subjects < 1:
        raise ConfigError(f"config key 'n_subjects' must be at least 1, got {cfg.n_subjects}")
    if cfg.n_timepoints < 2:
        raise ConfigError(f"config key 'n_timepoints' must be at least 2 (a longitudinal set), got {cfg.n_timepoints}")
    if cfg.n_timepoints > 999:
        raise ConfigError(f"config key 'n_timepoints' must be at most 999 (TP has 3 digits), got {cfg.n_timepoints}")
    for key in ("voxel_mm", "sim_box_mm"):
        if not cfg[key] > 0:
            raise ConfigError(f"config key '{key}' must be > 0 mm, got {cfg[key]}")
    for key in ("slice_thickness_mm", "sim_voxel_mm"):
        if cfg[key] is not None and not cfg[key] > 0:
            raise ConfigError(f"config key '{key}' must be > 0 mm (or null), got {cfg[key]}")
    if cfg.voxel_mm > 16 or (cfg.slice_thickness_mm or 0) > 16:
        raise ConfigError(f"config key 'voxel_mm'/'slice_thickness_mm' must be at most 16 mm, got {cfg.voxel_mm}/{cfg.slice_thickness_mm}")
    sim = _sim_voxel(cfg)
    if cfg.sim_box_mm < 8 * sim:
        raise ConfigError(f"config key 'sim_box_mm' ({cfg.sim_box_mm}) must span at least 8 simulation voxels of {sim} mm")
    if cfg.batch_size < 1:
        raise ConfigError(f"config key 'batch_size' must be at least 1, got {cfg.batch_size}")
    if not 0.0 <= cfg.midline_fraction <= 1.0:
        raise ConfigError(f"config key 'midline_fraction' must be in [0, 1], got {cfg.midline_fraction}")
    if not 0.0 <= cfg.rt.fraction_of_subjects <= 1.0:
        raise ConfigError(f"config key 'rt.fraction_of_subjects' must be in [0, 1], got {cfg.rt.fraction_of_subjects}")
    fr = list(cfg.split_fractions)
    if len(fr) != 3 or any(f < 0 for f in fr) or sum(fr) <= 0:
        raise ConfigError(f"config key 'split_fractions' must be three non-negative train/val/test fractions, got {fr}")
    if not cfg.subject_prefix or any(c in cfg.subject_prefix for c in "/\\ ,"):
        raise ConfigError(f"config key 'subject_prefix' must be a non-empty name without '/', spaces or commas, got {cfg.subject_prefix!r}")
    if cfg.growth.mass_effect < 0 or cfg.growth.mass_effect > 3:
        raise ConfigError(f"config key 'growth.mass_effect' must be in [0, 3], got {cfg.growth.mass_effect}")
    if cfg.growth.heterogeneity < 0 or cfg.growth.heterogeneity > 2:
        raise ConfigError(f"config key 'growth.heterogeneity' must be in [0, 2], got {cfg.growth.heterogeneity}")
    for key in ("growth.d_white_mm2_per_day", "growth.grey_white_ratio", "growth.rho_per_day", "growth.alpha_per_gy",
                "growth.damage_clearance_days", "growth.initial_volume_ml", "imaging.noise_level"):
        _range(cfg, key)
    for key in ("imaging.bias_strength", "rt.start_delay_days", "schedule.pre_rt_gap_days",
                "schedule.post_rt_first_days", "schedule.post_rt_gap_days"):
        _range(cfg, key, positive=False)
    for key in ("schedule.pre_rt_gap_days", "schedule.post_rt_gap_days"):
        if _range(cfg, key, positive=False)[0] < 1:
            raise ConfigError(f"config key '{key}' must be at least 1 day (days strictly increase), got {list(cfg.schedule[key.split('.')[1]])}")
    if _range(cfg, "growth.anisotropy")[0] < 1:
        raise ConfigError(f"config key 'growth.anisotropy' must be a ratio range with low >= 1 (along / across the drawn axis), got {list(cfg.growth.anisotropy)}")
    if cfg.growth.anisotropy[1] > 20:
        raise ConfigError(f"config key 'growth.anisotropy' must be at most 20, got {list(cfg.growth.anisotropy)}")
    if cfg.growth.grey_white_ratio[1] > 1:
        raise ConfigError(f"config key 'growth.grey_white_ratio' must be at most 1 (white matter diffuses faster), got {list(cfg.growth.grey_white_ratio)}")
    if not 1 <= cfg.schedule.pre_rt_scans < cfg.n_timepoints:
        raise ConfigError(f"config key 'schedule.pre_rt_scans' must be >= 1 and < n_timepoints ({cfg.n_timepoints}), got {cfg.schedule.pre_rt_scans}")
    if cfg.rt.n_fractions < 1 or cfg.rt.fractions_per_week < 1 or cfg.rt.fractions_per_week > 7:
        raise ConfigError("config keys 'rt.n_fractions' (>= 1) and 'rt.fractions_per_week' (1..7) are out of range")
    if cfg.rt.dose_per_fraction_gy < 0 or cfg.rt.alpha_beta_gy <= 0 or cfg.rt.margin_mm < 0:
        raise ConfigError("config keys 'rt.dose_per_fraction_gy' (>= 0), 'rt.alpha_beta_gy' (> 0), 'rt.margin_mm' (>= 0) are out of range")
    if cfg.growth.max_pregrowth_days < 1:
        raise ConfigError(f"config key 'growth.max_pregrowth_days' must be at least 1, got {cfg.growth.max_pregrowth_days}")
    if not 1 <= cfg.montage_subject <= cfg.n_subjects:
        raise ConfigError(f"config key 'montage_subject' must be between 1 and n_subjects ({cfg.n_subjects}), got {cfg.montage_subject}")
    try:
        dev = torch.device(cfg.device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"config key 'device' is not a torch device: {cfg.device!r} ({exc})") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' is {cfg.device!r} but CUDA is not available here (use device=cpu)")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"config key 'threads' must be at least 1 (or null), got {cfg.threads}")


def _sim_voxel(cfg: Any) -> float:
    return float(cfg.sim_voxel_mm) if cfg.sim_voxel_mm is not None else max(float(cfg.voxel_mm), 2.0)


# --------------------------------------------------------------------------- per-subject draws
@dataclass
class SubjectDraw:
    subject: str
    index: int
    kind: str  # midline / hemispheric
    region: str
    side: float  # +1 right, -1 left (hemispheric)
    params: dict[str, float]
    schedule: Schedule
    rt_start_day: int | None
    rt_end_day: int | None
    warp: dict[str, Any]
    imaging: dict[str, Any]
    rng: np.random.Generator  # for the seed location (drawn after the anatomy is known)
    torch_seed: int


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _fraction_days(start: int, n: int, per_week: int) -> list[int]:
    return [start + 7 * (k // per_week) + (k % per_week) for k in range(n)]


def anisotropic(cfg: Any) -> bool:
    """Whether ``growth.anisotropy`` asks for anisotropic spread (anything but the default ``[1, 1]``)."""
    return float(cfg.growth.anisotropy[1]) > 1.0


def axis_scale(draws: list[SubjectDraw]) -> torch.Tensor:
    """``[B, 3]`` diffusion factors per simulation axis: the drawn ratio on each subject's axis, 1 elsewhere."""
    out = torch.ones(len(draws), 3)
    for i, d in enumerate(draws):
        out[i, d.params["anisotropy_axis"]] = d.params["anisotropy"]
    return out


def draw_subject(cfg: Any, index: int, lattice: tuple[int, int, int], sim_voxel: float) -> SubjectDraw:
    ss = np.random.SeedSequence([int(cfg.seed), index])
    rng = np.random.default_rng(ss)
    g, rt, sch, im = cfg.growth, cfg.rt, cfg.schedule, cfg.imaging
    midline = rng.uniform() < cfg.midline_fraction
    if midline:
        region = "pons" if rng.uniform() < 0.7 else "thalamus"
        side = 0.0
    else:
        region = "hemispheric"
        side = 1.0 if rng.uniform() < 0.5 else -1.0
    d_white = _loguniform(rng, *g.d_white_mm2_per_day)
    params = {
        "d_white": d_white,
        "d_grey": d_white * float(rng.uniform(*g.grey_white_ratio)),
        "rho": _loguniform(rng, *g.rho_per_day),
        "alpha": float(rng.uniform(*g.alpha_per_gy)),
        "k_clear": 1.0 / float(rng.uniform(*g.damage_clearance_days)),
        # midline (DMG-like): little necrosis and enhancement; hemispheric high-grade: necrotic core, ring
        "k_nec": float(rng.uniform(0.0, 0.004) if midline else rng.uniform(0.015, 0.05)),
        "enh_threshold": float(rng.uniform(0.85, 0.97) if midline else rng.uniform(0.5, 0.7)),
        "oedema_sigma_mm": float(rng.uniform(2.0, OEDEMA_SIGMA_MAX_MM)),
        "pseudo_progression": float(rng.uniform(1.0, 2.5)),
        "initial_volume_ml": float(rng.uniform(*g.initial_volume_ml)),
        "mass_effect": float(rng.uniform(0.3, 1.0)),
    }
    params["beta"] = params["alpha"] / float(rt.alpha_beta_gy)
    # scan schedule
    gets_rt = rng.uniform() < rt.fraction_of_subjects
    n_pre = int(sch.pre_rt_scans)
    days = [0]
    for _ in range(n_pre - 1):
        days.append(days[-1] + int(rng.integers(sch.pre_rt_gap_days[0], sch.pre_rt_gap_days[1] + 1)))
    fraction_days: list[int] = []
    rt_start = rt_end = None
    if gets_rt:
        rt_start = days[-1] + int(rng.integers(rt.start_delay_days[0], rt.start_delay_days[1] + 1))
        fraction_days = _fraction_days(rt_start, int(rt.n_fractions), int(rt.fractions_per_week))
        rt_end = fraction_days[-1]
        days.append(rt_end + int(rng.integers(sch.post_rt_first_days[0], sch.post_rt_first_days[1] + 1)))
    while len(days) < cfg.n_timepoints:
        days.append(days[-1] + max(1, int(rng.integers(sch.post_rt_gap_days[0], sch.post_rt_gap_days[1] + 1))))
    days = days[: cfg.n_timepoints]
    target = max(1, int(round(params["initial_volume_ml"] * 1000.0 / sim_voxel**3)))
    warp = {
        "rotation_deg": rng.normal(0.0, im.rotation_deg, size=3),
        "scale": np.clip(1.0 + rng.normal(0.0, im.scale_sd, size=3), 0.85, 1.15),
        "shift_mm": rng.normal(0.0, 2.0, size=3),
        "disp_noise": rng.standard_normal((3,) + tuple(lattice)),
        "disp_mm": float(im.warp_mm),
    }
    imaging = {
        "tissue_jitter": np.clip(1.0 + rng.normal(0.0, 0.04, size=(len(CONTRASTS), 3)), 0.85, 1.15),
        "noise_level": float(rng.uniform(*im.noise_level)),
        "bias_strength": float(rng.uniform(*im.bias_strength)),
    }
    torch_seed = int(ss.generate_state(1, dtype=np.uint64)[0] % (2**63 - 1))
    if anisotropic(cfg):  # its own stream: every other draw (and so the default cohort) is unchanged
        arng = np.random.default_rng([int(cfg.seed), index, ANISOTROPY_STREAM])
        params["anisotropy"] = float(arng.uniform(*g.anisotropy))
        params["anisotropy_axis"] = int(arng.integers(2))  # 0: x (left-right), 1: y (anterior-posterior)
    subject = f"{cfg.subject_prefix}-{index + 1:05d}"
    return SubjectDraw(subject, index, "midline" if midline else "hemispheric", region, side, params,
                       Schedule(days, fraction_days, target), rt_start, rt_end, warp, imaging, rng, torch_seed)


def choose_seed(draw: SubjectDraw, anat: torch.Tensor, points: torch.Tensor) -> np.ndarray:
    """A seed point (subject world mm) in the subject's tissue inside its region."""
    gm, wm = anat[1].numpy(), anat[2].numpy()
    pts = points.numpy()
    x, y, z = pts[..., 0], pts[..., 1], pts[..., 2]
    if draw.region in MIDLINE_REGIONS:
        (cx, cy, cz), (hx, hy, hz) = MIDLINE_REGIONS[draw.region]
        box = (np.abs(x - cx) <= hx) & (np.abs(y - cy) <= hy) & (np.abs(z - cz) <= hz)
        ok = box & ((gm + wm) > 0.7) & (wm > 0.3)
    else:
        (xl, xh), (yl, yh), (zl, zh) = HEMISPHERIC_BOX
        box = (draw.side * x >= xl) & (draw.side * x <= xh) & (y >= yl) & (y <= yh) & (z >= zl) & (z <= zh)
        ok = box & (wm > 0.7)
    cand = np.argwhere(ok)
    if len(cand) == 0:  # very coarse grids: any tissue in the box, then any tissue
        cand = np.argwhere(box & ((gm + wm) > 0.5))
    if len(cand) == 0:
        cand = np.argwhere((gm + wm) > 0.5)
    pick = cand[int(draw.rng.integers(len(cand)))]
    return pts[tuple(pick)].astype(np.float64)


# --------------------------------------------------------------------------- splits, tables
def assign_splits(subjects: list[str], fractions: list[float], seed: int) -> dict[str, str]:
    """``{subject: split}`` for ``splits.csv``: the data sets' ratio cut (``data_modules.splits.ratio_split``) over a
    seeded permutation of the subjects, val first, then test, then train."""
    order = np.random.default_rng([int(seed), 104729]).permutation(len(subjects))
    out = ratio_split([subjects[i] for i in order], fractions, sequence=("val", "test", "train"))
    return {s: out[s] for s in subjects}


def seg_measures(seg: np.ndarray, voxel_mm: tuple[float, float, float]) -> dict[str, float]:
    """Volumes (mm^3) of the BraTS label sets and the largest axial (last axis) whole-tumour area (mm^2)."""
    vv = float(np.prod(voxel_mm))
    counts = np.bincount(seg.reshape(-1), minlength=4)
    per_slice = (seg > 0).sum(axis=(0, 1))
    def volume(labels: str) -> float:
        return float(sum(counts[v] for v in LABEL_SETS[labels])) * vv

    return {
        "whole_tumor_volume_mm3": volume("whole"),
        "tumor_core_volume_mm3": volume("core"),
        "enhancing_volume_mm3": volume("enhancing"),
        "necrotic_volume_mm3": float(counts[1]) * vv,
        "oedema_volume_mm3": float(counts[2]) * vv,
        "max_axial_area_mm2": float(per_slice.max()) * voxel_mm[0] * voxel_mm[1],
        "max_area_slice": int(per_slice.argmax()),
    }


# --------------------------------------------------------------------------- generation
def _nifti_header():
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_xyzt_units("mm", "sec")
    return hdr


def generate_cohort(cfg: Any = None, prepare: bool = True, log: Any = print, **kwargs: Any) -> dict[str, Any]:
    """Generate the phantom. ``cfg``: a SynthConfig DictConfig/dataclass/dict or a YAML path; ``kwargs``
    override keys (dotted keys reach into sections: ``**{"growth.rho_per_day": [0.01, 0.02]}``).

    Returns a summary dict: ``root``, ``subjects``, ``splits``, ``seconds``, ``shape``, ``voxel_mm``,
    ``ground_truth`` (the rows of ground_truth.csv).
    """


    cfg = _as_config(cfg, **kwargs)
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    try:
        return _generate(cfg, prepare, log)
    finally:
        torch.set_num_threads(threads)


@dataclass
class _Grid:
    """The output grid, the simulation box and the solver clock shared by every batch."""

    voxel: tuple[float, float, float]  # output voxel size (mm)
    sim_h: float  # simulation voxel size (mm)
    template: Any
    shape: tuple[int, int, int]
    affine: np.ndarray
    out_points: torch.Tensor  # [X, Y, Z, 3] world mm of the output voxels
    lattice: tuple[int, int, int]
    n_sim: int  # simulation box edge (voxels)
    offsets: torch.Tensor  # [n, n, n, 3] simulation voxels relative to the seed (mm)
    steps_per_day: int
    pre_step: int
    header: Any


@dataclass
class _Batch:
    """One batch of subjects after the growth simulation: what rendering its scans needs."""

    draws: list[SubjectDraw]
    warps: Any
    anat: torch.Tensor  # [B, 5, X, Y, Z] anatomy on the output grid
    seeds: np.ndarray  # [B, 3] tumour seeds (world mm)
    oedema_weight: torch.Tensor  # [B, n, n, n]
    res: Any  # the SimResult
    sim_seconds: float
    origin: torch.Tensor  # [B, 3] corner of each simulation box (world mm)
    coords: torch.Tensor  # [B, X, Y, Z, 3] output voxels as grid_sample coordinates of the box
    sigma_vox: torch.Tensor
    kpp: torch.Tensor
    enh: torch.Tensor
    mass: torch.Tensor
    jitter: torch.Tensor
    bias: torch.Tensor
    noise: torch.Tensor
    gens: list[torch.Generator]


@dataclass
class _Tables:
    """What the scans of every batch add to the cohort's tables and montage."""

    timeline: list[dict[str, Any]]
    truth: list[dict[str, Any]]
    montage: dict[str, Any] | None = None


def _grid(cfg: Any) -> _Grid:
    """The output grid, the simulation box around each seed and the stable solver steps, from the config."""
    voxel = (float(cfg.voxel_mm), float(cfg.voxel_mm), float(cfg.slice_thickness_mm or cfg.voxel_mm))
    sim_h = _sim_voxel(cfg)
    pool = max(1, int(round(min(min(voxel), sim_h) / 2.0)))
    template = A.load_template(pool)
    shape, affine = A.output_grid(voxel)
    out_points = A.grid_points(shape, affine)
    lattice = A.lattice_shape()
    n_sim = int(math.ceil(cfg.sim_box_mm / sim_h))
    offsets = A.grid_points((n_sim,) * 3, np.diag([sim_h, sim_h, sim_h, 1.0])) - sim_h * (n_sim - 1) / 2.0
    het_max = math.exp(2.0 * float(cfg.growth.heterogeneity))  # the heterogeneity field is clamped to [-2, 2] sd
    d_max, rho_max = float(cfg.growth.d_white_mm2_per_day[1]) * het_max, float(cfg.growth.rho_per_day[1]) * het_max
    if anisotropic(cfg):  # the fastest face: D times the largest anisotropy ratio
        d_max *= float(cfg.growth.anisotropy[1])
    steps_per_day = stable_steps_per_day(d_max, sim_h, rho_max=rho_max)
    pre_step = pregrowth_days_per_step(d_max, sim_h, steps_per_day, rho_max=rho_max)
    return _Grid(voxel, sim_h, template, shape, affine, out_points, lattice, n_sim, offsets, steps_per_day, pre_step,
                 _nifti_header())


def _generate(cfg: Any, prepare: bool, log: Any) -> dict[str, Any]:
    """Draw the subjects, simulate and render them batch by batch, then write the tables and the summary."""
    from tgrowth.config.base import save_resolved_config
    from tgrowth.io import prepare_output_dir

    t_start = time.perf_counter()
    root = Path(cfg.output_dir)
    if prepare:
        prepare_output_dir(root, cfg.overwrite)
        save_resolved_config(cfg, root)
    device = torch.device(cfg.device)
    g = _grid(cfg)

    draws = [draw_subject(cfg, i, g.lattice, g.sim_h) for i in range(cfg.n_subjects)]
    subjects = [d.subject for d in draws]
    splits = assign_splits(subjects, list(cfg.split_fractions), int(cfg.seed))
    tables = _Tables([], [])
    for start in range(0, len(draws), cfg.batch_size):
        bt = _simulate_batch(cfg, g, draws[start : start + cfg.batch_size], device)
        snaps = bt.res.snapshots.cpu()
        for j in range(cfg.n_timepoints):
            _render_scan(cfg, g, bt, snaps[:, j], j, root, splits, tables)
        log(f"synth: subjects {start + 1}-{start + len(bt.draws)} of {len(draws)} done (growth simulation "
            f"{bt.sim_seconds:.1f} s, {g.steps_per_day} steps/day on {g.n_sim}^3 x {len(bt.draws)} voxels)")
    return _write_cohort(cfg, g, root, subjects, splits, tables, t_start)


def _simulate_batch(cfg: Any, g: _Grid, batch: list[SubjectDraw], device: torch.device) -> _Batch:
    """Warp the anatomy, place the seeds and run the growth simulation of one batch of subjects."""
    bsz = len(batch)
    warps = A.make_warps([d.warp for d in batch])
    anat = A.sample_anatomy(g.template, warps, g.out_points[None].expand(bsz, -1, -1, -1, -1))  # [B, 5, X, Y, Z]
    seeds = np.stack([choose_seed(d, anat[i], g.out_points) for i, d in enumerate(batch)])
    sim_pts = g.offsets[None] + torch.as_tensor(seeds, dtype=torch.float32)[:, None, None, None, :]
    sim_tissue = A.sample_anatomy(g.template, warps, sim_pts)[:, 1:3]  # gm, wm
    oedema_weight = (0.35 + 0.9 * sim_tissue[:, 1]).clamp(max=1.0) * ((sim_tissue.sum(1)) > 0.2)
    r2 = (g.offsets**2).sum(-1)
    u0 = (0.8 * torch.exp(-0.5 * r2 / 16.0))[None].expand(bsz, -1, -1, -1).contiguous()  # sigma 4 mm
    params = {k: torch.tensor([d.params[k] for d in batch], dtype=torch.float32)
              for k in ("d_white", "d_grey", "rho", "alpha", "beta", "k_clear", "k_nec")}
    het = _heterogeneity(cfg, g, batch)
    t_sim = time.perf_counter()
    res = simulate(
        sim_tissue.to(device), u0.to(device), {k: v.to(device) for k, v in params.items()},
        [d.schedule for d in batch], g.sim_h, g.steps_per_day, float(cfg.rt.dose_per_fraction_gy),
        float(cfg.rt.margin_mm), int(cfg.growth.max_pregrowth_days), pregrowth_days_per_step=g.pre_step,
        heterogeneity=None if het is None else het.to(device),
        axis_scale=axis_scale(batch).to(device) if anisotropic(cfg) else None,
    )
    t_sim = time.perf_counter() - t_sim
    # output voxel -> this subject's simulation box, as grid_sample coordinates
    origin = torch.as_tensor(seeds, dtype=torch.float32) - g.sim_h * (g.n_sim - 1) / 2.0
    ijk = (g.out_points[None] - origin[:, None, None, None, :]) / g.sim_h
    coords = (ijk / max(g.n_sim - 1, 1) * 2.0 - 1.0).flip(-1)
    return _Batch(
        batch, warps, anat, seeds, oedema_weight, res, t_sim, origin, coords,
        sigma_vox=torch.tensor([d.params["oedema_sigma_mm"] / g.sim_h for d in batch]),
        kpp=torch.tensor([d.params["pseudo_progression"] for d in batch]).reshape(-1, 1, 1, 1),
        enh=torch.tensor([d.params["enh_threshold"] for d in batch]),
        mass=torch.tensor([d.params["mass_effect"] for d in batch]) * float(cfg.growth.mass_effect),
        jitter=torch.as_tensor(np.stack([d.imaging["tissue_jitter"] for d in batch]), dtype=torch.float32),
        bias=torch.tensor([d.imaging["bias_strength"] for d in batch]),
        noise=torch.tensor([d.imaging["noise_level"] for d in batch]),
        gens=[torch.Generator().manual_seed(d.torch_seed) for d in batch],
    )


def _heterogeneity(cfg: Any, g: _Grid, batch: list[SubjectDraw]) -> torch.Tensor | None:
    """Each subject's smooth positive field that multiplies D and rho (None when growth.heterogeneity is 0)."""
    if not cfg.growth.heterogeneity > 0:
        return None
    return torch.stack([
        torch.exp(float(cfg.growth.heterogeneity) * smooth_noise((g.n_sim,) * 3, torch.Generator().manual_seed(d.torch_seed + 1), lattice=6).clamp(-2.0, 2.0))
        for d in batch
    ])


def _render_scan(cfg: Any, g: _Grid, bt: _Batch, snap: torch.Tensor, j: int, root: Path, splits: dict[str, str],
                 tables: _Tables) -> None:
    """Render scan ``j`` of a batch from its simulated ``u, n, d`` (``snap [B, 3, n, n, n]``) and write it."""
    u, n, dmg = snap.unbind(1)
    # vasogenic oedema spreads along white matter more than through grey matter
    e = gaussian_blur(u + n + bt.kpp * dmg, bt.sigma_vox, max_sigma=OEDEMA_SIGMA_MAX_MM / g.sim_h) * bt.oedema_weight
    sim_fields = torch.stack([u, n, dmg, e], 1)
    anat_j, coords_j = bt.anat, bt.coords
    if cfg.growth.mass_effect > 0:
        anat_j, coords_j = _mass_effect(g, bt, u + n + dmg + 0.5 * e)
    fields = torch.nn.functional.grid_sample(sim_fields, coords_j, mode="bilinear", padding_mode="zeros", align_corners=True)
    images, seg = render(anat_j, fields, bt.enh, bt.jitter, bt.gens, bt.bias, bt.noise)
    for i, d in enumerate(bt.draws):
        _write_scan(cfg, g, bt, i, j, root, images, seg[i].numpy(), fields, splits[d.subject], tables)


def _mass_effect(g: _Grid, bt: _Batch, load: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The anatomy and the grid_sample coordinates after the tumour ``load`` (oedema counted half) pushed tissue away."""
    # mass effect: tissue pushed down the gradient of the smoothed tumour burden (oedema counts half);
    # the image at x shows what was at x - disp(x), so the tumour and its neighbourhood expand
    burden = gaussian_blur(load, MASS_SIGMA_MM / g.sim_h)
    grad = torch.stack([torch.gradient(burden, spacing=g.sim_h, dim=k)[0] for k in (1, 2, 3)], 1)
    disp = -(bt.mass * MASS_SIGMA_MM**2)[:, None, None, None, None] * grad  # mm, world axes
    disp_out = torch.nn.functional.grid_sample(disp, bt.coords, mode="bilinear", padding_mode="zeros", align_corners=True)
    moved = g.out_points[None] - disp_out.permute(0, 2, 3, 4, 1)
    # re-sample the anatomy only where tissue moved (exact, and far cheaper than the whole grid)
    anat_j = bt.anat.clone()
    for i in range(len(bt.draws)):
        hit = disp_out[i].abs().amax(0) > 1e-3
        if bool(hit.any()):
            pts = moved[i][hit].reshape(1, -1, 1, 1, 3)
            anat_j[i][:, hit] = A.sample_anatomy(g.template, bt.warps.select(i), pts).reshape(bt.anat.shape[1], -1)
    coords_j = (((moved - bt.origin[:, None, None, None, :]) / g.sim_h) / max(g.n_sim - 1, 1) * 2.0 - 1.0).flip(-1)
    return anat_j, coords_j


def _write_scan(cfg: Any, g: _Grid, bt: _Batch, i: int, j: int, root: Path, images: torch.Tensor, seg_np: np.ndarray,
                fields: torch.Tensor, split: str, tables: _Tables) -> None:
    """Write subject ``i``'s scan ``j`` (contrasts and labels) and add its rows to the tables and the montage."""
    from tgrowth.io import save_nifti

    d = bt.draws[i]
    tp = f"{j:03d}"
    folder = root / f"{d.subject}-{tp}"
    for ci, name in enumerate(CONTRASTS):
        save_nifti(folder / f"{d.subject}-{tp}-{name}.nii.gz", images[i, ci].numpy(), g.affine, g.header)
    save_nifti(folder / f"{d.subject}-{tp}-seg.nii.gz", seg_np, g.affine, g.header)
    day = d.schedule.scan_days[j]
    tables.timeline.append({"subject": d.subject, "timepoint": tp, "day": float(day),
                            "rt_start_day": None if d.rt_start_day is None else float(d.rt_start_day),
                            "rt_end_day": None if d.rt_end_day is None else float(d.rt_end_day)})
    tables.truth.append(_truth_row(cfg, g, bt, i, tp, day, split, seg_np, fields))
    if d.index == cfg.montage_subject - 1 and cfg.montage:
        if tables.montage is None:
            tables.montage = {"subject": d.subject, "days": [], "t1c": [], "t2f": [], "seg": [],
                              "rt": (d.rt_start_day, d.rt_end_day)}
        tables.montage["days"].append(day)
        tables.montage["t1c"].append(images[i, 1].numpy())
        tables.montage["t2f"].append(images[i, 3].numpy())
        tables.montage["seg"].append(seg_np)


def _truth_row(cfg: Any, g: _Grid, bt: _Batch, i: int, tp: str, day: int, split: str, seg_np: np.ndarray,
               fields: torch.Tensor) -> dict[str, Any]:
    """The ground_truth.csv row of subject ``i``'s scan ``tp``: its drawn parameters and measured volumes."""
    d, res, seeds = bt.draws[i], bt.res, bt.seeds
    return {
        "subject": d.subject, "timepoint": tp, "day": float(day), "split": split,
        "rt_start_day": d.rt_start_day, "rt_end_day": d.rt_end_day,
        "phase": "no_rt" if d.rt_start_day is None else "pre_rt" if day < d.rt_start_day else ("during_rt" if day <= d.rt_end_day else "post_rt"),
        **seg_measures(seg_np, g.voxel),
        "tumor_cell_volume_mm3": float(fields[i, 0].double().sum()) * float(np.prod(g.voxel)),
        "kind": d.kind, "region": d.region,
        "seed_x_mm": round(float(seeds[i, 0]), 3), "seed_y_mm": round(float(seeds[i, 1]), 3), "seed_z_mm": round(float(seeds[i, 2]), 3),
        "d_white_mm2_per_day": d.params["d_white"], "d_grey_mm2_per_day": d.params["d_grey"],
        "rho_per_day": d.params["rho"], "alpha_per_gy": d.params["alpha"], "beta_per_gy2": d.params["beta"],
        "damage_clearance_per_day": d.params["k_clear"], "necrosis_rate_per_day": d.params["k_nec"],
        "enhancement_threshold": d.params["enh_threshold"], "pseudo_progression": d.params["pseudo_progression"],
        "oedema_sigma_mm": d.params["oedema_sigma_mm"],
        "mass_effect": d.params["mass_effect"] * float(cfg.growth.mass_effect),
        "initial_volume_ml_target": d.params["initial_volume_ml"],
        "pregrowth_days": res.pregrowth_days[i], "reached_initial_volume": res.reached_target[i],
        # only with growth.anisotropy (so a default cohort's table is unchanged)
        **({"anisotropy": d.params["anisotropy"], "anisotropy_axis": "xy"[d.params["anisotropy_axis"]]}
           if "anisotropy" in d.params else {}),
    }


def _write_cohort(cfg: Any, g: _Grid, root: Path, subjects: list[str], splits: dict[str, str], tables: _Tables,
                  t_start: float) -> dict[str, Any]:
    """Write timeline.csv, splits.csv, ground_truth.csv, the montage and summary.json; return the summary."""
    from omegaconf import OmegaConf

    from tgrowth.io import write_csv, write_json

    timeline_rows = sorted(tables.timeline, key=lambda r: (r["subject"], r["timepoint"]))
    truth_rows = sorted(tables.truth, key=lambda r: (r["subject"], r["timepoint"]))
    write_csv(root / "timeline.csv", timeline_rows, ["subject", "timepoint", "day", "rt_start_day", "rt_end_day"])
    write_csv(root / "splits.csv", [{"subject": s, "split": splits[s]} for s in subjects], ["subject", "split"])
    write_csv(root / "ground_truth.csv", truth_rows)
    if tables.montage is not None:
        from tgrowth.synth.montage import save_montage

        save_montage(tables.montage, root / "montage.png", g.voxel)
    seconds = time.perf_counter() - t_start
    summary = {
        "root": str(root), "subjects": subjects, "splits": splits, "n_timepoints": int(cfg.n_timepoints),
        "shape": list(g.shape), "voxel_mm": list(g.voxel), "affine": g.affine.tolist(), "sim_voxel_mm": g.sim_h,
        "steps_per_day": g.steps_per_day, "seconds": round(seconds, 2), "seed": int(cfg.seed),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_json(root / "summary.json", summary)
    summary["ground_truth"] = truth_rows
    return summary
