"""The Accelerate training loop shared by the training scripts (translation, masked-LM pretraining).

A script brings its model, data and loss as a `TrainingTask`; `train()` does the rest, the same way on one CPU,
one GPU or several processes (`accelerate launch`), with mixed precision, gradient accumulation and clipping:

- Batches: the task lists an epoch's micro-batches (lists of example indices, `token_batches` for batches built
  by token count); `steps_for_process` groups them into optimizer steps of num_processes x accumulation
  micro-batches and hands each process its share. A global step therefore holds the same examples whatever the
  number of processes: 2 processes x 1 micro-batch = 1 process x 2 accumulated micro-batches.
- Loss: the task returns a token-level sum divided by the number of target items of the whole global step
  (summed over processes and micro-batches); times num_processes, since DDP averages gradients. Each step's
  gradient is then the mean over every item of the global batch, however it is split.
- Checkpoints (`Checkpoints`): model, optimizer, scheduler, gradient scaler, each process's RNG state and the
  `TrainingProgress` (epoch, step within it, global step, elapsed time, the run's arguments), as data only:
  safetensors and JSON, no pickle, so that resuming never runs code that a checkpoint file brings. The data order
  is a function of (seed, epoch), re-created and skipped on `--resume`, so a killed and resumed run ends with the
  same weights as an uninterrupted one. Checkpoints are written to a temporary folder and renamed when complete.
- Before any data is read (`prepare_output_dir`): the output folder is writable; a fresh run does not mix with an
  earlier run's outputs; `--resume` finds a checkpoint whose run had the same arguments (those that shape the
  trajectory: learning rate, model, data, seed...; the stopping, logging and saving ones may change), so that what
  `training_args.json` records is what ran.
- Refusals and warnings: `ArgumentError`, `DataError` (translation_data.py), `CheckpointError` and
  `TrainingError` (a loss or metric that is not finite) name the argument, file or folder and the fix; the scripts
  print them without a traceback (`errors_without_traceback`).
- Stops: `max_steps`, `num_epochs`, `max_train_minutes` (wall clock of the loop, evaluations included),
  `max_steps_this_run` (stop with a checkpoint, to split a job), Ctrl-C or SIGTERM (finish the step, save, stop).
  Every process stops at the same step.
- Logs: a tqdm bar on the main process (loss, learning rate, tokens/s), `log.jsonl` (one JSON object per logged
  step or evaluation), `training_curves.png` at the end, and Accelerate trackers (`--report_to tensorboard`).
- Precision: `--mixed_precision bf16` on a CPU without native bf16 (x86 without AVX-512 BF16 or AMX-BF16, e.g.
  AVX2-only AMD Zen 3; aarch64 without the BF16 extension) trains in fp32 instead, with a warning, before any data is
  read: bf16 autocast there is emulated and was measured ~37x slower per step than fp32 (AVX2). `--force_bf16`
  insists; `VANILLA_TRANSFORMER_ASSUME_CPU_BF16=1` / `=0` overrides the detection (tests, or a CPU it gets wrong).
  What ran is what `training_args.json` records (`mixed_precision`; `requested_mixed_precision` beside it).

Multi-process on CPU, one machine (accelerate's `--cpu` launches a single process unless run under mpirun;
torchrun's launcher with ACCELERATE_USE_CPU does it):
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --main_process_port 29501 script.py ...
"""

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import platform
import random
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import extract_model_from_parallel, parse_choice_from_env, parse_flag_from_env
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from translation_data import DataError, DataWarning
from vanilla_transformer.modeling.hub import save_for_hub

# Tied weights (embeddings = output projection) are stored once in a checkpoint, as they should be; accelerate
# warns about it at every save.
logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


class ArgumentError(ValueError):
    """A command-line argument that cannot work; the message names it and says what would."""


class TrainingError(RuntimeError):
    """Training went wrong (a loss or a metric that is not finite); the message says where and what to try."""


class CheckpointError(RuntimeError):
    """A checkpoint or output folder that cannot be used: missing, corrupt, written by an incompatible run, or
    holding an earlier run's results; or a checkpoint that could not be written."""


def save_final(model, tokenizer, output_dir: Path, arguments: dict, checkpoint: Path, extra: dict | None = None) -> Path:
    """The trained model as a Hub-ready `output_dir/final` with its `training_args.json`, and `extra` {file name: JSON
    content} beside it in `output_dir`. A failure there (a full disk: OSError, or safetensors' error without a file
    name) says where the trained weights are and how to write final/ again."""
    try:
        final = save_for_hub(model, output_dir / "final", tokenizer)
        (final / "training_args.json").write_text(json.dumps(arguments, indent=1) + "\n")
        for name, content in (extra or {}).items():
            (output_dir / name).write_text(json.dumps(content, indent=1) + "\n")
    except Exception as error:
        raise CheckpointError(
            f"could not write {output_dir / 'final'} ({type(error).__name__}: {error}). Is the disk full? The "
            f"trained weights are in {checkpoint}: free some space, then run the same command with --resume to write "
            "final/"
        ) from error
    return final


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


