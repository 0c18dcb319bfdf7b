"""Config machinery shared by every command.

Schemas are dataclasses; each field carries its help text in ``metadata["help"]`` via
:func:`doc`, so ``tgrowth <cmd> --help`` can list every key with its meaning.

YAML files may name base files with a top-level ``extends:`` (a path or a list of paths,
relative to the file). Merge order: schema defaults < bases < file < later files < dotlist.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tgrowth.errors import ConfigError

__all__ = [
    "ConfigError",
    "RunConfig",
    "constructor_kwargs",
    "TrainerConfig",
    "WandbConfig",
    "doc",
    "describe_schema",
    "load_config",
    "save_resolved_config",
    "to_flat_dict",
]


def doc(default: Any = MISSING, help: str = "", *, factory: Any = None) -> Any:  # noqa: A002
    """A dataclass field with a help text. Use ``factory=`` for mutable defaults."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": help})
    if is_dataclass(default) and not isinstance(default, type):
        value = default
        return field(default_factory=lambda: dataclasses.replace(value), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# --------------------------------------------------------------------------- shared parts
@dataclass
class TrainerConfig:
    """Passed to ``pytorch_lightning.Trainer`` (keys keep Lightning's names)."""

    accelerator: str = doc("auto", "Lightning accelerator: auto, cpu, gpu, mps.")
    devices: Any = doc("auto", "Number of devices, a list of device ids, or 'auto'.")
    strategy: str = doc("auto", "Lightning strategy: auto, ddp, ddp_spawn, ddp_find_unused_parameters_true, ...")
    num_nodes: int = doc(1, "Number of nodes (multi-node DDP, e.g. under SLURM).")
    precision: str = doc("32-true", "Lightning precision: 32-true, bf16-mixed (GPU), 16-mixed, 64-true.")
    max_steps: int = doc(-1, "Stop after this many optimisation steps (-1: use max_epochs).")
    max_epochs: Optional[int] = doc(None, "Stop after this many epochs (None: Lightning's default or max_steps).")
    log_every_n_steps: int = doc(10, "Log training metrics every N steps.")
    val_check_interval: Optional[float] = doc(None, "Validate every N steps (int) or fraction of an epoch (float).")
    check_val_every_n_epoch: Optional[int] = doc(1, "Validate every N epochs.")
    limit_val_batches: Optional[float] = doc(None, "Limit validation batches (int count or float fraction).")
    gradient_clip_val: Optional[float] = doc(None, "Gradient norm clipping value (None: off).")
    accumulate_grad_batches: int = doc(1, "Accumulate gradients over N batches.")
    enable_progress_bar: bool = doc(True, "Show Lightning's progress bars.")
    deterministic: bool = doc(False, "Ask torch for deterministic algorithms.")


@dataclass
class WandbConfig:
    """Experiment tracking. Offline by default: runs land in ``<output_dir>/wandb``; ``wandb sync`` later."""

    enabled: bool = doc(True, "Log to wandb (offline unless mode=online).")
    mode: str = doc("offline", "wandb mode: offline (default, no account/network needed), online, disabled.")
    project: str = doc("tgrowth", "wandb project name.")
    entity: Optional[str] = doc(None, "wandb entity (team/user); None: your default.")
    group: Optional[str] = doc(None, "Run group in the dashboard; None: the experiment name.")
    tags: list[str] = doc([], "Extra tags (the command name is always added).")
    dir: Optional[str] = doc(None, "Where wandb writes its run folder; None: output_dir.")
    run_id: Optional[str] = doc(None, "Resume this wandb run id; None: new run (training resume reuses the stored id).")


@dataclass
class RunConfig:
    """Keys every command has."""

    experiment: str = doc("default", "Experiment name: wandb group and the name in reports.")
    output_dir: str = doc("runs/default", "Where the run writes everything (resolved config included).")
    seed: int = doc(0, "Random seed; same seed and config, same results.")
    overwrite: bool = doc(False, "Allow writing into an existing, non-empty output_dir.")
    strict: bool = doc(False, "Fail on the first bad subject instead of reporting it and continuing.")


# --------------------------------------------------------------------------- loading
def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> DictConfig:
    path = path.expanduser()
    if not path.is_file():
        where = f" (extended from {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{where}")
    if path.resolve() in chain:
        raise ConfigError(f"config files extend each other in a cycle: {' -> '.join(map(str, chain + (path,)))}")
    try:
        data = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"cannot parse config file {path}: {exc}") from exc
    if data is None:
        data = OmegaConf.create({})
    if not isinstance(data, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not a {type(data).__name__}")
    bases = data.pop("extends", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    merged = OmegaConf.create({})
    for base in bases:
        merged = OmegaConf.merge(merged, _read_yaml(path.parent / str(base), chain + (path.resolve(),)))
    return OmegaConf.merge(merged, data)


def _is_open_mapping(node: Any) -> bool:
    """True where the schema allows arbitrary keys (a ``dict[str, Any]`` field)."""
    return isinstance(node, DictConfig) and node._metadata.object_type in (None, dict)


def _open_mappings(node: DictConfig) -> None:
    """Let ``dict[str, Any]`` fields take new keys (struct mode would refuse them); typed sections stay closed."""
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none():
            if _is_open_mapping(child):
                OmegaConf.set_struct(child, False)
            else:
                _open_mappings(child)


def _check_keys(schema_node: DictConfig, data: Any, source: str, prefix: str = "",
                renamed: dict[str, str] | None = None) -> None:
    if not isinstance(data, DictConfig) or _is_open_mapping(schema_node):
        return
    valid = [str(k) for k in schema_node.keys()]
    for key in data.keys():
        key = str(key)
        full = f"{prefix}{key}"
        if key not in valid and renamed and full in renamed:
            raise ConfigError(f"{source}: config key '{full}' is no longer valid: {renamed[full]}")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            where = f" under '{prefix[:-1]}'" if prefix else ""
            raise ConfigError(
                f"{source}: unknown config key '{full}'.{hint} Valid keys{where}: {', '.join(valid)}"
            )
        child = schema_node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none():
            value = data._get_node(key)
            if not isinstance(value, DictConfig) and not (hasattr(value, "_is_none") and value._is_none()):
                keys = ", ".join(str(k) for k in child.keys())
                raise ConfigError(f"{source}: config key '{full}' is a section of keys ({keys}), not a single value; "
                                  f"got {data[key]!r}. Set its keys instead, e.g. {full}.<key>=...")
            _check_keys(child, value, source, f"{full}.", renamed)


def _merge(cfg: DictConfig, data: DictConfig, source: str, renamed: dict[str, str] | None = None) -> DictConfig:
    _check_keys(cfg, data, source, renamed=renamed)
    try:
        return OmegaConf.merge(cfg, data)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        msg = str(exc).splitlines()[0]
        where = f"config key '{key}'" if key else "a config value"
        raise ConfigError(f"{source}: invalid value for {where}: {msg}") from exc


def load_config(schema: type, files: list[str] | tuple[str, ...] = (), overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Schema defaults, then each YAML file (with its ``extends:`` bases), then ``key=value`` overrides.

    A schema may list keys it no longer has in a class attribute ``RENAMED = {"old.key": "what to write
    instead"}``: such a key is refused with that advice instead of a guess among the valid keys.
    """
    renamed = getattr(schema, "RENAMED", None)
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    _open_mappings(cfg)
    for f in files:
        cfg = _merge(cfg, _read_yaml(Path(f)), source=str(f), renamed=renamed)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got: {' '.join(bad)}")
    try:
        dot = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {exc}") from exc
    cfg = _merge(cfg, dot, source="command line", renamed=renamed)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"required config keys have no value: {', '.join(missing)} (set them in the YAML or as key=value)")
    return cfg


def constructor_kwargs(section: DictConfig, **derived: Any) -> dict[str, Any]:
    """A config section that mirrors a constructor, as its keyword arguments: plain Python values (lists,
    dicts, enums as their values), plus the ``derived`` arguments the section leaves to other sections
    (e.g. ``image_size=cfg.data.image_size``). The one way a config becomes arguments:
    ``UNet(**constructor_kwargs(cfg.model, image_size=..., in_channels=...))``."""
    return {**OmegaConf.to_container(section, resolve=True, enum_to_str=True), **derived}


# --------------------------------------------------------------------------- output
def to_flat_dict(cfg: DictConfig, sep: str = ".") -> dict[str, Any]:
    """``{"fit.n_bootstrap": 100, ...}``: the resolved config as flat keys (wandb config, CSV headers)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            if not node and prefix:
                out[prefix[: -len(sep)]] = {}
            for k, v in node.items():
                walk(v, f"{prefix}{k}{sep}")
        else:
            out[prefix[: -len(sep)]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def save_resolved_config(cfg: DictConfig, output_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the fully resolved config into the run folder (atomically)."""
    from tgrowth.io import atomic_write_text

    path = Path(output_dir) / name
    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
    return path


# --------------------------------------------------------------------------- help
def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        return f"{_type_name(args[0])}?" if len(args) == 1 else " | ".join(_type_name(a) for a in args)
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "dict"
    if tp is Any:
        return "any"
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "|".join(m.name for m in tp)
    return getattr(tp, "__name__", str(tp))


def describe_schema(schema: type, prefix: str = "") -> list[str]:
    """One line per key: ``key (type, default): help``; nested dataclasses are expanded."""
    lines: list[str] = []
    hints = get_type_hints(schema)
    for f in fields(schema):
        tp = hints[f.name]
        inner = tp
        if get_origin(tp) is Union:
            args = [a for a in get_args(tp) if a is not type(None)]
            inner = args[0] if len(args) == 1 else tp
        if is_dataclass(inner):
            head = (inner.__doc__ or "").strip().splitlines()
            lines.append(f"{prefix}{f.name}.*: {f.metadata.get('help') or (head[0] if head else '')}")
            lines.extend(describe_schema(inner, f"{prefix}{f.name}."))
            continue
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "required"
        if isinstance(default, list):
            default = [v.name if isinstance(v, Enum) else v for v in default]
        elif isinstance(default, Enum):
            default = default.name
        lines.append(f"{prefix}{f.name} ({_type_name(tp)}, default {default!r}): {f.metadata.get('help', '')}")
    return lines

