"""Train the encoder-decoder Transformer from scratch on a parallel corpus with Accelerate, as in "Attention Is All
You Need" (section 5) scaled down: batches by token count with length bucketing, Adam (0.9, 0.98, 1e-9) with
warmup and inverse square root decay, label smoothing 0.1, validation loss and beam-search BLEU, averaging of the
last checkpoints. Ends with a Hub-ready folder `output_dir/final` whose generation config holds the beam size
and the length penalty chosen on the validation set.

Multi30k de->en in 45 minutes on 2 CPU cores (aim: >= 38.5 sacreBLEU on test_2016_flickr; the peer, a MarianMTModel
of the same size trained 45 minutes here, reaches 37.6). The validation set makes every choice (the weights: last
step or average of the last 5 checkpoints; the length penalty); the test set is scored once, afterwards:

    python scripts/train_translation.py \
        --train_split ../shared/data/multi30k/train --validation_split ../shared/data/multi30k/val \
        --source_lang de --target_lang en --output_dir outputs/multi30k \
        --vocab_size 8000 --d_model 256 --encoder_layers 3 --decoder_layers 3 --attention_heads 4 --ffn_dim 1024 \
        --dropout 0.1 --label_smoothing 0.1 --max_tokens 3000 --learning_rate 1.5e-3 --warmup_steps 1000 \
        --mixed_precision bf16 --max_train_minutes 45 --save_steps 150 --keep_checkpoints 5 --average_last 5 \
        --eval_steps 600 --num_beams 4 --length_penalties 1.0 0.6 0.8 1.2
    python scripts/evaluate_translation.py --model_dir outputs/multi30k/final \
        --split ../shared/data/multi30k/test_2016_flickr --output_file outputs/multi30k/test_scores.json

The same command runs on one GPU, or on several processes (the global batch is max_tokens x processes x
gradient_accumulation_steps):
    accelerate launch --multi_gpu --num_processes 2 scripts/train_translation.py ...                   # 2 GPUs
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/train_translation.py ...  # 2 CPUs
The pairs and their token ids stay on disk, in Arrow files that `datasets` memory-maps (a corpus larger than memory
trains), tokenized by one process per core for a large corpus; a second run with the same data and tokenizer reads
them from the cache in seconds (docs/large-corpora.md: 4.5 million pairs on 2 CPU cores).
Continue an interrupted run (Ctrl-C saves a checkpoint) with the same command plus --resume: a resumed run keeps
every argument that shapes training (a different --learning_rate, model size, data or seed is refused, naming it);
when to stop, logging, saving and the evaluation settings (--num_beams, --length_penalties, --eval_batch_size) may
change. Arguments, data files and the output folder are checked before any data is read; bad data (not UTF-8, a
ragged TSV line, a JSON line of the wrong type) is an error naming the file and the line, and dropped pairs are
counted in a warning.
"""

import functools
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate.utils import gather_object, set_seed
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, HfArgumentParser

from vanilla_transformer.modeling import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration
from vanilla_transformer.tokenization import special_token_ids, train_bpe_tokenizer
from vanilla_transformer.scripts.training.batching import token_batches
from vanilla_transformer.scripts.training.checkpoints import average_checkpoints, is_sharded
from vanilla_transformer.scripts.training.run_folder import ResumePoint, prepare_output_dir, save_final
from vanilla_transformer.scripts.training.errors import (
    ArgumentError,
    CheckpointError,
    DataError,
    DataFileNotFoundError,
    check_fraction,
    check_positive,
    errors_without_traceback,
)
from vanilla_transformer.scripts.training.logs import plot_log
from vanilla_transformer.scripts.training.loop import LoopArguments, TrainingTask, train
from vanilla_transformer.scripts.training.evaluation import evaluation_share, mean_loss
from vanilla_transformer.scripts.training.engine import end_run, make_accelerator, prepare_for_training
from vanilla_transformer.scripts.training.optimization import loop_optimizer, paper_learning_rate, peak_learning_rate
from vanilla_transformer.scripts.training.tokenizer_checks import check_tokenizer, tokenizer_fingerprint
from vanilla_transformer.scripts.training.translation_data import (
    CorpusArguments,
    load_parallel,
    pair_lengths,
    split_files,
    tokenize_pairs,
    trainable_pairs,
)
from vanilla_transformer.scripts.training.translation_eval import generation_batches, load_metrics, score, translate_batch


