"""A run folder (`--output_dir`), one policy for every command that trains, on either engine (our Accelerate loop,
or `Trainer` for fine-tuning):

- before any data is read, `prepare_output_dir` checks the folder: writable; taken for this run (`run_lock`: one run
  per folder, released by `run.run` however the run ends); a fresh run does not mix with an earlier
  run's outputs (checkpoints or a final model are refused, the leftovers of a run that saved nothing are removed);
  `--resume` finds a checkpoint of a run with the same arguments, but for those that may change (`CHANGEABLE_ON_RESUME`:
  when to stop, logging, saving, reporting) and those a command adds (its evaluation-only ones);
  `check_resumed_arguments` is that comparison, also used by the fine-tuning commands;
- at the end, `save_final` writes the Hub-ready `final/` from the whole weights (`whole_weights`, gathered from every
  process of a sharded model) with its `training_args.json`, atomically: into a hidden sibling, synced, then renamed
  (`publish_folder`), so that final/ is complete or absent, whatever stops the run (Ctrl-C, a full disk, kill -9).
"""

import contextlib
import json
import os
import signal
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator

from vanilla_transformer.modeling.hub import save_for_hub
from vanilla_transformer.scripts.training import run_lock
from vanilla_transformer.scripts.training.checkpoints import (
    Checkpoints,
    _fsync,
    _gather_weights,
    check_signature,
    is_sharded,
    remove_path,
)
from vanilla_transformer.scripts.training.errors import ArgumentError, CheckpointError, DataWarning

if TYPE_CHECKING:
    from vanilla_transformer.scripts.training.loop import LoopArguments


# Arguments that a resumed run may change: when to stop, what to log, how often to save, how to report, whether to
# recompute activations (the same gradients). Any other argument shapes what training does, and a resumed run must
# keep it (the scripts add their evaluation-only ones).
CHANGEABLE_ON_RESUME = frozenset({
    "output_dir", "resume", "max_steps", "num_epochs", "max_train_minutes", "max_steps_this_run", "logging_steps",
    "eval_steps", "save_steps", "keep_checkpoints", "average_last", "report_to", "force_bf16",
    "requested_mixed_precision", "gradient_checkpointing",
})
# What an earlier run leaves in output_dir beside checkpoints/ and final/: thrown away by a fresh run when that run
# saved no checkpoint (nothing of it can be resumed or used).
LEFTOVERS = ("tokenizer", "log.jsonl", "training_args.json", "training_curves.png", "validation_scores.json")
PARTIAL = ".partial-"  # a folder being written, renamed when complete: .partial-final (a run cut short leaves it)


@dataclass
class ResumePoint:
    checkpoint: Path
    record: dict  # its progress.json

    def check_signature(self, **expected) -> None:
        """Check part of the data signature early (e.g. the tokenizer, before tokenizing the data with it)."""
        check_signature(self.checkpoint, self.record["signature"], expected)


