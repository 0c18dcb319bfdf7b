"""Tumour growth for the phantom: Fisher-Kolmogorov reaction-diffusion with radiotherapy, batched over subjects.

State per voxel (fractions of the carrying capacity, ``u + n + d <= 1``):

- ``u``: proliferative tumour cells,
  ``du/dt = div(D(x) grad u) + rho u (1 - u - n - d) - k_nec u h(u + n + d)``;
  ``D = D_white * p_wm + D_grey * p_gm`` (tissue probabilities), zero in CSF and outside the brain;
  the flux between two voxels uses the harmonic mean of their ``D`` (no flux into ``D = 0``).
- ``n``: hypoxic necrosis, fed where the tissue is crowded (``h`` ramps from 0 at ``hypoxia_threshold``
  (0.7) to 1 at full occupancy), at most 1; it is not cleared.
- ``d``: treatment damage (radiation necrosis / pseudo-progression): each RT fraction kills
  ``u (1 - S)`` with the linear-quadratic survival ``S = exp(-alpha D - beta D^2)`` (dose ``D`` from a
  planning volume: the visible tumour at RT start grown by a margin, smoothed edge); killed cells move to
  ``d``, which is cleared at rate ``k_clear``, so its oedema and enhancement resolve.

Explicit Euler for diffusion and reaction with a fixed stable step ``dt <= h^2 / (6 D_max)`` (the bound
of the configured diffusion range, so a subject's result does not depend on who shares its batch),
``dt = 1 / steps_per_day``. All subjects of a batch step together as one ``[B, X, Y, Z]`` tensor; each has
its own clock (day 0 = the day its visible tumour first reaches its drawn initial volume) and its own
scan and RT-fraction days. Pure torch; no file IO.

The update rule (:func:`tgrowth.growth.fk.fk_step`), the harmonic-mean face fluxes, the planning dose and
the linear-quadratic survival are the shared FK solver of ``tgrowth.growth.fk``; this module adds the
phantom's necrosis and damage compartments and its scan/RT clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tgrowth.growth.fk import (
    TRUNCATION,
    VISIBLE_THRESHOLD,
    diffusivity,
    face_box,
    face_coefficients,
    fk_step,
    gaussian_blur,
    lq_survival,
    planning_dose,
    pregrowth_days_per_step,
    stable_steps_per_day,
    support_box,
)

#: the active box is recomputed every this many iterations (with a margin that covers the spread meanwhile)
BOX_REUSE_DAYS = 8

# the solver core lives in tgrowth.growth.fk; these names stay importable from here for the phantom's users
__all__ = ["BOX_REUSE_DAYS", "SimResult", "Schedule", "TRUNCATION", "VISIBLE_THRESHOLD", "gaussian_blur",
           "planning_dose", "pregrowth_days_per_step", "simulate", "stable_steps_per_day"]


@dataclass
class Schedule:
    """One subject's clock: scan days and RT-fraction days (integers, days since the first scan)."""

    scan_days: list[int]
    fraction_days: list[int]
    target_visible_voxels: int  # day 0 = first day the visible tumour reaches this many voxels


@dataclass
class SimResult:
    snapshots: torch.Tensor  # [B, T, 3, X, Y, Z]: u, n, d at each scan
    pregrowth_days: list[int]  # simulated days from the seed to the first scan
    reached_target: list[bool]  # False: the initial volume was not reached within max_pregrowth_days
    steps_per_day: int


def simulate(
    tissue: torch.Tensor,
    u0: torch.Tensor,
    params: dict[str, torch.Tensor],
    schedules: list[Schedule],
    spacing_mm: float,
    steps_per_day: int,
    dose_per_fraction_gy: float,
    margin_mm: float,
    max_pregrowth_days: int = 3000,
    hypoxia_threshold: float = 0.7,
    pregrowth_days_per_step: int = 1,
    heterogeneity: torch.Tensor | None = None,
    axis_scale: torch.Tensor | None = None,
) -> SimResult:
    """Run the batch until every subject has had its last scan.

    ``tissue [B, 2, X, Y, Z]``: grey- and white-matter probabilities (CSF/outside get D = 0);
    ``u0 [B, X, Y, Z]``: the seed density; ``heterogeneity [B, X, Y, Z]`` (optional): a positive field that
    multiplies ``D`` and ``rho`` locally; ``params``: per-subject ``[B]`` tensors ``d_white``, ``d_grey``
    (mm^2/day), ``rho`` (1/day), ``alpha`` (1/Gy), ``beta`` (1/Gy^2), ``k_clear``, ``k_nec`` (1/day);
    ``axis_scale [B, 3]`` (optional): a diagonal diffusion tensor (anisotropic spread, see
    :func:`tgrowth.growth.fk.face_coefficients`); ``steps_per_day`` must then be stable for ``D s_max``.
    """
    # tiny densities far from the tumour would otherwise become denormal floats, which are ~100x slower
    torch.set_flush_denormal(True)
    try:
        return _simulate(tissue, u0, params, schedules, spacing_mm, steps_per_day, dose_per_fraction_gy,
                         margin_mm, max_pregrowth_days, hypoxia_threshold, pregrowth_days_per_step, heterogeneity,
                         axis_scale)
    finally:
        torch.set_flush_denormal(False)  # torch's default


