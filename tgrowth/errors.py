"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""


class TgrowthError(Exception):
    """An error caused by the user's input (data, config, paths); the message says what and where."""


class ConfigError(TgrowthError):
    """A config file or override is invalid (unknown key, wrong type, missing value)."""


class DataError(TgrowthError):
    """Input data are missing or invalid; the message names the subject, timepoint and file."""
