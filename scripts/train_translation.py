"""Train the encoder-decoder Transformer from scratch on a parallel corpus with Accelerate, as in "Attention Is All
You Need" (section 5) scaled down: batches by token count with length bucketing, Adam (0.9, 0.98, 1e-9) with
warmup and inverse square root decay, label smoothing 0.1, validation loss and beam-search BLEU, averaging of the
last checkpoints. Ends with a Hub-ready folder `output_dir/final` whose generation config holds the beam size
and the length penalty chosen on the validation set.

Multi30k de->en in 45 minutes on 2 CPU cores in fp32 (--preset multi30k: the model, batch, schedule and evaluation
that proxy runs chose on the validation split, docs/translation.md). The validation set makes every choice (the
weights: last step or average of the last checkpoints; the length penalty); the test set is scored once, afterwards:

    python scripts/train_translation.py --preset multi30k \
        --train_split ../shared/data/multi30k/train --validation_split ../shared/data/multi30k/val \
        --source_lang de --target_lang en --output_dir outputs/multi30k
    python scripts/evaluate_translation.py --model_dir outputs/multi30k/final \
        --split ../shared/data/multi30k/test_2016_flickr --output_file outputs/multi30k/test_scores.json

Options given beside --preset win over it (--max_train_minutes 10, say, for a shorter run with the same schedule).
The same command runs on one GPU, or on several processes (docs/scaling.md; the global batch is max_tokens x
processes x gradient_accumulation_steps). The pairs and their token ids stay on disk, in Arrow files that `datasets` memory-maps (a corpus larger than memory
trains), tokenized by one process per core for a large corpus; a second run with the same data and tokenizer reads
them from the cache in seconds (docs/large-corpora.md: 4.5 million pairs on 2 CPU cores).
Continue an interrupted run (Ctrl-C saves a checkpoint) with the same command plus --resume: a resumed run keeps
every argument that shapes training (a different --learning_rate, model size, data or seed is refused, naming it);
when to stop, logging, saving and the evaluation settings (--num_beams, --length_penalties, --eval_batch_size) may
change. Arguments, data files and the output folder are checked before any data is read; bad data (not UTF-8, a
ragged TSV line, a JSON line of the wrong type) is an error naming the file and the line, and dropped pairs are
counted in a warning.
"""

import argparse
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import DataCollatorForSeq2Seq, HfArgumentParser

from vanilla_transformer.modeling import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration
from vanilla_transformer.tokenization import special_token_ids, train_bpe_tokenizer
from vanilla_transformer.scripts.training.batching import token_batches
from vanilla_transformer.scripts.training.embedded_corpora import embedded_dataset, is_embedded
from vanilla_transformer.scripts.training.errors import (
    ArgumentError,
    DataError,
    check_fraction,
    check_positive,
    kept_in_run_folder,
    parse_arguments,
    run_command,
)
from vanilla_transformer.scripts.training.loop import LoopArguments, TrainingTask, TrainOutcome
from vanilla_transformer.scripts.training.model_folders import check_no_dangling_link, check_tokenizer_folder
from vanilla_transformer.scripts.training.optimization import paper_learning_rate
from vanilla_transformer.scripts.training.presets import TRANSLATION_PRESETS, apply_preset, check_preset
from vanilla_transformer.scripts.training.run import Recipe, RunContext, run_tokenizer
from vanilla_transformer.scripts.training.run import run as run_recipe
from vanilla_transformer.scripts.training.tokenizer_checks import check_tokenizer, tokenizer_fingerprint
from vanilla_transformer.scripts.training.translation_data import (
    CorpusArguments,
    load_parallel,
    pair_lengths,
    split_files,
    tokenize_pairs,
    trainable_pairs,
)
from vanilla_transformer.scripts.training.translation_eval import choose_on_validation, load_metrics, validate


