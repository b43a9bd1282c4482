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

A demo of 1.5 minutes on 2 CPU cores (WikiText-2 valid as training text, test as validation; a 2 x 128 model,
one minute of training: 30 to 75 steps, depending on the machine's load; the final evaluation takes ~20 s):

    python scripts/pretrain_mlm.py --train_file ../shared/data/wikitext2/valid.txt \
        --validation_file ../shared/data/wikitext2/test.txt --output_dir outputs/mlm-demo \
        --hidden_size 128 --num_hidden_layers 2 --num_attention_heads 2 --intermediate_size 512 \
        --max_train_minutes 1 --warmup_steps 30 --learning_rate 1e-3 --logging_steps 10

A run of a few minutes, Cramming's budget recipe (Geiping and Goldstein 2023) as measured on 2 CPU cores:
--preset budget (see BUDGET_PRESET: no dropout, one learning-rate cycle that ends with --max_train_minutes, a
smaller model, vocabulary and blocks; options given beside it win). The main job's BERT part uses the same preset:

    python scripts/pretrain_mlm.py --preset budget --train_file my_text.txt --validation_file my_valid.txt \
        --output_dir outputs/my-bert --max_train_minutes 5

A longer run: the default size (BERT-Mini, 4 layers x 256), 70 epochs of the 2,077 blocks (4,550 steps of 32 x 128
tokens), evaluated every 200 steps; about 85 minutes on 2 CPU cores (measured: test perplexity 170 after 30 epochs,
60 after 70; it was run as 30 epochs, then continued with --num_epochs 70 plus --resume: the learning rate schedule
does not depend on the length of the run, so that equals the one run below):

    python scripts/pretrain_mlm.py --train_file ../shared/data/wikitext2/valid.txt \
        --validation_file ../shared/data/wikitext2/test.txt --output_dir outputs/mlm-wikitext2 \
        --num_epochs 70 --max_train_minutes 90 --warmup_steps 300 --learning_rate 7e-4 --eval_steps 200 --save_steps 200

What the pretraining brings: fine-tune its final folder on SST-2, then the same architecture and tokenizer from
random weights (--from_scratch), with the same data and settings (two epochs: better than one on dev for both), and
compare the test accuracies over a few seeds (--seed):

    python scripts/finetune_classification.py --model_name_or_path outputs/mlm-wikitext2/final \
        --train_file ../shared/data/sst2/train.tsv --validation_file ../shared/data/sst2/dev.tsv \
        --test_file ../shared/data/sst2/test.tsv --max_eval_samples 2000 --num_train_epochs 2 \
        --output_dir runs/mlm-wikitext2-sst2
    python scripts/finetune_classification.py --model_name_or_path outputs/mlm-wikitext2/final --from_scratch \
        --train_file ../shared/data/sst2/train.tsv --validation_file ../shared/data/sst2/dev.tsv \
        --test_file ../shared/data/sst2/test.tsv --max_eval_samples 2000 --num_train_epochs 2 \
        --output_dir runs/scratch-sst2

Several processes: `accelerate launch --multi_gpu --num_processes 2 scripts/pretrain_mlm.py ...` (the global batch
is batch_size x processes x gradient_accumulation_steps). Continue an interrupted run with the same command plus
--resume (with the same arguments, but for when to stop, logging and saving: a change of --learning_rate, say, is
refused, naming it). Arguments, files and the output folder are checked before any data is read; an empty or blank
file, text that is not UTF-8, or a tokenizer that turns most of the text into [UNK] is an error naming the file.
"""

import argparse
import hashlib
import json
import math
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate.utils import set_seed
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    HfArgumentParser,
)

from vanilla_transformer.modeling import VanillaBertConfig, VanillaBertForMaskedLM
from vanilla_transformer.tokenization import WholeWordMaskCollator, train_wordpiece_tokenizer
from vanilla_transformer.scripts.training.batching import token_batches
from vanilla_transformer.scripts.training.run_folder import ResumePoint, prepare_output_dir, save_final
from vanilla_transformer.scripts.training.errors import (
    ArgumentError,
    CheckpointError,
    DataError,
    DataFileNotFoundError,
    errors_without_traceback,
)
from vanilla_transformer.scripts.training.logs import plot_log
from vanilla_transformer.scripts.training.loop import LoopArguments, TrainingTask, train
from vanilla_transformer.scripts.training.evaluation import evaluation_share
from vanilla_transformer.scripts.training.engine import end_run, make_accelerator, prepare_for_training
from vanilla_transformer.scripts.training.optimization import loop_optimizer, paper_learning_rate, peak_learning_rate
from vanilla_transformer.scripts.training.text_data import group_blocks
from vanilla_transformer.scripts.training.tokenizer_checks import check_tokenizer, tokenizer_fingerprint
from vanilla_transformer.scripts.training.translation_data import (
    READER_VERSION,
    load_dataset_split,
    map_processes,
    numpy_columns,
    text_lines,
)

# A new model's size when none is given: BERT-Mini (Turc et al. 2019), small enough for a CPU.
DEFAULT_SIZE = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024}
# --preset budget: pretraining for a few minutes on a CPU, after Cramming (Geiping and Goldstein 2023) and what
# measurement on 2 CPU cores showed (docs/mlm.md#a-few-minutes-on-a-cpu-the-budget-preset): no dropout (a few passes
# do not overfit; dropout only slows learning), pre-LN, one learning-rate cycle that ends with the time budget
# (--max_train_minutes: a slower machine takes fewer steps and still anneals to 0), sparse prediction, a small model,
# a small vocabulary (2,000 pieces: fewer rows to learn, more frequent pieces) and short blocks: 16-token blocks left
# the masked-LM plateau (always ".", "the") within the budget where 64-token blocks did not; and an initialisation
# scaled to the width: BERT's 0.02 was chosen for 768-wide layers; at 128 wide the attention logits start with a
# spread of ~0.05 (BERT-base: ~0.3), attention stays uniform, and the model can spend the whole budget on the plateau
# before it learns where to look. 0.05 (about 0.02 * sqrt(768 / 128)) gives a 128-wide model BERT-base's starting
# scale. Options given on the command line win over the preset.
BUDGET_PRESET = {
    "vocab_size": 2000, "block_size": 16, "batch_size": 64, "hidden_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 2, "intermediate_size": 512, "dropout": 0.0, "pre_ln": True, "initializer_range": 0.05,
    "lr_schedule": "one_cycle", "learning_rate": 3e-3, "warmup_steps": 200, "weight_decay": 0.01,
    "max_train_minutes": 5.0,
}
PRESETS = {"budget": BUDGET_PRESET}
NEW_MODEL_ONLY = (*DEFAULT_SIZE, "dropout", "pre_ln", "initializer_range")  # a checkpoint's config fixes these
BLOCKS_VERSION = "1"  # bump when tokenize_blocks changes what it writes: old caches are then not reused


@dataclass
class PretrainArguments:
    preset: str | None = field(
        default=None, metadata={"help": "budget: the recipe for a few minutes on a CPU (BUDGET_PRESET in this "
                                        "script); options given beside it win"}
    )
    train_file: str | None = field(default=None, metadata={"help": "training text, one document per line (.gz ok)"})
    validation_file: str | None = field(default=None, metadata={"help": "validation text, likewise: loss, perplexity"})
    dataset_name: str | None = field(default=None, metadata={"help": "a datasets Hub id (instead of local files)"})
    dataset_config_name: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    text_column: str = field(default="text", metadata={"help": "the text column of --dataset_name"})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "continue pretraining this vanilla_bert folder (default: a new model)"}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "a saved WordPiece tokenizer folder (default: the checkpoint's, or one trained "
                                        "on the training text into output_dir/tokenizer)"}
    )
    vocab_size: int = field(default=8000, metadata={"help": "WordPiece vocabulary size, when training one"})
    hidden_size: int | None = field(default=None, metadata={"help": "new model only (default 256)"})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "new model only (default 4)"})
    num_attention_heads: int | None = field(default=None, metadata={"help": "new model only (default 4)"})
    intermediate_size: int | None = field(default=None, metadata={"help": "new model only (default 1024)"})
    dropout: float | None = field(
        default=None, metadata={"help": "new model only: dropout on embeddings, sublayers and attention (default "
                                        "BERT's 0.1)"}
    )
    pre_ln: bool = field(default=False, metadata={"help": "new model only: pre-LN layers (default BERT's post-LN)"})
    initializer_range: float | None = field(
        default=None, metadata={"help": "new model only: standard deviation of the normal initialisation of weight "
                                        "matrices and embeddings (default BERT's 0.02, chosen for 768-wide layers)"}
    )
    block_size: int = field(default=128, metadata={"help": "tokens per training sequence, [CLS] included"})
    batch_size: int = field(default=32, metadata={"help": "blocks per micro-batch and process"})
    eval_batch_size: int = field(default=64, metadata={"help": "blocks per validation batch"})
    mlm_probability: float = field(default=0.15, metadata={"help": "fraction of the tokens (or words) to predict"})
    whole_word_mask: bool = field(
        default=False, metadata={"help": "mask every piece of a chosen word, always with [MASK]"}
    )
    sparse_prediction: bool = field(
        default=True, metadata={"help": "run the MLM head on the masked positions only (--no_sparse_prediction: "
                                        "everywhere; the same loss)"}
    )

    def __post_init__(self):
        if self.dataset_name is None and not (self.train_file and self.validation_file):
            raise ArgumentError("give --train_file and --validation_file, or --dataset_name")
        if self.dataset_name is not None and (self.train_file or self.validation_file):
            raise ArgumentError("give either --dataset_name or --train_file/--validation_file, not both")
        if self.preset is not None and self.preset not in PRESETS:
            raise ArgumentError(f"--preset {self.preset}: choose from {', '.join(PRESETS)}")
        given = [name for name in DEFAULT_SIZE if getattr(self, name) is not None]
        given += ["dropout"] * (self.dropout is not None) + ["pre_ln"] * self.pre_ln
        given += ["initializer_range"] * (self.initializer_range is not None)
        if self.model_name_or_path and given:
            raise ArgumentError(f"--{', --'.join(given)}: the size of {self.model_name_or_path} is fixed by its config")
        if self.block_size < 2:
            raise ArgumentError(f"--block_size {self.block_size}: a block holds [CLS] and at least one token")
        for name in ("batch_size", "eval_batch_size", *(name for name in DEFAULT_SIZE if getattr(self, name))):
            if getattr(self, name) < 1:
                raise ArgumentError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ArgumentError(f"--dropout {self.dropout}: a probability, at least 0 and below 1")
        if self.initializer_range is not None and not self.initializer_range > 0:
            raise ArgumentError(f"--initializer_range {self.initializer_range}: a standard deviation, above 0")
        if self.vocab_size <= 5:
            raise ArgumentError(f"--vocab_size {self.vocab_size}: the WordPiece has 5 special tokens; give more")
        if not 0 < self.mlm_probability <= 1:
            raise ArgumentError(f"--mlm_probability {self.mlm_probability}: the fraction of tokens to predict must be "
                                "above 0 (0 trains and scores nothing) and at most 1")

    def model_size(self) -> dict:
        """A new model's config arguments: its size, dropout, layer norm placement and initialisation."""
        size = {name: default if getattr(self, name) is None else getattr(self, name)
                for name, default in DEFAULT_SIZE.items()}
        dropout = {} if self.dropout is None else {"hidden_dropout_prob": self.dropout,
                                                   "attention_probs_dropout_prob": self.dropout}
        init = {} if self.initializer_range is None else {"initializer_range": self.initializer_range}
        return {**size, **dropout, **init, "normalize_before": self.pre_ln}


# ------------------------------------------------------------------------------------------------------ data


def load_texts(args: PretrainArguments) -> datasets.DatasetDict:
    """Splits "train" and "validation", each with one column "text", blank lines dropped. A file that is empty or
    blank, not UTF-8 or a broken .gz, or a dataset column that is not text: a `DataError` naming it."""
    if args.dataset_name:
        splits = {"train": args.train_split, "validation": args.validation_split}
        data = datasets.DatasetDict({ours: load_dataset_split(args.dataset_name, args.dataset_config_name, theirs)
                                     for ours, theirs in splits.items()})
        for split, table in data.items():
            where = f"{args.dataset_name} ({splits[split]})"
            if args.text_column not in table.column_names:
                raise DataError(f"{where} has no column {args.text_column!r}; its columns are {table.column_names} "
                                "(choose one with --text_column)")
            dtype = getattr(table.features[args.text_column], "dtype", type(table.features[args.text_column]).__name__)
            if dtype not in ("string", "large_string"):
                raise DataError(f"{where}: column {args.text_column!r} holds {dtype}, not text (choose a text column "
                                "with --text_column)")
        data = data.select_columns([args.text_column])
        if args.text_column != "text":
            data = data.rename_column(args.text_column, "text")
        where = {split: f"{args.dataset_name} ({name})" for split, name in splits.items()}
    else:
        data = datasets.DatasetDict({split: _text_file(path) for split, path in
                                     (("train", args.train_file), ("validation", args.validation_file))})
        where = {"train": args.train_file, "validation": args.validation_file}
    lines = {split: len(table) for split, table in data.items()}
    data = data.filter(_not_blank, batched=True)  # an index of the kept rows: the text stays where it is
    for split, table in data.items():
        if len(table) == 0:
            raise DataError(f"{where[split]}: no text ({lines[split]:,} {'lines' if args.train_file else 'rows'}, all "
                            f"blank): give a file with one document per line")
    return data


def _text_file(path: str) -> datasets.Dataset:
    """One row per line of a text file (.gz too), read with `translation_data.text_lines` (clear errors), cached by
    `datasets` under the file's path, size and modification time."""
    file = Path(path)
    if not file.is_file():
        raise DataFileNotFoundError(f"{path}: no such file" + (" (it is a folder)" if file.is_dir() else ""))
    stamp = json.dumps([str(file.resolve()), file.stat().st_size, file.stat().st_mtime_ns, "text-lines",
                        READER_VERSION])
    try:
        return datasets.Dataset.from_generator(
            _lines, gen_kwargs={"path": path}, features=datasets.Features({"text": datasets.Value("string")}),
            fingerprint=hashlib.sha256(stamp.encode()).hexdigest()[:32],
        )
    except datasets.exceptions.DatasetGenerationError as error:
        if isinstance(error.__cause__, DataError):  # our own message, not datasets' generic one
            raise error.__cause__ from None
        raise


def _not_blank(batch: dict) -> list[bool]:
    return [bool(text and text.strip()) for text in batch["text"]]


def texts_of(table: datasets.Dataset) -> Iterator[str]:
    """The texts of a split, read from its Arrow file a thousand at a time: a corpus larger than memory streams
    through (a tokenizer trainer takes this iterator)."""
    for batch in table.iter(batch_size=1000):
        yield from batch["text"]


def _lines(path: str):
    empty = True
    for line in text_lines(path):
        empty = False
        yield {"text": line}
    if empty:
        raise DataError(f"{path} is empty: give a file with one document per line")


def tokenize_blocks(texts: datasets.Dataset, tokenizer, block_size: int, whole_word_mask: bool,
                    documents_per_group: int = 1000) -> datasets.Dataset:
    """The blocks of a split, with their lengths, written to disk by `datasets.map` by several processes for a large
    corpus (`map_processes`), and read from there by the next run with the same text, tokenizer and blocks (a
    resumed run too). Documents are packed `documents_per_group` at a time, across their boundaries
    (`group_blocks`), each group ending in a shorter block; a large corpus is split between the processes first,
    each share ending in a shorter block too."""

    def encode(batch):
        # No truncation: a long document continues in the next block. verbose=False: no warning about lines
        # longer than the model's maximum length, which is expected here.
        documents = tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False,
                              return_token_type_ids=False, return_offsets_mapping=whole_word_mask, verbose=False)
        blocks = group_blocks(documents, block_size, tokenizer.cls_token_id, tokenizer.sep_token_id)
        return {**blocks, "length": [len(ids) for ids in blocks["input_ids"]]}

    # The cache key names what the blocks are made of. (datasets' own key, a hash of `encode` and the tokenizer
    # object it holds, differs between a tokenizer trained in this run and the same one loaded from its folder: a
    # resumed run would tokenize the whole corpus again.)
    key = hashlib.sha256(json.dumps(
        [[f["filename"] for f in texts.cache_files], len(texts), tokenizer.backend_tokenizer.to_str(), block_size,
         whole_word_mask, documents_per_group, BLOCKS_VERSION]
    ).encode()).hexdigest()[:32]
    ids = datasets.List(datasets.Value("int32"))
    features = datasets.Features({"input_ids": ids, "special_tokens_mask": datasets.List(datasets.Value("int8")),
                                  "length": datasets.Value("int32")}
                                 | ({"offset_mapping": datasets.List(ids)} if whole_word_mask else {}))
    return texts.map(encode, batched=True, batch_size=documents_per_group, remove_columns=texts.column_names,
                     features=features, num_proc=map_processes(len(texts)), new_fingerprint=key,
                     desc=f"blocks of {block_size} tokens")


