"""One run per folder: a lock file in the run folder (`.lock`), taken by every command that writes a run folder (our
loop's commands through `run_folder.prepare_output_dir`, the fine-tuning commands through
`finetuning.prepare_output_dir`; the main job through the commands' runs it calls).

- The lock is created atomically (`O_CREAT | O_EXCL`: of two runs that start together, one creates it) and holds
  its owner: host, pid, when the process started (to tell a reused pid), when the run started, and the command.
- A second run refuses, naming the run that holds the folder (`RunFolderLocked`).
- A stale lock, whose owner on this host is no longer running (killed, or the machine restarted), is named in a
  warning and taken over. A lock of another host is never taken over (nothing here can tell whether that run still
  runs): the message says which file to delete if the user is sure it does not.
- Only the main process of a multi-process run takes it. It is released when the run ends, and at exit for a run
  that raised; a process runs one run at a time, so a lock this very process holds is its own earlier run's, which
  ended by an exception before releasing it: taken over without a word.
"""

import atexit
import json
import os
import shlex
import socket
import sys
import time
import warnings
from pathlib import Path

from vanilla_transformer.scripts.training.errors import CheckpointError

LOCK_FILE = ".lock"
_held: dict[Path, dict] = {}  # {run folder (resolved): the record this process wrote in its lock}


class RunFolderLocked(CheckpointError):
    """Another run holds the folder (or its lock cannot be read)."""


class StaleLockWarning(UserWarning):
    """The lock of a run that is no longer running was taken over."""


def _process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (Linux's /proc; None elsewhere): a pid that the system
    gave to another process since has another start."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _record() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}


def _read(lock: Path) -> dict | None:
    """The lock's record; None when it is not one (unreadable, a link, not ours). Read without following a link,
    at most 4 kB: the file is as untrusted as the rest of the folder."""
    for attempt in range(20):  # a lock just created may not hold its record yet
        try:
            descriptor = os.open(lock, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(descriptor, "rb") as file:
                record = json.loads(file.read(4096))
        except FileNotFoundError:
            raise
        except (OSError, ValueError):
            record = None
        if (isinstance(record, dict) and isinstance(record.get("host"), str) and type(record.get("pid")) is int
                and record["pid"] > 0 and all(isinstance(record.get(key), str) for key in ("started", "command"))):
            return record
        time.sleep(0.05)
    return None


def _is_ours(record: dict) -> bool:
    return (record["host"], record["pid"], record.get("process_start")) == (
        socket.gethostname(), os.getpid(), _process_start(os.getpid()))


def _running(record: dict) -> bool | None:
    """Whether the lock's owner still runs; None when this cannot be told (another host)."""
    if record["host"] != socket.gethostname():
        return None
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    except (OverflowError, OSError):  # not a pid this system can have
        return False
    started = _process_start(record["pid"])
    return not (started is not None and record.get("process_start") not in (None, started))  # reused pid: gone


def _owner(record: dict) -> str:
    return f"{record['command']!r} (pid {record['pid']} on {record['host']}, started {record['started']})"


def acquire(folder: str | Path) -> None:
    """Take the run folder `folder` (which exists) for this process, or raise `RunFolderLocked` naming its holder."""
    folder = Path(folder)
    lock = folder / LOCK_FILE
    for attempt in range(3):
        try:
            descriptor = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = _read(lock)
            except FileNotFoundError:  # released meanwhile
                continue
            if holder is None:
                raise RunFolderLocked(
                    f"--output_dir {folder}: its lock {lock} cannot be read (not a lock of this package, or written "
                    f"by a run cut short while it created it). If no other run uses this folder, delete {lock} and "
                    "start again"
                ) from None
            if _is_ours(holder):  # this process's earlier run, which raised before releasing it
                _held[folder.resolve()] = holder
                return
            running = _running(holder)
            if running is False:
                _take_over(lock, holder)
                continue
            where = ("Wait for it to end, or choose another --output_dir. If you are sure it no longer runs (its "
                     f"machine crashed), delete {lock} and start again" if running is None else
                     f"Wait for it to end (or stop it: kill {holder['pid']}), or choose another --output_dir")
            raise RunFolderLocked(
                f"--output_dir {folder} is in use by another run: {_owner(holder)}. Two runs in one folder would mix "
                f"their checkpoints, logs and final model. {where}"
            ) from None
        record = _record()
        with os.fdopen(descriptor, "w") as file:
            file.write(json.dumps(record) + "\n")
            file.flush()
            os.fsync(file.fileno())
        _held[folder.resolve()] = record
        return
    raise RunFolderLocked(f"--output_dir {folder}: other runs keep taking and leaving its lock {lock}; start this "
                          "one when they are done")


def _take_over(lock: Path, holder: dict) -> None:
    """Remove the stale lock of `holder`, unless another run took it over first (a guard file, created atomically,
    lets one run at a time look)."""
    guard = lock.with_name(LOCK_FILE + ".takeover")
    try:
        os.close(os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        raise RunFolderLocked(f"--output_dir {lock.parent}: another run is taking over the stale lock of "
                              f"{_owner(holder)}; if none is (a run cut short left {guard}), delete {guard} and "
                              "start again") from None
    try:
        if _read(lock) == holder:
            os.unlink(lock)
            warnings.warn(f"{lock.parent}: took over the lock of a run that is no longer running, {_owner(holder)} "
                          "(killed, or its machine restarted); what it left in the folder is checked as usual",
                          StaleLockWarning, stacklevel=3)
    except FileNotFoundError:
        pass
    finally:
        os.unlink(guard)


def release(folder: str | Path) -> None:
    """Release this process's lock of `folder` (nothing when it holds none); never another run's lock."""
    key = Path(folder).resolve()
    record = _held.pop(key, None)
    if record is None:
        return
    lock = key / LOCK_FILE
    try:
        if _read(lock) == record:
            os.unlink(lock)
    except FileNotFoundError:
        pass


def release_all() -> None:
    """Release every lock this process holds (at exit: a run that raised)."""
    for folder in list(_held):
        release(folder)


atexit.register(release_all)
