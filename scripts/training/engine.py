"""The engine a run trains on, for every command that trains (our loop and the fine-tuning Trainer alike):

- `make_accelerator`: the run's Accelerator in the precision this device allows (`precision.check_mixed_precision`,
  checked before any data is read), saying which engine runs (`describe_engine`: one process, DDP, FSDP2, DeepSpeed);
- `prepare_for_training`: the model's own activation checkpointing, then `accelerator.prepare`;
- `StopSignals`: Ctrl-C and SIGTERM ask the run to finish its step, save and stop;
- `end_run`: the end of a run on every process (the DDP process group torn down while all are present).
"""

import contextlib
import os
import signal
from typing import TYPE_CHECKING

from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, parse_choice_from_env, parse_flag_from_env

from vanilla_transformer.scripts.training.errors import ArgumentError
from vanilla_transformer.scripts.training.precision import check_mixed_precision

if TYPE_CHECKING:
    from vanilla_transformer.scripts.training.loop import LoopArguments


def make_accelerator(args: "LoopArguments") -> Accelerator:
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
    accelerator.print(describe_engine(accelerator))
    return accelerator


def describe_engine(accelerator: Accelerator) -> str:
    """One line for the log: the engine that runs the training (none, DDP, FSDP, DeepSpeed ZeRO), processes and
    machines. The machines are counted from the launcher's processes per machine (torchrun's LOCAL_WORLD_SIZE)."""
    kind = accelerator.distributed_type
    if kind == DistributedType.NO:
        engine = "none (one process)"
    elif kind == DistributedType.FSDP:
        engine = f"FSDP{getattr(accelerator.state.fsdp_plugin, 'fsdp_version', 1)}"
    elif kind == DistributedType.DEEPSPEED:
        engine = f"DeepSpeed ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}"
    elif kind.value.startswith("MULTI_"):
        engine = f"DDP ({kind.value.removeprefix('MULTI_')})"
    else:
        engine = kind.value
    processes = accelerator.num_processes
    machines = max(1, processes // int(os.environ.get("LOCAL_WORLD_SIZE", processes)))
    return (f"engine: {engine}, {processes} process{'es' * (processes > 1)} on {machines} "
            f"machine{'s' * (machines > 1)}, {accelerator.device.type}, mixed precision {accelerator.mixed_precision}")


def prepare_for_training(accelerator: Accelerator, args: "LoopArguments", model, optimizer, scheduler) -> tuple:
    """`accelerator.prepare(model, optimizer, scheduler)` for `train()`, after what must come before it: with
    --gradient_checkpointing the model's own activation checkpointing, which recomputes each layer in the backward
    pass with the forward pass's RNG state, so that dropout draws the same masks and the gradients are those of the
    loss computed (accelerate's `fsdp_activation_checkpointing` does not restore the RNG state: docs/scaling.md)."""
    if args.gradient_checkpointing:
        # the name since transformers 5.23 (gradient_checkpointing_enable before, deprecated since)
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    return accelerator.prepare(model, optimizer, scheduler)


def end_run(accelerator: Accelerator) -> None:
    """The end of a run, called by every process after it has rebound its prepared model to the bare one
    (`model = accelerator.unwrap_model(model)`, which closures over `model` see too). The DDP wrapper holds the
    process group; freed only when the run's function returns, after another process has exited, its gloo threads
    wait for that process forever (seen with 2 processes under accelerate launch). So: drop accelerate's references
    (the wrapper is freed here, every process still present), wait for all, then destroy the process group."""
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    accelerator.wait_for_everyone()
    accelerator.end_training()


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
