"""Config schema of `tgrowth fit-ode` (owned by the ODE work; the `fit` section is reused by predict)."""

from dataclasses import dataclass

from tgrowth.config.base import RunConfig, WandbConfig, doc


@dataclass
class FitOdeConfig(RunConfig):
    """Placeholder until the ODE fit lands."""

    wandb: WandbConfig = doc(WandbConfig(), "Experiment tracking.")
