"""File output that never leaves half-written files: every writer goes through a temp file + ``os.replace``.

Formats: CSV, JSON, YAML text, PNG (matplotlib figures), NIfTI (keeping the input geometry),
``torch.save`` tensors (loaded back with ``weights_only=True``). No pickle for user-facing data.
Heavy imports (nibabel, matplotlib) happen inside the functions that need them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tgrowth.errors import ConfigError, TgrowthError

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_csv",
    "read_csv",
    "write_json",
    "save_figure",
    "save_nifti",
    "prepare_output_dir",
]


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix if suffix is not None else "".join(path.suffixes), dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _csv_value(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
        try:
            v = v.item()
        except (ValueError, RuntimeError):
            pass
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return repr(v) if abs(v) >= 1e-4 or v == 0 else f"{v:.6e}"
    return "" if v is None else v


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV (columns: given, else first-seen order). Atomic."""
    rows = list(rows)
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(k for k in r if k not in columns)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_value(r.get(k)) for k in columns})
    return atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a UTF-8 byte-order mark (Excel) is dropped
        return list(csv.DictReader(fh))


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def save_nifti(path: str | Path, data: Any, affine: Any, header: Any = None) -> Path:
    """Write a NIfTI (``.nii.gz``) with the given affine (and the input header's geometry if given)."""
    import nibabel as nib
    import numpy as np

    arr = data.detach().cpu().numpy() if hasattr(data, "detach") else np.asarray(data)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64), header=hdr)
    if hdr is not None:
        img.set_data_dtype(arr.dtype)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def prepare_output_dir(path: str | Path, overwrite: bool = False, resume: bool = False,
                       resume_hint: str = "resume=true where the command can continue a run") -> Path:
    """Create ``path``; refuse an existing non-empty folder unless ``overwrite`` or ``resume``.
    ``resume_hint``: how the command continues a run (training: ``ckpt_path=last``), named in the refusal."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TgrowthError(f"output_dir {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resume):
        raise TgrowthError(
            f"output_dir {path} exists and is not empty; pass overwrite=true to write into it (or {resume_hint})"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file's bytes (e.g. a model file recorded in a run's state)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def refuse_output_inside(output_dir: str | Path, data_root: str | Path | None, key: str = "data.root") -> None:
    """Refuse an ``output_dir`` equal to, or inside, the input data folder (outputs must never mix with data)."""
    if not data_root:
        return
    out, root = Path(output_dir).resolve(), Path(str(data_root)).resolve()
    if out == root or root in out.parents:
        raise ConfigError(f"output_dir {output_dir} is {'the same folder as' if out == root else 'inside'} "
                           f"{key}={data_root}: choose an output folder outside the input data")


def make_writable_dir(path: str | Path) -> Path:
    """``mkdir -p`` that turns a permission or file-system error into a message naming the folder."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".tgrowth-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TgrowthError(f"output_dir {path} cannot be written: {exc.strerror or exc}") from None
    return path