@dataclass
class TranslationArguments:
    train_split: str = field(metadata={"help": "training pairs: a prefix of {split}.{lang}[.gz] files, a .tsv/.jsonl "
                                               "file, or a split name with --dataset_name"})
    validation_split: str = field(metadata={"help": "validation pairs, likewise: loss, BLEU and every choice"})
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


def run(args: TranslationArguments, corpus: CorpusArguments, loop: LoopArguments):
    accelerator = make_accelerator(loop)
    output_dir = Path(loop.output_dir)
    set_seed(loop.seed)

    # What can be checked before any data is read: the model arguments, the data paths, the tokenizer folder, the
    # output folder, and --resume against the checkpoint's arguments.
    model_config(args)
    for split in (args.train_split, args.validation_split):
        split_files(split, corpus)
    if args.tokenizer and not Path(args.tokenizer).is_dir() and (os.sep in args.tokenizer or
                                                                 args.tokenizer.startswith(".")):
        raise DataFileNotFoundError(f"--tokenizer {args.tokenizer}: no such folder")
    arguments = all_arguments(args, corpus, loop)
    resume = prepare_output_dir(accelerator, loop, arguments, changeable=EVALUATION_ONLY)

    with accelerator.main_process_first():  # the other processes then read the caches the main one wrote
        train_pairs = load_parallel(args.train_split, corpus)
        validation_pairs = load_parallel(args.validation_split, corpus)
        tokenizer = get_tokenizer(args, train_pairs, validation_pairs, output_dir, resume,
                                  accelerator.is_main_process)
        train_set, counts = trainable_pairs(tokenize_pairs(train_pairs, tokenizer), args.max_length)
        validation_set, validation_counts = trainable_pairs(
            tokenize_pairs(validation_pairs, tokenizer), args.max_length
        )
        metrics = load_metrics()
    accelerator.print(counts.describe(f"training pairs ({args.train_split})", args.max_length))
    accelerator.print(validation_counts.describe("validation loss", args.max_length)
                      + f"; BLEU on all {len(validation_pairs)} pairs")
    counts.check(f"training pairs ({args.train_split})", args.max_length)
    validation_counts.check(f"validation pairs ({args.validation_split})", args.max_length)

    config = model_config(args, tokenizer)
    model = VanillaTransformerForConditionalGeneration(config)
    model.generation_config.num_beams = args.num_beams
    model.generation_config.length_penalty = args.length_penalties[0]
    model.generation_config.max_new_tokens = args.max_length
    learning_rate = peak_learning_rate(loop, paper_learning_rate(args.d_model, loop.warmup_steps, args.lr_factor))
    optimizer, scheduler = loop_optimizer(model, loop, learning_rate)
    model, optimizer, scheduler = prepare_for_training(accelerator, loop, model, optimizer, scheduler)

    lengths = pair_lengths(train_set)  # batches are cut from these alone: no example is read to make them

    @functools.lru_cache(maxsize=1)  # an epoch's batches are cut once (here for the count, then by the loop)
    def epoch_batches(epoch: int) -> list[list[int]]:
        return token_batches(lengths, args.max_tokens, loop.seed, epoch)

    micro_batches = len(epoch_batches(0))
    accelerator.print(
        f"model: {accelerator.unwrap_model(model).num_parameters() / 1e6:.2f}M parameters, peak learning rate "
        f"{learning_rate:.2e}; "
        f"{micro_batches} micro-batches of at most {args.max_tokens} tokens per epoch "
        f"({lengths.sum() / micro_batches:.0f} tokens of the longer side each, on average), "
        f"global batch = {accelerator.num_processes} processes x {loop.gradient_accumulation_steps} micro-batches"
    )
    if accelerator.is_main_process:
        (output_dir / "training_args.json").write_text(json.dumps(arguments, indent=1) + "\n")
    if loop.report_to:
        accelerator.init_trackers("train_translation", config=_scalars(arguments))

    def evaluate(model_in_eval_mode) -> dict:
        return validate(accelerator, model_in_eval_mode, tokenizer, validation_set, validation_pairs, args, metrics,
                        length_penalty=args.length_penalties[0])

    task = TrainingTask(
        dataset=train_set.select_columns(["input_ids", "labels"]),
        collate=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt"),
        epoch_batches=epoch_batches,
        loss=lambda model, batch, num_items: model(
            **batch, smoothing=args.label_smoothing, num_items_in_batch=num_items
        ).loss,
        evaluate=evaluate,
        signature={"max_tokens": args.max_tokens, "train_pairs": len(train_set), "train_tokens": int(lengths.sum()),
                   "tokenizer": tokenizer_fingerprint(tokenizer)},
    )
    outcome = train(accelerator, model, optimizer, scheduler, task, loop, arguments)
    if not outcome.completed:
        accelerator.print(f"stopped early ({outcome.stop_reason}); checkpoint {outcome.checkpoint}: continue with "
                          "the same command and --resume")
        model = accelerator.unwrap_model(model)  # see end_run
        end_run(accelerator)
        return outcome

    model.eval()
    choice = choose_on_validation(accelerator, model, tokenizer, validation_set, validation_pairs, args, loop, metrics,
                                  outcome.metrics)
    final = save_final(accelerator, model, tokenizer, output_dir, arguments, outcome.checkpoint,
                       extra={"validation_scores.json": choice})  # every process: a sharded model is gathered
    if accelerator.is_main_process:
        plot_log(output_dir / "log.jsonl", output_dir / "training_curves.png")
        accelerator.print(f"saved {final} (beam {args.num_beams}, length penalty {choice['length_penalty']}, "
                          f"weights: {choice['weights']}); curves in {output_dir / 'training_curves.png'}")
    model = accelerator.unwrap_model(model)  # see end_run
    end_run(accelerator)
    return outcome


