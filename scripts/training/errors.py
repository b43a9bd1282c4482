"""The refusals of the training library and its scripts, and the argument checks that raise them.

`ArgumentError` (a command-line argument), `DataError` (a data file or dataset), `CheckpointError` (a checkpoint or
output folder) and `TrainingError` (a loss or metric that is not finite) name what is wrong and the fix; a script's
`main` runs inside `errors_without_traceback`, which prints them as one message, without a traceback.
"""

import contextlib
import math
import sys


class DataError(ValueError):
    """A data file or dataset that cannot be used as it is. The message names the file (and the line) and the fix."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file that is not there."""


class DataWarning(UserWarning):
    """Data that was dropped or that looks wrong, with counts."""


class ArgumentError(ValueError):
    """A command-line argument that cannot work; the message names it and says what would."""


class TrainingError(RuntimeError):
    """Training went wrong (a loss or a metric that is not finite); the message says where and what to try."""


class CheckpointError(RuntimeError):
    """A checkpoint or output folder that cannot be used: missing, corrupt, written by an incompatible run, or
    holding an earlier run's results; or a checkpoint that could not be written."""


@contextlib.contextmanager
def errors_without_traceback():
    """For a script's `__main__`: a refusal of ours (a bad argument, file, folder or checkpoint, a diverged run) is
    printed as one message, without a traceback, and the process exits with status 1. Anything else keeps its
    traceback: that is a bug."""
    try:
        yield
    except (ArgumentError, DataError, CheckpointError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def run_command(run, parse_args, argv: list[str] | None) -> int:
    """A command's `main(argv)`: its arguments parsed, its run, our refusals as one line (`errors_without_traceback`);
    the exit status: 130 for a run stopped by Ctrl-C or SIGTERM (its checkpoint saved), else 0."""
    with errors_without_traceback():
        outcome = run(*parse_args(argv))
    return 130 if getattr(outcome, "stop_reason", None) == "interrupted" else 0


def check_positive(**values: float | None) -> None:
    """Each value that is given must be a finite number above 0 (a learning rate of 0 trains nothing)."""
    for name, value in values.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ArgumentError(f"--{name} must be a number above 0, got {value}")


def check_fraction(**values: float) -> None:
    """Each value must be in [0, 1): a dropout, a smoothing, a beta."""
    for name, value in values.items():
        if not 0 <= value < 1:
            raise ArgumentError(f"--{name} must be at least 0 and below 1, got {value}")
