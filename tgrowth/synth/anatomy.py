"""Brain anatomy for the phantom: the MNI ICBM152 2009 templates shipped inside the ``nilearn`` wheel.

The three files (T1, grey-matter and white-matter probability maps, 1 mm, 197 x 233 x 189) are the package
data that ``nilearn.datasets.load_mni152_template`` / ``load_mni152_gm_template`` /
``load_mni152_wm_template`` read; we read the same files with nibabel (no network, no nilearn import cost).
CSF is the skull-stripped brain mask minus GM and WM.

Each subject gets its own anatomy by a random smooth warp ``world mm (subject) -> template mm``: a small
rotation/scaling/translation about the brain centre plus a smooth random displacement field. Any set of
world points (the output voxel grid, a simulation box) is sampled through that warp with
``torch.nn.functional.grid_sample``, batched over subjects.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tgrowth.errors import TgrowthError

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
#: channels of the template tensor, in order
CHANNELS = ("t1", "gm", "wm", "csf", "mask")
#: MNI brain centre used as the pivot of the per-subject affine (mm)
BRAIN_CENTRE_MM = (0.0, -18.0, 10.0)


def template_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise TgrowthError("the phantom needs the 'nilearn' package (its wheel ships the MNI ICBM152 templates): pip install nilearn")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


@dataclass(frozen=True)
class Template:
    """Template channels ``[5, X, Y, Z]`` (t1, gm, wm, csf, mask; float32 in [0, 1]) and their affine."""

    data: torch.Tensor
    affine: np.ndarray  # voxel -> world mm

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[1:])  # type: ignore[return-value]


@lru_cache(maxsize=1)
def _raw_template() -> tuple[dict[str, np.ndarray], np.ndarray]:
    import nibabel as nib

    folder = template_dir()
    arrays = {}
    affine = None
    for key, name in TEMPLATE_FILES.items():
        path = folder / name
        if not path.is_file():
            raise TgrowthError(f"MNI template file missing from the nilearn package: {path} (reinstall nilearn)")
        img = nib.load(str(path))
        arrays[key] = np.asarray(img.dataobj, dtype=np.uint8)
        affine = img.affine.copy()
    return arrays, affine


@lru_cache(maxsize=4)
def load_template(pool: int = 1) -> Template:
    """The 1 mm templates, block-averaged by ``pool`` (anti-aliasing before coarse resampling)."""
    arrays, affine = _raw_template()
    t1_u8 = arrays["t1"]
    mask_np = t1_u8 > 0
    hist = np.cumsum(np.bincount(t1_u8[mask_np], minlength=256))
    p995 = float(np.searchsorted(hist, 0.995 * hist[-1])) / 255.0
    t1 = torch.from_numpy(t1_u8).float() / (255.0 * p995)
    gm = torch.from_numpy(arrays["gm"]).float() / 255.0
    wm = torch.from_numpy(arrays["wm"]).float() / 255.0
    mask = torch.from_numpy(mask_np).float()
    total = gm + wm
    scale = torch.where(total > 1.0, 1.0 / total.clamp_min(1e-6), torch.ones_like(total)) * mask
    gm, wm = gm * scale, wm * scale
    csf = (mask - gm - wm).clamp(0.0, 1.0)
    data = torch.stack([t1, gm, wm, csf, mask])
    if pool > 1:
        data = F.avg_pool3d(data[None], kernel_size=pool, stride=pool, ceil_mode=True)[0]
        # voxel i of the pooled grid covers 1 mm voxels [i*pool, (i+1)*pool): its centre sits at i*pool + (pool-1)/2
        aff = affine.copy()
        aff[:3, :3] = affine[:3, :3] * pool
        aff[:3, 3] = affine[:3, 3] + affine[:3, :3] @ np.full(3, (pool - 1) / 2.0)
        affine = aff
    return Template(data.contiguous(), affine)


@lru_cache(maxsize=8)
def brain_bbox_mm(margin_mm: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """World bounding box (min, max corner, mm) of the template brain, grown by ``margin_mm``."""
    arrays, affine = _raw_template()
    mask = arrays["t1"] > 0
    lo_idx = np.array([np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != i))).min() for i in range(3)])
    hi_idx = np.array([np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != i))).max() for i in range(3)])
    lo = affine[:3, :3] @ lo_idx + affine[:3, 3]
    hi = affine[:3, :3] @ hi_idx + affine[:3, 3]
    return np.minimum(lo, hi) - margin_mm, np.maximum(lo, hi) + margin_mm


def output_grid(voxel_mm: tuple[float, float, float], margin_mm: float = 4.0) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine (RAS, real mm spacing) of the output volumes covering the brain."""
    lo, hi = brain_bbox_mm(margin_mm)
    vox = np.asarray(voxel_mm, dtype=np.float64)
    shape = tuple(int(math.ceil((hi[i] - lo[i]) / vox[i])) + 1 for i in range(3))
    centre = (lo + hi) / 2.0
    origin = centre - vox * (np.asarray(shape) - 1) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = np.diag(vox)
    affine[:3, 3] = np.round(origin, 3)
    return shape, affine  # type: ignore[return-value]