@dataclass
class _Clock:
    """Each subject's clock and event calendar while its batch runs (lists indexed by subject, not by row)."""

    schedules: list[Schedule]
    max_pregrowth_days: int
    days: list[int]  # days simulated
    day0: list[int | None]  # simulated day of the first scan (None: still growing towards it)
    reached: list[bool]  # the initial volume was reached (not the max_pregrowth_days cap)
    last_day: list[int]
    scans: list[dict[int, int]]  # scan day -> scan index
    fractions: list[set[int]]
    rt_start: list[int | None]

    @classmethod
    def start(cls, schedules: list[Schedule], max_pregrowth_days: int) -> _Clock:
        """Every subject at day 0 of its growth from the seed."""
        bsz = len(schedules)
        return cls(schedules, max_pregrowth_days, [0] * bsz, [None] * bsz, [True] * bsz,
                   [max(s.scan_days) for s in schedules], [{day: i for i, day in enumerate(s.scan_days)} for s in schedules],
                   [set(s.fraction_days) for s in schedules],
                   [min(s.fraction_days) if s.fraction_days else None for s in schedules])

    def local(self, rows: list[int]) -> list[int | None]:
        """Each row's day since its first scan (None while it still grows towards it)."""
        return [None if self.day0[b] is None else self.days[b] - self.day0[b] for b in rows]


def _initial_state(tissue, u0, params, spacing_mm, heterogeneity, axis_scale=None) -> dict[str, torch.Tensor]:
    """Per-row state (u, n, d, RT survival) and coefficients (rates, face diffusivities) at the seed."""
    bsz = u0.shape[0]
    col = {k: v.to(torch.float32).reshape(bsz, 1, 1, 1) for k, v in params.items()}
    gm, wm = tissue[:, 0], tissue[:, 1]
    diff = diffusivity(wm, gm, params["d_white"], params["d_grey"])
    rho = col["rho"]
    if heterogeneity is not None:  # a smooth positive field: local variation of proliferation and motility
        diff = diff * heterogeneity
        rho = rho * heterogeneity
    brain = ((gm + wm) > 0).float()
    st = {
        "u": (u0 * brain).masked_fill(u0 * brain < TRUNCATION, 0.0),
        "n": torch.zeros_like(u0),
        "d": torch.zeros_like(u0),
        "survival": torch.ones_like(u0),
        "rho": rho.expand_as(u0).contiguous() if heterogeneity is not None else rho, "k_nec": col["k_nec"], "k_clear": col["k_clear"],
        "alpha": col["alpha"], "beta": col["beta"],
    }
    for axis, f in zip((1, 2, 3), face_coefficients(diff, spacing_mm, axis_scale)):
        st[f"face{axis}"] = f
    return st


def _start_clocks(clk: _Clock, st: dict[str, torch.Tensor], rows: list[int]) -> None:
    """Set day 0 of the rows whose visible tumour reached its initial volume (or the pre-growth cap) today."""
    pending = [r for r, b in enumerate(rows) if clk.day0[b] is None]
    if pending:
        u, n, d = st["u"], st["n"], st["d"]
        counts = ((u + n + d) > VISIBLE_THRESHOLD).flatten(1).sum(1).tolist()
        for r in pending:
            b = rows[r]
            if counts[r] >= clk.schedules[b].target_visible_voxels or clk.days[b] >= clk.max_pregrowth_days:
                clk.day0[b] = clk.days[b]
                clk.reached[b] = counts[r] >= clk.schedules[b].target_visible_voxels


def _scan_and_treat(st: dict[str, torch.Tensor], rows: list[int], local: list[int | None], clk: _Clock,
                    snaps: torch.Tensor, dose_per_fraction_gy: float, margin_vox: float, penumbra_vox: float) -> list[int]:
    """Today's events of each row: its scan (into ``snaps``), then its planning at RT start and its RT fraction.

    Returns the rows that received a fraction today."""
    u, n, d = st["u"], st["n"], st["d"]
    dev = u.device
    for r, b in enumerate(rows):
        if local[r] is not None and local[r] in clk.scans[b]:
            snaps[b, clk.scans[b][local[r]]] = torch.stack([u[r], n[r], d[r]])
    starting = [r for r, b in enumerate(rows) if local[r] is not None and local[r] == clk.rt_start[b]]
    if starting:
        idx = torch.tensor(starting, device=dev)
        visible = (u[idx] + n[idx] + d[idx]) > VISIBLE_THRESHOLD
        dose = dose_per_fraction_gy * planning_dose(visible, margin_vox, penumbra_vox)
        st["survival"][idx] = lq_survival(dose, st["alpha"][idx], st["beta"][idx])
    firing = [r for r, b in enumerate(rows) if local[r] is not None and local[r] in clk.fractions[b]]
    if firing:
        idx = torch.tensor(firing, device=dev)
        killed = u[idx] * (1.0 - st["survival"][idx])
        u[idx] = u[idx] - killed
        d[idx] = d[idx] + killed
    return firing