@dataclass
class LoopArguments:
    output_dir: str = field(metadata={"help": "checkpoints/, log.jsonl, training_curves.png and the final model"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many optimizer steps"})
    num_epochs: int | None = field(default=None, metadata={"help": "stop after this many passes over the data"})
    max_train_minutes: float | None = field(
        default=None, metadata={"help": "wall-clock budget of the training loop (evaluations included), over resumes"}
    )
    max_steps_this_run: int | None = field(
        default=None, metadata={"help": "stop after this many steps of this run, with a checkpoint (split a long job)"}
    )
    learning_rate: float | None = field(
        default=None, metadata={"help": "peak learning rate, reached after warmup (default: the script's rule)"}
    )
    warmup_steps: int = field(default=4000, metadata={"help": "linear warmup, then inverse square root decay"})
    adam_beta1: float = 0.9
    adam_beta2: float = field(default=0.98, metadata={"help": "0.98 as in the paper (section 5.3)"})
    adam_epsilon: float = field(default=1e-9, metadata={"help": "1e-9 as in the paper"})
    weight_decay: float = 0.0
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per process per step"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "clip the gradient norm (None: no clipping)"})
    mixed_precision: str | None = field(
        default=None, metadata={"help": "no, bf16 or fp16 (default: accelerate launch's setting, else no); bf16 on a "
                                        "CPU without native bf16 (AVX-512 BF16 / AMX, aarch64 BF16) falls back to fp32 "
                                        "with a warning, see --force_bf16"}
    )
    force_bf16: bool = field(
        default=False, metadata={"help": "keep --mixed_precision bf16 on a CPU without native bf16 (emulated: measured "
                                         "~37x slower per step than fp32 on an AVX2 CPU)"}
    )
    seed: int = 0
    logging_steps: int = field(default=10, metadata={"help": "log the training loss every N steps"})
    eval_steps: int | None = field(default=None, metadata={"help": "evaluate every N steps (and at the end)"})
    save_steps: int = field(default=500, metadata={"help": "checkpoint every N steps (and at the end)"})
    keep_checkpoints: int = field(default=5, metadata={"help": "delete older checkpoints beyond this many"})
    average_last: int = field(
        default=1, metadata={"help": "average the weights of the last N checkpoints at the end (paper: 5)"}
    )
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in output_dir"})
    report_to: str | None = field(default=None, metadata={"help": "accelerate tracker(s): tensorboard, wandb, all"})
    # Not an option: set by make_accelerator, which also sets mixed_precision to the precision that runs, so that
    # training_args.json records what ran and what was asked for.
    requested_mixed_precision: str | None = field(default=None, init=False)

    def __post_init__(self):
        if self.max_steps is None and self.num_epochs is None and self.max_train_minutes is None:
            raise ArgumentError("give at least one of --max_steps, --num_epochs, --max_train_minutes: when to stop")
        if self.average_last > self.keep_checkpoints:
            raise ArgumentError(
                f"--average_last {self.average_last} needs at least that many checkpoints kept "
                f"(--keep_checkpoints {self.keep_checkpoints})"
            )
        for name in ("gradient_accumulation_steps", "warmup_steps", "logging_steps", "save_steps", "keep_checkpoints",
                     "average_last", "max_steps", "num_epochs", "max_steps_this_run", "eval_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ArgumentError(f"--{name} must be at least 1, got {getattr(self, name)}")
        check_positive(max_train_minutes=self.max_train_minutes, learning_rate=self.learning_rate,
                       adam_epsilon=self.adam_epsilon, max_grad_norm=self.max_grad_norm)
        check_fraction(adam_beta1=self.adam_beta1, adam_beta2=self.adam_beta2)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ArgumentError(f"--weight_decay must be 0 or more, got {self.weight_decay}")


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


def peak_learning_rate(args: "LoopArguments", default: float) -> float:
    """--learning_rate when given (0 is refused, not replaced), else the script's rule (`default`)."""
    return default if args.learning_rate is None else args.learning_rate


def make_accelerator(args: LoopArguments) -> Accelerator:
    """The run's Accelerator, in the precision `check_mixed_precision` allows on this device (checked before any data
    is read). Sets `args.mixed_precision` to the precision that runs and `args.requested_mixed_precision` to the one
    asked for (the option, else accelerate launch's setting), so that the recorded arguments say what ran."""
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # the device, as Accelerator will find it
    requested = (args.mixed_precision or parse_choice_from_env("ACCELERATE_MIXED_PRECISION", "no")).lower()
    effective = check_mixed_precision(requested, state.device, force_bf16=args.force_bf16,
                                      warn=state.is_local_main_process)
    accelerator = Accelerator(
        # unchanged: as before (None: accelerate launch's setting); changed: the fallback, explicitly
        mixed_precision=args.mixed_precision if effective == requested else effective,
        log_with=args.report_to,
        project_dir=args.output_dir,
        # Our scheduler counts optimizer steps. Stepped with the optimizer, accelerate would step it once per
        # process (it assumes the per-process data shrinks with more processes; here the global batch is fixed).
        step_scheduler_with_optimizer=False,
    )
    if accelerator.mixed_precision != "no" and not accelerator.native_amp:
        # accelerate would silently train in fp32 (it has no fp16 autocast on CPU)
        raise ArgumentError(f"--mixed_precision {accelerator.mixed_precision} is not available on "
                         f"{accelerator.device.type}; use bf16 on CPU, fp16 or bf16 on GPU")
    args.requested_mixed_precision = requested
    args.mixed_precision = accelerator.mixed_precision
    return accelerator


# ------------------------------------------------------------------------------------------- CPU precision

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


def inverse_sqrt_factor(step: int, warmup_steps: int) -> float:
    """The paper's schedule (section 5.3) as a fraction of its peak, for optimizer step `step` counted from 1:
    step / warmup_steps during the warmup, then sqrt(warmup_steps / step)."""
    return min(step / warmup_steps, (warmup_steps / step) ** 0.5)


def paper_learning_rate(d_model: int, warmup_steps: int, factor: float = 1.0) -> float:
    """The peak of lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), reached at step = warmup:
    d_model^-0.5 * warmup^-0.5 (times `factor`)."""
    return factor * d_model**-0.5 * warmup_steps**-0.5


def make_optimizer(model: torch.nn.Module, args: LoopArguments, learning_rate: float):
    """Adam with the paper's betas and epsilon, and the inverse square root schedule peaking at `learning_rate`."""
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
    )
    # LambdaLR counts scheduler steps from 0; the paper's step_num starts at 1 (no step at learning rate 0).
    return optimizer, LambdaLR(optimizer, lambda index: inverse_sqrt_factor(index + 1, args.warmup_steps))


# ---------------------------------------------------------------------------------------------------- batches


def token_batches(
    lengths: Sequence[int], max_tokens: int, seed: int, epoch: int, shuffle: bool = True
) -> list[list[int]]:
    """Micro-batches of examples of similar length, each of at most `max_tokens` tokens counting padding
    (`len(batch) * longest example`), in an order drawn from (seed, epoch); `shuffle=False`: by length, fixed.

    Examples are sorted by length (ties broken at random) and cut greedily: little padding, as the paper's
    "sentence pairs were batched together by approximate sequence length" (section 5.1)."""
    lengths = np.asarray(lengths)
    if lengths.size and lengths.max() > max_tokens:
        raise ArgumentError(
            f"an example of {lengths.max()} tokens does not fit in --max_tokens {max_tokens}: raise --max_tokens "
            "or lower the maximum length"
        )
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)) if shuffle else np.arange(len(lengths))
    order = order[np.argsort(lengths[order], kind="stable")]
    batches, batch, longest = [], [], 0
    for index in order.tolist():
        if batch and max(longest, lengths[index]) * (len(batch) + 1) > max_tokens:
            batches.append(batch)
            batch, longest = [], 0
        batch.append(index)
        longest = max(longest, int(lengths[index]))
    if batch:
        batches.append(batch)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def steps_for_process(
    batches: list[list[int]], num_processes: int, process_index: int, accumulation: int
) -> list[list[list[int]]]:
    """Group an epoch's micro-batches into optimizer steps of `num_processes * accumulation` micro-batches and
    return this process's share: `accumulation` micro-batches per step.

    So that every example is seen exactly once per epoch and every process has the same number of micro-batches,
    the largest micro-batches are split in two until the count is a multiple of the step size (a split batch
    never has more padding than the whole). This depends on the step size only, not on how it is made up."""
    per_step = num_processes * accumulation
    batches = list(batches)
    if sum(len(batch) for batch in batches) < per_step:
        raise DataError(
            f"{sum(len(b) for b in batches)} training examples cannot fill one step of {num_processes} processes x "
            f"{accumulation} accumulated micro-batches: give more training data, or use fewer processes or a lower "
            "--gradient_accumulation_steps"
        )
    while len(batches) % per_step:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))
        batch = batches[largest]
        batches[largest : largest + 1] = [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
    steps = [batches[start : start + per_step] for start in range(0, len(batches), per_step)]
    return [step[process_index * accumulation : (process_index + 1) * accumulation] for step in steps]


# ------------------------------------------------------------------------------------------------ the task


@dataclass
class TrainingTask:
    """What a script brings to `train()`.

    epoch_batches(epoch): all micro-batches of that epoch (lists of indices into `dataset`), the same on every
        process, in training order; a deterministic function of the epoch (resuming re-creates it).
    collate(examples): a list of `dataset` items -> a dict of tensors.
    loss(model, batch, num_items_in_batch): the summed loss of the batch divided by `num_items_in_batch`, the
        item count of the whole global step (e.g. `model(**batch, num_items_in_batch=n).loss`).
    count_items(batch): the items the loss is averaged over (default: labels != -100).
    count_tokens(batch): the tokens reported as throughput (default: the source tokens, attention_mask, plus the
        target tokens, labels != -100; a masked LM, whose labels are a subset of its inputs, counts its inputs).
    evaluate(model): {name: value} on held-out data, run on every process (shard the work, gather the result);
        `model` is the prepared one, in eval mode: use `accelerator.unwrap_model(model)` for forward passes that
        not every process makes the same number of times (a DDP forward is a collective).
    signature: what fixes the data order (e.g. max_tokens, dataset size); a checkpoint made with other values is
        refused, since resuming it would not reproduce the interrupted run.
    """

    dataset: object
    collate: Callable[[list], dict]
    epoch_batches: Callable[[int], list[list[int]]]
    loss: Callable[[torch.nn.Module, dict, torch.Tensor], torch.Tensor]
    count_items: Callable[[dict], torch.Tensor] = lambda batch: (batch["labels"] != -100).sum()
    count_tokens: Callable[[dict], torch.Tensor] = lambda batch: batch["attention_mask"].sum() + (
        batch["labels"] != -100
    ).sum()
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None
    signature: dict = field(default_factory=dict)


@dataclass
class TrainingProgress:
    """Where training stands; saved in every checkpoint as progress.json."""

    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps already done in `epoch`
    global_step: int = 0
    train_seconds: float = 0.0
    signature: dict = field(default_factory=dict)
    arguments: dict = field(default_factory=dict)  # the run's arguments: a resumed run must go on with the same

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class TrainOutcome:
    global_step: int
    epoch: int
    train_seconds: float
    completed: bool  # False: stopped by --max_steps_this_run or a signal; resume with --resume
    stop_reason: str
    checkpoint: Path
    metrics: dict  # the evaluation at the last step ({} when stopped early or without `task.evaluate`)


# ----------------------------------------------------------------------------------------------- checkpoints
#
# A checkpoint folder holds data only, never pickle: `--resume` reads it with safetensors and json, which build
# tensors, numbers and strings and run nothing, whatever a file holds.
#   model.safetensors        the weights (as accelerate's save_state wrote them: tied weights once)
#   optimizer.safetensors    the optimizer's state_dict; scheduler.safetensors, scaler.safetensors (fp16) likewise
#   rng_state_<i>.safetensors  process i's random generators (Python, NumPy, torch CPU and CUDA)
#   progress.json            epoch, step, elapsed time, the data signature, the run's arguments
# A state_dict is stored as a safetensors file whose tensors are the state's tensors and whose metadata is the
# rest of it in JSON, each container tagged ({"dict": [[key, value], ...]}, {"list": [...]}, {"tuple": [...]},
# {"tensor": name}, {"ndarray": [...], "dtype": ...}) so that it comes back with the same types.

PROGRESS_FILE = "progress.json"
LEGACY_PICKLES = ("random_states_0.pkl", "custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.bin")


def _encode(value, tensors: dict):
    if isinstance(value, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = value.detach().cpu().contiguous()
        return {"tensor": name}
    if isinstance(value, np.ndarray):
        return {"ndarray": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {"dict": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"tuple" if isinstance(value, tuple) else "list": [_encode(v, tensors) for v in value]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a {type(value).__name__} cannot be stored in a checkpoint (tensors, numbers, strings only)")


def _decode(value, tensors):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict) and len(value) in (1, 2):
        (tag, content), *rest = value.items()
        if tag == "tensor" and not rest:
            return tensors.get_tensor(content)
        if tag == "ndarray" and rest and rest[0][0] == "dtype" and np.dtype(rest[0][1]).kind in "biuf":
            return np.asarray(content, dtype=np.dtype(rest[0][1]))  # numbers only, never Python objects
        if tag in ("list", "tuple") and not rest and isinstance(content, list):
            items = [_decode(v, tensors) for v in content]
            return items if tag == "list" else tuple(items)
        if tag == "dict" and not rest and isinstance(content, list):
            return {_decode(k, tensors): _decode(v, tensors) for k, v in content}
    raise ValueError(f"unexpected entry {json.dumps(value)[:80]}")


def save_state_file(path: Path, state) -> None:
    """A state_dict (nested dicts, lists, tuples of tensors, numbers, strings) as one safetensors file."""
    tensors = {}
    metadata = {"state": json.dumps(_encode(state, tensors))}
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def load_state_file(path: Path):
    """What `save_state_file` wrote, read as data (safetensors and json: nothing in the file runs)."""
    with safetensors.safe_open(str(path), framework="pt", device="cpu") as tensors:
        metadata = tensors.metadata() or {}
        if "state" not in metadata:
            raise ValueError(f"{path.name} has no state in its metadata")
        return _decode(json.loads(metadata["state"]), tensors)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    """The model's weights, tied ones once under their first name in the state_dict (as accelerate's save_state
    wrote them: model.encoder.embed_tokens.weight, not lm_head.weight); `safetensors.torch.load_model` restores the
    ties."""
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        storage = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if storage not in seen:
            seen.add(storage)
            tensors[name] = tensor.detach().cpu().contiguous()
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})


def _fsync(path: Path) -> None:
    """Make a written file (or a renamed folder's entry) durable: a power cut must not leave a renamed, complete-
    looking checkpoint with missing data."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems do not sync folders
        pass
    finally:
        os.close(descriptor)


class Checkpoints:
    """`output_dir/checkpoints/step-N` folders (data only: see above), written complete or not at all."""

    def __init__(self, output_dir: str | Path, keep: int):
        self.folder = Path(output_dir) / "checkpoints"
        self.keep = keep

    def all(self) -> list[Path]:
        """Complete checkpoints, oldest first (a save that was cut short is left in a `tmp-` folder, not listed)."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.iterdir()
                 if p.is_dir() and p.name.startswith("step-") and p.name.removeprefix("step-").isdigit()]
        return sorted(found, key=lambda p: int(p.name.removeprefix("step-")))

    def save(self, accelerator: Accelerator, model, optimizer, scheduler, progress: TrainingProgress) -> Path:
        """Write a checkpoint of the current step. A failure to write (a full disk) removes the partial folder and
        raises a `CheckpointError` on every process; the earlier checkpoints are left as they were."""
        final = self.folder / f"step-{progress.global_step}"
        partial = self.folder / f"tmp-step-{progress.global_step}"
        failure = None
        if accelerator.is_main_process:
            try:
                for unfinished in self.folder.glob("tmp-step-*"):  # saves that were cut short
                    shutil.rmtree(unfinished)
                partial.mkdir(parents=True)
            except OSError as error:
                failure = error
        accelerator.wait_for_everyone()
        written = []
        try:
            if failure is None:
                if accelerator.is_main_process:
                    _save_weights(accelerator.unwrap_model(model), partial / "model.safetensors")
                    save_state_file(partial / "optimizer.safetensors", optimizer.state_dict())
                    save_state_file(partial / "scheduler.safetensors", scheduler.state_dict())
                    if accelerator.scaler is not None:
                        save_state_file(partial / "scaler.safetensors", accelerator.scaler.state_dict())
                    (partial / PROGRESS_FILE).write_text(json.dumps(progress.state_dict(), indent=1) + "\n")
                    written += ["model.safetensors", "optimizer.safetensors", "scheduler.safetensors",
                                PROGRESS_FILE] + (["scaler.safetensors"] if accelerator.scaler is not None else [])
                name = f"rng_state_{accelerator.process_index}.safetensors"
                save_state_file(partial / name, _rng_state())
                written.append(name)
                for name in written:
                    _fsync(partial / name)
        except Exception as error:  # a full disk: OSError, or torch's / safetensors' own errors without a file name
            failure = error
        failed = torch.tensor(float(failure is not None), device=accelerator.device)
        if accelerator.num_processes > 1:
            failed = accelerator.reduce(failed, "sum")
        if failed.item() > 0:
            if accelerator.is_main_process:
                shutil.rmtree(partial, ignore_errors=True)
            earlier = self.all()
            reason = f"{type(failure).__name__}: {failure}" if failure is not None else "another process failed"
            raise CheckpointError(
                f"could not write the checkpoint {final} ({reason}). Is the disk full? "
                + (f"The earlier checkpoint {earlier[-1]} is intact: free some space, then continue with --resume"
                   if earlier else "There is no earlier checkpoint: free some space and start again")
            ) from failure
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)  # complete, or not there at all
            _fsync(self.folder)
            for old in self.all()[: -self.keep]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()
        return final

    def read_progress(self, checkpoint: Path) -> dict:
        """The checkpoint's progress.json (before anything else is loaded: the run's arguments and signature)."""
        path = checkpoint / PROGRESS_FILE
        if not path.is_file():
            if any((checkpoint / name).exists() for name in LEGACY_PICKLES):
                raise CheckpointError(
                    f"cannot resume from {checkpoint}: it was written by an earlier version of these scripts, in "
                    "pickle files (random_states_0.pkl, custom_checkpoint_0.pkl, optimizer.bin), which --resume no "
                    "longer reads: unpickling runs whatever code a file holds. Its weights are in model.safetensors; "
                    "start a new --output_dir"
                )
            raise CheckpointError(f"cannot resume from {checkpoint}: it has no {PROGRESS_FILE} (cut short, or not a "
                                  "checkpoint of these scripts); delete this folder to resume from the previous "
                                  "checkpoint, or start a new --output_dir")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or not {"global_step", "epoch", "signature", "arguments"} <= record.keys():
                raise ValueError("not a progress record")
        except (ValueError, UnicodeDecodeError) as error:
            raise CheckpointError(
                f"cannot resume from {checkpoint}: {PROGRESS_FILE} is corrupt ({error}); delete this folder to resume "
                "from the previous checkpoint, or start a new --output_dir"
            ) from None
        return record

    def load(self, accelerator: Accelerator, checkpoint: Path, model, optimizer, scheduler,
             progress: TrainingProgress) -> None:
        """Restore everything `save` wrote, after checking that the checkpoint's data signature is this run's.
        Every file is read as data."""
        rng_file = checkpoint / f"rng_state_{accelerator.process_index}.safetensors"
        record = self.read_progress(checkpoint)
        if not rng_file.is_file():
            raise CheckpointError(
                f"cannot resume from {checkpoint}: it has no {rng_file.name} (written by a run with fewer processes, "
                "or cut short); resume with the same number of processes, or start a new --output_dir"
            )
        check_signature(checkpoint, record["signature"], progress.signature)
        try:
            rng_state = load_state_file(rng_file)  # first: an unreadable RNG state must not pass unnoticed
            safetensors.torch.load_model(accelerator.unwrap_model(model), str(checkpoint / "model.safetensors"))
            optimizer.load_state_dict(load_state_file(checkpoint / "optimizer.safetensors"))
            scheduler.load_state_dict(load_state_file(checkpoint / "scheduler.safetensors"))
            if accelerator.scaler is not None:
                accelerator.scaler.load_state_dict(load_state_file(checkpoint / "scaler.safetensors"))
            _set_rng_state(rng_state)
        except Exception as error:  # any failure to read or fit the state
            raise CheckpointError(
                f"cannot resume from {checkpoint}: {type(error).__name__}: {error}. The checkpoint is corrupt or was "
                "written by a different model or optimizer; delete this folder to resume from the previous "
                "checkpoint, or start a new --output_dir"
            ) from error
        progress.load_state_dict(record)


