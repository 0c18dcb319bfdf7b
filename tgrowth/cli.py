"""``tgrowth <command> -c experiment.yaml [-c more.yaml] key=value ...``

Thin entry point: subcommand -> typed config (schema + YAML + overrides) -> one run function.
Schemas and run functions are imported lazily, so ``tgrowth --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import textwrap
from dataclasses import dataclass, field

from tgrowth.errors import TgrowthError


@dataclass(frozen=True)
class Command:
    schema: str  # "module:Class"
    run: str  # "module:function", called with the resolved DictConfig, returns an exit code or None
    help: str
    positional: str | None = None  # config key filled by one optional positional argument
    flags: dict[str, str] = field(default_factory=dict)  # --flag -> boolean config key


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
    p.add_argument("-c", "--config", action="append", default=[], metavar="YAML",
                   help="experiment YAML (repeatable; later files win; files may 'extends:' bases)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    for flag, key in cmd.flags.items():
        p.add_argument(flag, action="store_true", help=f"same as {key}=true")
    p.add_argument("args", nargs="*", metavar="key=value", help="config overrides (OmegaConf dotlist)")
    return p


def _command_help(name: str, cmd: Command, parser: argparse.ArgumentParser) -> str:
    from tgrowth.config.base import describe_schema

    schema = _import(cmd.schema)
    usage = parser.format_usage().strip()
    if cmd.positional:
        usage += f"  (a bare argument sets {cmd.positional})"
    keys = "\n".join("  " + line for line in describe_schema(schema))
    return f"{usage}\n\n{cmd.help}\n\n{parser.format_help().split(chr(10), 2)[-1].strip()}\n\nConfig keys:\n{keys}\n"


def main_help() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {n.ljust(width)}  {c.help}" for n, c in COMMANDS.items()]
    return textwrap.dedent(
        """\
        usage: tgrowth <command> -c experiments/<file>.yaml [key=value ...]

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
        overrides = list(args.args)
        bare = [a for a in overrides if "=" not in a]
        if bare:
            if cmd.positional and len(bare) == 1:
                overrides = [a for a in overrides if "=" in a] + [f"{cmd.positional}={bare[0]}"]
            else:
                raise TgrowthError(f"unexpected argument(s) {bare}: overrides look like key=value")
        for flag, key in cmd.flags.items():
            if getattr(args, flag.lstrip("-").replace("-", "_")):
                overrides.append(f"{key}=true")

        from omegaconf import OmegaConf

        from tgrowth.config.base import load_config

        cfg = load_config(_import(cmd.schema), args.config, overrides)
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
        print(f"tgrowth {name}: interrupted; finished outputs are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
