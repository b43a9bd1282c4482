"""The Trainer side of the fine-tuning engine (`finetuning`): `build_trainer` gives `Trainer` the project's optimizer
and schedule (`optimization.make_optimizer`, `optimization.make_schedule`), length-grouped epochs that a resumed run
replays, and checkpoints without a pickle; `train` adds Ctrl-C/SIGTERM (save and stop) and divergence (stop, save
nothing); `save_run` writes the Hub-ready folder from the whole weights (`run_folder.whole_weights`, every process)
and results.json, atomically, then removes the checkpoints; `exit_status` is a command's `main`, which releases the
run folder (`run_lock`) however the run ends.
"""

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import datasets
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import get_length_grouped_indices
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from vanilla_transformer.scripts.training import run_lock
from vanilla_transformer.scripts.training.checkpoints import _fsync, remove_path
from vanilla_transformer.scripts.training.errors import CheckpointError, TrainingError, errors_without_traceback
from vanilla_transformer.scripts.training.finetuning import FinetuneArguments, checkpoints
from vanilla_transformer.scripts.training.engine import StopSignals, describe_engine
from vanilla_transformer.scripts.training.optimization import make_optimizer, make_schedule
from vanilla_transformer.scripts.training.run_folder import (
    PARTIAL,
    fill_partial,
    save_whole_for_hub,
    signals_held,
    whole_weights,
)

logger = logging.getLogger("finetuning")


class StopOnSignal(TrainerCallback):
    """Ctrl-C or SIGTERM (`StopSignals`): the step finishes, a checkpoint is saved, training stops."""

    def __init__(self, signals: StopSignals):
        self.signals = signals

    def on_step_end(self, args, state, control, **kwargs):
        if self.signals.received is not None:
            control.should_save = True
            control.should_training_stop = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.signals.received is not None:  # the epoch was cut short: no validation pass before stopping
            control.should_evaluate = False


