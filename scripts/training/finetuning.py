"""The fine-tuning engine that the classification commands share (sequence: finetune_classification, token:
finetune_token_classification): what differs between them is their data and their head; the run is this one.

- `FinetuneArguments`: the options every fine-tune has (model, data files, schedule, checkpoints, precision);
  a command subclasses it with its columns. `read_splits`: the splits given, each read by the command's reader.
- `prepare_run`: before any data is read, the model folder (`check_model_folder`, --max_seq_length against its
  positions), the precision (bf16 on a CPU without it falls back to fp32, with a warning), and the output folder:
  held by this run alone (`run_lock`); never the model folder; new or empty; with --resume a run of the same
  command with the same arguments, but for those that do not change the trained weights (`CHANGEABLE`: the
  deny-list comparison of the training loop, `run_folder.check_resumed_arguments`), and a complete checkpoint.
- `load_model_and_tokenizer`: our vanilla_bert or a Hugging Face BERT (converted on the fly) with a sequence or
  token classification head; `from_scratch`: the same architecture and tokenizer, random weights.
- `record_run`: the run's arguments, the SHA-256 of its training data and its classes, written when it starts
  (RUN_FILE) and checked when it resumes.

The Trainer side (optimizer, schedule, callbacks, training, saving) is `finetuning_trainer`.
"""

import argparse
import contextlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertForSequenceClassification,
    BertForTokenClassification,
    HfArgumentParser,
    PreTrainedModel,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

import vanilla_transformer.modeling  # noqa: F401  (registers our models with the Auto classes)
from vanilla_transformer.modeling.convert_bert import convert_bert_to_vanilla
from vanilla_transformer.scripts.training import run_lock
from vanilla_transformer.scripts.training.data_files import file_sha256, hub_splits
from vanilla_transformer.scripts.training.errors import ArgumentError, CheckpointError
from vanilla_transformer.scripts.training.errors import parse_arguments as parse_options
from vanilla_transformer.scripts.training.model_folders import (
    ModelFolder,
    check_finite_weights,
    check_model_folder,
    check_not_the_model_folder,
    check_tokenizer_fits,
    check_writable_dir,
)
from vanilla_transformer.scripts.training.precision import check_mixed_precision
from vanilla_transformer.scripts.training.presets import apply_preset
from vanilla_transformer.scripts.training.run_folder import CHANGEABLE_ON_RESUME, check_resumed_arguments

logger = logging.getLogger("finetuning")
RUN_FILE = "finetune_args.json"  # written when a run starts: marks the folder as a run of a command, for --resume
# What a resumed fine-tune may change besides the loop's CHANGEABLE_ON_RESUME (where to write, logging, saving,
# precision requests): what is only evaluated. Everything else shapes the trained weights and must stay.
CHANGEABLE = CHANGEABLE_ON_RESUME | {"per_device_eval_batch_size", "max_eval_samples", "validation_file", "test_file"}
# The head of each kind of classifier: ours (through the Auto class), Hugging Face BERT's (converted to ours).
HEADS = {
    "sequence": (AutoModelForSequenceClassification, BertForSequenceClassification),
    "token": (AutoModelForTokenClassification, BertForTokenClassification),
}


