"""The one Accelerate training loop of the project, its optimizer and its learning-rate schedule: every script that
trains goes through here (the main job, translation, masked-LM pretraining; the classification fine-tuning runs on
transformers' Trainer with this optimizer and schedule).

A script brings its model, data and loss as a `TrainingTask`; `train()` does the rest, the same way on one CPU,
one GPU or several processes (`accelerate launch`), with mixed precision, gradient accumulation and clipping:

- Batches (`batching.py`): the task lists an epoch's micro-batches (lists of example indices: `token_batches` by
  token count, `sized_batches` by example count); `steps_for_process` groups them into optimizer steps of
  num_processes x accumulation micro-batches and hands each process its share. A global step therefore holds the same
  examples whatever the number of processes: 2 processes x 1 micro-batch = 1 process x 2 accumulated micro-batches.
- Optimizer and schedule: `make_optimizer` (Adam, the paper's betas and epsilon by default) and `make_schedule`
  (`learning_rate_factor`: linear warmup, then the paper's inverse square root decay, or a linear decay to 0 for a
  run of known length); `loop_optimizer` builds both from a run's `LoopArguments`. `--lr_schedule one_cycle` decays
  linearly to 0 at the end of the run, whichever of --max_steps, --num_epochs and --max_train_minutes ends it
  (`run_fraction`): with a time budget the schedule follows the clock, as Cramming's does (Geiping and Goldstein
  2023), so that a slower machine takes fewer steps and still ends at learning rate 0.
- Loss: the task returns a token-level sum divided by the number of target items of the whole global step
  (summed over processes and micro-batches); times num_processes, since DDP averages gradients. Each step's
  gradient is then the mean over every item of the global batch, however it is split.
- Checkpoints (`checkpoints.py`): model, optimizer, scheduler, gradient scaler, each process's RNG state and the
  `TrainingProgress` (epoch, step within it, global step, elapsed time, the run's arguments), as data only:
  safetensors and JSON, no pickle, so that resuming never runs code that a checkpoint file brings. The data order
  is a function of (seed, epoch), re-created and skipped on `--resume`, so a killed and resumed run ends with the
  same weights as an uninterrupted one. Checkpoints are written to a temporary folder and renamed when complete.
- Before any data is read (`prepare_output_dir`): the output folder is writable; a fresh run does not mix with an
  earlier run's outputs; `--resume` finds a checkpoint whose run had the same arguments (those that shape the
  trajectory: learning rate, model, data, seed...; the stopping, logging and saving ones may change), so that what
  `training_args.json` records is what ran.
- Refusals and warnings (`errors.py`): `ArgumentError`, `DataError`, `CheckpointError` and `TrainingError` (a loss
  or metric that is not finite) name the argument, file or folder and the fix;
  the scripts print them without a traceback (`errors_without_traceback`).
- Stops: `max_steps`, `num_epochs`, `max_train_minutes` (wall clock of the loop, evaluations included),
  `max_steps_this_run` (stop with a checkpoint, to split a job), Ctrl-C or SIGTERM (finish the step, save, stop).
  Every process stops at the same step.
- Logs (`logs.py`): a tqdm bar on the main process (loss, learning rate, tokens/s), `log.jsonl` (one JSON object per
  logged step or evaluation), `training_curves.png` at the end, and Accelerate trackers (`--report_to tensorboard`).
- Precision (`precision.py`): `--mixed_precision bf16` on a CPU without native bf16 trains in fp32 instead, with a
  warning, before any data is read (`--force_bf16` insists). What ran is what `training_args.json` records
  (`mixed_precision`; `requested_mixed_precision` beside it).
- Engines (docs/scaling.md): one process, DDP on one or several machines, FSDP2. `make_accelerator` logs which runs
  (`describe_engine`). Under FSDP2 every forward pass is a collective: evaluations give every process the same number
  of forward passes (`evaluation_share`), checkpoints and the final folder hold the whole weights (checkpoints.py),
  and `--gradient_checkpointing` is the model's own activation checkpointing (`prepare_for_training`).

Multi-process on CPU, one machine (accelerate's `--cpu` launches a single process unless run under mpirun;
torchrun's launcher with ACCELERATE_USE_CPU does it):
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --main_process_port 29501 script.py ...
"""

import contextlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, parse_choice_from_env, parse_flag_from_env
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vanilla_transformer.scripts.training.batching import steps_for_process
from vanilla_transformer.scripts.training.checkpoints import Checkpoints, TrainingProgress
from vanilla_transformer.scripts.training.errors import (
    ArgumentError,
    CheckpointError,
    DataError,
    TrainingError,
    check_fraction,
    check_positive,
)
from vanilla_transformer.scripts.training.logs import JsonLinesLog
from vanilla_transformer.scripts.training.precision import check_mixed_precision

# Tied weights (embeddings = output projection) are stored once in a checkpoint, as they should be; accelerate
# warns about it at every save.
logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


