"""Exceptions raised by crma_core (all subclass CRMAError so callers can catch one type)."""


class CRMAError(Exception):
    """Base class of every error crma_core raises on purpose."""


class ConfigError(CRMAError, ValueError):
    """A configuration value is out of range or inconsistent."""


class DataError(CRMAError, ValueError):
    """Training or validation data cannot be used (bad line, empty file, ...)."""


class NoTrainableTokensError(DataError):
    """The loss mask leaves no token to train on (e.g. every completion truncated away)."""


class QuantizationUnavailableError(CRMAError, RuntimeError):
    """QLoRA (bitsandbytes NF4) was asked for where it cannot run (no CUDA, no bitsandbytes)."""


class CheckpointError(CRMAError, ValueError):
    """A checkpoint or artifact directory is incomplete or does not match the model."""


class StaleCheckpointError(CheckpointError):
    """A checkpoint written by an earlier trainer whose optimizer this one cannot continue
    (the message says what changed)."""
