"""Masked-language-model pretraining of `VanillaBertForMaskedLM` (BERT's first objective; no next-sentence
prediction), from scratch or continued from a checkpoint, on the project's one Accelerate loop
(`vanilla_transformer.scripts.training.loop`: progress bar, log.jsonl, training_curves.png, checkpoints, --resume, Ctrl-C
saves).

Text: local files, one document per line (blank lines skipped, .gz accepted), or a `datasets` Hub id. Documents
are tokenized with a WordPiece trained on the training text (or --tokenizer_name, or the checkpoint's), closed
with [SEP], concatenated and cut into blocks of --block_size tokens that each open with [CLS] (`group_blocks`).
The text and its blocks stay on disk, in Arrow files that `datasets` memory-maps (a corpus larger than memory trains),
tokenized by one process per core for a large corpus; a second run with the same text and tokenizer reads the blocks
from the cache in seconds (docs/large-corpora.md: a 1 GB text file on 2 CPU cores).
Masking: transformers' `DataCollatorForLanguageModeling` (--mlm_probability of the tokens; 80% [MASK], 10% random,
10% unchanged), or whole words with --whole_word_mask. The MLM head runs on the masked positions only
(--sparse_prediction, on by default). Validation: loss per masked token and perplexity (its exp), with the
validation masks drawn once from --seed, so that every evaluation scores the same positions; beside it the top-1
accuracy at the masked positions, and that of the frequency baseline (always the training text's most frequent
token), so that what the model learned beyond word frequencies shows. The end: output_dir/final, a Hub-ready folder
(weights, config with auto_map, code, tokenizer).

A run of a few minutes, Cramming's budget recipe (Geiping and Goldstein 2023) as measured on 2 CPU cores:
--preset budget (see BUDGET_PRESET: no dropout, one learning-rate cycle that ends with --max_train_minutes, a
smaller model, vocabulary and blocks; options given beside it win). The main job's BERT part uses the same preset:

    python scripts/pretrain_mlm.py --preset budget --train_file my_text.txt --validation_file my_valid.txt \
        --output_dir outputs/my-bert --max_train_minutes 5

A demo of 1.5 minutes on 2 CPU cores (WikiText-2 valid as training text, test as validation; a 2 x 128 model):

    python scripts/pretrain_mlm.py --train_file ../shared/data/wikitext2/valid.txt \
        --validation_file ../shared/data/wikitext2/test.txt --output_dir outputs/mlm-demo \
        --hidden_size 128 --num_hidden_layers 2 --num_attention_heads 2 --intermediate_size 512 \
        --max_train_minutes 1 --warmup_steps 30 --learning_rate 1e-3 --logging_steps 10

Longer runs (BERT-Mini on WikiText-2, 85 minutes) and what pretraining brings to fine-tuning (the same model
fine-tuned on SST-2 from these weights, then --from_scratch with random ones): docs/mlm.md.

Several processes: `accelerate launch --multi_gpu --num_processes 2 scripts/pretrain_mlm.py ...` (the global batch
is batch_size x processes x gradient_accumulation_steps). Continue an interrupted run with the same command plus
--resume (with the same arguments, but for when to stop, logging and saving: a change of --learning_rate, say, is
refused, naming it). Arguments, files and the output folder are checked before any data is read; an empty or blank
file, text that is not UTF-8, or a tokenizer that turns most of the text into [UNK] is an error naming the file.
"""

import argparse
import sys
from pathlib import Path

from transformers import AutoConfig, AutoModelForMaskedLM, HfArgumentParser

