"""``tgrowth <command> -c experiment.yaml [more.yaml ...] key=value ...``

Thin entry point: subcommand -> typed config (schema + YAML + overrides) -> one run function.
Schemas and run functions are imported lazily, so ``tgrowth --help`` is instant.

``-c`` takes one or more files (``-c a.yaml b.yaml``; repeating ``-c`` works too; later files win). The
arguments after ``-c`` that contain ``=`` are overrides, not files; for a command with bare arguments
(``data-check ROOT``, ``runs compare DIR ...``) an argument that is not a ``.yaml``/``.yml`` file is a bare
argument.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from tgrowth.errors import ConfigError, TgrowthError


@dataclass(frozen=True)
class Command:
    schema: str  # "module:Class"
    run: str  # "module:function", called with the resolved DictConfig, returns an exit code or None
    help: str
    positional: str | None = None  # config key filled by the bare (non key=value) argument
    positional_many: bool = False  # the positional key is a list: every bare argument goes into it
    flags: dict[str, str] = field(default_factory=dict)  # --flag -> boolean config key
    options: dict[str, str] = field(default_factory=dict)  # --option VALUE -> config key


COMMANDS: dict[str, Command] = {
    "fit-ode": Command(
        "tgrowth.config.ode:FitOdeConfig", "tgrowth.ode.run:run",
        "Fit a mechanistic growth ODE to tumour sizes over time (batched bootstrap) and forecast.",
    ),
    "synth": Command(
        "tgrowth.config.synth:SynthConfig", "tgrowth.synth.run:run",
        "Generate the synthetic longitudinal tumour phantom (longitudinal format) into output_dir.",
    ),
    "data-check": Command(
        "tgrowth.config.data:DataCheckConfig", "data_modules.check:run",
        "Validate a data set (BraTS, longitudinal or the authors' 2D layout) before a long run.",
        positional="root", flags={"--json": "json"},
    ),
    "train-denoiser": Command(
        "tgrowth.config.diffusion:TrainDenoiserConfig", "tgrowth.diffusion.train:train_denoiser",
        "Train the DDPM denoiser (UNet, epsilon prediction, EMA).",
    ),
    "train-regressor": Command(
        "tgrowth.config.diffusion:TrainRegressorConfig", "tgrowth.diffusion.train:train_regressor",
        "Train the noisy tumour-area regressor used for guidance.",
    ),
    "train-segmenter": Command(
        "tgrowth.config.diffusion:TrainSegmenterConfig", "tgrowth.diffusion.train:train_segmenter",
        "Train the tumour segmenter used to measure generated images.",
    ),
    "predict": Command(
        "tgrowth.config.predict:PredictConfig", "tgrowth.predict:run",
        "ODE forecast + guided diffusion: predicted follow-ups, probability maps and metrics.",
    ),
    "sweep": Command(
        "tgrowth.config.predict:SweepConfig", "tgrowth.sweep:run",
        "Run a guidance-scale / noise-level grid locally (no wandb server needed).",
    ),
    "demo": Command(
        "tgrowth.config.predict:DemoConfig", "tgrowth.demo:run",
        "End-to-end demo: synth data, train tiny models, predict, metrics table.",
    ),
    "runs compare": Command(
        "tgrowth.config.runs:RunsCompareConfig", "tgrowth.runs:run",
        "Key metrics of finished run folders side by side (predict, fit-ode, training); no wandb needed.",
        positional="dirs", positional_many=True, options={"--csv": "csv"},
    ),
}


def _import(ref: str):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _command_parser(name: str, cmd: Command) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"tgrowth {name}", description=cmd.help, add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-h", "--help", action="store_true", help="show the config keys and exit")
    p.add_argument("-c", "--config", action="extend", nargs="+", default=[], metavar="YAML",
                   help="experiment YAML file(s): -c a.yaml b.yaml or -c a.yaml -c b.yaml; later files win; "
                        "files may 'extends:' bases")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    for flag, key in cmd.flags.items():
        p.add_argument(flag, action="store_true", help=f"same as {key}=true")
    for opt, key in cmd.options.items():
        p.add_argument(opt, metavar=key.upper(), help=f"same as {key}=VALUE")
    p.add_argument("args", nargs="*", metavar="key=value", help="config overrides (OmegaConf dotlist)")
    return p


def _is_config_file(arg: str, cmd: Command) -> bool:
    """Whether an argument that argparse collected after ``-c`` is a config file (see the module docstring)."""
    if "=" in arg:
        return False
    return not cmd.positional or arg.endswith((".yaml", ".yml")) or Path(arg).is_file()


def _split_args(cmd: Command, config: list[str], args: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(config files, key=value overrides, bare arguments) from argparse's ``-c`` list and positionals."""
    files = [a for a in config if _is_config_file(a, cmd)]
    rest = [a for a in config if not _is_config_file(a, cmd)] + list(args)
    return files, [a for a in rest if "=" in a], [a for a in rest if "=" not in a]