def block_lengths(blocks: datasets.Dataset) -> np.ndarray:
    """The length of every block, read from its column alone: what batches are cut from."""
    return numpy_columns(blocks, ["length"])["length"]


def make_collator(tokenizer, args: PretrainArguments, seed: int | None = None) -> DataCollatorForLanguageModeling:
    """Pads and masks a batch of blocks. `seed=None` draws from torch's global RNG, which the checkpoints save:
    a resumed run masks as the interrupted one would have."""
    collator = WholeWordMaskCollator if args.whole_word_mask else DataCollatorForLanguageModeling
    return collator(tokenizer, mlm_probability=args.mlm_probability, seed=seed)


def collator_columns(args: PretrainArguments) -> list[str]:
    return ["input_ids", "special_tokens_mask"] + (["offset_mapping"] if args.whole_word_mask else [])


def masked_validation_batches(blocks: datasets.Dataset, tokenizer, args: PretrainArguments, seed: int) -> list[dict]:
    """The validation batches, masked once with a fixed seed: every evaluation, with any number of processes,
    scores the same masked positions, so the values are comparable along the run."""
    collate = make_collator(tokenizer, args, seed=seed)
    features = blocks.select_columns(collator_columns(args))
    batches = token_batches(block_lengths(blocks), args.eval_batch_size * args.block_size, seed=0, epoch=0,
                            shuffle=False)
    return [collate([features[i] for i in indices]) for indices in batches]