def check_signature(checkpoint: Path, recorded: dict, expected: dict) -> None:
    """The values that fix the data order (and the tokenizer) must be the checkpoint's."""
    mismatched = {k: (recorded.get(k), v) for k, v in expected.items() if recorded.get(k) != v}
    if mismatched:
        details = ", ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in mismatched.items())
        raise CheckpointError(
            f"cannot resume from {checkpoint}: it was written by a run with other settings or data ({details}); "
            "resuming would not reproduce that run. Use the same settings and data, or start a new --output_dir"
        )


# Arguments that a resumed run may change: when to stop, what to log, how often to save, how to report. Any other
# argument shapes what training does, and a resumed run must keep it (the scripts add their evaluation-only ones).
CHANGEABLE_ON_RESUME = frozenset({
    "output_dir", "resume", "max_steps", "num_epochs", "max_train_minutes", "max_steps_this_run", "logging_steps",
    "eval_steps", "save_steps", "keep_checkpoints", "average_last", "report_to", "force_bf16",
    "requested_mixed_precision",
})
# What an earlier run leaves in output_dir beside checkpoints/ and final/: thrown away by a fresh run when that run
# saved no checkpoint (nothing of it can be resumed or used).
LEFTOVERS = ("tokenizer", "log.jsonl", "training_args.json", "training_curves.png", "validation_scores.json")