from vanilla_transformer.modeling import VanillaBertConfig, VanillaBertForMaskedLM
from vanilla_transformer.tokenization import train_wordpiece_tokenizer
from vanilla_transformer.scripts.training.batching import token_batches
from vanilla_transformer.scripts.training.data_files import check_data_file
from vanilla_transformer.scripts.training.errors import (
    ArgumentError,
    DataError,
    hub_unreachable,
    kept_in_run_folder,
    parse_arguments,
    run_command,
)
from vanilla_transformer.scripts.training.embedded_corpora import is_embedded
from vanilla_transformer.scripts.training.evaluation import evaluation_share
from vanilla_transformer.scripts.training.loop import LoopArguments, TrainingTask, TrainOutcome
from vanilla_transformer.scripts.training.mlm_arguments import NEW_MODEL_ONLY, PRESETS, PretrainArguments
from vanilla_transformer.scripts.training.mlm_data import (
    block_lengths,
    collator_columns,
    load_texts,
    make_collator,
    masked_token_scores,
    masked_token_sums,
    masked_validation_batches,
    most_frequent_token,
    texts_of,
    tokenize_blocks,
)
from vanilla_transformer.scripts.training.model_folders import check_no_dangling_link, check_tokenizer_folder
from vanilla_transformer.scripts.training.optimization import paper_learning_rate
from vanilla_transformer.scripts.training.run import Recipe, RunContext, run_tokenizer
from vanilla_transformer.scripts.training.run import run as run_recipe
from vanilla_transformer.scripts.training.tokenizer_checks import check_tokenizer, tokenizer_fingerprint