def _drop_finished(st: dict[str, torch.Tensor], rows: list[int], local: list[int | None],
                   clk: _Clock) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The state and rows without the subjects that have had their last scan."""
    keep = [r for r, b in enumerate(rows) if local[r] is None or local[r] < clk.last_day[b]]
    if len(keep) < len(rows):
        idx = torch.tensor(keep, dtype=torch.long, device=st["u"].device)
        st = {k: v[idx] for k, v in st.items()}
        rows = [rows[r] for r in keep]
    return st, rows


def _advance_box(st: dict[str, torch.Tensor], box, dt_row: torch.Tensor, steps_per_day: int,
                 hypoxia_threshold: float, fired: bool) -> None:
    """Advance u, n, d inside ``box`` by ``steps_per_day`` sub-steps of ``dt_row`` (in place)."""
    ub, nb, db = st["u"][box], st["n"][box], st["d"][box]
    fb = [st[f"face{axis}"][face_box(box, axis)] for axis in (1, 2, 3)]
    rho_b = st["rho"][box] if st["rho"].dim() == 4 and st["rho"].shape[1] > 1 else st["rho"]
    rho_dt, knec_dt = rho_b * dt_row, st["k_nec"] * dt_row
    clear = torch.exp(-st["k_clear"] * dt_row)
    damaged = fired or bool((db > 0).any())
    for _ in range(steps_per_day):
        total = ub + nb
        if damaged:
            total.add_(db)
        hyp = total.sub(hypoxia_threshold).mul_(1.0 / (1.0 - hypoxia_threshold)).clamp_(0.0, 1.0).mul_(ub).mul_(knec_dt)
        # u + dt * div(D grad u) + rho dt u (1 - total) - hyp (the shared FK update)
        u_new = fk_step(ub, fb, dt_row, rho_dt, total=total, sink=hyp)
        nb = (nb + hyp).clamp_max_(1.0)
        if damaged:
            db = db * clear
        ub = u_new
    st["u"][box], st["n"][box], st["d"][box] = ub, nb, db


def _simulate(tissue, u0, params, schedules, spacing_mm, steps_per_day, dose_per_fraction_gy, margin_mm,
              max_pregrowth_days, hypoxia_threshold, pregrowth_days_per_step, heterogeneity, axis_scale) -> SimResult:
    """The day loop of :func:`simulate`: events at each subject's day, then one (or several pre-growth) days of growth."""
    bsz = u0.shape[0]
    dev = u0.device
    dt = 1.0 / steps_per_day
    # per-row state and coefficients; rows are dropped once their subject has had its last scan
    st = _initial_state(tissue, u0, params, spacing_mm, heterogeneity, axis_scale)
    rows = list(range(bsz))  # row -> subject
    n_scans = len(schedules[0].scan_days)
    snaps = torch.zeros((bsz, n_scans, 3) + tuple(u0.shape[1:]), dtype=torch.float32)
    clk = _Clock.start(schedules, max_pregrowth_days)
    margin_vox = margin_mm / spacing_mm
    penumbra_vox = max(0.5, 4.0 / spacing_mm)

    box, box_age, box_rows = None, BOX_REUSE_DAYS, bsz
    while rows:
        # ---- events at each subject's current day (scans first, then the day's RT fraction)
        _start_clocks(clk, st, rows)
        local = clk.local(rows)
        firing = _scan_and_treat(st, rows, local, clk, snaps, dose_per_fraction_gy, margin_vox, penumbra_vox)
        st, rows = _drop_finished(st, rows, local, clk)
        if not rows:
            break
        # ---- advance: one day, or several while a subject is still growing towards its first scan
        days = [pregrowth_days_per_step if clk.day0[b] is None else 1 for b in rows]
        dt_row = torch.tensor(days, dtype=torch.float32, device=dev).reshape(-1, 1, 1, 1) * dt
        if box_age >= BOX_REUSE_DAYS or box_rows != len(rows):
            # valid for BOX_REUSE_DAYS iterations: the support grows by <= 1 voxel per sub-step
            box = support_box([st["u"], st["n"], st["d"]], BOX_REUSE_DAYS * steps_per_day + 1)
            box_age, box_rows = 0, len(rows)
        box_age += 1
        if box is not None:
            _advance_box(st, box, dt_row, steps_per_day, hypoxia_threshold, bool(firing))
        for r, b in enumerate(rows):
            clk.days[b] += days[r]

    pre = [int(x) for x in clk.day0]  # type: ignore[arg-type]
    return SimResult(snaps, pre, clk.reached, steps_per_day)
