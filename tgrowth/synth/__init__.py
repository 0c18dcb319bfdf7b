"""The synthetic longitudinal tumour phantom (``tgrowth synth``).

Real anatomy (MNI ICBM152 2009 templates from the nilearn wheel, per-subject random warp), Fisher-Kolmogorov
growth with tissue-dependent diffusion, fractionated RT with a linear-quadratic kill and a resolving
treatment-damage compartment, rendered into t1n/t1c/t2w/t2f with BraTS labels; written in the longitudinal
format. Python API: ``generate_cohort(cfg_or_kwargs) -> summary`` (see ``tgrowth.synth.cohort``).
"""

from tgrowth.synth.cohort import assign_splits, generate_cohort, seg_measures, validate

__all__ = ["generate_cohort", "assign_splits", "seg_measures", "validate"]