@dataclass
class FinetuneArguments:
    model_name_or_path: str = field(
        metadata={"help": "Folder of one of our vanilla_bert checkpoints, or of a Hugging Face BERT (converted)."}
    )
    output_dir: str = field(metadata={"help": "Where the fine-tuned, Hub-ready model folder, results.json, the "
                                              "predictions and the checkpoints go: a new or empty folder."})
    from_scratch: bool = field(
        default=False,
        metadata={"help": "Take only the checkpoint's config and tokenizer, with random weights: the baseline that "
                          "shows what pretraining brings (the same architecture, the same data and settings)."},
    )
    dataset_name: str | None = field(default=None, metadata={"help": "A datasets Hub id (instead of local files)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    train_file: str | None = field(default=None, metadata={"help": "Local training file (formats: see above)."})
    validation_file: str | None = field(
        default=None, metadata={"help": "Scored after training (and after each epoch when there are several)."}
    )
    test_file: str | None = field(default=None, metadata={"help": "Evaluated once, at the end."})
    max_seq_length: int = field(default=64, metadata={"help": "Longer inputs are truncated (tokens)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N rows of the validation and test sets."}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training data."})
    max_train_minutes: float | None = field(
        default=None, metadata={"help": "Wall-clock budget of the training (evaluations included, over resumes): "
                                        "training stops when it is spent, and the learning rate's decay to 0 "
                                        "follows whichever of the clock and the steps is further along."}
    )
    per_device_train_batch_size: int = field(
        default=64, metadata={"help": "Training batch size (64 rather than 32: half the optimizer steps on CPU)."}
    )
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_steps: float = field(default=0.06, metadata={"help": "Linear warmup: steps, or a fraction (< 1) of all."})
    group_by_length: bool = field(
        default=True, metadata={"help": "Batch inputs of similar length together: less padding, faster on CPU."}
    )
    logging_steps: int = field(default=50, metadata={"help": "Log the training loss every N steps."})
    save_steps: int = field(
        default=500, metadata={"help": "Checkpoint every N steps (also on Ctrl-C or SIGTERM), to continue an "
                                       "interrupted run with --resume; the last two are kept until the run ends."}
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue the interrupted run in --output_dir from its latest checkpoint "
                                         "(the same command plus --resume; it ends with the same weights)."}
    )
    mixed_precision: str | None = field(
        default=None, metadata={"help": "no, bf16 or fp16 (default: accelerate launch's setting, else no); bf16 on a "
                                        "CPU without native bf16 falls back to fp32 with a warning, see --force_bf16"}
    )
    force_bf16: bool = field(
        default=False, metadata={"help": "keep bf16 on a CPU without native bf16 (emulated, many times slower)"}
    )
    seed: int = field(default=42, metadata={"help": "Seed of initialisation, shuffling and dropout."})
    # Not an option: what --mixed_precision (or accelerate launch) asked for; mixed_precision becomes what runs.
    requested_mixed_precision: str | None = field(default=None, init=False)

    def __post_init__(self):
        if self.dataset_name and (self.train_file or self.validation_file or self.test_file):
            raise ArgumentError("give either --dataset_name or local files (--train_file, --validation_file, "
                                "--test_file), not both")
        if not (self.dataset_name or self.train_file or self.validation_file or self.test_file):
            raise ArgumentError("pass --dataset_name or at least one of --train_file, --validation_file, --test_file")
        for name in ("max_seq_length", "per_device_train_batch_size", "per_device_eval_batch_size", "logging_steps",
                     "save_steps", "max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ArgumentError(f"--{name} must be at least 1, got {value}")
        if self.max_seq_length < 2:
            raise ArgumentError(f"--max_seq_length {self.max_seq_length}: at least 2 ([CLS] and [SEP])")
        for name in ("learning_rate", "num_train_epochs", "max_train_minutes"):
            value = getattr(self, name)
            if value is None:
                continue
            if not (math.isfinite(value) and value > 0):
                raise ArgumentError(f"--{name} must be a positive number, got {value}")
        for name in ("weight_decay", "warmup_steps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ArgumentError(f"--{name} must be zero or more, got {value}")
        if self.mixed_precision is not None and self.mixed_precision.lower() not in ("no", "bf16", "fp16"):
            raise ArgumentError(f"--mixed_precision {self.mixed_precision}: use no, bf16 or fp16")

    def limit(self, split: str) -> int | None:
        """How many rows of a split are used: --max_train_samples, --max_eval_samples."""
        return self.max_train_samples if split == "train" else self.max_eval_samples


def read_splits(args: FinetuneArguments, from_file, from_hub) -> tuple[dict, str | None]:
    """The splits given (--train_file, --validation_file, --test_file; or --dataset_name's train, validation and
    test), each read by the command's reader (`from_file(split, option, path)`, `from_hub(split, dataset, source)`)
    and cut to --max_train_samples / --max_eval_samples rows (`.head(limit)`); and the SHA-256 of the training
    file, what --resume checks."""
    splits = {}
    if args.dataset_name:
        name = " ".join(n for n in (args.dataset_name, args.dataset_config_name) if n)
        for split, dataset in hub_splits(args.dataset_name, args.dataset_config_name).items():
            splits[split] = from_hub(split, dataset, f"{name} [{split}]")
    for split, option in (("train", "--train_file"), ("validation", "--validation_file"), ("test", "--test_file")):
        path = getattr(args, f"{split}_file")
        if path:
            splits[split] = from_file(split, option, path)
    digest = file_sha256(Path(args.train_file).expanduser()) if args.train_file else None
    return {split: rows.head(args.limit(split)) for split, rows in splits.items()}, digest


def parse_arguments(arguments_class: type, description: str, argv: list[str] | None,
                    presets: dict[str, dict] | None = None):
    """The command's options; with `presets`, those of a --preset NAME become the defaults (given options win)."""
    parser = HfArgumentParser(arguments_class, description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    if presets:
        apply_preset(parser, argv, presets)
    (args,) = parse_options(parser, argv)  # a misspelled option: the usual one-line error
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO)
    return args


# ----------------------------------------------------------------------------------- before any data is read


def prepare_run(args: FinetuneArguments, command: str) -> Path | None:
    """Every check that needs no data: precision, the model folder, --max_seq_length, --output_dir. Returns the
    checkpoint to resume from (None: a new run)."""
    settle_precision(args)
    folder = check_model_folder(args.model_name_or_path, "--model_name_or_path", model_types=("bert", "vanilla_bert"),
                                need_weights=not args.from_scratch, wanted="a BERT or vanilla_bert model folder")
    max_positions = folder.config.get("max_position_embeddings")
    if max_positions is not None and args.max_seq_length > max_positions:
        raise ArgumentError(f"--max_seq_length {args.max_seq_length} is longer than the model's "
                            f"max_position_embeddings {max_positions} ({args.model_name_or_path}); use at most "
                            f"{max_positions}")
    return prepare_output_dir(args, folder, command)


def settle_precision(args: FinetuneArguments) -> None:
    """--mixed_precision (else accelerate launch's ACCELERATE_MIXED_PRECISION) through the CPU bf16 check: bf16
    without native bf16 becomes fp32 with a warning. args.mixed_precision becomes what runs; accelerate launch's
    setting, read again by TrainingArguments, is made to agree."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    args.requested_mixed_precision = (args.mixed_precision or launched or "no").lower()
    args.mixed_precision = check_mixed_precision(args.requested_mixed_precision, device, force_bf16=args.force_bf16)
    if launched is not None and launched.lower() != args.mixed_precision:
        os.environ["ACCELERATE_MIXED_PRECISION"] = args.mixed_precision


def checkpoints(output_dir: Path) -> list[Path]:
    """Trainer's checkpoint-N folders, oldest first; one that is a symbolic link is refused (a run reads and deletes
    its checkpoints, never through a link)."""
    found = []
    for path in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        number = path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if number.isascii() and number.isdigit():
            if path.is_symlink():
                raise CheckpointError(f"{path} is a symbolic link (to {os.readlink(path)}): a run reads and deletes "
                                      "its checkpoints, never through a link. Replace it by a copy of the folder it "
                                      "points to (cp -rL), or delete it, then run again")
            if path.is_dir():
                found.append(path)
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def latest_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint with every file a resume reads (a save cut short lacks trainer_state.json, the file
    Trainer writes last); newer incomplete ones are named in a warning."""
    needed = ("trainer_state.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth")
    for checkpoint in reversed(checkpoints(output_dir)):
        missing = [name for name in needed if not (checkpoint / name).is_file()]
        if not missing:
            try:
                step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
            except (ValueError, KeyError, TypeError):
                missing = ["readable trainer_state.json"]
            else:  # Trainer names the folder after its step: a step that is not it was changed
                if type(step) is not int or str(step) != checkpoint.name.rsplit("-", 1)[1]:
                    raise CheckpointError(
                        f"--resume: {checkpoint / 'trainer_state.json'}, field 'global_step': {step!r}, where the "
                        f"checkpoint's name says {checkpoint.name.rsplit('-', 1)[1]}. The file was changed or is "
                        "damaged: delete this checkpoint to resume from the one before it, or start a new --output_dir"
                    )
                return checkpoint
        logger.warning("%s is incomplete (no %s: a save cut short): resuming from an earlier checkpoint", checkpoint,
                       ", ".join(missing))
    return None


def prepare_output_dir(args: FinetuneArguments, model: ModelFolder, command: str) -> Path | None:
    """Check --output_dir before any work, holding it for this run (`run_lock`, taken by the main process: released
    by `finetuning_trainer.save_run` or when the command ends): never the model folder; new or empty, or a run of
    this command that stopped before its first checkpoint; with --resume, a run of this command with the same
    arguments (but the CHANGEABLE ones) and a checkpoint. Returns the checkpoint to resume from."""
    output_dir = Path(args.output_dir).expanduser()
    check_not_the_model_folder(output_dir, model, "--output_dir")
    made = not output_dir.exists()
    check_writable_dir(output_dir, "--output_dir")  # the lock lives in it
    if int(os.environ.get("RANK", "0")) == 0:  # the main process (accelerate launch sets RANK for each process)
        run_lock.acquire(output_dir)
    try:
        return _check_output_dir(args, output_dir, command)
    except BaseException:
        run_lock.release(output_dir)
        if made:  # refused: no empty folder left behind
            with contextlib.suppress(OSError):
                output_dir.rmdir()
        raise


def _check_output_dir(args: FinetuneArguments, output_dir: Path, command: str) -> Path | None:
    run_file = output_dir / RUN_FILE
    finished = output_dir / "results.json"
    if args.resume:
        if not run_file.is_file():
            raise CheckpointError(f"--resume: {output_dir} holds no run of this script to continue (no {RUN_FILE}); "
                                  "drop --resume to start one")
        if finished.is_file():
            raise CheckpointError(f"--resume: the run in {output_dir} has finished ({finished.name}); nothing to "
                                  "continue")
        recorded = read_run_file(output_dir)
        if recorded.get("command", command) != command:
            raise CheckpointError(f"--resume: {output_dir} holds a run of {recorded['command']}, not of {command}: "
                                  "resume it with that command, or use a new --output_dir")
        check_resumed_arguments(output_dir, recorded["args"], recorded_settings(args), CHANGEABLE)
        checkpoint = latest_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise CheckpointError(f"--resume: the run in {output_dir} stopped before its first checkpoint (one every "
                                  f"--save_steps {args.save_steps} steps); start it again without --resume")
        return checkpoint
    shown = sorted(p.name for p in output_dir.iterdir() if p.name != run_lock.LOCK_FILE)
    if shown:
        if not run_file.is_file():
            what = "a model (config.json)" if "config.json" in shown else (
                f"other files ({', '.join(shown[:5])}{', ...' if len(shown) > 5 else ''})")
            raise CheckpointError(f"--output_dir {output_dir} is not empty: it holds {what} and is not a run of this "
                                  "script; this run would overwrite it: choose a new or empty folder")
        if checkpoints(output_dir) and not finished.is_file():
            raise CheckpointError(f"--output_dir {output_dir} holds checkpoints of an interrupted run: add --resume "
                                  "to continue it, or choose another --output_dir")
        if finished.is_file() or (output_dir / "config.json").is_file():
            raise CheckpointError(f"--output_dir {output_dir} holds a finished fine-tuning run, which this run would "
                                  "overwrite: choose a new folder (or delete it)")
        logger.info("%s: a run that stopped before its first checkpoint; starting again", output_dir)
    return None


def recorded_settings(args: FinetuneArguments) -> dict:
    settings = asdict(args)
    if Path(args.model_name_or_path).expanduser().is_dir():
        settings["model_name_or_path"] = str(Path(args.model_name_or_path).expanduser().resolve())
    if args.train_file:
        settings["train_file"] = str(Path(args.train_file).expanduser().resolve())
    return settings


def read_run_file(output_dir: Path) -> dict:
    try:
        recorded = json.loads((output_dir / RUN_FILE).read_text(encoding="utf-8"))
        recorded["args"]
        return recorded
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"--resume: {output_dir / RUN_FILE} is damaged, so the run's settings are unknown; "
                              "start a new --output_dir") from None


def record_run(args: FinetuneArguments, command: str, resume_from: Path | None, train_digest: str | None,
               classes: list[str]) -> None:
    """A new run writes RUN_FILE (its arguments, the SHA-256 of its training data, its classes); a resumed run
    checks that the training data is the data the run started with."""
    output_dir = Path(args.output_dir).expanduser()
    if resume_from is None:
        (output_dir / RUN_FILE).write_text(json.dumps({"command": command, "args": recorded_settings(args),
                                                       "train_sha256": train_digest, "classes": classes}, indent=2))
        return
    recorded = read_run_file(output_dir)
    if recorded.get("train_sha256") != train_digest or recorded.get("classes") != classes:
        raise CheckpointError(f"--resume: the training data changed since the run in {output_dir} started (its "
                              "SHA-256 or classes differ); resuming would not give the run's result. Use a new "
                              "--output_dir")


# ----------------------------------------------------------------------------------------------------- model


def checkpoint_classes(config, head: str) -> list[str] | None:
    """The classes of a classifier checkpoint with this `head` ("sequence", "token"), in id order (None: not one)."""
    suffix = f"For{head.title()}Classification"
    if not any(name.endswith(suffix) for name in config.architectures or []):
        return None
    return [config.id2label[i] for i in range(config.num_labels)]


def load_model_and_tokenizer(path: str, names: list[str], from_scratch: bool = False,
                             head: str = "sequence") -> tuple[PreTrainedModel, object]:
    """Our VanillaBertFor{Sequence,Token}Classification with a head for `names`, from our checkpoint or HF BERT's;
    with `from_scratch`, the checkpoint's architecture and tokenizer with freshly initialised weights. A classifier
    checkpoint of other classes gets a new head. Only local classes load (never the folder's own .py files)."""
    auto_class, bert_class = HEADS[head]
    labels = {"num_labels": len(names), "id2label": dict(enumerate(names)),
              "label2id": {n: i for i, n in enumerate(names)}}
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    if config.model_type not in ("bert", "vanilla_bert"):
        raise ArgumentError(
            f"{path} holds a {config.model_type!r} model; this script fine-tunes vanilla_bert or BERT checkpoints"
        )
    old_classes = checkpoint_classes(config, head)
    new_head = old_classes is not None and old_classes != names and not from_scratch
    if new_head:
        logger.warning("%s is a classifier of the classes %s; the data has %s: its head is replaced by a new one",
                       path, old_classes, names)
    config = AutoConfig.from_pretrained(path, trust_remote_code=False, **labels)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if config.model_type == "bert":
        bert = bert_class(config) if from_scratch else bert_class.from_pretrained(
            path, ignore_mismatched_sizes=new_head, **labels)
        model = convert_bert_to_vanilla(bert)
    elif from_scratch:
        model = auto_class.from_config(config)
    else:
        # Our package is imported, so the locally registered classes load the folder (no remote code needed).
        model = auto_class.from_pretrained(path, trust_remote_code=False, ignore_mismatched_sizes=new_head, **labels)
    check_tokenizer_fits(tokenizer, model.config, path)
    if config.model_type == "bert" and not from_scratch:  # ours refused NaN/inf weights in from_pretrained
        check_finite_weights(model, path)  # transformers' BERT, converted, did not
    return model, tokenizer