class PretrainRecipe(Recipe):
    """What a masked-LM run brings to the one run (`training.run`): documents cut into blocks, a WordPiece, a new
    BERT or a checkpoint to continue, masked batches, and the validation scores at fixed masked positions."""

    name = "pretrain_mlm"

    def __init__(self, args: PretrainArguments, loop: LoopArguments):
        super().__init__(args, loop)
        self.args, self.loop = args, loop

    def check(self) -> None:
        if self.loop.average_last != 1:
            raise ArgumentError("--average_last: checkpoint averaging is offered by train_translation.py only")
        model_config(self.args)
        for option in ("train_file", "validation_file"):
            path = getattr(self.args, option)
            if path and not is_embedded(path):
                check_data_file(path, f"--{option}")
        check_no_dangling_link(self.loop.output_dir, "--output_dir")
        if self.args.tokenizer_name:
            check_tokenizer_folder(self.args.tokenizer_name, "--tokenizer_name", fix="give a folder a tokenizer was "
                                   "saved in (scripts/train_tokenizer.py --kind wordpiece)")
        elif self.args.model_name_or_path:
            check_tokenizer_folder(self.args.model_name_or_path, "--model_name_or_path", fix="pass --tokenizer_name, "
                                   "or save the tokenizer beside the model")

    def load(self, run: RunContext) -> None:
        args = self.args
        texts = load_texts(args)
        self.tokenizer = get_tokenizer(args, texts, run)
        self.blocks = {split: tokenize_blocks(texts[split], self.tokenizer, args.block_size, args.whole_word_mask)
                       for split in ("train", "validation")}
        self.documents = len(texts["train"])
        self.validation_batches = masked_validation_batches(self.blocks["validation"], self.tokenizer, args,
                                                            seed=self.loop.seed)
        self.masked = sum(int((b["labels"] != -100).sum()) for b in self.validation_batches)
        if self.masked == 0:
            raise DataError(f"the validation text ({self.where('validation')}) gives no masked token to score "
                            f"({block_lengths(self.blocks['validation']).sum():,} tokens, --mlm_probability "
                            f"{args.mlm_probability}): give more validation text")
        self.lengths = block_lengths(self.blocks["train"])
        counted = self.blocks["train"][:10_000]  # enough to find the most frequent token of a large corpus
        self.frequent_token = most_frequent_token(counted["input_ids"], counted["special_tokens_mask"])

    def where(self, split: str) -> str:
        return source_of(self.args, split)

    def model(self, run: RunContext):
        return get_model(self.args, self.tokenizer)

    def learning_rate(self, model) -> float:
        return paper_learning_rate(model.config.hidden_size, self.loop.warmup_steps)

    def describe(self, run: RunContext, model, learning_rate: float) -> str:
        return (f"{self.documents} training documents -> {len(self.lengths)} blocks, {self.lengths.sum()} tokens; "
                f"validation {len(self.blocks['validation'])} blocks, {self.masked} masked tokens; model: "
                f"{model.num_parameters() / 1e6:.2f}M parameters, peak learning rate {learning_rate:.2e}; global "
                f"batch = {run.accelerator.num_processes} processes x {self.loop.gradient_accumulation_steps} "
                f"micro-batches x {self.args.batch_size} blocks")

    def evaluate(self, run: RunContext, model_in_eval_mode) -> dict:
        # The bare model: a DDP forward is a collective (buffer broadcast), which evaluation does not need. Under
        # FSDP2 every forward pass is one: the padding gives every process the same number of them, not counted.
        accelerator = run.accelerator
        bare = accelerator.unwrap_model(model_in_eval_mode)
        mine, padding = evaluation_share(self.validation_batches, accelerator.num_processes, accelerator.process_index)
        sums = masked_token_sums(bare, mine, self.frequent_token)
        masked_token_sums(bare, padding, self.frequent_token)
        return masked_token_scores(accelerator.reduce(sums.to(accelerator.device), "sum").cpu())

    def task(self, run: RunContext) -> TrainingTask:
        args = self.args
        return TrainingTask(
            dataset=self.blocks["train"].select_columns(collator_columns(args)),
            collate=make_collator(self.tokenizer, args),
            epoch_batches=lambda epoch: token_batches(self.lengths, args.batch_size * args.block_size, self.loop.seed,
                                                      epoch),
            loss=lambda model, batch, num_items: model(**batch, num_items_in_batch=num_items).loss,
            count_tokens=lambda batch: batch["attention_mask"].sum(),  # the labels are a subset of the inputs
            evaluate=lambda model: self.evaluate(run, model),
            signature={"block_size": args.block_size, "batch_size": args.batch_size, "train_blocks": len(self.lengths),
                       "train_tokens": int(self.lengths.sum()),
                       "tokenizer": tokenizer_fingerprint(self.tokenizer)},
        )

    def summary(self, run: RunContext, outcome: TrainOutcome, final: Path) -> str:
        metrics, frequent = outcome.metrics, self.tokenizer.convert_ids_to_tokens(self.frequent_token)
        return (f"validation ({self.where('validation')}): loss {metrics['val_loss']:.4f} per masked token, perplexity "
                f"{metrics['val_perplexity']:.2f}, top-1 accuracy {metrics['val_accuracy']:.1%} (always {frequent!r}: "
                f"{metrics['val_frequency_baseline']:.1%}); saved {final}")


def run(args: PretrainArguments, loop: LoopArguments) -> TrainOutcome:
    return run_recipe(PretrainRecipe(args, loop), loop)


def source_of(args: PretrainArguments, split: str) -> str:
    """Where a split's text comes from, for messages: its file, or the Hub dataset and split."""
    return getattr(args, f"{split}_file") or f"{args.dataset_name} ({getattr(args, f'{split}_split')})"


def get_tokenizer(args: PretrainArguments, texts, run: RunContext):
    """The run's tokenizer (`run_tokenizer`): --tokenizer_name, else the checkpoint's (--model_name_or_path), the
    run's own on --resume, else a new WordPiece on the training text. Refused when it turns most of the text into
    [UNK], or lacks [MASK], [CLS] or [SEP]."""
    name = args.tokenizer_name or args.model_name_or_path
    tokenizer, trained_here = run_tokenizer(
        run, name, "--tokenizer_name" if args.tokenizer_name else "--model_name_or_path",
        lambda: train_wordpiece_tokenizer(texts_of(texts["train"]), vocab_size=args.vocab_size, show_progress=False))
    if tokenizer.mask_token is None or tokenizer.cls_token is None or tokenizer.sep_token is None:
        raise ArgumentError(f"the tokenizer of {name} lacks [MASK], [CLS] or [SEP]: it is not a BERT tokenizer")
    where = {split: source_of(args, split) for split in ("train", "validation")}
    fix = ("Use a tokenizer trained on this kind of text (scripts/train_tokenizer.py --kind wordpiece)" if name else
           f"Its training text, {where['train']} ({len(texts['train']):,} documents), is too small or unlike this "
           "text: give more training text")
    check_tokenizer(tokenizer, {where[split]: texts[split][:1000]["text"] for split in ("train", "validation")}, fix,
                    vocab_size=args.vocab_size if trained_here else None)
    return tokenizer