LR_SCHEDULES = ("inverse_sqrt", "one_cycle")


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
    warmup_steps: int = field(default=4000, metadata={"help": "linear warmup over this many steps, then --lr_schedule"})
    lr_schedule: str = field(
        default="inverse_sqrt", metadata={"help": "after the warmup: inverse_sqrt (the paper's decay, the same for any "
                                                  "run length) or one_cycle (a linear decay to 0 at the end of the "
                                                  "run: the first of --max_steps, --num_epochs, --max_train_minutes "
                                                  "to come; a time budget makes it follow the clock)"}
    )
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
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute each layer in the backward pass instead of keeping its "
                                         "activations: less memory, one more forward pass per step, the same gradients "
                                         "(the model's own activation checkpointing; use it rather than FSDP's)"}
    )
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
        if self.lr_schedule not in LR_SCHEDULES:
            raise ArgumentError(f"--lr_schedule {self.lr_schedule}: choose from {', '.join(LR_SCHEDULES)}")
        check_positive(max_train_minutes=self.max_train_minutes, learning_rate=self.learning_rate,
                       adam_epsilon=self.adam_epsilon, max_grad_norm=self.max_grad_norm)
        check_fraction(adam_beta1=self.adam_beta1, adam_beta2=self.adam_beta2)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ArgumentError(f"--weight_decay must be 0 or more, got {self.weight_decay}")


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


def prepare_for_training(accelerator: Accelerator, args: LoopArguments, model, optimizer, scheduler) -> tuple:
    """`accelerator.prepare(model, optimizer, scheduler)` for `train()`, after what must come before it: with
    --gradient_checkpointing the model's own activation checkpointing, which recomputes each layer in the backward
    pass with the forward pass's RNG state, so that dropout draws the same masks and the gradients are those of the
    loss computed (accelerate's `fsdp_activation_checkpointing` does not restore the RNG state: docs/scaling.md)."""
    if args.gradient_checkpointing:
        # the name since transformers 5.23 (gradient_checkpointing_enable before, deprecated since)
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    return accelerator.prepare(model, optimizer, scheduler)


# --------------------------------------------------------------------------------- optimizer and schedule


def learning_rate_factor(step: int, warmup_steps: int, total_steps: int | None = None,
                         run_fraction: float | None = None) -> float:
    """The learning rate of optimizer step `step` (counted from 1) as a fraction of its peak: a linear warmup to the
    peak at `warmup_steps`, then the paper's inverse square root decay, sqrt(warmup_steps / step) (section 5.3); or,
    given the run's `total_steps`, a linear decay to 0 after the last step (BERT's fine-tuning schedule); or, given
    `run_fraction` (how much of the run is done, 0 to 1, see `run_fraction`), one cycle: the lower of the warmup
    line and a line from the peak at the start of the run down to 0 at its end."""
    warmup = step / warmup_steps if warmup_steps else 1.0
    if run_fraction is not None:
        return max(0.0, min(warmup, 1.0, 1.0 - run_fraction))
    if total_steps is None:
        if warmup_steps < 1:
            raise ArgumentError(f"--warmup_steps {warmup_steps}: the inverse square root decay needs at least 1")
        return min(warmup, (warmup_steps / step) ** 0.5)
    return min(warmup, 1.0, max(0.0, (total_steps - step + 1) / max(1, total_steps - warmup_steps)))


def paper_learning_rate(d_model: int, warmup_steps: int, factor: float = 1.0) -> float:
    """The peak of lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), reached at step = warmup:
    d_model^-0.5 * warmup^-0.5 (times `factor`)."""
    return factor * d_model**-0.5 * warmup_steps**-0.5


def make_optimizer(model: torch.nn.Module, learning_rate: float, betas: tuple[float, float] = (0.9, 0.98),
                   eps: float = 1e-9, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """Adam (defaults: the paper's betas and epsilon, section 5.3) at `learning_rate`, with decoupled weight decay on
    the weight matrices and embeddings only: biases and norm scales (one dimension) are not decayed."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in parameters if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate, betas=betas, eps=eps)


def run_fraction(args: LoopArguments, steps: int, epochs: float, seconds: float) -> float:
    """How much of the run is done, 0 to 1, after `steps` optimizer steps, `epochs` passes over the data and `seconds`
    of training: the largest of steps / --max_steps, epochs / --num_epochs and seconds / --max_train_minutes, since
    the run stops when the first of them reaches 1."""
    done = [0.0]
    if args.max_steps is not None:
        done.append(steps / args.max_steps)
    if args.num_epochs is not None:
        done.append(epochs / args.num_epochs)
    if args.max_train_minutes is not None:
        done.append(seconds / (60 * args.max_train_minutes))
    return min(1.0, max(done))


class Schedule(LambdaLR):
    """`learning_rate_factor` as a scheduler, stepped once per optimizer step. With `one_cycle`, the factor reads
    `run_fraction`: how much of the run will be done after the current step, set by `train()` before each step. The
    state_dict holds it, so that a resumed run goes on from where it stopped."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int | None = None,
                 one_cycle: bool = False):
        self.run_fraction = 0.0 if one_cycle else None
        # LambdaLR counts scheduler steps from 0; the paper's step_num starts at 1 (no step at learning rate 0).
        super().__init__(optimizer, lambda index: learning_rate_factor(index + 1, warmup_steps, total_steps,
                                                                      self.run_fraction))


