"""The predict run folder: output-dir policy, resume, per-subject records, rank split and merge.

Layout of ``output_dir``::

    config.yaml               resolved config of the latest (re)start
    run_state.json            fingerprint of the settings that change results (resume refuses a mismatch)
    <subject>/...             NIfTI, PNG, info.json (written last: a subject is finished when it exists)
    <subject>/metrics.json    that subject's metrics rows (merged into metrics.csv)
    .errors/<subject>.json    why a subject failed or was skipped (merged into errors.csv; retried on resume)
    metrics.csv, summary.json, errors.csv   merged by rank 0 at the end

Every file goes through ``tgrowth.io`` (atomic), so an interrupted run leaves only whole files behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tgrowth.errors import TgrowthError
from tgrowth.io import file_sha256, make_writable_dir, refuse_output_inside, write_json

STATE_FILE = "run_state.json"
ERRORS_DIR = ".errors"
# config keys that do not change a subject's outputs: a resumed run may change them freely
NEUTRAL_KEYS = ("overwrite", "resume", "strict", "plots", "trainer", "wandb", "output_dir", "experiment", "num_threads",
                "data.subjects", "data.split")


def fingerprint(cfg: DictConfig, neutral: Sequence[str] = NEUTRAL_KEYS) -> tuple[str, dict[str, Any]]:
    """Hash of the resolved config without the keys that do not change results."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    for key in neutral:
        node: Any = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], data


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def subject_dir(out: Path, subject: str) -> Path:
    return Path(out) / subject


def is_done(out: Path, subject: str) -> bool:
    return (subject_dir(out, subject) / "info.json").is_file()


def checkpoint_digests(cfg: DictConfig) -> dict[str, str | None]:
    """SHA-256 of each model file named in ``checkpoints`` (None where the file does not exist yet)."""
    out: dict[str, str | None] = {}
    for key, path in OmegaConf.to_container(cfg.checkpoints, resolve=True).items():
        p = Path(str(path))
        out[key] = file_sha256(p) if p.is_file() else None
    return out


def prepare_predict_dir(cfg: DictConfig) -> Path:
    """Apply the output-dir policy (refuse / overwrite / resume) and record the run's fingerprint.

    The fingerprint covers the resolved config (without :data:`NEUTRAL_KEYS`) and the SHA-256 of every model
    file, so ``resume=true`` refuses a model file that changed since the first part of the run.
    """
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise TgrowthError(f"output_dir {out} exists and is not a folder")
    refuse_output_inside(out, cfg.data.root)
    fp, data = fingerprint(cfg)
    data["checkpoint_sha256"] = checkpoint_digests(cfg)
    fp = hashlib.sha256((fp + json.dumps(data["checkpoint_sha256"], sort_keys=True)).encode()).hexdigest()[:16]
    state_path = out / STATE_FILE
    non_empty = out.is_dir() and any(out.iterdir())
    if non_empty and cfg.resume and not cfg.overwrite:
        if not state_path.is_file():
            raise TgrowthError(f"resume=true but output_dir {out} holds no predict run ({STATE_FILE} missing); "
                               "pass overwrite=true to write into it anyway")
        old = json.loads(state_path.read_text())
        if old.get("fingerprint") != fp:
            changes = _diff(old.get("config", {}), data)
            changes = [f"model file checkpoints.{c.split('.', 1)[1].split(':')[0]} changed since the run started "
                       "(its SHA-256 differs)" if c.startswith("checkpoint_sha256.") else c for c in changes]
            raise TgrowthError(
                f"resume=true but the settings differ from the run in {out}: {'; '.join(changes[:8]) or 'unknown'}. "
                "Rerun with the same settings, or pass overwrite=true to start again")
    elif non_empty and not cfg.overwrite:
        hint = ""
        if state_path.is_file():
            done = sum(1 for p in out.iterdir() if (p / "info.json").is_file())
            hint = (f" It holds a predict run ({done} subject(s) finished"
                    f"{'' if (out / 'summary.json').is_file() else ', unfinished'}).")
        raise TgrowthError(
            f"output_dir {out} exists and is not empty.{hint} Pass resume=true to continue it without redoing "
            "finished subjects, or overwrite=true to start again")
    elif non_empty and cfg.overwrite:
        # start again: previous subject results and merged tables would otherwise be reused or mixed in
        for p in out.iterdir():
            if p.is_dir() and ((p / "info.json").is_file() or (p / "metrics.json").is_file() or p.name == ERRORS_DIR):
                shutil.rmtree(p)
        for name in ("metrics.csv", "summary.json", "errors.csv", "wandb_run_id"):
            (out / name).unlink(missing_ok=True)
    make_writable_dir(out)
    write_json(state_path, {"fingerprint": fp, "config": data})
    return out


def split_for_rank(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Round-robin share of ``items`` for one rank (every item exactly once across ranks)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad rank {rank} of world size {world_size}")
    return list(items[rank::world_size])


def record_error(out: Path, subject: str, stage: str, message: str) -> None:
    write_json(Path(out) / ERRORS_DIR / f"{subject}.json", {"subject": subject, "stage": stage, "error": message})


def clear_error(out: Path, subject: str) -> None:
    (Path(out) / ERRORS_DIR / f"{subject}.json").unlink(missing_ok=True)


def collect(out: Path, subjects: Sequence[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Merge per-subject records: (metrics rows, info dicts, error records) in subject order."""
    out = Path(out)
    rows: list[dict[str, Any]] = []
    infos: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for s in subjects:
        d = subject_dir(out, s)
        if (d / "info.json").is_file():
            infos.append(json.loads((d / "info.json").read_text()))
            if (d / "metrics.json").is_file():
                rows.extend(json.loads((d / "metrics.json").read_text()))
        e = out / ERRORS_DIR / f"{s}.json"
        if e.is_file():
            errors.append(json.loads(e.read_text()))
    return rows, infos, errors


class Stopwatch:
    """Wall seconds of one subject's stages, for its info.json record: ``seconds`` (all) and ``stage_seconds``
    (``lap(name)`` closes the stage that ran since the previous lap; e.g. ``targets`` includes the FK calibration
    and ``generate`` the sampling), so a run says where its time per subject goes."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = round(self.stages.get(name, 0.0) + now - self.last, 2)
        self.last = now

    def record(self, **extra: Any) -> dict[str, Any]:
        return {"seconds": round(time.perf_counter() - self.start, 2), "stage_seconds": dict(self.stages), **extra}


def stage_medians(infos: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The median over subjects of each stage's seconds (``stage_seconds`` of their info.json records)."""
    names = list(dict.fromkeys(k for i in infos for k in i.get("stage_seconds", {})))
    return {k: statistics.median(i["stage_seconds"][k] for i in infos if k in i.get("stage_seconds", {}))
            for k in names}
