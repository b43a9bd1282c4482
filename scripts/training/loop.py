"""The one Accelerate training loop of the project: every command that trains goes through here (translation and
masked-LM pretraining, and so the main job, through `run.py`; the fine-tuning commands run on transformers' Trainer
with the same optimizer, schedule and run-folder policy).

A script brings its model, data and loss as a `TrainingTask`; `train()` does the rest, the same way on one CPU,
one GPU or several processes (`accelerate launch`), with mixed precision, gradient accumulation and clipping:

- Batches (`batching.py`): the task lists an epoch's micro-batches (lists of example indices: `token_batches` by
  token count, `sized_batches` by example count); `steps_for_process` groups them into optimizer steps of
  num_processes x accumulation micro-batches and hands each process its share. A global step therefore holds the same
  examples whatever the number of processes: 2 processes x 1 micro-batch = 1 process x 2 accumulated micro-batches.
- Optimizer and schedule (`optimization.py`): Adam with the paper's betas and epsilon, linear warmup then the
  paper's inverse square root decay, or one cycle that ends with the run (`--lr_schedule one_cycle`: whichever of
  --max_steps, --num_epochs and --max_train_minutes ends it, so a slower machine still anneals to 0).
- Loss: the task returns a token-level sum divided by the number of target items of the whole global step
  (summed over processes and micro-batches); times num_processes, since DDP averages gradients. Each step's
  gradient is then the mean over every item of the global batch, however it is split.
- Checkpoints (`checkpoints.py`): model, optimizer, scheduler, gradient scaler, each process's RNG state and the
  `TrainingProgress` (epoch, step within it, global step, elapsed time, the run's arguments), as data only:
  safetensors and JSON, no pickle, so that resuming never runs code that a checkpoint file brings. The data order
  is a function of (seed, epoch), re-created and skipped on `--resume`, so a killed and resumed run ends with the
  same weights as an uninterrupted one. Checkpoints are written to a temporary folder and renamed when complete.
- The run folder (`run_folder.py`, one policy for every command): checked before any data is read; `--resume`
  continues a run with the same arguments but for when to stop, logging and saving.
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
- Engines (`engine.py`, docs/scaling.md): one process, DDP on one or several machines, FSDP2. Under FSDP2 every
  forward pass is a collective: evaluations give every process the same number of forward passes
  (`evaluation_share`), checkpoints and the final folder hold the whole weights.

Multi-process on CPU, one machine (accelerate's `--cpu` launches a single process unless run under mpirun;
torchrun's launcher with ACCELERATE_USE_CPU does it):
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --main_process_port 29501 script.py ...
"""

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vanilla_transformer.scripts.training.batching import steps_for_process
from vanilla_transformer.scripts.training.checkpoint_checks import check_position
from vanilla_transformer.scripts.training.checkpoints import Checkpoints, TrainingProgress
from vanilla_transformer.scripts.training.errors import (
    ArgumentError,
    CheckpointError,
    TrainingError,
    check_fraction,
    check_positive,
)
from vanilla_transformer.scripts.training.engine import StopSignals
from vanilla_transformer.scripts.training.evaluation import to_device
from vanilla_transformer.scripts.training.logs import JsonLinesLog
from vanilla_transformer.scripts.training.optimization import run_fraction

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


# ------------------------------------------------------------------------------------------------ the task


@dataclass
class TrainingTask:
    """What a script brings to `train()`.

    epoch_batches(epoch): all micro-batches of that epoch (lists of indices into `dataset`), the same on every
        process, in training order; a deterministic function of the epoch (resuming re-creates it), as many in every
        epoch (a resumed run checks its checkpoint's position against that count: `check_position`).
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
        # before anything of the run folder changes (final/ set aside below): the position must be one of the data's
        check_position(latest, progress, len(_epoch_steps(accelerator, task, args, progress.epoch)))
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
            steps = _epoch_steps(accelerator, task, args, progress.epoch)
            # the steps already done are skipped by index: no work per skipped step (check_position bounds it)
            remaining = [micro for step in steps[progress.step_in_epoch :] for micro in step]
            # A generator of its own: creating the loader's iterator would otherwise draw from the global RNG
            # (dropout's), which a resumed run does at another point than the run it continues.
            loader = DataLoader(task.dataset, batch_sampler=remaining, collate_fn=task.collate,
                                generator=torch.Generator())
            micro_batches = iter(loader)
            for _ in range(len(steps) - progress.step_in_epoch):
                step_batches = [to_device(next(micro_batches), accelerator.device)
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


def _epoch_steps(accelerator, task, args, epoch: int) -> list[list[list[int]]]:
    """This process's optimizer steps of `epoch` (each a list of micro-batches)."""
    return steps_for_process(task.epoch_batches(epoch), accelerator.num_processes, accelerator.process_index,
                             args.gradient_accumulation_steps)


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