@dataclass
class ResumePoint:
    checkpoint: Path
    record: dict  # its progress.json

    def check_signature(self, **expected) -> None:
        """Check part of the data signature early (e.g. the tokenizer, before tokenizing the data with it)."""
        check_signature(self.checkpoint, self.record["signature"], expected)


def prepare_output_dir(accelerator: Accelerator, args: LoopArguments, arguments: dict,
                       changeable: Iterable[str] = ()) -> ResumePoint | None:
    """Check `--output_dir` before any data is read, and return where `--resume` starts (None: a fresh run).

    - The folder must be writable (made if missing).
    - A fresh run refuses a folder with checkpoints or a final model of an earlier run, and throws away the
      leftovers of an earlier run that saved no checkpoint (its tokenizer, log, arguments), saying so.
    - `--resume` needs a checkpoint whose run had the same `arguments`, but for the changeable ones
      (CHANGEABLE_ON_RESUME and `changeable`), the same number of processes, and a stop that is not behind it."""
    output_dir = Path(args.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}-{accelerator.process_index}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ArgumentError(f"--output_dir {output_dir} cannot be written ({type(error).__name__}: "
                            f"{error.strerror or error}): choose a folder you can write to") from None
    checkpoints = Checkpoints(output_dir, args.keep_checkpoints)
    if args.resume:
        if not checkpoints.all():
            raise CheckpointError(f"--resume: no checkpoint in {checkpoints.folder}")
        latest = checkpoints.all()[-1]
        record = checkpoints.read_progress(latest)
        _check_resumed_arguments(latest, record, arguments, CHANGEABLE_ON_RESUME | set(changeable))
        check_signature(latest, record["signature"], {"num_processes": accelerator.num_processes})
        for name, unit, done in (("max_steps", "step", record["global_step"]), ("num_epochs", "epoch", record["epoch"])):
            limit = getattr(args, name)
            if limit is not None and done > limit:
                raise ArgumentError(
                    f"--{name} {limit}: the checkpoint {latest} is already at {unit} {done}; give --{name} {done} or "
                    f"more to continue it (its final model is in {output_dir / 'final'} if that run completed)"
                )
        return ResumePoint(latest, record)
    if checkpoints.all():
        raise CheckpointError(
            f"{checkpoints.folder} holds checkpoints of an earlier run: pass --resume to continue it, or choose "
            "another --output_dir"
        )
    finals = sorted(p.name for p in output_dir.glob("final*") if p.is_dir())
    if finals:
        raise CheckpointError(
            f"{output_dir} holds {', '.join(finals)}: the model of an earlier run (its checkpoints are gone). A new "
            "run there would leave it beside the new one: choose another --output_dir, or move it away"
        )
    leftovers = [output_dir / name for name in LEFTOVERS if (output_dir / name).exists()]
    leftovers += sorted(checkpoints.folder.glob("tmp-step-*")) if checkpoints.folder.is_dir() else []
    accelerator.wait_for_everyone()  # every process has looked before the main one deletes
    if leftovers and accelerator.is_main_process:
        for path in leftovers:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        warnings.warn(f"{output_dir}: removed the leftovers of an earlier run that saved no checkpoint "
                      f"({', '.join(p.name for p in leftovers)}); this run makes its own", DataWarning, stacklevel=2)
    accelerator.wait_for_everyone()
    return None