@dataclass
class TranslationArguments:
    train_split: str = field(metadata={"help": "training pairs: a prefix of {split}.{lang}[.gz] files, a .tsv/.jsonl "
                                               "file, a split name with --dataset_name, or an embedded corpus "
                                               "(embedded:cldr-de-en:train)"})
    validation_split: str = field(metadata={"help": "validation pairs, likewise: loss, BLEU and every choice"})
    preset: str | None = field(default=None, metadata={"help": "multi30k: the recipe for a small corpus on 2 CPU "
                                                              "cores (training/presets.py); options given beside it win"})
    tokenizer: str | None = field(
        default=None, metadata={"help": "a saved tokenizer folder (scripts/train_tokenizer.py); default: train a "
                                        "joint BPE on the training pairs into output_dir/tokenizer"}
    )
    vocab_size: int = field(default=8000, metadata={"help": "joint BPE vocabulary size, when training one"})
    max_length: int = field(default=128, metadata={"help": "drop training pairs with a side longer than this (tokens)"})
    max_tokens: int = field(default=4096, metadata={"help": "tokens per micro-batch and process, padding included"})
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    attention_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    label_smoothing: float = 0.1
    lr_factor: float = field(
        default=1.0, metadata={"help": "peak learning rate = lr_factor * d_model^-0.5 * warmup^-0.5 (the paper: 1), "
                                       "unless --learning_rate gives it"}
    )
    num_beams: int = 4
    length_penalties: list[float] = field(
        default_factory=lambda: [1.0],
        metadata={"help": "length penalties tried on the validation set at the end; the best goes in the model"},
    )
    eval_batch_size: int = field(default=64, metadata={"help": "sentences per generation batch"})

    def __post_init__(self):
        if message := check_preset(self.preset, TRANSLATION_PRESETS):
            raise ArgumentError(message)
        for name in ("max_length", "max_tokens", "d_model", "encoder_layers", "decoder_layers", "attention_heads",
                     "ffn_dim", "num_beams", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ArgumentError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.vocab_size <= 4:
            raise ArgumentError(f"--vocab_size {self.vocab_size}: the joint BPE has 4 special tokens; give more")
        if self.max_tokens < self.max_length:
            raise ArgumentError(f"--max_tokens {self.max_tokens} is below --max_length {self.max_length}: a kept pair "
                                "must fit in a micro-batch; raise --max_tokens or lower --max_length")
        check_fraction(dropout=self.dropout, attention_dropout=self.attention_dropout,
                       activation_dropout=self.activation_dropout, label_smoothing=self.label_smoothing)
        check_positive(lr_factor=self.lr_factor)
        if not self.length_penalties:
            raise ArgumentError("--length_penalties: give at least one")


# Arguments of the evaluation only: a resumed run may change them (run_folder.CHANGEABLE_ON_RESUME has the rest).
EVALUATION_ONLY = ("num_beams", "length_penalties", "eval_batch_size")


def model_config(args: TranslationArguments, tokenizer=None) -> VanillaTransformerConfig:
    """The model's config; without a tokenizer, a stand-in vocabulary: checks the model arguments before any data
    is read (d_model divisible by the heads, an even d_model for the sinusoids...)."""
    special = special_token_ids(tokenizer) if tokenizer is not None else {}
    try:
        return VanillaTransformerConfig(
            d_model=args.d_model,
            encoder_layers=args.encoder_layers,
            decoder_layers=args.decoder_layers,
            encoder_attention_heads=args.attention_heads,
            decoder_attention_heads=args.attention_heads,
            encoder_ffn_dim=args.ffn_dim,
            decoder_ffn_dim=args.ffn_dim,
            dropout=args.dropout,
            attention_dropout=args.attention_dropout,
            activation_dropout=args.activation_dropout,
            max_position_embeddings=max(1024, args.max_length + 1),
            **special,
        )
    except ValueError as error:
        raise ArgumentError(f"the model arguments do not make a model: {error}") from None


class TranslationRecipe(Recipe):
    """What a translation run brings to the one run (`training.run`): parallel data and a joint BPE, the
    encoder-decoder of the paper's size arguments, the paper's learning rate, label-smoothed loss on token-count
    batches, validation loss and beam-search BLEU, and at the end the weights and length penalty chosen on the
    validation set."""

    name = "train_translation"
    changeable = EVALUATION_ONLY

    def __init__(self, args: TranslationArguments, corpus: CorpusArguments, loop: LoopArguments):
        super().__init__(args, corpus, loop)
        self.args, self.corpus, self.loop = args, corpus, loop

    def check(self) -> None:
        model_config(self.args)
        for split in (self.args.train_split, self.args.validation_split):
            if not is_embedded(split):
                split_files(split, self.corpus)
        check_tokenizer_folder(self.args.tokenizer, "--tokenizer", fix="give a folder a tokenizer was saved in "
                               "(scripts/train_tokenizer.py --kind bpe), or leave out --tokenizer to train one")
        check_no_dangling_link(self.loop.output_dir, "--output_dir")

    def load(self, run: RunContext) -> None:
        args = self.args
        self.train_pairs, self.validation_pairs = (
            embedded_dataset(split) if is_embedded(split) else load_parallel(split, self.corpus)
            for split in (args.train_split, args.validation_split)
        )
        self.tokenizer = get_tokenizer(args, self.train_pairs, self.validation_pairs, run)
        if args.num_beams > len(self.tokenizer):  # found now, not when the first evaluation runs
            raise ArgumentError(f"--num_beams {args.num_beams} is more than the {len(self.tokenizer)} tokens of the "
                                "vocabulary: the extra beams only cost time; use at most that (4 to 8 is usual)")
        self.train_set, counts = trainable_pairs(tokenize_pairs(self.train_pairs, self.tokenizer), args.max_length)
        self.validation_set, validation_counts = trainable_pairs(
            tokenize_pairs(self.validation_pairs, self.tokenizer), args.max_length
        )
        self.metrics = load_metrics()
        run.accelerator.print(counts.describe(f"training pairs ({args.train_split})", args.max_length))
        run.accelerator.print(validation_counts.describe("validation loss", args.max_length)
                              + f"; BLEU on all {len(self.validation_pairs)} pairs")
        counts.check(f"training pairs ({args.train_split})", args.max_length)
        validation_counts.check(f"validation pairs ({args.validation_split})", args.max_length)
        self.lengths = pair_lengths(self.train_set)  # batches are cut from these alone: no example is read for them

    def model(self, run: RunContext):
        model = VanillaTransformerForConditionalGeneration(model_config(self.args, self.tokenizer))
        model.generation_config.num_beams = self.args.num_beams
        model.generation_config.length_penalty = self.args.length_penalties[0]
        model.generation_config.max_new_tokens = self.args.max_length
        return model

    def learning_rate(self, model) -> float:
        return paper_learning_rate(self.args.d_model, self.loop.warmup_steps, self.args.lr_factor)

    @functools.lru_cache(maxsize=1)  # an epoch's batches are cut once (here for the count, then by the loop)
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return token_batches(self.lengths, self.args.max_tokens, self.loop.seed, epoch)

    def describe(self, run: RunContext, model, learning_rate: float) -> str:
        micro_batches = len(self.epoch_batches(0))
        return (f"model: {model.num_parameters() / 1e6:.2f}M parameters, peak learning rate {learning_rate:.2e}; "
                f"{micro_batches} micro-batches of at most {self.args.max_tokens} tokens per epoch "
                f"({self.lengths.sum() / micro_batches:.0f} tokens of the longer side each, on average), "
                f"global batch = {run.accelerator.num_processes} processes x {self.loop.gradient_accumulation_steps} "
                "micro-batches")

    def task(self, run: RunContext) -> TrainingTask:
        args = self.args
        return TrainingTask(
            dataset=self.train_set.select_columns(["input_ids", "labels"]),
            collate=DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=-100, return_tensors="pt"),
            epoch_batches=self.epoch_batches,
            loss=lambda model, batch, num_items: model(
                **batch, smoothing=args.label_smoothing, num_items_in_batch=num_items
            ).loss,
            evaluate=lambda model: validate(run.accelerator, model, self.tokenizer, self.validation_set,
                                            self.validation_pairs, args, self.metrics,
                                            length_penalty=args.length_penalties[0]),
            signature={"max_tokens": args.max_tokens, "train_pairs": len(self.train_set),
                       "train_tokens": int(self.lengths.sum()), "tokenizer": tokenizer_fingerprint(self.tokenizer)},
        )

    def finish(self, run: RunContext, model, outcome: TrainOutcome) -> dict:
        self.choice = choose_on_validation(run.accelerator, model, self.tokenizer, self.validation_set,
                                           self.validation_pairs, self.args, self.loop, self.metrics, outcome.metrics)
        return {"validation_scores.json": self.choice}

    def summary(self, run: RunContext, outcome: TrainOutcome, final: Path) -> str:
        return (f"saved {final} (beam {self.args.num_beams}, length penalty {self.choice['length_penalty']}, "
                f"weights: {self.choice['weights']})")