def prepare_output_dir(accelerator: Accelerator, args: "LoopArguments", arguments: dict,
                       changeable: Iterable[str] = ()) -> ResumePoint | None:
    """Check `--output_dir` before any data is read, and return where `--resume` starts (None: a fresh run).

    - The folder must be writable (made if missing), and no other run may hold it (`run_lock`: the main process
      takes it for this run; the caller releases it, `run_lock.release`).
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
    lock_run_folder(accelerator, output_dir)
    checkpoints = Checkpoints(output_dir, args.keep_checkpoints)
    if args.resume:
        if not checkpoints.all():
            raise CheckpointError(f"--resume: no checkpoint in {checkpoints.folder}")
        latest = checkpoints.all()[-1]
        record = checkpoints.read_progress(latest)
        check_resumed_arguments(latest, record["arguments"], arguments, CHANGEABLE_ON_RESUME | set(changeable))
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
    leftovers += sorted(output_dir.glob(f"{PARTIAL}*"))
    accelerator.wait_for_everyone()  # every process has looked before the main one deletes
    if leftovers and accelerator.is_main_process:
        for path in leftovers:
            remove_path(path)  # a link is removed, never followed
        warnings.warn(f"{output_dir}: removed the leftovers of an earlier run that saved no checkpoint "
                      f"({', '.join(p.name for p in leftovers)}); this run makes its own", DataWarning, stacklevel=2)
    accelerator.wait_for_everyone()
    return None


def lock_run_folder(accelerator: Accelerator, output_dir: Path) -> None:
    """The main process takes `output_dir` for this run (`run_lock.acquire`); every process raises if it could not."""
    refusal = None
    if accelerator.is_main_process:
        try:
            run_lock.acquire(output_dir)
        except run_lock.RunFolderLocked as error:
            refusal = error
    refused = torch.tensor(float(refusal is not None), device=accelerator.device)
    if accelerator.num_processes > 1:
        refused = accelerator.reduce(refused, "sum")
    if refusal is not None:
        raise refusal
    if refused.item() > 0:
        raise run_lock.RunFolderLocked(f"--output_dir {output_dir} is in use by another run (the main process says "
                                       "which)")


def check_resumed_arguments(checkpoint: Path, recorded: dict, arguments: dict, changeable: set[str]) -> None:
    """A resumed run goes on as it started: every argument it recorded (`recorded`) must have its value now, but for
    the `changeable` ones. An argument the run did not record (added by a later version) is not compared."""
    now = json.loads(json.dumps(arguments))  # as JSON has it: tuples are lists
    changed = [name for name in now if name not in changeable and name in recorded and recorded[name] != now[name]]
    if changed:
        details = "; ".join(f"--{name}: checkpoint {recorded[name]!r}, now {now[name]!r}" for name in changed)
        raise CheckpointError(
            f"cannot resume from {checkpoint} with other settings ({details}): a resumed run goes on as it started "
            "(the run folder's arguments file records what ran). Resume with the checkpoint's values, or start a new "
            "--output_dir for the new ones"
        )


def whole_weights(accelerator: Accelerator, model) -> dict:
    """The whole weights of the prepared `model`, for `save_pretrained(state_dict=...)` on the main process. Every
    process calls it: gathering the weights of a sharded model is a collective.

    - FSDP2 (the parameters are DTensors): torch's consolidation onto the main process (the others get an empty
      dict), the call `accelerator.get_state_dict` makes under FSDP2. The DTensors are recognised rather than
      accelerate's setting, so that the CPU tests, where accelerate does not enable FSDP, run this path.
    - Otherwise `accelerator.get_state_dict`: the model's own state_dict, or under DeepSpeed ZeRO-3 the weights
      gathered in 16 bits (it needs `zero3_save_16bit_model: true`)."""
    bare = accelerator.unwrap_model(model)
    return _gather_weights(bare) if is_sharded(bare) else accelerator.get_state_dict(model)


def save_whole_for_hub(model: torch.nn.Module, folder: Path, tokenizer, weights: dict) -> Path:
    """`save_for_hub` of the bare `model` with the `weights` that `whole_weights` gathered (on the main process).
    `fully_shard` gives a model that FSDP2 shards a class of its own (FSDP<Name>, defined in torch), which
    save_pretrained would write into the folder as the model's class and code: a sharded model is saved through a
    stand-in of its own class on the meta device (no memory), with its config and generation config."""
    if is_sharded(model):
        from torch.distributed.fsdp import FSDPModule

        own_class = next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))
        with torch.device("meta"):
            stand_in = own_class(model.config)
        if model.can_generate():  # the beam size and length penalty the translation script chose
            stand_in.generation_config = model.generation_config
        model = stand_in
    return save_for_hub(model, folder, tokenizer, state_dict=weights)


def save_final(accelerator: Accelerator, model, tokenizer, output_dir: Path, arguments: dict, checkpoint: Path,
               extra: dict | None = None) -> Path | None:
    """The trained `model` (the prepared one) as a Hub-ready `output_dir/final` with its `training_args.json`, and
    `extra` {file name: JSON content} beside it in `output_dir`. Every process calls it: they gather the weights of
    a sharded model together (`whole_weights`), then the main process writes, final/ last and atomically
    (`publish_folder`: complete or absent). A failure to write (a full disk: OSError, or safetensors' error without
    a file name) raises on every process, saying where the trained weights are and how to write final/ again; Ctrl-C
    while it is written keeps nothing of it, says so and how to write it, and returns None."""
    final = output_dir / "final"
    failure = None
    try:
        weights = whole_weights(accelerator, model)
        if accelerator.is_main_process:
            try:
                for name, content in (extra or {}).items():
                    publish_file(output_dir / name, json.dumps(content, indent=1) + "\n")

                def write(folder: Path) -> None:
                    save_whole_for_hub(accelerator.unwrap_model(model), folder, tokenizer, weights)
                    (folder / "training_args.json").write_text(json.dumps(arguments, indent=1) + "\n")

                publish_folder(final, write)
            except Exception as error:
                failure = error
    except KeyboardInterrupt:
        accelerator.print(f"\ninterrupted while writing {final}: nothing of it was kept; the trained weights are in "
                          f"{checkpoint}: run the same command with --resume to write final/")
        return None
    failed = torch.tensor(float(failure is not None), device=accelerator.device)
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(failed, "sum")
    if failed.item() > 0:
        reason = f"{type(failure).__name__}: {failure}" if failure is not None else "the main process failed"
        raise CheckpointError(
            f"could not write {final} ({reason}). Is the disk full? Nothing of it was kept; the trained weights are "
            f"in {checkpoint}: free some space, then run the same command with --resume to write final/"
        ) from failure
    return final


@contextlib.contextmanager
def signals_held():
    """Ctrl-C and SIGTERM held back for the few renames that publish a folder, and delivered after them: a folder
    is then found either before or after its renames, never between."""
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (AttributeError, ValueError, OSError):  # no signal masks on this system, or not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def fill_partial(partial: Path, write: Callable[[Path], object]) -> None:
    """`write(partial)` fills the new folder `partial` (what an earlier save cut short left there is removed first),
    and its files are synced to disk. A failure or Ctrl-C while writing removes it and is raised."""
    remove_path(partial)
    try:
        partial.mkdir(parents=True)
        write(partial)
        for path in partial.rglob("*"):
            if path.is_file():
                _fsync(path)
        _fsync(partial)
    except BaseException:
        remove_path(partial)
        raise


def publish_folder(folder: Path, write: Callable[[Path], object]) -> Path:
    """`write` fills `folder` atomically: into a hidden sibling (`fill_partial`), then renamed to `folder`, replacing
    an earlier one. `folder` is the old one or the new one, whole, at every moment (absent between two renames)."""
    partial, old = folder.with_name(PARTIAL + folder.name), folder.with_name(f"{PARTIAL}{folder.name}-old")
    fill_partial(partial, write)
    remove_path(old)
    with signals_held():
        if folder.exists() or folder.is_symlink():
            folder.rename(old)
        partial.rename(folder)
        _fsync(folder.parent)
    remove_path(old)
    return folder


def publish_file(path: Path, text: str) -> None:
    """Write `path` atomically: a hidden sibling, synced, then renamed over it."""
    partial = path.with_name(PARTIAL + path.name)
    partial.write_text(text)
    _fsync(partial)
    os.replace(partial, path)
