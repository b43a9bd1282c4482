"""`--mixed_precision bf16` on a CPU: whether this CPU runs bf16 natively, and the precision a run gets.

bf16 autocast on a CPU without native bf16 (x86 without AVX-512 BF16 or AMX-BF16, e.g. AVX2-only AMD Zen 3; aarch64
without the BF16 extension) is emulated and was measured ~37x slower per step than fp32 (AVX2): `check_mixed_precision`
trains in fp32 there instead, with a warning, before any data is read. `--force_bf16` insists;
`VANILLA_TRANSFORMER_ASSUME_CPU_BF16=1` / `=0` overrides the detection (tests, or a CPU it gets wrong).
"""

import functools
import os
import platform
import warnings
from dataclasses import dataclass

import torch

from vanilla_transformer.scripts.training.errors import ArgumentError

ASSUME_CPU_BF16 = "VANILLA_TRANSFORMER_ASSUME_CPU_BF16"  # "1" / "0": override the detection (tests; a CPU it misjudges)
# Instructions that compute in bf16: with them oneDNN runs bf16 matmuls natively. Without them oneDNN emulates bf16
# on AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT, and below that (AVX2) torch falls back to its own slow bf16 kernels.
_BF16_FLAGS = {"x86_64": ("avx512_bf16", "amx_bf16"), "aarch64": ("bf16", "sve_bf16")}
# bf16 autocast against fp32 on an AVX2-only AMD EPYC (Zen 3), the README's Multi30k recipe: 48 s against 1.3 s a step
SLOWDOWN_AVX2 = ("measured ~37x slower per step than fp32 on an AVX2-only AMD EPYC (48 s against 1.3 s, the Multi30k "
                 "recipe)")


class CpuBf16Warning(UserWarning):
    """--mixed_precision bf16 on a CPU without native bf16."""


@dataclass(frozen=True)
class CpuBf16Support:
    native: bool
    description: str  # what was found, for messages: "AMD EPYC, x86_64, torch capability AVX2, no avx512_bf16, ..."

    def __bool__(self) -> bool:
        return self.native


def _architecture() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def _proc_cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The first processor's feature flags ("flags" on x86, "Features" on aarch64); None where there is no such
    file (macOS, Windows) or no such line."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
                if not line.strip():  # the end of the first processor's block
                    break
    except OSError:
        return None
    return None


def _torch_cpu_capabilities() -> dict:
    """torch's own cpuinfo-based view (torch.cpu.get_capabilities, torch >= 2.10); {} where it has none."""
    get = getattr(torch.cpu, "get_capabilities", None)
    try:
        return dict(get()) if get else {}
    except Exception:  # a torch build or platform where cpuinfo cannot answer
        return {}