def _check_resumed_arguments(checkpoint: Path, record: dict, arguments: dict, changeable: set[str]) -> None:
    recorded = record["arguments"]
    now = json.loads(json.dumps(arguments))  # as JSON has it: tuples are lists
    changed = [name for name in now if name not in changeable and name in recorded and recorded[name] != now[name]]
    if changed:
        details = "; ".join(f"--{name}: checkpoint {recorded[name]!r}, now {now[name]!r}" for name in changed)
        raise CheckpointError(
            f"cannot resume from {checkpoint} with other settings ({details}): a resumed run goes on as it started "
            "(training_args.json records what ran). Resume with the checkpoint's values, or start a new "
            "--output_dir for the new ones"
        )


@torch.no_grad()
def average_checkpoints(model: torch.nn.Module, checkpoints: Sequence[Path]) -> None:
    """Set the model's weights to the mean of the checkpoints' (the paper averages the last 5, section 6.1)."""
    model = extract_model_from_parallel(model)
    total = None
    for checkpoint in checkpoints:
        safetensors.torch.load_model(model, checkpoint / "model.safetensors")  # resolves tied weights
        state = model.state_dict()
        if total is None:
            total = {k: v.float().clone() for k, v in state.items() if v.is_floating_point()}
        else:
            for key in total:
                total[key] += state[key].float()
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    model.load_state_dict({k: (v / len(checkpoints)).to(dtypes[k]) for k, v in total.items()}, strict=False)


