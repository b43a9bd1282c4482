"""The refusals of the training library and its scripts, and the argument checks that raise them.

`ArgumentError` (a command-line argument), `DataError` (a data file or dataset), `CheckpointError` (a checkpoint or
output folder), `TrainingError` (a loss or metric that is not finite) and `NetworkError` (the Hugging Face Hub out
of reach) name what is wrong and the fix; a command's `main` runs inside `errors_without_traceback`, which prints
them as one message, without a traceback, and turns Ctrl-C into one line saying what was kept and how to go on
(`when_interrupted`), exit status 130. Its arguments are parsed by `parse_arguments`: an unknown option is
argparse's usual `error:` line, exit status 2. `hub_unreachable` tells a network failure from any other.
"""

import contextlib
import math
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from vanilla_transformer.modeling.config_checks import ConfigError


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


class NetworkError(RuntimeError):
    """The Hugging Face Hub could not be reached, or refused a request; the message says what was kept."""


# ConfigError: a model folder's config.json refused by the models themselves (a wrong type, a size beyond this machine,
# another family's folder): a refusal of ours too, said in one line
REFUSALS = (ArgumentError, DataError, CheckpointError, TrainingError, NetworkError, ConfigError)
# What Ctrl-C leaves behind, one entry per errors_without_traceback being run (`when_interrupted` sets the innermost)
_KEPT: list[Callable[[], str] | None] = []


@contextlib.contextmanager
def errors_without_traceback():
    """Around a command's work: a refusal of ours (a bad argument, file, folder or checkpoint, a diverged run, the Hub
    out of reach) is printed as one message, without a traceback, and the process exits with status 1; Ctrl-C
    outside the training loop (which stops at a checkpoint by itself) with status 130 and one line: what was kept
    and how to go on (`when_interrupted`). Anything else keeps its traceback: that is a bug."""
    _KEPT.append(None)
    try:
        yield
    except REFUSALS as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except BaseException as error:  # Ctrl-C, or an error raised while a library cleaned up after it
        interruption = _ctrl_c_of(error)
        if interruption is None:
            raise
        kept = "nothing more was written; run the same command again"
        with contextlib.suppress(Exception):  # a second failure must not hide the interruption behind a traceback
            kept = _KEPT[-1]() if _KEPT[-1] is not None else kept
        said = f"{interruption}; " if str(interruption) else ""
        print(f"interrupted (Ctrl-C): {said}{kept}", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        _KEPT.pop()


def _ctrl_c_of(error: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt `error` is, or was raised while handling (datasets' pool, on Ctrl-C, fails to wait for
    its workers: a TimeoutError)."""
    seen = []
    while error is not None and error not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.append(error)
        error = error.__cause__ or error.__context__
    return None


def _leave_ctrl_c_to_the_command() -> None:
    """In a process forked while a command runs (datasets' tokenizing workers, data loader workers), Ctrl-C is
    ignored: the command stops them, with its one line, where each would print a traceback of its own."""
    if _KEPT:
        with contextlib.suppress(ValueError):  # forked from a thread other than the main one: no signal handlers
            signal.signal(signal.SIGINT, signal.SIG_IGN)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_leave_ctrl_c_to_the_command)


def when_interrupted(kept: Callable[[], str]) -> None:
    """From now on, Ctrl-C in the enclosing `errors_without_traceback` prints `kept()`: what the command has kept
    (computed then, from what is on disk) and how to go on."""
    if _KEPT:
        _KEPT[-1] = kept


def parse_arguments(parser, argv: list[str] | None) -> tuple:
    """`parser.parse_args_into_dataclasses(argv)` of an `HfArgumentParser`, with argparse's own refusal of an
    option it does not know (a misspelling): the usage and `error: unrecognized arguments: ...`, exit status 2,
    where HfArgumentParser raises a ValueError with a traceback. Looked for first: the dataclasses' own checks would
    speak of the option meant (`--max_step 10`: "give at least one of --max_steps, ...")."""
    unknown = parser.parse_known_args(args=argv)[1]
    if not unknown:
        *arguments, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return tuple(arguments)


def run_command(run, parse_args, argv: list[str] | None, kept: Callable[..., str] | None = None) -> int:
    """A command's `main(argv)`: its arguments parsed (`parse_args(argv)`, or through `parse_arguments` when it is
    an HfArgumentParser's `parse_args_into_dataclasses`), its run, our refusals as one line
    (`errors_without_traceback`); `kept(*arguments)`: what Ctrl-C outside the training loop leaves behind. The exit
    status: 130 for a run stopped by Ctrl-C or SIGTERM (its checkpoint saved), else 0."""
    with errors_without_traceback():
        parser = getattr(parse_args, "__self__", None)
        if getattr(parse_args, "__name__", "") == "parse_args_into_dataclasses" and parser is not None:
            arguments = parse_arguments(parser, argv)
        else:
            arguments = parse_args(argv)
        if kept is not None:
            when_interrupted(lambda: kept(*arguments))
        outcome = run(*arguments)
    return 130 if getattr(outcome, "stop_reason", None) == "interrupted" else 0


def kept_in_run_folder(output_dir) -> str:
    """What an interrupted training command (our loop's `checkpoints/step-N`, or Trainer's `checkpoint-N`) has kept
    in its run folder, and how to go on."""
    folder = Path(output_dir).expanduser()
    found = [path for pattern in ("checkpoints/step-*", "checkpoint-*") for path in folder.glob(pattern)
             if path.name.rsplit("-", 1)[1].isdigit() and path.is_dir() and not path.is_symlink()]
    if found:
        latest = max(found, key=lambda path: int(path.name.rsplit("-", 1)[1]))
        return f"the checkpoint {latest} is kept: continue with the same command and --resume"
    return f"no checkpoint in {folder} yet, nothing to resume: run the same command again"


# Network failures by the name of their class (httpx, requests, urllib3, aiohttp: none need be imported here)
_NETWORK_ERRORS = ("ConnectError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout", "TimeoutException",
                   "NetworkError", "ReadError", "WriteError", "RemoteProtocolError", "ProxyError", "SSLError",
                   "MaxRetryError", "NewConnectionError", "ClientConnectorError", "OfflineModeIsEnabled")


def hub_unreachable(error: BaseException) -> str | None:
    """"cannot reach the Hugging Face Hub (why)" when `error`, or an error it was raised from, is a network failure:
    offline mode (HF_HUB_OFFLINE), no connection, a timeout, a server error (5xx); None for any other error (a
    missing repo, a refused token, a local file)."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    for link in reversed(chain):  # the deepest first: the socket's own words
        name = type(link).__name__
        status = getattr(getattr(link, "response", None), "status_code", None)
        if name == "OfflineModeIsEnabled" or (offline and (name == "LocalEntryNotFoundError"
                                                            or isinstance(link, ConnectionError))):
            return "cannot reach the Hugging Face Hub (offline mode: HF_HUB_OFFLINE is set)"
        if isinstance(status, int) and status >= 500:
            return f"cannot reach the Hugging Face Hub (it answered {status}: the service is down; try again later)"
        if isinstance(link, (ConnectionError, TimeoutError, socket.gaierror)) or name in _NETWORK_ERRORS:
            words = (str(link).strip().splitlines() or [""])[0]
            return f"cannot reach the Hugging Face Hub ({name}{': ' + words if words else ''})"
    return None


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
