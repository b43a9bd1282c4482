"""A checkpoint is untrusted data (`checkpoints`): each of its files is checked before anything acts on it, and
`--resume` renames final/ and deletes older checkpoints only after.

- `check_plain_files`: the folder holds plain files only: a symbolic link (to a file anywhere) or a pipe is refused;
- `check_progress`: progress.json field by field: whole numbers and a time in range, the epoch and step within the
  global step, the global step within what the recorded time allows and the run's own --max_steps; no unknown key;
- `check_position`: the same against the data, once it is read: the step within the epoch is one of its steps, the
  global step the one the epochs make;
- `check_state_like`, `check_optimizer_state`, `check_rng_state`, `check_finite_weights`: the state files against
  the objects they fill (no key the object lacks, the same shapes, finite numbers, steps within the run's).
"""

import math
import os
import stat
from pathlib import Path

import safetensors
import torch

from vanilla_transformer.scripts.training.errors import CheckpointError

PROGRESS_FILE = "progress.json"
PROGRESS_FIELDS = ("epoch", "step_in_epoch", "global_step", "train_seconds", "signature", "arguments")
MAX_PROGRESS_BYTES = 16 * 2**20  # progress.json holds a few numbers and the run's arguments
MAX_STEPS_PER_SECOND = 100_000  # an optimizer step (forward, backward, update) takes well over 10 microseconds
MAX_TRAIN_SECONDS = 100 * 365 * 86_400  # a century of training


def check_plain_files(checkpoint: Path) -> None:
    """A checkpoint is a folder of plain files: a symbolic link (to a file anywhere) or anything else (a pipe, whose
    reading never ends) is refused before any file is read."""
    if checkpoint.is_symlink():
        raise CheckpointError(f"cannot resume from {checkpoint}: it is a symbolic link (to {os.readlink(checkpoint)}); "
                              "a run never reads or deletes its checkpoints through a link. Replace it by a copy of "
                              "the folder (cp -rL), or delete it")
    for path in sorted(checkpoint.iterdir()):
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            what = f"a symbolic link (to {os.readlink(path)})" if stat.S_ISLNK(mode) else "not a plain file"
            raise CheckpointError(
                f"cannot resume from {checkpoint}: {path.name} is {what}, where a checkpoint holds plain files only. "
                "Replace it by the file itself, or delete this folder to resume from the previous checkpoint"
            )


def check_progress(checkpoint: Path, record: dict) -> None:
    """Every field of a progress.json record, before anything acts on it: whole numbers (epoch, step_in_epoch,
    global_step) and a time (train_seconds) in range, the epoch and step within the global step, the global step
    within what the recorded time allows and within the run's own --max_steps (its arguments), mappings for the
    signature and arguments, and no unknown key. What the data says (`check_position`) is checked once it is read."""

    def refuse(name: str, problem: str) -> CheckpointError:
        return CheckpointError(
            f"cannot resume from {checkpoint}: {PROGRESS_FILE}, field {name!r}: {problem}. The file was changed or is "
            "damaged: delete this folder to resume from the previous checkpoint, or start a new --output_dir"
        )

    expected = set(PROGRESS_FIELDS)
    for name in sorted(record.keys() - expected):
        raise refuse(name, f"not a field of a progress record (those are {', '.join(sorted(expected))})")
    for name in sorted(expected - record.keys()):
        raise refuse(name, "missing")
    for name in ("epoch", "step_in_epoch", "global_step"):
        if type(record[name]) is not int or record[name] < 0:
            raise refuse(name, f"{record[name]!r} is not a whole number 0 or more")
    seconds = record["train_seconds"]
    if type(seconds) not in (int, float) or not (math.isfinite(seconds) and 0 <= seconds <= MAX_TRAIN_SECONDS):
        raise refuse("train_seconds", f"{seconds!r} is not a time of training (seconds, 0 to {MAX_TRAIN_SECONDS:,})")
    for name in ("signature", "arguments"):
        if not isinstance(record[name], dict):
            raise refuse(name, f"{type(record[name]).__name__}, not a mapping")
    epoch, step_in_epoch, global_step = record["epoch"], record["step_in_epoch"], record["global_step"]
    for name, value in (("epoch", epoch), ("step_in_epoch", step_in_epoch)):
        if value > global_step:
            raise refuse(name, f"{value:,} is above global_step {global_step:,} (every epoch has one step or more)")
    if epoch == 0 and step_in_epoch != global_step:
        raise refuse("global_step", f"{global_step:,}, but in epoch 0 it is step_in_epoch, {step_in_epoch:,}")
    if global_step > 1 + seconds * MAX_STEPS_PER_SECOND:
        raise refuse("global_step", f"{global_step:,} steps in {seconds:.3g} s of training (train_seconds) is more "
                                    f"than {MAX_STEPS_PER_SECOND:,} steps a second")
    for name, value in (("max_steps", global_step), ("num_epochs", epoch)):
        limit = record["arguments"].get(name)
        if type(limit) is int and value > limit:
            field_name = "global_step" if name == "max_steps" else "epoch"
            raise refuse(field_name, f"{value:,} is past the run's own --{name} {limit} (its arguments), where it "
                                     "stops")