def model_config(args: PretrainArguments, tokenizer=None):
    """The model's config: the checkpoint's (--model_name_or_path), or a new one of --hidden_size etc. Without a
    tokenizer, a stand-in vocabulary: checks the model arguments and --block_size before any data is read."""
    if args.model_name_or_path:
        try:
            config = AutoConfig.from_pretrained(args.model_name_or_path)
        except (OSError, ValueError) as error:
            unreachable = hub_unreachable(error)
            why = (f"{unreachable}: check the network or HF_HUB_OFFLINE, or give a local folder" if unreachable else
                   (str(error).strip().splitlines() or [type(error).__name__])[0])
            raise ArgumentError(f"--model_name_or_path {args.model_name_or_path}: no model config could be loaded "
                                f"from it ({why})") from None
        if config.model_type != VanillaBertConfig.model_type:
            raise ArgumentError(f"{args.model_name_or_path} holds a {config.model_type!r} model; this script "
                                "continues vanilla_bert checkpoints")
    else:
        special = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id} if tokenizer else {}
        try:
            config = VanillaBertConfig(**special, **args.model_size())
        except ValueError as error:
            raise ArgumentError(f"the model arguments do not make a model: {error}") from None
    if args.block_size > config.max_position_embeddings:
        raise ArgumentError(f"--block_size {args.block_size} exceeds the model's max_position_embeddings "
                            f"({config.max_position_embeddings})")
    return config


def get_model(args: PretrainArguments, tokenizer) -> VanillaBertForMaskedLM:
    config = model_config(args, tokenizer)
    if args.model_name_or_path:
        model = AutoModelForMaskedLM.from_pretrained(args.model_name_or_path)
        if not isinstance(model, VanillaBertForMaskedLM):
            raise ArgumentError(f"{args.model_name_or_path} holds a {model.config.model_type!r} model; this script "
                                "continues vanilla_bert checkpoints")
        if model.config.vocab_size < len(tokenizer):
            raise ArgumentError(f"the tokenizer has {len(tokenizer)} tokens, the model {model.config.vocab_size}: "
                                "use the checkpoint's own tokenizer")
    else:
        model = VanillaBertForMaskedLM(config)
    model.config.sparse_prediction = args.sparse_prediction
    return model


# ------------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> tuple[PretrainArguments, LoopArguments]:
    """The arguments; --preset changes the defaults, so that an option given beside it wins."""
    parser = HfArgumentParser((PretrainArguments, LoopArguments), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--preset")
    first.add_argument("--model_name_or_path", "--model-name-or-path")
    given = first.parse_known_args(argv)[0]
    if given.preset in PRESETS:  # an unknown name is refused by PretrainArguments
        recipe = PRESETS[given.preset]
        if given.model_name_or_path:  # the checkpoint's config fixes these; the preset sets the rest of the recipe
            recipe = {name: value for name, value in recipe.items() if name not in NEW_MODEL_ONLY}
        parser.set_defaults(**recipe)
    return parse_arguments(parser, argv)


def main(argv: list[str] | None = None) -> int:
    return run_command(run, parse_args, argv, kept=lambda args, loop: kept_in_run_folder(loop.output_dir))


if __name__ == "__main__":
    sys.exit(main())