def grid_points(shape: tuple[int, int, int], affine: np.ndarray) -> torch.Tensor:
    """World coordinates ``[X, Y, Z, 3]`` (float32) of every voxel centre of a grid."""
    axes = [torch.arange(n, dtype=torch.float64) for n in shape]
    ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    a = torch.as_tensor(affine, dtype=torch.float64)
    return (ijk @ a[:3, :3].T + a[:3, 3]).to(torch.float32)


def world_to_grid_coords(points: torch.Tensor, shape: tuple[int, int, int], affine: np.ndarray) -> torch.Tensor:
    """World points ``[..., 3]`` -> ``grid_sample`` coordinates of a volume stored as ``[X, Y, Z]``.

    ``grid_sample`` on a ``[N, C, D, H, W]`` input reads the last grid component as the W index: for a
    volume laid out (X, Y, Z) the grid is (z, y, x), each normalised to [-1, 1] (align_corners=True).
    """
    inv = torch.as_tensor(np.linalg.inv(affine), dtype=torch.float32)
    ijk = points @ inv[:3, :3].T + inv[:3, 3]
    size = torch.tensor([max(n - 1, 1) for n in shape], dtype=torch.float32)
    norm = ijk / size * 2.0 - 1.0
    return norm.flip(-1)


@dataclass
class SubjectWarps:
    """Per-subject ``world -> template`` maps: ``x -> c + A_b (x - c) + t_b + disp_b(x)``."""

    linear: torch.Tensor  # [B, 3, 3]
    shift: torch.Tensor  # [B, 3]
    disp: torch.Tensor  # [B, 3, cx, cy, cz] displacement (mm) on a coarse control lattice
    disp_affine: np.ndarray  # control lattice voxel -> world

    def select(self, i: int) -> SubjectWarps:
        """The warp of subject ``i`` alone (batch of one)."""
        return SubjectWarps(self.linear[i : i + 1], self.shift[i : i + 1], self.disp[i : i + 1], self.disp_affine)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """``points [B, ..., 3]`` (subject world mm) -> template world mm, same shape."""
        b = points.shape[0]
        flat = points.reshape(b, -1, 3)
        c = torch.tensor(BRAIN_CENTRE_MM, dtype=torch.float32)
        out = torch.einsum("bij,bnj->bni", self.linear, flat - c) + c + self.shift[:, None, :]
        coords = world_to_grid_coords(flat, tuple(self.disp.shape[2:]), self.disp_affine)
        d = F.grid_sample(self.disp, coords[:, :, None, None, :], mode="bilinear", padding_mode="border", align_corners=True)
        out = out + d[:, :, :, 0, 0].transpose(1, 2)
        return out.reshape(points.shape)


def make_warps(params: list[dict], lattice_mm: float = 24.0) -> SubjectWarps:
    """Build the batched warps from per-subject draws (``rotation_deg``, ``scale``, ``shift_mm``, ``disp_noise``)."""
    lo, hi = brain_bbox_mm(24.0)
    shape = tuple(int(math.ceil((hi[i] - lo[i]) / lattice_mm)) + 1 for i in range(3))
    aff = np.eye(4)
    aff[:3, :3] = np.eye(3) * lattice_mm
    aff[:3, 3] = lo
    lin, shift, disp = [], [], []
    for p in params:
        rx, ry, rz = np.deg2rad(p["rotation_deg"])
        rot_x = np.array([[1, 0, 0], [0, math.cos(rx), -math.sin(rx)], [0, math.sin(rx), math.cos(rx)]])
        rot_y = np.array([[math.cos(ry), 0, math.sin(ry)], [0, 1, 0], [-math.sin(ry), 0, math.cos(ry)]])
        rot_z = np.array([[math.cos(rz), -math.sin(rz), 0], [math.sin(rz), math.cos(rz), 0], [0, 0, 1]])
        # world -> template: a subject with a larger head (scale > 1) maps to a smaller template region
        lin.append(rot_z @ rot_y @ rot_x @ np.diag(1.0 / np.asarray(p["scale"])))
        shift.append(p["shift_mm"])
        noise = np.asarray(p["disp_noise"], dtype=np.float64)  # [3, *shape] standard normal
        disp.append(noise[:, : shape[0], : shape[1], : shape[2]] * p["disp_mm"])
    return SubjectWarps(
        torch.as_tensor(np.stack(lin), dtype=torch.float32),
        torch.as_tensor(np.stack(shift), dtype=torch.float32),
        torch.as_tensor(np.stack(disp), dtype=torch.float32),
        aff,
    )


def lattice_shape(lattice_mm: float = 24.0) -> tuple[int, int, int]:
    lo, hi = brain_bbox_mm(24.0)
    return tuple(int(math.ceil((hi[i] - lo[i]) / lattice_mm)) + 1 for i in range(3))  # type: ignore[return-value]


def sample_anatomy(template: Template, warps: SubjectWarps, points: torch.Tensor) -> torch.Tensor:
    """Template channels at subject world ``points [B, X, Y, Z, 3]`` -> ``[B, 5, X, Y, Z]`` (zeros outside)."""
    b = points.shape[0]
    tpl_mm = warps(points)
    coords = world_to_grid_coords(tpl_mm, template.shape, template.affine)
    src = template.data[None].expand(b, -1, -1, -1, -1)
    return F.grid_sample(src, coords, mode="bilinear", padding_mode="zeros", align_corners=True)
