"""The instruments of the peer benchmark (scripts/benchmark.py): time, peak memory and FLOPs of one step, and
`compare`, which times our model and its Hugging Face peer interleaved into a `Result`.

Peak memory: on CPU the peak of the C heap's live bytes while the step runs in a forked child (`_GlibcHeap`); on
CUDA, max_memory_allocated.
"""

import ctypes
import os
import select
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Result:
    """One row of results.md: our throughput against the peer's, their ratio and peak memory."""

    case: str
    metric: str  # what the throughput counts
    ours: float  # throughput, median
    peer: float
    ratio: float  # median over repeats of ours / peer
    ratio_min: float
    ratio_max: float
    ours_peak_mb: float | None = None
    peer_peak_mb: float | None = None
    peer_name: str = ""
    note: str = ""
    # case 6: model FLOPs of one step (counted by torch's FlopCounterMode), achieved TFLOP/s, share of the card's peak
    ours_step_tflop: float | None = None
    peer_step_tflop: float | None = None
    ours_tflops: float | None = None
    peer_tflops: float | None = None
    ours_mfu: float | None = None
    peer_mfu: float | None = None


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def peak_memory_mb(fn: Callable[[], object], device: str) -> float | None:
    """Peak extra memory of one call of `fn`, over what is allocated before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    heap = _GlibcHeap.load()
    if heap is None:
        return None
    # A fresh forked child per model keeps one model's freed-but-cached memory from hiding the other's.
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_fd)
            # The parent's OpenMP thread pool does not survive fork(): one thread runs the step without it.
            torch.set_num_threads(1)
            os.write(write_fd, str(heap.peak_during(fn)).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    ready, _, _ = select.select([read_fd], [], [], 600)
    if not ready:  # a library that deadlocks after fork: report no figure rather than hang
        os.kill(pid, signal.SIGKILL)
    text = os.read(read_fd, 64).decode() if ready else ""
    os.close(read_fd)
    os.waitpid(pid, 0)
    return int(text) / 2**20 if text else None


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


class _GlibcHeap:
    """Bytes in use on the C heap (glibc's mallinfo2: every arena and mapped block), tensors and Python objects.

    `peak_during(fn)` samples it at every Python-level and builtin call and return while `fn` runs (each torch op
    included), so the figure is the peak of live memory between operations over what was in use before, however
    the allocator caches. (A process's resident high-water mark also counts heap memory that earlier steps freed
    and a fragmented layout could not reuse: it moved by tens of MB between identical runs here.) Temporaries
    inside one kernel are not seen, for either model."""

    def __init__(self, libc):
        self.mallinfo2 = libc.mallinfo2
        self.mallinfo2.restype = _Mallinfo2

    @classmethod
    def load(cls) -> "_GlibcHeap | None":
        try:
            return cls(ctypes.CDLL("libc.so.6"))
        except (OSError, AttributeError):  # not glibc 2.33+: no figure
            return None

    def in_use(self) -> int:
        info = self.mallinfo2()
        return info.uordblks + info.hblkhd

    def peak_during(self, fn: Callable[[], object]) -> int:
        before = peak = self.in_use()

        def sample(frame, event, arg):
            nonlocal peak
            peak = max(peak, self.in_use())

        sys.setprofile(sample)
        try:
            fn()
        finally:
            sys.setprofile(None)
        return max(peak, self.in_use()) - before


def compare(case: str, metric: str, work: float, ours: Callable, peer: Callable, args, peer_name: str, note: str = "",
            memory: bool = True) -> Result:
    """Throughput of `ours` and `peer` (work units per second), interleaved, and their ratio."""
    for _ in range(args.warmup):
        ours()
        peer()
    ours_times, peer_times = [], []
    for _ in range(args.repeats):
        ours_times.append(timed(ours, args.device))
        peer_times.append(timed(peer, args.device))
    ratios = [p / o for o, p in zip(ours_times, peer_times)]  # time_peer / time_ours = throughput ratio
    result = Result(
        case=case,
        metric=metric,
        ours=work / statistics.median(ours_times),
        peer=work / statistics.median(peer_times),
        ratio=statistics.median(ratios),
        ratio_min=min(ratios),
        ratio_max=max(ratios),
        peer_name=peer_name,
        note=note,
    )
    if memory:
        result.ours_peak_mb = peak_memory_mb(ours, args.device)
        result.peer_peak_mb = peak_memory_mb(peer, args.device)
    print(f"  {case}: ours {result.ours:,.1f} vs {peer_name} {result.peer:,.1f} {metric} -> ratio "
          f"{result.ratio:.2f}x ({result.ratio_min:.2f}-{result.ratio_max:.2f}); peak MB ours / peer "
          f"{mb_pair(result.ours_peak_mb, result.peer_peak_mb)}", flush=True)
    return result


def _mb(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def mb_pair(ours: float | None, peer: float | None) -> str:
    """Whole MB, or two decimals where the two are within 1 MB (which one is lower still shows)."""
    close = ours is not None and peer is not None and abs(ours - peer) < 1
    return f"{_mb(ours, 2 if close else 0)} / {_mb(peer, 2 if close else 0)}"


# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets; first match on the name wins.
BF16_PEAK_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.4), ("H100 NVL", 835.5), ("H100", 989.4), ("A100", 312.0))


def bf16_peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if args.device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def step_flops(step: Callable[[], object]) -> float:
    """Floating-point operations of one call (matrix products and attention, forward and backward), counted by
    torch's FlopCounterMode: what the model does, including any work it saves (sparse prediction, no padding)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())