def get_tokenizer(args: TranslationArguments, train_pairs, validation_pairs, output_dir: Path,
                  resume: ResumePoint | None, is_main_process: bool = True):
    """The given tokenizer (--tokenizer); on --resume, the one the checkpoint was trained with (output_dir/tokenizer,
    checked against the checkpoint); else a new joint BPE on the training pairs, saved to output_dir/tokenizer (by
    the main process; the others read it). A tokenizer from an earlier run is never reused for a new one. Refused
    when it turns most of the text into <unk>."""
    folder = output_dir / "tokenizer"
    trained_here = False
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer, "--tokenizer")
        missing = [name for name in ("pad_token", "bos_token", "eos_token") if getattr(tokenizer, name) is None]
        if missing:
            raise ArgumentError(f"the tokenizer {args.tokenizer} has no {', '.join(missing)}: the decoder starts from "
                                "<s> and stops at </s> (train one with scripts/train_tokenizer.py --kind bpe)")
    elif resume is not None or not is_main_process:
        if not (folder / "tokenizer.json").is_file():
            raise CheckpointError(f"{folder} is missing: the tokenizer this run was trained with. Resume needs it; "
                                  "start a new --output_dir")
        tokenizer = load_tokenizer(folder, "the run's tokenizer")
    else:
        counted = {"texts": 0}

        def texts():  # read from the Arrow file a thousand pairs at a time, never all at once
            for batch in train_pairs.iter(batch_size=1000):
                for pair in zip(batch["source"], batch["target"]):
                    for text in pair:
                        if text and text.strip():
                            counted["texts"] += 1
                            yield text

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
        tokenizer.save_pretrained(folder)
        trained_here = True
    if resume is not None:
        resume.check_signature(tokenizer=tokenizer_fingerprint(tokenizer))
    fix = ("Use a tokenizer trained on text of these languages (scripts/train_tokenizer.py), or leave out "
           "--tokenizer to train one on the training pairs" if args.tokenizer else
           f"Its training text, {args.train_split} ({len(train_pairs):,} pairs), is too small or unlike this text: "
           "give more training pairs")
    check_tokenizer(tokenizer, {args.train_split: _texts(train_pairs), args.validation_split: _texts(validation_pairs)},
                    fix, vocab_size=args.vocab_size if trained_here else None)
    return tokenizer


def load_tokenizer(name, what: str):
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise ArgumentError(f"{what} {name}: no tokenizer could be loaded from it ({error})") from None


def _texts(pairs, count: int = 1000) -> list[str]:
    rows = pairs[:count]
    return [text for pair in zip(rows["source"], rows["target"]) for text in pair if text]


