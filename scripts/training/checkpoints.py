"""Checkpoints as data (the output folder's policy and the final folder: `run_folder`).

A checkpoint (`Checkpoints`) holds the model, optimizer, scheduler, gradient scaler, each process's RNG state and the
`TrainingProgress` (epoch, step within it, global step, elapsed time, the run's arguments), as data only: safetensors
and JSON, no pickle, so that resuming never runs code that a checkpoint file brings. Checkpoints are written to a
temporary folder and renamed when complete.

Every file of a checkpoint is untrusted data, checked before anything acts on it (`checkpoint_checks`: progress.json
field by field and against the data, the state files against the objects they fill, the weights finite, plain files
only); `--resume` renames final/ and deletes older checkpoints only after. A checkpoint folder that is a symbolic
link is refused, and links are removed, never followed.
"""

import json
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel

from vanilla_transformer.scripts.training.checkpoint_checks import (
    MAX_PROGRESS_BYTES,
    PROGRESS_FILE,
    check_finite_weights,
    check_optimizer_state,
    check_plain_files,
    check_progress,
    check_rng_state,
    check_state_like,
)
from vanilla_transformer.scripts.training.errors import CheckpointError


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
        """`state` as `check_progress` passed it: its fields, no other key."""
        unknown = state.keys() - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown progress fields {sorted(unknown)}")
        for key, value in state.items():
            setattr(self, key, value)


# A checkpoint folder holds data only, never pickle: `--resume` reads it with safetensors and json, which build
# tensors, numbers and strings and run nothing, whatever a file holds.
#   model.safetensors        the weights (as accelerate's save_state wrote them: tied weights once)
#   optimizer.safetensors    the optimizer's state_dict (under FSDP2 the whole one, keyed by parameter name);
#                            scheduler.safetensors, scaler.safetensors (fp16) likewise
#   rng_state_<i>.safetensors  process i's random generators (Python, NumPy, torch CPU and CUDA)
#   progress.json            epoch, step, elapsed time, the data signature, the run's arguments
# A state_dict is stored as a safetensors file whose tensors are the state's tensors and whose metadata is the
# rest of it in JSON, each container tagged ({"dict": [[key, value], ...]}, {"list": [...]}, {"tuple": [...]},
# {"tensor": name}, {"ndarray": [...], "dtype": ...}) so that it comes back with the same types.

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


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP2 (`fully_shard`) shards the model: each process then holds a slice of every parameter, a DTensor,
    and every forward pass is a collective."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(parameter, DTensor) for parameter in model.parameters())


def _tied_names(model: torch.nn.Module) -> dict[str, str]:
    """{later name: first name} of each parameter registered under several names (tied weights)."""
    first, tied = {}, {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in first:
            tied[name] = first[id(parameter)]
        else:
            first[id(parameter)] = name
    return tied


def _gather_weights(model: torch.nn.Module) -> dict:
    """The whole weights of a model sharded by FSDP2, tied ones once (as `_save_weights` writes them), gathered by
    torch's consolidation onto the main process (the others get an empty dict). Every process calls it: the
    gathering is a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    tied = _tied_names(model)
    return {name: tensor.contiguous() for name, tensor in weights.items() if name not in tied}


def _gather_sharded(model: torch.nn.Module, optimizer) -> tuple[dict, dict]:
    """`_gather_weights` and the whole optimizer state of a model sharded by FSDP2, on the main process."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    weights = _gather_weights(model)
    whole = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return weights, get_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), options=whole)


def _set_sharded_weights(model: torch.nn.Module, weights: dict) -> None:
    """Load whole weights (tied ones once) into a model sharded by FSDP2: every process keeps its slice."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    weights = {**weights, **{name: weights[first] for name, first in _tied_names(model).items()}}
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))


def _load_sharded(model: torch.nn.Module, optimizer, checkpoint: Path) -> None:
    """Load a checkpoint's whole weights and optimizer state into a model sharded by FSDP2 (every process reads the
    files and keeps its slice)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    _set_sharded_weights(model, safetensors.torch.load_file(checkpoint / "model.safetensors"))
    set_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer),
                             load_state_file(checkpoint / "optimizer.safetensors"),
                             options=StateDictOptions(full_state_dict=True))


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