# ----------------------------------------------------------------------------------------------- tokenizers


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's full definition (vocabulary, merges, normalisation, special tokens)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def check_tokenizer(tokenizer, texts: dict[str, Iterable[str]], fix: str, vocab_size: int | None = None,
                    sample: int = 2000) -> None:
    """Refuse a tokenizer that was not made for this text: one that turns half or more of the tokens of the first
    `sample` texts of any source into the unknown token (`DataError`); warn with the counts above 1%. With
    `vocab_size` (a tokenizer trained here): warn when the vocabulary came out smaller than asked."""
    if vocab_size is not None and len(tokenizer) < vocab_size:
        warnings.warn(f"the tokenizer has {len(tokenizer):,} tokens, not --vocab_size {vocab_size:,}: its training "
                      f"text has too few distinct pieces for that vocabulary", DataWarning, stacklevel=2)
    unknown_id = tokenizer.unk_token_id
    if unknown_id is None:
        return
    for where, source in texts.items():
        batch = [text for text in itertools.islice(source, sample) if text and text.strip()]
        ids = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"] if batch else []
        total, unknown = sum(map(len, ids)), sum(row.count(unknown_id) for row in ids)
        if not total:
            continue
        counts = (f"{unknown:,} of the {total:,} tokens of the first {len(batch):,} texts of {where} "
                  f"({100 * unknown / total:.1f}%) become {tokenizer.unk_token}")
        if unknown >= total / 2:
            raise DataError(f"the tokenizer ({len(tokenizer):,} tokens) was not made for this text: {counts}. {fix}")
        if unknown > total / 100:
            warnings.warn(f"the tokenizer does not cover all of the text: {counts}", DataWarning, stacklevel=2)


@torch.no_grad()
def mean_loss(accelerator: Accelerator, model: torch.nn.Module, batches: Iterable[dict]) -> float:
    """Validation loss per item (target token, masked token): each process passes its share of the batches; the
    summed losses and item counts (labels != -100) of all processes are added up. The model must reduce its loss
    as sum / num_items_in_batch. Runs the bare model: a DDP forward is a collective, and the shares may differ."""
    model = accelerator.unwrap_model(model)
    totals = torch.zeros(2, device=accelerator.device)  # summed loss, items
    for batch in batches:
        batch = _to_device(batch, accelerator.device)
        with accelerator.autocast():
            totals[0] += model(**batch, num_items_in_batch=1).loss.float()  # num_items_in_batch=1: the sum
        totals[1] += (batch["labels"] != -100).sum()
    totals = accelerator.reduce(totals, "sum")
    if totals[1] == 0:
        raise DataError("the validation data gives no item to score (no target or masked token): give more "
                        "validation data")
    return (totals[0] / totals[1]).item()


# ------------------------------------------------------------------------------------------------------ logs


class JsonLinesLog:
    """One JSON object per line: every logged step and evaluation. Written by the main process."""

    def __init__(self, path: str | Path, enabled: bool):
        self.path = Path(path)
        self.enabled = enabled

    def start(self, resumed_at_step: int | None) -> None:
        """A fresh run empties the log; a resumed one drops what the interrupted run logged after its checkpoint."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in self.records() if resumed_at_step is not None and r["step"] <= resumed_at_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_log(log_path: str | Path, png_path: str | Path) -> Path:
    """Loss curves (training and validation), the validation metrics and the learning rate, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = JsonLinesLog(log_path, enabled=False).records()

    def series(key):
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        return [p[0] for p in points], [p[1] for p in points]

    keys = sorted({k for r in records for k, v in r.items() if isinstance(v, (int, float))})
    panels = [
        ("loss", [k for k in keys if k.endswith("loss")]),
        ("validation metrics", [k for k in keys if k.startswith("val_") and not k.endswith("loss")]),
        ("learning rate", ["lr"] if "lr" in keys else []),
    ]
    panels = [(title, names) for title, names in panels if names]
    figure, axes = plt.subplots(1, max(len(panels), 1), figsize=(5 * max(len(panels), 1), 3.8), squeeze=False)
    for axis, (title, names) in zip(axes[0], panels):
        for name in names:
            steps, values = series(name)
            axis.plot(steps, values, marker="o" if len(steps) < 30 else None, label=name)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return Path(png_path)


