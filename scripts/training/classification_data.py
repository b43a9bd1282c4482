"""The data of sequence classification (scripts/finetune_classification.py): a text (or a pair of texts) and its
class per row, from a Hub dataset or from local .csv / .tsv / .json / .jsonl files read by `data_files`.

Classes are those of the training split (a ClassLabel's names, or its distinct labels, numerically sorted when they
are integers). A validation or test row labelled -1 or left empty has no label (GLUE's test sets): it is predicted,
not scored; any other label that is not a training class is a `DataError` naming the rows.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from transformers import Trainer

from vanilla_transformer.scripts.training.data_files import check_table_file, table_columns, table_rows, table_type
from vanilla_transformer.scripts.training.errors import DataError
from vanilla_transformer.scripts.training.finetuning import read_splits
from vanilla_transformer.scripts.training.finetuning_trainer import check_finite_scores

logger = logging.getLogger("finetune_classification")
UNLABELLED = "-1"  # GLUE's label of a row without one (its test sets); an empty field or JSON null is one too


@dataclass
class Split:
    """One split's rows, each traced back to where it came from (a file line, or a row of a Hub dataset)."""

    name: str  # train, validation, test
    source: str  # the file, or "<dataset> [split]"
    position: str  # "line" (of the file, the header is line 1), "item" (of a JSON list) or "row" (of a Hub split)
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


def label_text(value) -> str | None:
    """A label as a class name: an integer (or a whole float) as its digits, a string stripped; None: no label."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(type(value).__name__)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    return str(value).strip() or None


def file_rows(path: Path) -> tuple[list[str], list, str]:
    """The column names (of the header; of a JSON file, every key of every row), the rows, and how they are
    numbered ("line", or "item" in a JSON list). Blank lines among the rows of a TSV or CSV are skipped with a
    warning."""
    delimited = table_type(path) in (".tsv", ".csv")
    rows, blank = [], []
    for row in table_rows(path):
        if delimited and not any(value.strip() for value in row.values.values()):
            blank.append(row.number)
        else:
            rows.append(row)
    if not rows:
        raise DataError(f"{path} has a header ({', '.join(table_columns(path))}) but no rows" if delimited
                        else f"{path} holds no rows")
    inner = [n for n in blank if n < rows[-1].number]
    if inner:
        logger.warning("%s: skipped %d blank line(s) among the rows (line %s)", path, len(inner),
                       ", ".join(map(str, inner[:5])) + (", ..." if len(inner) > 5 else ""))
    return list(dict.fromkeys(key for row in rows for key in row.values)), rows, rows[0].position


def split_from_file(name: str, option: str, path: str, args) -> Split:
    path = check_table_file(path, option)
    columns, rows, position = file_rows(path)
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
    for row in rows:
        values = row.values
        for column in (args.text_column, args.text_pair_column):
            if column is not None and not isinstance(values.get(column), str):
                wrong.append(f"{position} {row.number}: {column!r} is {json.dumps(values.get(column))[:40]}, not text")
        try:
            labels.append(label_text(values.get(args.label_column)))
        except TypeError as error:
            wrong.append(f"{position} {row.number}: {args.label_column!r} is "
                         f"{json.dumps(values[args.label_column])[:40]} (a {error}), not a class (an integer or a "
                         "string)")
            labels.append(None)
        texts.append(values.get(args.text_column))
        if pairs is not None:
            pairs.append(values.get(args.text_pair_column))
    if wrong:
        raise DataError(f"{path}: {len(wrong)} row(s) of the wrong type: {'; '.join(wrong[:3])}"
                        f"{'; ...' if len(wrong) > 3 else ''}")
    return Split(name, str(path), position, [row.number for row in rows], texts, pairs, labels)


def split_from_hub(name: str, dataset: datasets.Dataset, source: str, args) -> Split:
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


def load_data(args) -> tuple[dict[str, Split], str | None]:
    """The train/validation/test splits from the Hub or from local files, cut to the requested sizes, and the
    SHA-256 of the training file (what --resume checks)."""
    return read_splits(args, lambda split, option, path: split_from_file(split, option, path, args),
                       lambda split, dataset, source: split_from_hub(split, dataset, source, args))


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
    """Class ids of a split's rows, -1 for rows without a label; a label that is not a class is an error. Rows with
    an empty text, and (outside training) rows without a label, are counted in a warning."""
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
    found = [ids.get(label, -1) if label is not None else -1 for label in split.labels]
    empty = [i for i, text in enumerate(split.texts) if not text.strip()]
    if empty:
        logger.warning("%s: %d of %d rows have an empty %s (%s): kept, the model sees [CLS] [SEP] only",
                       split.source, len(empty), len(split.texts), "text", split.places(empty))
    unlabelled = [i for i, label_id in enumerate(found) if label_id < 0]
    if unlabelled and split.name != "train":
        logger.warning("%s: %d of %d rows have no label (-1 or empty): predicted (%s_predictions.tsv), not scored",
                       split.source, len(unlabelled), len(found), split.name)
    return found


def tokenize(split: Split, ids: list[int], tokenizer, max_length: int) -> datasets.Dataset:
    """Token ids (truncated, unpadded: batches are padded to their own longest row) and `labels` as class ids;
    how many rows were cut to --max_seq_length is logged."""
    columns = {"text": split.texts, "labels": ids}
    if split.pairs is not None:
        columns["pair"] = split.pairs

    def encode(batch):
        pairs = batch["pair"] if "pair" in batch else None
        whole = tokenizer(batch["text"], pairs, verbose=False)["input_ids"]
        features = tokenizer(batch["text"], pairs, truncation=True, max_length=max_length)
        features["whole_length"] = [len(row) for row in whole]
        return features

    dataset = datasets.Dataset.from_dict(columns).map(
        encode, batched=True, remove_columns=[c for c in columns if c != "labels"], desc=f"Tokenizing {split.name}"
    )
    lengths = np.asarray(dataset["whole_length"])
    cut = int((lengths > max_length).sum())
    if cut:
        logger.warning("%s: %d of %d rows are longer than --max_seq_length %d tokens (the longest %d) and are cut to "
                       "it", split.source, cut, len(lengths), max_length, int(lengths.max()))
    return dataset.remove_columns("whole_length")


def predict_split(trainer: Trainer, split: Split, dataset: datasets.Dataset, classes: list[str],
                  output_dir: Path) -> dict:
    """Scores on the labelled rows, predictions of all rows (<split>_predictions.tsv): {metric: value}."""
    name = split.name
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
    check_finite_scores(results, split.source)
    path = output_dir / f"{name}_predictions.tsv"
    lines = [f"{split.position}\tlabel\tprediction"]
    lines += [f"{row}\t{classes[label] if label >= 0 else ''}\t{classes[p]}"
              for row, label, p in zip(split.rows, ids.tolist(), predictions.tolist())]
    path.write_text("\n".join(lines) + "\n")
    results[f"{name}_predictions"] = path.name
    logger.info("%s: %s", name, results)
    return results