def make_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int | None = None,
                  one_cycle: bool = False) -> Schedule:
    """`learning_rate_factor` as a scheduler, stepped once per optimizer step (`one_cycle`: see `Schedule`)."""
    return Schedule(optimizer, warmup_steps, total_steps, one_cycle)


def loop_optimizer(model: torch.nn.Module, args: "LoopArguments", learning_rate: float):
    """The optimizer and schedule of a run of `train()`, from its arguments: (optimizer, scheduler)."""
    optimizer = make_optimizer(model, learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                               weight_decay=args.weight_decay)
    return optimizer, make_schedule(optimizer, args.warmup_steps, one_cycle=args.lr_schedule == "one_cycle")


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
    evaluate(model): {name: value} on held-out data, run on every process: each scores its share and the results
        are gathered. `model` is the prepared one, in eval mode. Every process must make the same number of forward
        passes (`evaluation_share`), as a model sharded by FSDP2 needs, and generate with `synced_gpus=True` when it
        is sharded (`checkpoints.is_sharded`): processes that finish first keep stepping with the others.
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
class TrainOutcome:
    global_step: int
    epoch: int
    train_seconds: float
    completed: bool  # False: stopped by --max_steps_this_run or a signal; resume with --resume
    stop_reason: str
    checkpoint: Path
    metrics: dict  # the evaluation at the last step ({} when stopped early or without `task.evaluate`)


def evaluation_share(items: Sequence, num_processes: int, process_index: int) -> tuple[list, list]:
    """(this process's share of `items`, padding): every num_processes-th item from the process's own index, and
    copies of the first item up to the size of the largest share. Score the share; run the padding through the
    model too, without counting it. Every process then makes the same number of forward passes (or `generate`
    calls), as a model sharded by FSDP2 needs: each of its forward passes is a collective. Under DDP and in one
    process the scores are those of the share alone."""
    mine = list(items[process_index::num_processes])
    missing = -(-len(items) // num_processes) - len(mine)  # the largest share's size, less this one's
    return mine, [items[0]] * missing if missing else []


@torch.no_grad()
def mean_loss(accelerator: Accelerator, model: torch.nn.Module, batches: Sequence,
              collate: Callable[[object], dict] = lambda batch: batch) -> float:
    """Validation loss per item (target token, masked token) over `batches`, the same list on every process: each
    process scores its share (`evaluation_share`), `collate` making each of its batches a dict of tensors (default:
    they are already), and the summed losses and item counts (labels != -100) of all processes are added up. The
    model must reduce its loss as sum / num_items_in_batch. Runs the bare model: a DDP forward is a collective (its
    buffer broadcast), which an evaluation in eval mode does not need."""
    model = accelerator.unwrap_model(model)
    mine, padding = evaluation_share(batches, accelerator.num_processes, accelerator.process_index)

    def summed_loss(batch) -> tuple[torch.Tensor, torch.Tensor]:
        batch = _to_device(collate(batch), accelerator.device)
        with accelerator.autocast():
            loss = model(**batch, num_items_in_batch=1).loss.float()  # num_items_in_batch=1: the sum
        return loss, (batch["labels"] != -100).sum()

    totals = torch.zeros(2, device=accelerator.device)  # summed loss, items
    for batch in mine:
        loss, items = summed_loss(batch)
        totals[0] += loss
        totals[1] += items
    for batch in padding:  # the same number of forward passes on every process; not counted
        summed_loss(batch)
    totals = accelerator.reduce(totals, "sum")
    if totals[1] == 0:
        raise DataError("the validation data gives no item to score (no target or masked token): give more "
                        "validation data")
    return (totals[0] / totals[1]).item()


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

    schedule = getattr(scheduler, "scheduler", scheduler)  # the Schedule inside accelerate's wrapper
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
                if getattr(schedule, "run_fraction", None) is not None:  # --lr_schedule one_cycle: after this step
                    schedule.run_fraction = run_fraction(
                        args, progress.global_step + 1, progress.epoch + (progress.step_in_epoch + 1) / len(steps),
                        _agreed_seconds(accelerator, progress.train_seconds))
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


def _agreed_seconds(accelerator, seconds: float) -> float:
    """The training seconds of the slowest process: every process must take the same learning rate."""
    if accelerator.num_processes == 1:
        return seconds
    return accelerator.gather(torch.tensor([seconds], device=accelerator.device)).max().item()


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