# ------------------------------------------------------------------------------------------------- signals


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM ask the loop to finish its step, save a checkpoint and stop. Repeated signals
    change nothing: under `accelerate launch` the launcher forwards the terminal's Ctrl-C to the processes, which
    get it twice (Ctrl-\\ quits at once)."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        with contextlib.suppress(ValueError):  # signal handlers can only be set in the main thread
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        self.received = signum  # no printing here: the handler may interrupt a write to the same stream


# ---------------------------------------------------------------------------------------------------- the loop


def train(
    accelerator: Accelerator, model, optimizer, scheduler, task: TrainingTask, args: LoopArguments,
    arguments: dict | None = None,
) -> TrainOutcome:
    """Train the prepared `model` (`accelerator.prepare(model, optimizer, scheduler)` done by the caller).
    `arguments`: the run's arguments, recorded in every checkpoint (checked on --resume by `prepare_output_dir`)."""
    progress = TrainingProgress(signature={**task.signature, "num_processes": accelerator.num_processes,
                                           "gradient_accumulation_steps": args.gradient_accumulation_steps,
                                           "seed": args.seed},
                                arguments=json.loads(json.dumps(arguments or {})))
    checkpoints = Checkpoints(args.output_dir, args.keep_checkpoints)
    log = JsonLinesLog(Path(args.output_dir) / "log.jsonl", enabled=accelerator.is_main_process)
    if args.resume:
        if not checkpoints.all():
            raise CheckpointError(f"--resume: no checkpoint in {checkpoints.folder}")
        latest = checkpoints.all()[-1]
        arguments_now = progress.arguments
        checkpoints.load(accelerator, latest, model, optimizer, scheduler, progress)
        progress.arguments = arguments_now  # the changeable ones as this run has them (the others are the same)
        accelerator.print(f"resumed from {latest}: epoch {progress.epoch}, step {progress.global_step}")
        log.start(resumed_at_step=progress.global_step)
    else:
        if checkpoints.all():
            raise CheckpointError(
                f"{checkpoints.folder} holds checkpoints of an earlier run: pass --resume to continue it, or choose "
                "another --output_dir"
            )
        log.start(resumed_at_step=None)

    window = {"loss": torch.zeros((), device=accelerator.device), "tokens": torch.zeros((), device=accelerator.device),
              "nonfinite": torch.zeros((), device=accelerator.device), "steps": 0, "start": time.monotonic()}
    seconds_before, run_start, steps_this_run = progress.train_seconds, time.monotonic(), 0
    last_saved = progress.global_step if args.resume else None
    last_eval = {}
    bar = tqdm(total=args.max_steps, initial=progress.global_step, unit="step", dynamic_ncols=True,
               disable=not accelerator.is_local_main_process, desc="training")

    def save_checkpoint():
        _check_finite_loss(accelerator, window, progress, checkpoints, args)  # never save a diverged model
        progress.train_seconds = seconds_before + time.monotonic() - run_start
        checkpoints.save(accelerator, model, optimizer, scheduler, progress)

    model.train()
    with StopSignals() as signals:
        stop_reason = _stop_reason(accelerator, args, progress, steps_this_run, signals)
        if stop_reason is None and args.resume:
            _set_aside_final(accelerator, Path(args.output_dir), progress.global_step)
        while stop_reason is None:
            batches = task.epoch_batches(progress.epoch)
            steps = steps_for_process(batches, accelerator.num_processes, accelerator.process_index,
                                      args.gradient_accumulation_steps)
            remaining = [micro for step in steps[progress.step_in_epoch :] for micro in step]
            # A generator of its own: creating the loader's iterator would otherwise draw from the global RNG
            # (dropout's), which a resumed run does at another point than the run it continues.
            loader = DataLoader(task.dataset, batch_sampler=remaining, collate_fn=task.collate,
                                generator=torch.Generator())
            micro_batches = iter(loader)
            for _ in range(len(steps) - progress.step_in_epoch):
                step_batches = [_to_device(next(micro_batches), accelerator.device)
                                for _ in range(args.gradient_accumulation_steps)]
                _optimizer_step(accelerator, model, optimizer, scheduler, task, args, step_batches, window)
                progress.global_step += 1
                progress.step_in_epoch += 1
                steps_this_run += 1
                if progress.step_in_epoch == len(steps):
                    progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0
                progress.train_seconds = seconds_before + time.monotonic() - run_start
                bar.update()

                if progress.global_step % args.logging_steps == 0:
                    _check_finite_loss(accelerator, window, progress, checkpoints, args)
                    epochs_done = progress.epoch + progress.step_in_epoch / len(steps)  # 1.0 = end of epoch 0
                    record = _window_record(accelerator, progress, window, epochs_done)
                    log.write(record)
                    accelerator.log(record, step=progress.global_step)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                    tok_s=f"{record['tokens_per_second']:.0f}")
                pause = time.monotonic()
                if args.eval_steps and progress.global_step % args.eval_steps == 0 and task.evaluate:
                    last_eval.update(step=progress.global_step,
                                     metrics=_evaluate(accelerator, model, task, progress, log))
                if progress.global_step % args.save_steps == 0:
                    save_checkpoint()
                    last_saved = progress.global_step
                window["start"] += time.monotonic() - pause  # tokens/s counts training time only

                progress.train_seconds = seconds_before + time.monotonic() - run_start
                stop_reason = _stop_reason(accelerator, args, progress, steps_this_run, signals)
                if stop_reason is not None:
                    break
    bar.close()

    if last_saved != progress.global_step:
        save_checkpoint()
    completed = stop_reason not in ("interrupted", "--max_steps_this_run")
    accelerator.print(f"training stopped at step {progress.global_step} (epoch {progress.epoch}): {stop_reason}; "
                      f"{progress.train_seconds / 60:.1f} min of training in all")
    if completed and task.evaluate:
        if last_eval.get("step") != progress.global_step:
            last_eval.update(step=progress.global_step, metrics=_evaluate(accelerator, model, task, progress, log))
    return TrainOutcome(progress.global_step, progress.epoch, progress.train_seconds, completed, stop_reason,
                        checkpoints.all()[-1], last_eval.get("metrics", {}) if completed else {})


