"""Typed experiment configs: one OmegaConf structured schema per command.

`load_config(Schema, files, overrides)` merges YAML files (which may `extends:` base files)
and dotlist overrides onto the schema; unknown or misspelled keys fail with the valid keys.
"""

from tgrowth.config.base import (
    ConfigError,
    RunConfig,
    TrainerConfig,
    WandbConfig,
    describe_schema,
    load_config,
    save_resolved_config,
    to_flat_dict,
)

__all__ = [
    "ConfigError",
    "RunConfig",
    "TrainerConfig",
    "WandbConfig",
    "describe_schema",
    "load_config",
    "save_resolved_config",
    "to_flat_dict",
]