def check_position(checkpoint: Path, progress, steps_per_epoch: int) -> None:
    """Where a resumed run starts, against its data: `steps_per_epoch` optimizer steps in every epoch (as
    `token_batches` and `sized_batches` cut them), so the step within the epoch is one of them and the global step
    is the one the epochs make."""
    problem = None
    if progress.step_in_epoch >= steps_per_epoch:
        problem = (f"field 'step_in_epoch': {progress.step_in_epoch:,}, but an epoch of this run's data has "
                   f"{steps_per_epoch:,} steps")
    elif progress.global_step != progress.epoch * steps_per_epoch + progress.step_in_epoch:
        problem = (f"field 'global_step': {progress.global_step:,}, but epoch {progress.epoch:,} and step_in_epoch "
                   f"{progress.step_in_epoch:,} at {steps_per_epoch:,} steps per epoch make "
                   f"{progress.epoch * steps_per_epoch + progress.step_in_epoch:,}")
    if problem:
        raise CheckpointError(
            f"cannot resume from {checkpoint}: {PROGRESS_FILE}, {problem}. The file was changed or is damaged, or the "
            "data changed: delete this folder to resume from the previous checkpoint, or start a new --output_dir"
        )


def check_state_like(loaded, current, where: str) -> None:
    """`loaded` (a state read from a checkpoint file) fits `current` (the state of the object it is loaded into):
    no key the object lacks, the same kinds of values, as many items, tensors of the same shape, finite numbers. A
    state file then sets nothing the object does not have, and nothing of another kind."""
    if isinstance(current, dict):
        if not isinstance(loaded, dict):
            raise ValueError(f"{where} is a {type(loaded).__name__}, not a mapping")
        unknown = sorted(str(key) for key in loaded if key not in current)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}")
        for key, value in loaded.items():
            check_state_like(value, current[key], f"{where}.{key}")
    elif isinstance(current, (list, tuple)):
        if not isinstance(loaded, (list, tuple)) or len(loaded) != len(current):
            raise ValueError(f"{where}: {len(current)} values expected")
        for i, (value, now) in enumerate(zip(loaded, current)):
            check_state_like(value, now, f"{where}[{i}]")
    elif isinstance(current, torch.Tensor):
        if not isinstance(loaded, torch.Tensor) or loaded.shape != current.shape:
            raise ValueError(f"{where}: a tensor of shape {tuple(current.shape)} expected")
        if loaded.is_floating_point() and not torch.isfinite(loaded).all():
            raise ValueError(f"{where} holds NaN or inf")
    elif isinstance(current, (int, float)) and not isinstance(current, bool):
        kinds = int if isinstance(current, int) else (int, float)
        if isinstance(loaded, bool) or not isinstance(loaded, kinds) or not math.isfinite(loaded):
            raise ValueError(f"{where} is {loaded!r}, not a finite {type(current).__name__}")
    elif type(loaded) is not type(current):
        raise ValueError(f"{where} is {loaded!r}, not a {type(current).__name__}")


def check_optimizer_state(state, optimizer, global_step: int) -> None:
    """The state read from optimizer.safetensors fits `optimizer`: its parameter groups (the same parameters, this
    run's hyperparameters but for the learning rate, which the schedule sets), and per parameter tensors of the
    parameter's shape, finite, and a step count within the checkpoint's global step."""
    current = optimizer.state_dict()
    if not isinstance(state, dict) or state.keys() != current.keys():
        raise ValueError(f"optimizer.safetensors: not an optimizer state (keys {', '.join(current)})")
    groups, now_groups = state["param_groups"], current["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(now_groups):
        raise ValueError(f"optimizer.safetensors: param_groups: {len(now_groups)} groups expected")
    parameters = {}
    for i, (group, now, live) in enumerate(zip(groups, now_groups, optimizer.param_groups)):
        where = f"optimizer.safetensors: param_groups[{i}]"
        if not isinstance(group, dict) or group.get("params") != now["params"]:
            raise ValueError(f"{where}: other parameters than this model's")
        lr = group.get("lr")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"{where}: lr {lr!r} is not a learning rate")
        for key, value in group.items():
            fixed = now.get(key)
            if (key not in ("params", "lr") and isinstance(fixed, (int, float, tuple)) and not isinstance(fixed, bool)
                    and (type(value) is not type(fixed) or value != fixed)):
                raise ValueError(f"{where}: {key} {value!r}, where this run has {fixed!r}")
        parameters.update(zip(now["params"], live["params"]))
    if not isinstance(state["state"], dict):
        raise ValueError("optimizer.safetensors: state is not a mapping")
    for index, entries in state["state"].items():
        if index not in parameters or not isinstance(entries, dict):
            raise ValueError(f"optimizer.safetensors: state of a parameter {index!r} the model does not have")
        for key, value in entries.items():
            where = f"optimizer.safetensors: state[{index}].{key}"
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise ValueError(f"{where}: a tensor of numbers expected")
            if key == "step":
                if value.numel() != 1 or not 0 <= value.item() <= global_step:
                    raise ValueError(f"{where}: {value.flatten()[:1].tolist()} is not within the checkpoint's "
                                     f"{global_step} steps")
            elif value.shape != parameters[index].shape or not torch.isfinite(value).all():
                raise ValueError(f"{where}: not finite, or not of its parameter's shape "
                                 f"{tuple(parameters[index].shape)}")


def check_rng_state(state, name: str) -> None:
    """A random state as `_rng_state` writes it (each generator's own setter checks its part)."""
    keys = state.keys() if isinstance(state, dict) else set()
    if not {"python", "numpy", "torch"} <= keys <= {"python", "numpy", "torch", "cuda"}:
        raise ValueError(f"{name}: keys {sorted(map(str, keys))}, where python, numpy, torch (and cuda) are expected")
    if not isinstance(state["torch"], torch.Tensor) or state["torch"].dtype != torch.uint8:
        raise ValueError(f"{name}: torch is not a generator state")


def check_finite_weights(path: Path) -> None:
    """The checkpoint's weights hold no NaN or inf (read one tensor at a time)."""
    with safetensors.safe_open(str(path), framework="pt", device="cpu") as weights:
        for name in weights.keys():
            tensor = weights.get_tensor(name)
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise ValueError(f"model.safetensors: {name} holds NaN or inf (a diverged model)")