@torch.no_grad()
def validate(accelerator, model, tokenizer, validation_set, validation_pairs, args: TranslationArguments, metrics,
             with_loss: bool = True, **generate_kwargs) -> dict:
    """Validation loss (cross-entropy per target token, no smoothing) and corpus BLEU / chrF of beam search, with
    each process handling a share of the batches. Every process makes the same number of forward passes and
    `generate` calls (`evaluation_share`), and a sharded model generates with `synced_gpus=True`: under FSDP2 each
    forward pass is a collective, and a process whose beams have finished keeps stepping with the others."""
    result = {}
    # The bare model: a DDP forward is a collective (buffer broadcast), which evaluation does not need.
    model = accelerator.unwrap_model(model)
    if with_loss:
        batches = token_batches(pair_lengths(validation_set), args.max_tokens, seed=0, epoch=0, shuffle=False)
        collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")
        features = validation_set.select_columns(["input_ids", "labels"])
        loss = mean_loss(accelerator, model, batches, lambda indices: collate([features[i] for i in indices]))
        result["val_loss"] = round(loss, 4)  # per target token, no smoothing
    sources, references = list(validation_pairs["source"]), list(validation_pairs["target"])
    mine, padding = evaluation_share(generation_batches(sources, args.eval_batch_size), accelerator.num_processes,
                                     accelerator.process_index)
    generation = dict(num_beams=args.num_beams, max_new_tokens=args.max_length, synced_gpus=is_sharded(model),
                      **generate_kwargs)
    hypotheses = []
    for batch in mine:
        hypotheses += zip(batch, translate_batch(model, tokenizer, [sources[i] for i in batch], **generation))
    for batch in padding:  # the same number of generate calls on every process; not counted
        translate_batch(model, tokenizer, [sources[i] for i in batch], **generation)
    by_index = dict(gather_object(hypotheses))
    scores = score([by_index[i] for i in range(len(sources))], references, metrics)
    result.update(val_bleu=scores["sacrebleu"], val_chrf=scores["chrf"])
    return result


def choose_on_validation(accelerator, model, tokenizer, validation_set, validation_pairs, args, loop, metrics,
                         last_metrics: dict) -> dict:
    """The final weights (the last step's, or the average of the last checkpoints) and the length penalty: the
    best validation BLEU (then chrF). Leaves the model with the chosen weights and generation settings."""
    length_penalty = args.length_penalties[0]
    choice = {"weights": "last step", "length_penalty": length_penalty, "val_bleu": last_metrics["val_bleu"],
              "val_chrf": last_metrics["val_chrf"], "tried": [{"weights": "last step", "length_penalty": length_penalty,
                                                                 **last_metrics}]}
    checkpoints = sorted((Path(loop.output_dir) / "checkpoints").glob("step-*"),
                         key=lambda p: int(p.name.removeprefix("step-")))[-loop.average_last :]
    if loop.average_last > 1 and len(checkpoints) > 1:
        last_state = {k: v.clone() for k, v in model.state_dict().items()}
        average_checkpoints(model, checkpoints)
        averaged = validate(accelerator, model, tokenizer, validation_set, validation_pairs, args, metrics,
                            length_penalty=length_penalty)
        name = f"average of {', '.join(p.name for p in checkpoints)}"
        choice["tried"].append({"weights": name, "length_penalty": length_penalty, **averaged})
        accelerator.print(f"validation, {name}: {averaged}")
        if (averaged["val_bleu"], averaged["val_chrf"]) > (choice["val_bleu"], choice["val_chrf"]):
            choice.update(weights=name, val_bleu=averaged["val_bleu"], val_chrf=averaged["val_chrf"])
        else:
            model.load_state_dict(last_state)
    for penalty in args.length_penalties[1:]:
        scores = validate(accelerator, model, tokenizer, validation_set, validation_pairs, args, metrics,
                          with_loss=False, length_penalty=penalty)
        choice["tried"].append({"weights": choice["weights"], "length_penalty": penalty, **scores})
        accelerator.print(f"validation, length penalty {penalty}: {scores}")
        if (scores["val_bleu"], scores["val_chrf"]) > (choice["val_bleu"], choice["val_chrf"]):
            choice.update(length_penalty=penalty, val_bleu=scores["val_bleu"], val_chrf=scores["val_chrf"])
    accelerator.unwrap_model(model).generation_config.length_penalty = choice["length_penalty"]
    accelerator.print(f"chosen on validation: {choice['weights']}, length penalty {choice['length_penalty']}: "
                      f"BLEU {choice['val_bleu']}, chrF {choice['val_chrf']}")
    return choice


def all_arguments(*dataclasses) -> dict:
    return {key: value for arguments in dataclasses for key, value in asdict(arguments).items()}


def _scalars(arguments: dict) -> dict:
    return {k: v for k, v in arguments.items() if isinstance(v, (int, float, str, bool))}


def parse_args(argv: list[str] | None = None):
    parser = HfArgumentParser((TranslationArguments, CorpusArguments, LoopArguments))
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> int:
    with errors_without_traceback():
        outcome = run(*parse_args(argv))
    return 130 if outcome.stop_reason == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())