def remove_path(path: Path) -> None:
    """Remove a file or a folder; a symbolic link is removed itself, never followed (nor does rmtree follow the
    links inside a folder). Nothing there: nothing to do."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class Checkpoints:
    """`output_dir/checkpoints/step-N` folders (data only: see above), written complete or not at all."""

    def __init__(self, output_dir: str | Path, keep: int):
        self.folder = Path(output_dir) / "checkpoints"
        self.keep = keep

    def all(self) -> list[Path]:
        """Complete checkpoints, oldest first (a save that was cut short is left in a `tmp-` folder, not listed). A
        checkpoint that is a symbolic link is refused: a run reads, averages and deletes its checkpoints."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.iterdir():
            number = path.name.removeprefix("step-")
            if path.name.startswith("step-") and number.isascii() and number.isdigit():
                if path.is_symlink():
                    raise CheckpointError(
                        f"{path} is a symbolic link (to {os.readlink(path)}): a run reads, averages and deletes its "
                        "checkpoints, and never through a link out of its folder. Replace the link by a copy of the "
                        "folder it points to (cp -rL), or delete it, then run again"
                    )
                if path.is_dir():
                    found.append(path)
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
                    remove_path(unfinished)
                partial.mkdir(parents=True)
            except OSError as error:
                failure = error
        accelerator.wait_for_everyone()
        written = []
        sharded = is_sharded(accelerator.unwrap_model(model))
        try:
            if sharded:  # every process takes part in gathering, whatever happened to the folder
                weights, optimizer_state = _gather_sharded(accelerator.unwrap_model(model), optimizer)
            if failure is None:
                if accelerator.is_main_process:
                    if sharded:
                        safetensors.torch.save_file(weights, str(partial / "model.safetensors"),
                                                    metadata={"format": "pt"})
                        save_state_file(partial / "optimizer.safetensors", optimizer_state)
                    else:
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
            remove_path(final)
            partial.rename(final)  # complete, or not there at all
            _fsync(self.folder)
            for old in self.all()[: -self.keep]:
                remove_path(old)
        accelerator.wait_for_everyone()
        return final

    def read_progress(self, checkpoint: Path) -> dict:
        """The checkpoint's progress.json (before anything else is loaded: the run's arguments and signature), each
        field checked (`check_progress`), after the folder's files (`check_plain_files`)."""
        check_plain_files(checkpoint)
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
            if path.stat().st_size > MAX_PROGRESS_BYTES:
                raise ValueError(f"{path.stat().st_size:,} bytes, where a progress record takes a few kB")
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or not {"global_step", "epoch", "signature", "arguments"} <= record.keys():
                raise ValueError("not a progress record")
        except (ValueError, UnicodeDecodeError, RecursionError) as error:
            raise CheckpointError(
                f"cannot resume from {checkpoint}: {PROGRESS_FILE} is corrupt ({error}); delete this folder to resume "
                "from the previous checkpoint, or start a new --output_dir"
            ) from None
        check_progress(checkpoint, record)
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
            check_rng_state(rng_state, rng_file.name)
            check_finite_weights(checkpoint / "model.safetensors")
            if is_sharded(accelerator.unwrap_model(model)):  # torch's set_optimizer_state_dict checks the state
                _load_sharded(accelerator.unwrap_model(model), optimizer, checkpoint)
            else:
                safetensors.torch.load_model(accelerator.unwrap_model(model), str(checkpoint / "model.safetensors"))
                optimizer_state = load_state_file(checkpoint / "optimizer.safetensors")
                check_optimizer_state(optimizer_state, optimizer, record["global_step"])
                optimizer.load_state_dict(optimizer_state)
            scheduler_state = load_state_file(checkpoint / "scheduler.safetensors")
            check_state_like(scheduler_state, scheduler.state_dict(), "scheduler.safetensors")
            if not 0 <= scheduler_state.get("last_epoch", 0) <= record["global_step"]:
                raise ValueError(f"scheduler.safetensors: last_epoch {scheduler_state['last_epoch']} is not within the "
                                 f"checkpoint's {record['global_step']} steps")
            scheduler.load_state_dict(scheduler_state)
            if accelerator.scaler is not None:
                scaler_state = load_state_file(checkpoint / "scaler.safetensors")
                check_state_like(scaler_state, accelerator.scaler.state_dict(), "scaler.safetensors")
                accelerator.scaler.load_state_dict(scaler_state)
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


@torch.no_grad()
def average_checkpoints(model: torch.nn.Module, checkpoints: Sequence[Path]) -> None:
    """Set the model's weights to the mean of the checkpoints' (the paper averages the last 5, section 6.1). The mean
    is taken over the files, whole; a model sharded by FSDP2 keeps its slice of it (every process calls this)."""
    total, dtypes = {}, {}
    for checkpoint in checkpoints:
        for key, value in safetensors.torch.load_file(checkpoint / "model.safetensors").items():
            if value.is_floating_point():
                dtypes[key] = value.dtype
                total[key] = total[key] + value.float() if key in total else value.float()
    mean = {key: (value / len(checkpoints)).to(dtypes[key]) for key, value in total.items()}
    model = extract_model_from_parallel(model)
    if is_sharded(model):
        _set_sharded_weights(model, mean)
    else:
        model.load_state_dict(mean, strict=False)  # tied weights are stored once: loading one name sets both
