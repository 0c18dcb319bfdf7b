"""Config schema of `tgrowth data-check` and the data sections other commands reuse (owned by the data work)."""

from dataclasses import dataclass

from tgrowth.config.base import RunConfig, doc


@dataclass
class DataCheckConfig(RunConfig):
    """Placeholder until data-check lands."""

    root: str = doc("???", "Data set folder.")
    json: bool = doc(False, "Print machine-readable JSON.")
