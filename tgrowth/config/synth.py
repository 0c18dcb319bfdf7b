"""Config schema of `tgrowth synth`: the synthetic longitudinal tumour phantom (see ``tgrowth.synth``)."""

from __future__ import annotations

from dataclasses import dataclass

from tgrowth.config.base import RunConfig, doc


@dataclass
class GrowthRanges:
    """Per-subject growth parameters, each drawn uniformly (log-uniformly for rates) from [low, high]."""

    d_white_mm2_per_day: list[float] = doc([0.05, 0.3], "Diffusivity in white matter (mm^2/day), log-uniform range.")
    grey_white_ratio: list[float] = doc([0.1, 0.3], "Grey-matter diffusivity as a fraction of the white-matter one.")
    rho_per_day: list[float] = doc([0.012, 0.04], "Proliferation rate (1/day), log-uniform range.")
    alpha_per_gy: list[float] = doc([0.025, 0.06], "Linear-quadratic alpha (1/Gy); beta = alpha / alpha_beta_gy.")
    damage_clearance_days: list[float] = doc([30.0, 120.0], "Mean lifetime of treatment damage (days).")
    initial_volume_ml: list[float] = doc([4.0, 25.0], "Visible tumour volume at the first scan (ml).")
    heterogeneity: float = doc(0.35, "Log-amplitude of a smooth random field that multiplies D and rho locally (0: homogeneous tissue classes).")
    mass_effect: float = doc(1.0, "Scale of the mass effect (tissue pushed away from the tumour, up to about 3 mm at 1.0); 0: none.")
    anisotropy: list[float] = doc([1.0, 1.0], "Out-of-family growth (stress tests): ratio (>= 1) of the diffusivity along one in-plane axis to that across it, drawn uniformly per subject from [low, high]; the axis (x: left-right or y: anterior-posterior of the simulation grid) is drawn 50/50 per subject. [1, 1]: isotropic (default; the cohort is then byte-identical to one written without the key).")
    max_pregrowth_days: int = doc(3000, "Cap on the simulated time from the seed to the first scan (days).")


@dataclass
class RTSettings:
    """Fractionated radiotherapy."""

    n_fractions: int = doc(30, "Number of fractions.")
    dose_per_fraction_gy: float = doc(2.0, "Dose per fraction (Gy).")
    fractions_per_week: int = doc(5, "Fractions per week (weekdays), so 30 x 2 Gy takes 6 weeks.")
    alpha_beta_gy: float = doc(10.0, "Linear-quadratic alpha/beta ratio (Gy).")
    margin_mm: float = doc(15.0, "Planning margin around the visible tumour at RT start (mm).")
    start_delay_days: list[int] = doc([5, 14], "Days from the last pre-RT scan to the first fraction [low, high].")
    fraction_of_subjects: float = doc(1.0, "Fraction of subjects that receive RT (the others are untreated).")


@dataclass
class ScheduleSettings:
    """Scan days (integers, days since the first scan)."""

    pre_rt_scans: int = doc(2, "Scans before RT (>= 1 and < n_timepoints): baseline and planning scan.")
    pre_rt_gap_days: list[int] = doc([14, 35], "Gap between pre-RT scans [low, high] (days).")
    post_rt_first_days: list[int] = doc([21, 42], "First post-RT scan, days after the last fraction [low, high].")
    post_rt_gap_days: list[int] = doc([42, 90], "Gap between later scans [low, high] (days).")


@dataclass
class ImagingSettings:
    """Rendering noise and artefacts."""

    noise_level: list[float] = doc([0.02, 0.045], "Rician noise sigma as a fraction of white-matter signal [low, high].")
    bias_strength: list[float] = doc([0.05, 0.15], "Bias field strength (log-amplitude) [low, high].")
    warp_mm: float = doc(2.5, "Amplitude of the smooth random anatomical deformation (mm).")
    rotation_deg: float = doc(3.0, "Standard deviation of the random head rotation about each axis (degrees).")
    scale_sd: float = doc(0.04, "Standard deviation of the random head scaling per axis.")


@dataclass
class SynthConfig(RunConfig):
    """The synthetic longitudinal phantom, written in the longitudinal format (timeline.csv + folders)."""

    output_dir: str = doc("runs/synth", "Data set root: timeline.csv, splits.csv, ground_truth.csv, <SUBJECT>-<TP>/ folders.")
    n_subjects: int = doc(16, "Number of subjects.")
    n_timepoints: int = doc(5, "Scans per subject (>= 2).")
    voxel_mm: float = doc(2.0, "In-plane voxel size of the written volumes (mm).")
    slice_thickness_mm: float | None = doc(None, "Axial voxel size (mm); None: voxel_mm.")
    sim_voxel_mm: float | None = doc(None, "Voxel size of the growth simulation (mm); None: max(voxel_mm, 2).")
    sim_box_mm: float = doc(128.0, "Edge of the cubic simulation box centred on the tumour seed (mm).")
    midline_fraction: float = doc(0.5, "Fraction of midline tumours (pons/thalamus, like paediatric DMG); the rest hemispheric.")
    subject_prefix: str = doc("SYN", "Subject ids are <prefix>-00001, ...")
    split_fractions: list[float] = doc([0.7, 0.15, 0.15], "train/val/test fractions written to splits.csv (>= 1 val and test subject when n_subjects >= 3).")
    batch_size: int = doc(16, "Subjects simulated and rendered together as one tensor batch (memory vs speed).")
    device: str = doc("cpu", "torch device for the simulation (cpu, cuda). Byte-identical output is guaranteed per device.")
    threads: int | None = doc(1, "torch CPU threads while generating (1 is fastest for the small per-step tensors, above all on a shared CPU); None: torch's default.")
    montage: bool = doc(True, "Write montage.png: one subject over time (t1c, t2f, labels).")
    montage_subject: int = doc(1, "Which subject (1-based number) montage.png shows.")
    growth: GrowthRanges = doc(GrowthRanges(), "Growth parameter ranges.")
    rt: RTSettings = doc(RTSettings(), "Radiotherapy.")
    schedule: ScheduleSettings = doc(ScheduleSettings(), "Scan schedule.")
    imaging: ImagingSettings = doc(ImagingSettings(), "Rendering.")