def run(args: TranslationArguments, corpus: CorpusArguments, loop: LoopArguments) -> TrainOutcome:
    return run_recipe(TranslationRecipe(args, corpus, loop), loop)


def get_tokenizer(args: TranslationArguments, train_pairs, validation_pairs, run: RunContext):
    """The run's tokenizer (`run_tokenizer`: --tokenizer, the run's own on --resume, else a new joint BPE on the
    training pairs). Refused when it turns most of the text into <unk>, or lacks the tokens the decoder needs."""
    counted = {"texts": 0}

    def texts():  # read from the Arrow file a thousand pairs at a time, never all at once
        for batch in train_pairs.iter(batch_size=1000):
            for pair in zip(batch["source"], batch["target"]):
                for text in pair:
                    if text and text.strip():
                        counted["texts"] += 1
                        yield text

    def train_new():
        nothing = DataError(f"{args.train_split}: no text in its {len(train_pairs):,} pairs (every side is empty or "
                            "blank): nothing to train on")
        try:
            tokenizer = train_bpe_tokenizer(texts(), vocab_size=args.vocab_size, show_progress=False)
        except ValueError:
            if counted["texts"] == 0:
                raise nothing from None
            raise
        if counted["texts"] == 0:
            raise nothing
        return tokenizer

    tokenizer, trained_here = run_tokenizer(run, args.tokenizer, "--tokenizer", train_new)
    missing = [name for name in ("pad_token", "bos_token", "eos_token") if getattr(tokenizer, name) is None]
    if missing:
        raise ArgumentError(f"the tokenizer {args.tokenizer} has no {', '.join(missing)}: the decoder starts from "
                            "<s> and stops at </s> (train one with scripts/train_tokenizer.py --kind bpe)")
    fix = ("Use a tokenizer trained on text of these languages (scripts/train_tokenizer.py), or leave out "
           "--tokenizer to train one on the training pairs" if args.tokenizer else
           f"Its training text, {args.train_split} ({len(train_pairs):,} pairs), is too small or unlike this text: "
           "give more training pairs")
    check_tokenizer(tokenizer, {args.train_split: _texts(train_pairs), args.validation_split: _texts(validation_pairs)},
                    fix, vocab_size=args.vocab_size if trained_here else None)
    return tokenizer


def _texts(pairs, count: int = 1000) -> list[str]:
    rows = pairs[:count]
    return [text for pair in zip(rows["source"], rows["target"]) for text in pair if text]


def parse_args(argv: list[str] | None = None):
    parser = HfArgumentParser((TranslationArguments, CorpusArguments, LoopArguments), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    apply_preset(parser, argv, TRANSLATION_PRESETS)
    return parse_arguments(parser, argv)


def main(argv: list[str] | None = None) -> int:
    return run_command(run, parse_args, argv, kept=lambda args, corpus, loop: kept_in_run_folder(loop.output_dir))


if __name__ == "__main__":
    sys.exit(main())
