"""Fine-tune a BERT-style encoder to tag words (named entities: B-LOC I-LOC O ...) with the Hugging Face Trainer, and
save a Hub-ready folder (VanillaBertForTokenClassification).

The checkpoint is one of ours (any vanilla_bert folder: an MLM of scripts/pretrain_mlm.py, a tagger) or a Hugging
Face BERT folder (model_type "bert"), converted on the fly. Data: CoNLL-style files (a word per line, its tag in the
last column, a blank line between sentences, -DOCSTART- lines skipped), JSON lines ({"tokens": [...], "tags":
[...]}), or a Hub dataset (--tokens_column tokens --tags_column ner_tags for conll2003). The tag of each word is
learnt and predicted on its first word piece. Scores: entity-level precision, recall and F1 (seqeval's definition,
with the offline metric module `seqeval_f1` installed with the package) and token accuracy.

    python scripts/finetune_token_classification.py --model_name_or_path runs/mlm/final \\
        --train_file ner/train.txt --validation_file ner/dev.txt --test_file ner/test.txt --output_dir runs/ner

What pretraining brings: the same command with `--from_scratch` (the same architecture and tokenizer, random
weights). benchmarks/token_classification.py builds a silver-labelled corpus from WikiText-2 and compares the two.

The tags are those of the training data; a tag of the validation or test data that training never saw is an error.
A sentence longer than --max_seq_length word pieces is split at word boundaries (a warning counts them). Every
evaluated split's predictions go to <split>_predictions.txt (a word, its tag, the predicted tag per line).

Checkpoints every --save_steps steps, and on Ctrl-C or SIGTERM; continue with the same command plus --resume: the
result equals an uninterrupted run. --output_dir must be new or empty (or the run to --resume).

`--help` lists every option.
"""

import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import evaluate
from transformers import AutoConfig, DataCollatorForTokenClassification, set_seed

from vanilla_transformer.scripts.training import finetuning_trainer
from vanilla_transformer.scripts.training.errors import ArgumentError, kept_in_run_folder, when_interrupted
from vanilla_transformer.scripts.training.finetuning import (
    FinetuneArguments,
    checkpoint_classes,
    load_model_and_tokenizer,
    parse_arguments,
    prepare_run,
    record_run,
)
from vanilla_transformer.scripts.training.finetuning_trainer import exit_status, save_run, train
from vanilla_transformer.scripts.training.token_data import IGNORED, choose_tags, encode, load_data, predict_split
from vanilla_transformer.scripts.training.translation_eval import METRICS_DIR

logger = logging.getLogger("finetune_token_classification")
METRIC = METRICS_DIR / "seqeval_f1"
COMMAND = "finetune_token_classification"


@dataclass
class TokenClassificationArguments(FinetuneArguments):
    max_seq_length: int = field(
        default=128, metadata={"help": "Word pieces per input ([CLS] and [SEP] included); a longer sentence is split "
                                       "at word boundaries into parts of at most this many."}
    )
    tokens_column: str = field(default="tokens", metadata={"help": "JSON or Hub column of the words (a list)."})
    tags_column: str = field(default="tags", metadata={"help": "JSON or Hub column of the tags (a list of strings, "
                                                                "or a Hub ClassLabel's ids)."})

    def __post_init__(self):
        super().__post_init__()
        if self.tokens_column == self.tags_column:
            raise ArgumentError(f"--tokens_column and --tags_column must differ, got {self.tokens_column!r} twice")


def entity_scores(tags: list[str]):
    """Trainer's compute_metrics: entity precision, recall, F1 and token accuracy of the words' first pieces (a
    sentence split into parts is scored part by part here; the final scores join the parts again)."""
    metric = evaluate.load(str(METRIC))

    def compute_metrics(prediction):
        guesses, golds = prediction.predictions.argmax(-1), prediction.label_ids
        scored = [gold != IGNORED for gold in golds]
        return metric.compute(predictions=[[tags[t] for t in guess[keep]] for guess, keep in zip(guesses, scored)],
                              references=[[tags[t] for t in gold[keep]] for gold, keep in zip(golds, scored)])

    return compute_metrics


def build_trainer(model, tokenizer, data: dict, args: TokenClassificationArguments):
    """The engine's Trainer with each batch padded to its longest input (labels with -100) and entity scores."""
    tags = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return finetuning_trainer.build_trainer(model, tokenizer, data, args, DataCollatorForTokenClassification(tokenizer),
                                            entity_scores(tags))


def run(argv: list[str] | None = None) -> dict:
    args = parse_arguments(TokenClassificationArguments, __doc__, argv)
    when_interrupted(lambda: kept_in_run_folder(args.output_dir))  # Ctrl-C outside training (Trainer stops by itself)
    # Everything that can be checked is checked before the data is read and the model is loaded.
    resume_from = prepare_run(args, COMMAND)
    splits, train_digest = load_data(args)
    config = AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=False)
    tags = choose_tags(splits, checkpoint_classes(config, "token"), args.model_name_or_path)

    set_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.model_name_or_path, tags, args.from_scratch, head="token")
    if not tokenizer.is_fast:
        raise ArgumentError(f"{args.model_name_or_path}: its tokenizer is not a fast (tokenizers) one, which says "
                            "which word each piece comes from; save it with a tokenizer.json")
    encoded = {name: encode(split, tags, tokenizer, args.max_seq_length) for name, split in splits.items()}
    logger.info("tags %s; sentences %s", tags, {name: len(split.words) for name, split in splits.items()})
    record_run(args, COMMAND, resume_from, train_digest, tags)

    trainer = build_trainer(model, tokenizer, {name: encoded[name][0] for name in ("train", "validation")
                                               if name in encoded}, args)
    results = {"args": asdict(args), "tags": tags, **train(trainer, args, resume_from)}
    if "interrupted_at_step" in results:
        return results
    metric = evaluate.load(str(METRIC))
    for name in ("validation", "test"):
        if name in splits:
            results[name] = predict_split(trainer, splits[name], *encoded[name], tags, metric,
                                          Path(args.output_dir).expanduser())
    return save_run(trainer, tokenizer, results)


def main(argv: list[str] | None = None) -> int:
    return exit_status(run, argv)


if __name__ == "__main__":
    sys.exit(main())