class StopOnDivergence(TrainerCallback):
    """A NaN or inf training loss (or gradient norm) stops the run, and nothing is saved after it; a checkpoint whose
    weights are not finite is deleted as soon as it is written. A diverged run is then an error, not a broken model
    with scores reported as a result."""

    def __init__(self):
        self.diverged: tuple[int, str] | None = None  # (step, what was not finite)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # A NaN gradient is the first sign, the loss follows a step later; under fp16 an inf gradient is a step the
        # loss scaler skips, not a divergence.
        for key in ("loss",) if args.fp16 else ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(value):
                self.stop(state, control, f"the {key.replace('_', ' ')} is {value}")
                control.should_save = False
                return

    def on_save(self, args, state, control, model=None, **kwargs):
        if model is not None and not all(torch.isfinite(p).all() for p in model.parameters()):
            shutil.rmtree(Path(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"), ignore_errors=True)
            self.stop(state, control, "the weights hold NaN or inf")

    def stop(self, state, control, what: str) -> None:
        if self.diverged is None:
            self.diverged = (state.global_step, what)
        control.should_training_stop = True


class LengthGroupedEpochs(torch.utils.data.Dataset):
    """The training rows in batches of similar length (less padding: faster on CPU), in an order drawn from
    (seed, epoch) by a generator of its own. Trainer's own length-grouped sampler draws from torch's global
    generator, whose state at an epoch's start a resumed run does not have: it would see other batches than the run
    it continues. Trainer reads this dataset in order and calls `set_epoch` at each epoch's start (through
    accelerate's data loader)."""

    def __init__(self, dataset: datasets.Dataset, batch_size: int, seed: int):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.lengths = [len(ids) for ids in dataset["input_ids"]]
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        self.order = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[self.order[index]]


class NoPickleInCheckpoints(TrainerCallback):
    """Trainer also writes its TrainingArguments into every checkpoint as a pickle (training_args.bin) that nothing
    reads back on resume: removed, so that a checkpoint holds no pickle (RUN_FILE records the arguments)."""

    def on_save(self, args, state, control, **kwargs):
        Path(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", "training_args.bin").unlink(
            missing_ok=True)


class TimeBudget(TrainerCallback):
    """--max_train_minutes: before each step the schedule learns how much of the budget is spent (its
    `clock_fraction`, saved with each checkpoint, so that the clock runs on over resumes); once all of it is, training
    stops, as finished as if it had reached its last step."""

    def __init__(self, trainer: "FinetuneTrainer", minutes: float):
        self.trainer, self.seconds, self.ran_out = trainer, 60.0 * minutes, False
        self.start = None

    def spent(self) -> float:
        return (time.monotonic() - self.start) / self.seconds

    def on_train_begin(self, args, state, control, **kwargs):  # after a resumed run's schedule has been loaded
        schedule = getattr(self.trainer.lr_scheduler, "scheduler", self.trainer.lr_scheduler)
        self.start = time.monotonic() - (schedule.clock_fraction or 0.0) * self.seconds

    def on_step_begin(self, args, state, control, **kwargs):
        schedule = getattr(self.trainer.lr_scheduler, "scheduler", self.trainer.lr_scheduler)
        schedule.clock_fraction = min(1.0, self.spent())

    def on_step_end(self, args, state, control, **kwargs):
        if self.spent() >= 1.0 and state.global_step < state.max_steps:
            self.ran_out = True
            control.should_training_stop = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.ran_out:  # the epoch was cut short: the command scores the validation set once, after training
            control.should_evaluate = False


class NoEvaluationAfterTheLastEpoch(TrainerCallback):
    """With several epochs the validation set is scored after each but the last: the command scores it right after
    training (one pass of the whole set, not two)."""

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = False


class FinetuneTrainer(Trainer):
    """Trainer with the project's optimizer and schedule (`vanilla_transformer.scripts.training.optimization`, as every
    script that trains): AdamW without weight decay on biases and norms, and a linear warmup followed by a linear
    decay to 0 over the run's steps, BERT's fine-tuning schedule. The betas, epsilon, weight decay and warmup are
    TrainingArguments'. Trainer calls these two hooks once it knows the number of steps (after the model is
    wrapped). With --max_train_minutes (`time_budget`), the decay follows the clock when it is further along."""

    time_budget: TimeBudget | None = None

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            self.optimizer = make_optimizer(model if model is not None else self.model, self.args.learning_rate,
                                            betas=(self.args.adam_beta1, self.args.adam_beta2),
                                            eps=self.args.adam_epsilon, weight_decay=self.args.weight_decay)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = make_schedule(optimizer or self.optimizer,
                                              self.args.get_warmup_steps(num_training_steps),
                                              total_steps=num_training_steps, clock=self.time_budget is not None)
        return self.lr_scheduler


def build_trainer(model, tokenizer, data: dict[str, datasets.Dataset], args: FinetuneArguments, data_collator,
                  compute_metrics) -> Trainer:
    """The Trainer of a fine-tune: `data` holds "train" and (scored after each epoch when there are several)
    "validation"."""
    training_args = TrainingArguments(
        output_dir=str(Path(args.output_dir).expanduser()),
        learning_rate=args.learning_rate,
        num_train_epochs=args.num_train_epochs,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        train_sampling_strategy="sequential" if args.group_by_length else "random",  # LengthGroupedEpochs
        # the command scores the validation set after training; with several epochs it is also scored after each
        # epoch but the last (NoEvaluationAfterTheLastEpoch)
        eval_strategy="epoch" if "validation" in data and args.num_train_epochs > 1 else "no",
        save_strategy="steps",  # checkpoints for --resume; the final model is saved once, Hub-ready, by save_run
        save_steps=args.save_steps,
        save_total_limit=2,  # the newest may be a save cut short: the one before it is complete
        logging_steps=args.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN (and stops the run), not averaged away
        report_to="none",
        seed=args.seed,
        bf16=args.mixed_precision == "bf16",
        fp16=args.mixed_precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = FinetuneTrainer(
        model=model,
        args=training_args,
        train_dataset=(LengthGroupedEpochs(data["train"], args.per_device_train_batch_size, args.seed)
                       if args.group_by_length and "train" in data else data.get("train")),
        eval_dataset=data.get("validation"),
        processing_class=tokenizer,
        data_collator=data_collator,
        compute_metrics=compute_metrics,
        callbacks=[NoPickleInCheckpoints(), NoEvaluationAfterTheLastEpoch()],
    )
    if args.max_train_minutes is not None:
        trainer.time_budget = TimeBudget(trainer, args.max_train_minutes)
        trainer.add_callback(trainer.time_budget)
    return trainer


def train(trainer: Trainer, args: FinetuneArguments, resume_from: Path | None) -> dict:
    """Train (when the trainer has training data): {"train": metrics}, or {"interrupted_at_step": n} when Ctrl-C or
    SIGTERM stopped the run (a checkpoint saved); a diverged run, or a checkpoint that does not load, raises."""
    logger.info(describe_engine(trainer.accelerator))
    if trainer.train_dataset is None:
        return {}
    divergence = StopOnDivergence()
    trainer.add_callback(divergence)
    with StopSignals() as signals:
        trainer.add_callback(StopOnSignal(signals))
        resumed_at = None
        if resume_from is not None:
            resumed_at = json.loads((resume_from / "trainer_state.json").read_text())["global_step"]
            logger.info("resuming from %s (step %d)", resume_from, resumed_at)
        try:
            trained = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        except Exception as error:
            if resumed_at is not None and trainer.state.global_step <= resumed_at:
                raise CheckpointError(f"--resume: {resume_from} could not be loaded ({type(error).__name__}: "
                                      f"{error}); if it is damaged, delete it to resume from the checkpoint "
                                      "before it") from error
            raise
    if resumed_at is not None and resumed_at > trainer.state.max_steps:  # Trainer believed it and trained nothing
        raise CheckpointError(f"--resume: {resume_from / 'trainer_state.json'}, field 'global_step': {resumed_at}, "
                              f"past this run's {trainer.state.max_steps} steps. The file was changed or is damaged: "
                              "delete this checkpoint to resume from the one before it, or start a new --output_dir")
    if divergence.diverged is None and not all(torch.isfinite(p).all() for p in trainer.model.parameters()):
        divergence.diverged = (trainer.state.global_step, "the weights hold NaN or inf")
    if divergence.diverged is not None:
        step, what = divergence.diverged
        raise TrainingError(f"training diverged: {what} at step {step}; nothing was saved after it (no model, "
                            f"no scores). Lower --learning_rate (it is {args.learning_rate}) and start a new "
                            "--output_dir")
    budget = getattr(trainer, "time_budget", None)
    if budget is not None and budget.ran_out:
        logger.info("--max_train_minutes %s: the time budget ended training at step %d of %d (epoch %.2f)",
                    args.max_train_minutes, trainer.state.global_step, trainer.state.max_steps, trainer.state.epoch)
    elif trainer.state.global_step < trainer.state.max_steps:
        logger.warning("interrupted at step %d of %d: checkpoint saved in %s; continue with the same command plus "
                       "--resume", trainer.state.global_step, trainer.state.max_steps, args.output_dir)
        run_lock.release(Path(args.output_dir).expanduser())
        return {"interrupted_at_step": trainer.state.global_step}
    logger.info("trained: %s", trained.metrics)
    return {"train": trained.metrics}


def check_finite_scores(results: dict, source: str) -> None:
    broken = {key: value for key, value in results.items() if isinstance(value, float) and not math.isfinite(value)}
    if broken:
        raise TrainingError(f"{source}: non-finite scores {broken}: the model or the data is broken; not reported")


def save_run(trainer: Trainer, tokenizer, results: dict) -> dict:
    """The Hub-ready model and results.json in --output_dir; the checkpoints are then removed (the run is
    complete) and the folder released (`run_lock`). Every process calls it: under FSDP2 or DeepSpeed ZeRO-3 they
    gather the whole weights together; the main one writes, atomically: the files into a hidden folder, synced
    (`run_folder.fill_partial`), then moved into --output_dir with Ctrl-C held back, results.json (which marks the
    run finished) last. Ctrl-C while they are written keeps nothing of them, says how to write them (--resume), and
    returns {"interrupted_at_step": step}."""
    output_dir = Path(trainer.args.output_dir)
    latest = (checkpoints(output_dir) or [output_dir])[-1]
    try:
        weights = whole_weights(trainer.accelerator, trainer.model_wrapped)
        if trainer.is_world_process_zero():
            def write(folder: Path) -> None:
                save_whole_for_hub(trainer.accelerator.unwrap_model(trainer.model), folder, tokenizer, weights)
                (folder / "results.json").write_text(json.dumps(results, indent=2, default=str))

            partial = output_dir / f"{PARTIAL}model"
            try:
                fill_partial(partial, write)
            except Exception as error:
                raise CheckpointError(f"could not write the fine-tuned model into {output_dir} ({type(error).__name__}: "
                                      f"{error}). Is the disk full? Nothing of it was kept; the trained weights are in "
                                      f"{latest}: free some space, then run the same command with --resume") from error
            with signals_held():
                for path in sorted(partial.iterdir(), key=lambda path: path.name == "results.json"):
                    os.replace(path, output_dir / path.name)
                _fsync(output_dir)
            partial.rmdir()
            for checkpoint in checkpoints(output_dir):
                remove_path(checkpoint)
            logger.info("saved to %s", output_dir)
    except KeyboardInterrupt:
        logger.warning("interrupted while writing the fine-tuned model: nothing of it was kept in %s; the trained "
                       "weights are in %s: run the same command with --resume to write it", output_dir, latest)
        results = {"interrupted_at_step": trainer.state.global_step}
    trainer.accelerator.wait_for_everyone()
    run_lock.release(output_dir)
    return results


def exit_status(run, argv: list[str] | None) -> int:
    """A command's `main`: `run(argv)`, its refusals printed as one message without a traceback (status 1); 130
    when Ctrl-C or SIGTERM stopped the run (a checkpoint saved), else 0."""
    try:
        with errors_without_traceback():
            outcome = run(argv)
    finally:  # however the run ended: its folder is free again (finetuning.prepare_output_dir took it)
        run_lock.release_all()
    return 130 if "interrupted_at_step" in outcome else 0