def most_frequent_token(input_ids: list[list[int]], special_tokens_mask: list[list[int]]) -> int:
    """The most frequent token of the training blocks, special tokens left out: the frequency baseline's answer at
    every masked position."""
    counts = Counter()
    for ids, special in zip(input_ids, special_tokens_mask):
        counts.update(token for token, is_special in zip(ids, special) if not is_special)
    return counts.most_common(1)[0][0]


@torch.no_grad()
def masked_token_sums(model, batches, frequent_token: int) -> torch.Tensor:
    """Over the masked positions (labels != -100) of `batches`: [summed loss, positions, top-1 correct, correct by
    the frequency baseline (always `frequent_token`)]; add them up over processes, then divide by the positions.
    `model`: the bare model, in eval mode."""
    sums = torch.zeros(4, dtype=torch.float64)
    for batch in batches:
        batch = {key: value.to(model.device) for key, value in batch.items()}
        outputs = model(**batch, num_items_in_batch=1)  # num_items_in_batch=1: the summed loss
        masked = batch["labels"] != -100
        labels = batch["labels"][masked]
        logits = outputs.logits if outputs.logits.dim() == 2 else outputs.logits[masked]  # sparse: masked rows only
        sums += torch.tensor([outputs.loss.item(), labels.numel(), (logits.argmax(-1) == labels).sum().item(),
                              (labels == frequent_token).sum().item()], dtype=torch.float64)
    return sums