def _set_aside_final(accelerator, output_dir: Path, step: int) -> None:
    """A resumed run that trains on makes final/ of the run it continues stale: keep it, as final-step-N, rather
    than leave it beside the newer checkpoints as if it were their model (or overwrite it at the end)."""
    final = output_dir / "final"
    if accelerator.is_main_process and final.is_dir():
        kept = output_dir / f"final-step-{step}"
        suffix = 1
        while kept.exists():
            kept, suffix = output_dir / f"final-step-{step}-{suffix}", suffix + 1
        final.rename(kept)
        accelerator.print(f"{final} held the model of step {step}; training goes on, so it is kept as {kept}")
    accelerator.wait_for_everyone()


def _check_finite_loss(accelerator, window, progress, checkpoints, args) -> None:
    """A training loss that is nan or inf: stop, before anything of the diverged model is saved."""
    bad = window["nonfinite"].clone()
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, "sum")
    if bad.item() > 0:
        earlier = checkpoints.all()
        raise TrainingError(
            f"the training loss was nan or inf at step {progress.global_step} or before: the model diverged, and "
            "nothing of it was saved. "
            + (f"The last checkpoint saved before it is {earlier[-1]}. " if earlier else "")
            + f"Lower --learning_rate{f' (now {args.learning_rate})' if args.learning_rate else ''}, keep "
            "--max_grad_norm, or check the data for broken examples"
        )


def _to_device(batch: dict, device) -> dict:
    return {key: value.to(device) for key, value in batch.items()}


def _optimizer_step(accelerator, model, optimizer, scheduler, task, args, step_batches, window) -> None:
    local_items = sum(task.count_items(batch) for batch in step_batches)
    global_items = accelerator.reduce(torch.as_tensor(local_items, device=accelerator.device).float(), "sum")
    step_loss = torch.zeros((), device=accelerator.device)
    for i, batch in enumerate(step_batches):
        last = i == len(step_batches) - 1
        # Gradients are all-reduced once per step, on the last micro-batch.
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            loss = task.loss(model, batch, global_items) * accelerator.num_processes  # DDP averages; undo it
            accelerator.backward(loss)
        step_loss += loss.detach() / accelerator.num_processes
        window["tokens"] += task.count_tokens(batch)
    window["loss"] += step_loss
    if args.max_grad_norm is not None:
        window["grad_norm"] = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    window["lr"] = scheduler.get_last_lr()[0]  # the rate of this step
    optimizer.step()
    if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the step did not happen
        scheduler.step()
        window["nonfinite"] += ~torch.isfinite(step_loss)  # no synchronisation: checked when logged or saved
    optimizer.zero_grad(set_to_none=True)
    window["steps"] += 1


def _window_record(accelerator, progress, window, epochs_done: float) -> dict:
    """Mean training loss and throughput since the last log, over all processes."""
    loss = accelerator.reduce(window["loss"].clone(), "sum").item() / window["steps"]
    tokens = accelerator.reduce(window["tokens"].clone().float(), "sum").item()
    seconds = time.monotonic() - window["start"]
    record = {"step": progress.global_step, "epoch": round(epochs_done, 4), "loss": round(loss, 5),
              "lr": window["lr"], "tokens_per_second": round(tokens / seconds, 1),
              "elapsed_minutes": round(progress.train_seconds / 60, 3)}
    if "grad_norm" in window:
        record["grad_norm"] = round(float(window["grad_norm"]), 5)
    window.update(loss=torch.zeros_like(window["loss"]), tokens=torch.zeros_like(window["tokens"]), steps=0,
                  start=time.monotonic())
    return record


def _evaluate(accelerator, model, task, progress, log) -> dict:
    model.eval()
    metrics = task.evaluate(model)
    model.train()
    broken = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if broken:
        raise TrainingError(
            f"validation at step {progress.global_step}: {', '.join(f'{k} {v}' for k, v in broken.items())}: the "
            "model diverged or the validation data scores nothing; nothing of it was saved as final. Lower "
            "--learning_rate, or check the validation data"
        )
    record = {"step": progress.global_step, **metrics}
    log.write(record)
    accelerator.log(metrics, step=progress.global_step)
    accelerator.print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
    return metrics


def _stop_reason(accelerator, args, progress, steps_this_run, signals) -> str | None:
    """The same answer on every process: local reasons (a signal, the clock) are agreed on by a reduction."""
    if args.max_steps is not None and progress.global_step >= args.max_steps:
        return f"--max_steps {args.max_steps}"
    if args.num_epochs is not None and progress.epoch >= args.num_epochs:
        return f"--num_epochs {args.num_epochs}"
    if args.max_steps_this_run is not None and steps_this_run >= args.max_steps_this_run:
        return "--max_steps_this_run"
    out_of_time = args.max_train_minutes is not None and progress.train_seconds >= 60 * args.max_train_minutes
    flags = torch.tensor([signals.received is not None, out_of_time], dtype=torch.float32, device=accelerator.device)
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags, "sum")
    if flags[0] > 0:
        accelerator.print(f"\ninterrupted: saving a checkpoint at step {progress.global_step}")
        return "interrupted"
    if flags[1] > 0:
        return f"--max_train_minutes {args.max_train_minutes}"
    return None



__all__ = [
    "LoopArguments",
    "TrainingTask",
    "TrainOutcome",
    "ArgumentError",
    "CheckpointError",
    "TrainingError",
    "errors_without_traceback",
    "check_positive",
    "check_fraction",
    "peak_learning_rate",
    "prepare_output_dir",
    "ResumePoint",
    "Checkpoints",
    "save_state_file",
    "load_state_file",
    "tokenizer_fingerprint",
    "check_tokenizer",
    "make_accelerator",
    "check_mixed_precision",
    "cpu_bf16_support",
    "CpuBf16Support",
    "CpuBf16Warning",
    "make_optimizer",
    "inverse_sqrt_factor",
    "token_batches",
    "steps_for_process",
    "train",
    "average_checkpoints",
    "mean_loss",
    "plot_log",
    "paper_learning_rate",
]