def _onednn_bf16() -> bool | None:
    """Whether oneDNN takes bf16 matmuls at all (natively or emulated on AVX-512 / AVX-NE-CONVERT); None: unknown."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return None


def cpu_bf16_support(assume: bool | None = None) -> CpuBf16Support:
    """Whether this CPU runs bf16 natively, from its flags, in well under a millisecond (no benchmark).

    Native: an instruction that computes in bf16 (x86: avx512_bf16 or amx_bf16; aarch64: bf16 or sve_bf16), seen by
    torch's cpuinfo (`torch.cpu.get_capabilities()`) or in /proc/cpuinfo, and oneDNN taking bf16 matmuls
    (`torch.ops.mkldnn._is_mkldnn_bf16_supported()`, whose own answer is wider: it also says yes to AVX-512 without
    bf16 instructions, where bf16 is emulated, and it is what routes bf16 matmuls away from torch's slow fallback).
    `assume` (else the environment variable VANILLA_TRANSFORMER_ASSUME_CPU_BF16 = 1 or 0) overrides the detection."""
    detected = _detect_cpu_bf16()
    source = "the caller"
    if assume is None and os.environ.get(ASSUME_CPU_BF16, "").strip():
        value = os.environ[ASSUME_CPU_BF16].strip()
        if value.lower() not in ("0", "1", "true", "false", "yes", "no"):
            raise ArgumentError(f"{ASSUME_CPU_BF16}={value!r}: use 1 (native bf16) or 0 (none)")
        assume, source = value.lower() in ("1", "true", "yes"), f"{ASSUME_CPU_BF16}={value}"
    if assume is None:
        return detected
    return CpuBf16Support(bool(assume), f"{'native' if assume else 'no native'} bf16 assumed by {source}; detected: "
                                        f"{detected.description}")


@functools.lru_cache(maxsize=1)
def _detect_cpu_bf16() -> CpuBf16Support:
    architecture = _architecture()
    wanted = _BF16_FLAGS.get(architecture, ())
    capabilities = _torch_cpu_capabilities()
    proc_flags = _proc_cpuinfo_flags()
    found = sorted({flag for flag in wanted if capabilities.get(flag) is True or flag in (proc_flags or ())})
    onednn = _onednn_bf16()
    native = bool(found) and onednn is not False
    try:
        capability = torch.backends.cpu.get_cpu_capability()  # the vector ISA torch's kernels were dispatched to
    except Exception:
        capability = "unknown"
    parts = [capabilities.get("cpu_name") or platform.processor() or "this CPU", architecture,
             f"torch capability {capability}"]
    parts.append(f"bf16 instructions: {', '.join(found)}" if found else
                 f"no {' / '.join(wanted) or 'known bf16 instruction'}")
    parts.append({True: "oneDNN bf16: yes", False: "oneDNN bf16: no", None: "oneDNN bf16: unknown"}[onednn])
    if not capabilities and proc_flags is None:
        parts.append("no CPU flags readable (neither torch.cpu.get_capabilities nor /proc/cpuinfo)")
    return CpuBf16Support(native, ", ".join(parts))


def check_mixed_precision(mixed_precision: str | None, device, force_bf16: bool = False, warn: bool = True,
                          support: CpuBf16Support | None = None) -> str:
    """The precision to train in for `--mixed_precision` on `device`: "no", "bf16" or "fp16".

    Anything but a CPU: unchanged. On a CPU, fp16 is refused (accelerate has no fp16 autocast there), and bf16
    without native bf16 (`cpu_bf16_support()`, or `support`) becomes "no" (fp32) with a `CpuBf16Warning` naming what
    was found, the expected slowdown and the fix; `force_bf16` keeps bf16 (still warning)."""
    requested = (mixed_precision or "no").lower()
    if torch.device(device).type != "cpu" or requested == "no":
        return requested
    support = cpu_bf16_support() if support is None else support
    if requested == "fp16":
        raise ArgumentError(
            "--mixed_precision fp16 is not available on cpu (accelerate has no fp16 autocast there); use "
            + ("--mixed_precision bf16 (this CPU has native bf16) or no" if support.native else
               f"--mixed_precision no (this CPU has no native bf16 either: {support.description})")
        )
    if requested != "bf16" or support.native:
        return requested
    slowdown = f"bf16 autocast is emulated there, {SLOWDOWN_AVX2}"
    if force_bf16:
        if warn:
            warnings.warn(f"--mixed_precision bf16 --force_bf16 on a CPU without native bf16 ({support.description}): "
                          f"training in bf16 as asked; {slowdown}. Faster here: --mixed_precision no",
                          CpuBf16Warning, stacklevel=2)
        return "bf16"
    if warn:
        warnings.warn(f"--mixed_precision bf16 on a CPU without native bf16 ({support.description}): {slowdown}. "
                      "Training in fp32 instead (recorded as mixed_precision \"no\" in training_args.json). "
                      "Fix: --mixed_precision no on this CPU (bf16 needs AVX-512 BF16 or AMX on x86, BF16 on "
                      "aarch64, or a GPU); to insist on bf16: --mixed_precision bf16 --force_bf16",
                      CpuBf16Warning, stacklevel=2)
    return "no"