def masked_token_scores(sums: torch.Tensor) -> dict:
    """`masked_token_sums` (added up) -> loss per masked token, perplexity, top-1 accuracy and the baseline's."""
    loss, positions, correct, baseline = sums.tolist()
    return {"val_loss": round(loss / positions, 4), "val_perplexity": round(math.exp(loss / positions), 2),
            "val_accuracy": round(correct / positions, 4), "val_frequency_baseline": round(baseline / positions, 4)}


# ---------------------------------------------------------------------------------------------- model, tokenizer


def get_tokenizer(args: PretrainArguments, texts: datasets.DatasetDict, output_dir: Path,
                  resume: ResumePoint | None, is_main_process: bool = True):
    """--tokenizer_name; else the checkpoint's (--model_name_or_path); on --resume, the one the checkpoint was trained
    with (output_dir/tokenizer, checked against the checkpoint); else a new WordPiece on the training text, saved to
    output_dir/tokenizer (by the main process; the others read it). A tokenizer from an earlier run is never reused
    for a new one. Refused when it turns most of the text into [UNK]."""
    name = args.tokenizer_name or args.model_name_or_path
    folder = output_dir / "tokenizer"
    trained_here = False
    if name:
        tokenizer = load_tokenizer(name, "--tokenizer_name" if args.tokenizer_name else "--model_name_or_path")
        if tokenizer.mask_token is None or tokenizer.cls_token is None or tokenizer.sep_token is None:
            raise ArgumentError(f"the tokenizer of {name} lacks [MASK], [CLS] or [SEP]: it is not a BERT tokenizer")
    elif resume is not None or not is_main_process:
        if not (folder / "tokenizer.json").is_file():
            raise CheckpointError(f"{folder} is missing: the tokenizer this run was trained with. Resume needs it; "
                                  "start a new --output_dir")
        tokenizer = load_tokenizer(folder, "the run's tokenizer")
    else:
        tokenizer = train_wordpiece_tokenizer(texts_of(texts["train"]), vocab_size=args.vocab_size,
                                              show_progress=False)
        tokenizer.save_pretrained(folder)
        trained_here = True
    if resume is not None:
        resume.check_signature(tokenizer=tokenizer_fingerprint(tokenizer))
    where = {split: getattr(args, f"{split}_file") or f"{args.dataset_name} ({getattr(args, f'{split}_split')})"
             for split in ("train", "validation")}
    fix = ("Use a tokenizer trained on this kind of text (scripts/train_tokenizer.py --kind wordpiece)" if name else
           f"Its training text, {where['train']} ({len(texts['train']):,} documents), is too small or unlike this "
           "text: give more training text")
    check_tokenizer(tokenizer, {where[split]: texts[split][:1000]["text"] for split in ("train", "validation")}, fix,
                    vocab_size=args.vocab_size if trained_here else None)
    return tokenizer