def _command_help(name: str, cmd: Command, parser: argparse.ArgumentParser) -> str:
    from tgrowth.config.base import describe_schema

    schema = _import(cmd.schema)
    usage = parser.format_usage().rstrip()
    text = parser.format_help().strip()  # usage, description, arguments
    if cmd.positional:
        note = f"bare arguments set {cmd.positional}" if cmd.positional_many else f"a bare argument sets {cmd.positional}"
        text = text.replace(usage, f"{usage}  ({note})", 1)
    keys = "\n".join("  " + line for line in describe_schema(schema))
    return f"{text}\n\nConfig keys:\n{keys}\n"


def main_help() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {n.ljust(width)}  {c.help}" for n, c in COMMANDS.items()]
    return textwrap.dedent(
        """\
        usage: tgrowth <command> -c experiments/<file>.yaml [more.yaml ...] [key=value ...]

        Predict brain tumour growth: mechanistic ODE + gradient-guided DDIM diffusion.

        commands:
        """
    ) + "\n".join(lines) + "\n\n`tgrowth <command> --help` lists that command's config keys.\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(main_help())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS and rest and f"{name} {rest[0]}" in COMMANDS:  # two-word commands: runs compare
        name, rest = f"{name} {rest[0]}", rest[1:]
    if name not in COMMANDS:
        print(f"tgrowth: unknown command '{name}'. Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    cmd = COMMANDS[name]
    parser = _command_parser(name, cmd)
    args = parser.parse_args(rest)
    try:
        if args.help:
            print(_command_help(name, cmd, parser))
            return 0
        files, overrides, bare = _split_args(cmd, args.config, args.args)
        if bare:  # JSON strings and lists are YAML too: '007' stays a string, paths keep their characters
            if cmd.positional and cmd.positional_many:
                overrides.append(f"{cmd.positional}={json.dumps(bare)}")
            elif cmd.positional and len(bare) == 1:
                overrides.append(f"{cmd.positional}={json.dumps(bare[0])}")
            else:
                raise ConfigError(f"unexpected argument(s) {bare}: overrides look like key=value")
        for flag, key in cmd.flags.items():
            if getattr(args, flag.lstrip("-").replace("-", "_")):
                overrides.append(f"{key}=true")
        for opt, key in cmd.options.items():
            value = getattr(args, opt.lstrip("-").replace("-", "_"))
            if value is not None:
                overrides.append(f"{key}={json.dumps(value)}")

        from omegaconf import OmegaConf

        from tgrowth.config.base import load_config

        cfg = load_config(_import(cmd.schema), files, overrides)
        if args.print_config:
            print(OmegaConf.to_yaml(cfg, resolve=True))
            return 0
        logging.basicConfig(level=os.environ.get("TGROWTH_LOG", "INFO"), format="%(message)s")
        code = _import(cmd.run)(cfg)
        return int(code or 0)
    except TgrowthError as exc:
        print(f"tgrowth {name}: error: {exc}", file=sys.stderr)
        return 2 if type(exc).__name__ == "ConfigError" else 1
    except KeyboardInterrupt:
        how = {"predict": "rerun the same command with resume=true to continue",
               "sweep": "rerun the same command to start the sweep again",
               "train-denoiser": "rerun with ckpt_path=last to continue from the last checkpoint",
               "train-regressor": "rerun with ckpt_path=last to continue from the last checkpoint",
               "train-segmenter": "rerun with ckpt_path=last to continue from the last checkpoint",
               "demo": "rerun the same command: finished stages are reused"}.get(name, "rerun to start again")
        print(f"tgrowth {name}: interrupted; finished outputs are kept; {how}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
