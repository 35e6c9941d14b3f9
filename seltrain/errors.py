"""User-facing errors: each one is a single line that names the problem and the fix.

The CLI prints ``seltrain: error: <message>`` and exits with ``exit_code``; no traceback.
"""


class SeltrainError(Exception):
    exit_code = 1


class ConfigError(SeltrainError):
    """A recipe or override is wrong: unknown key, bad type, missing file, unknown name."""
    exit_code = 2


class DataError(SeltrainError):
    """A dataset or .beton file is missing, corrupt, or disagrees with the recipe."""
    exit_code = 3


class CheckpointError(SeltrainError):
    """A checkpoint is missing, corrupt or belongs to a different run."""
    exit_code = 3


class TrainingError(SeltrainError):
    """Training cannot go on (a NaN/inf loss, for instance); the last good checkpoint stays."""
    exit_code = 4