def load_tokenizer(name, what: str):
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise ArgumentError(f"{what} {name}: no tokenizer could be loaded from it ({error})") from None


def model_config(args: PretrainArguments, tokenizer=None):
    """The model's config: the checkpoint's (--model_name_or_path), or a new one of --hidden_size etc. Without a
    tokenizer, a stand-in vocabulary: checks the model arguments and --block_size before any data is read."""
    if args.model_name_or_path:
        try:
            config = AutoConfig.from_pretrained(args.model_name_or_path)
        except (OSError, ValueError) as error:
            raise ArgumentError(f"--model_name_or_path {args.model_name_or_path}: no model config could be loaded "
                                f"from it ({error})") from None
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


def run(args: PretrainArguments, loop: LoopArguments):
    if loop.average_last != 1:
        raise ArgumentError("--average_last: checkpoint averaging is offered by train_translation.py only")
    accelerator = make_accelerator(loop)
    output_dir = Path(loop.output_dir)
    set_seed(loop.seed)

    # What can be checked before any data is read: the model arguments, the files, the output folder, and --resume
    # against the checkpoint's arguments.
    model_config(args)
    for option in ("train_file", "validation_file"):
        path = getattr(args, option)
        if path and not Path(path).is_file():
            raise DataFileNotFoundError(f"--{option} {path}: no such file" + (" (it is a folder)" if Path(path).is_dir()
                                                                             else ""))
    arguments = {**asdict(args), **asdict(loop)}
    resume = prepare_output_dir(accelerator, loop, arguments)

    with accelerator.main_process_first():  # the other processes then read what the main one wrote
        texts = load_texts(args)
        tokenizer = get_tokenizer(args, texts, output_dir, resume, accelerator.is_main_process)
        blocks = {split: tokenize_blocks(texts[split], tokenizer, args.block_size, args.whole_word_mask)
                  for split in ("train", "validation")}
    validation_batches = masked_validation_batches(blocks["validation"], tokenizer, args, seed=loop.seed)
    masked = sum(int((b["labels"] != -100).sum()) for b in validation_batches)
    if masked == 0:
        raise DataError(f"the validation text ({args.validation_file or args.dataset_name}) gives no masked token "
                        f"to score ({block_lengths(blocks['validation']).sum():,} tokens, --mlm_probability "
                        f"{args.mlm_probability}): give more validation text")
    lengths = block_lengths(blocks["train"])
    counted = blocks["train"][:10_000]  # enough to find the most frequent token of a large corpus
    frequent_token = most_frequent_token(counted["input_ids"], counted["special_tokens_mask"])

    model = get_model(args, tokenizer)
    learning_rate = peak_learning_rate(loop, paper_learning_rate(model.config.hidden_size, loop.warmup_steps))
    optimizer, scheduler = loop_optimizer(model, loop, learning_rate)
    model, optimizer, scheduler = prepare_for_training(accelerator, loop, model, optimizer, scheduler)
    accelerator.print(
        f"{len(texts['train'])} training documents -> {len(lengths)} blocks, {lengths.sum()} tokens; validation "
        f"{len(blocks['validation'])} blocks, {masked} masked tokens; model: "
        f"{accelerator.unwrap_model(model).num_parameters() / 1e6:.2f}M parameters, peak "
        f"learning rate {learning_rate:.2e}; global batch = {accelerator.num_processes} processes x "
        f"{loop.gradient_accumulation_steps} micro-batches x {args.batch_size} blocks"
    )
    if accelerator.is_main_process:
        (output_dir / "training_args.json").write_text(json.dumps(arguments, indent=1) + "\n")
    if loop.report_to:
        accelerator.init_trackers("pretrain_mlm", config={k: v for k, v in arguments.items()
                                                          if isinstance(v, (int, float, str, bool))})

    def evaluate(model_in_eval_mode) -> dict:
        # The bare model: a DDP forward is a collective (buffer broadcast), which evaluation does not need. Under
        # FSDP2 every forward pass is one: the padding gives every process the same number of them, not counted.
        bare = accelerator.unwrap_model(model_in_eval_mode)
        mine, padding = evaluation_share(validation_batches, accelerator.num_processes, accelerator.process_index)
        sums = masked_token_sums(bare, mine, frequent_token)
        masked_token_sums(bare, padding, frequent_token)
        return masked_token_scores(accelerator.reduce(sums.to(accelerator.device), "sum").cpu())

    task = TrainingTask(
        dataset=blocks["train"].select_columns(collator_columns(args)),
        collate=make_collator(tokenizer, args),
        epoch_batches=lambda epoch: token_batches(lengths, args.batch_size * args.block_size, loop.seed, epoch),
        loss=lambda model, batch, num_items: model(**batch, num_items_in_batch=num_items).loss,
        count_tokens=lambda batch: batch["attention_mask"].sum(),  # the labels are a subset of the inputs
        evaluate=evaluate,
        signature={"block_size": args.block_size, "batch_size": args.batch_size, "train_blocks": len(lengths),
                   "train_tokens": int(lengths.sum()), "tokenizer": tokenizer_fingerprint(tokenizer)},
    )
    outcome = train(accelerator, model, optimizer, scheduler, task, loop, arguments)
    if not outcome.completed:
        accelerator.print(f"stopped early ({outcome.stop_reason}); checkpoint {outcome.checkpoint}: continue with "
                          "the same command and --resume")
        model = accelerator.unwrap_model(model)  # see end_run
        end_run(accelerator)
        return outcome
    final = save_final(accelerator, model, tokenizer, output_dir, arguments, outcome.checkpoint)  # every process
    if accelerator.is_main_process:
        plot_log(output_dir / "log.jsonl", output_dir / "training_curves.png")
        metrics = outcome.metrics
        accelerator.print(f"validation ({args.validation_file or args.dataset_name}): loss {metrics['val_loss']:.4f} "
                          f"per masked token, perplexity {metrics['val_perplexity']:.2f}, top-1 accuracy "
                          f"{metrics['val_accuracy']:.1%} (always {tokenizer.convert_ids_to_tokens(frequent_token)!r}: "
                          f"{metrics['val_frequency_baseline']:.1%}); saved {final}, curves in "
                          f"{output_dir / 'training_curves.png'}")
    model = accelerator.unwrap_model(model)  # see end_run
    end_run(accelerator)
    return outcome


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
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> int:
    with errors_without_traceback():
        outcome = run(*parse_args(argv))
    return 130 if outcome.stop_reason == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())
