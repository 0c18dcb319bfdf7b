"""Fisher-Kolmogorov tumour growth: the shared solver and the patient-specific spatial prior.

Imports with torch (+numpy/scipy) alone (no omegaconf, torchio, wandb, nibabel), CPU or GPU, 2D or 3D:

- ``tgrowth.growth.fk``: the one FK solver (``fk_step``, ``simulate_fk``, ``diffusivity``, stability,
  planning dose, linear-quadratic survival); the phantom (``tgrowth.synth.growth``) uses it too.
- ``tgrowth.growth.tissue``: ``estimate_tissue`` -> ``TissueMaps`` (WM / GM / CSF from the scan's contrasts).
- ``tgrowth.growth.patient``: ``initial_density`` (BraTS labels -> density), ``calibrate`` (per-subject
  ``D_white``, ``rho`` from earlier segmentations), ``forecast_density`` (run to a target size), ``fk_mask``.

docs/growth-prior.md describes the model, the label mapping, the calibration and the time scaling.
"""

from tgrowth.growth.fk import VISIBLE_THRESHOLD, diffusivity, fk_step, simulate_fk, stable_dt
from tgrowth.growth.patient import (
    CORE_THRESHOLD,
    Calibration,
    FKParams,
    Forecast,
    calibrate,
    fk_mask,
    forecast_density,
    initial_density,
    mobility,
)
from tgrowth.growth.tissue import TissueMaps, estimate_tissue

__all__ = [
    "CORE_THRESHOLD", "VISIBLE_THRESHOLD", "Calibration", "FKParams", "Forecast", "TissueMaps", "calibrate",
    "diffusivity", "estimate_tissue", "fk_mask", "fk_step", "forecast_density", "initial_density", "mobility",
    "simulate_fk", "stable_dt",
]
