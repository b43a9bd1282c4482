"""How the corpus benchmark (scripts/benchmark_corpus.py) measures a command: `measure` runs it in a fresh process
(`measured_run`), sampling the memory of the process and its children, and notes when its training loop yields its
first batch (`noting_the_first_batch`)."""

import contextlib
import importlib
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil


@contextlib.contextmanager
def noting_the_first_batch(noted: dict):
    """Within: the wall-clock time at which the first batch comes out of a DataLoader goes to
    noted["first_batch_time"] (the training loop's loader: the scripts use no other before it)."""
    from torch.utils.data import DataLoader

    iterate = DataLoader.__iter__

    def noting(loader):
        for batch in iterate(loader):
            noted.setdefault("first_batch_time", time.time())
            yield batch

    DataLoader.__iter__ = noting
    try:
        yield noted
    finally:
        DataLoader.__iter__ = iterate


def measured_run(command: str, argv: list[str], result_file: str) -> None:
    """What a measured process runs: `command`'s main(argv) (a script of vanilla_transformer.scripts), noting the
    time of the first batch, then the resident high-water marks; all written to `result_file` as JSON."""
    with noting_the_first_batch({}) as noted:
        status = importlib.import_module(f"vanilla_transformer.scripts.{command}").main(argv)
    # the kernel's high-water mark of this process, and of the largest of its finished children (map workers)
    noted["max_rss_mb"] = max(resource.getrusage(who).ru_maxrss
                              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    Path(result_file).write_text(json.dumps(noted))
    sys.exit(status)


def _memory_mb(process: psutil.Process) -> tuple[float, float]:
    """(proportional set size, its anonymous part) of `process` and its children, in MB."""
    pss = anonymous = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error, OSError):
            rollup = Path(f"/proc/{member.pid}/smaps_rollup").read_text()
            values = dict(re.findall(r"^(\w+):\s+(\d+) kB", rollup, re.MULTILINE))
            pss += int(values["Pss"])
            anonymous += int(values.get("Pss_Anon", values["Pss"]))
    return pss / 1024, anonymous / 1024


def measure(name: str, command: str, argv: list[str], cache: Path, logs: Path) -> dict:
    """Run `command` with `argv` in a fresh process (datasets cache: `cache`), sampling its memory; its output goes
    to logs/name.log. Returns seconds (the whole run), first_batch_seconds (from the process start; None for the
    tokenizer), peak_mb and peak_anonymous_mb (sampled), max_rss_mb (the largest process's high-water mark) and
    cache_files (Arrow files it wrote)."""
    logs.mkdir(parents=True, exist_ok=True)
    result_file = logs / f"{name}.json"
    code = (f"from vanilla_transformer.scripts.benchmarking.processes import measured_run; "
            f"measured_run({command!r}, {[str(a) for a in argv]!r}, {str(result_file)!r})")
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    before = set(cache.rglob("*.arrow")) if cache.is_dir() else set()
    peak, peak_anonymous = 0.0, 0.0
    with open(logs / f"{name}.log", "w") as log:
        started = time.time()
        child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        watched = psutil.Process(child.pid)
        while child.poll() is None:
            with contextlib.suppress(psutil.Error):
                pss, anonymous = _memory_mb(watched)
                peak, peak_anonymous = max(peak, pss), max(peak_anonymous, anonymous)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=0.5)  # reading smaps_rollup costs CPU: not more often
        seconds = time.time() - started
    if child.returncode != 0:
        tail = (logs / f"{name}.log").read_text()[-3000:]
        raise RuntimeError(f"{name}: {command} {' '.join(map(str, argv))} failed (exit {child.returncode}):\n{tail}")
    noted = json.loads(result_file.read_text())
    first_batch = noted.get("first_batch_time")
    after = set(cache.rglob("*.arrow")) if cache.is_dir() else set()
    return {"seconds": round(seconds, 2),
            "first_batch_seconds": round(first_batch - started, 2) if first_batch else None,
            "peak_mb": round(peak), "peak_anonymous_mb": round(peak_anonymous),
            "max_rss_mb": round(noted["max_rss_mb"]), "cache_files": len(after - before)}

