"""Masked-LM data, for pretrain_mlm.py and the main job: text (files, one document per line, or a `datasets` Hub
id, or an embedded corpus: `embedded_corpora`) as a `datasets.Dataset` of documents (`load_texts`); documents closed
with [SEP], concatenated and cut into blocks that open with [CLS] (`group_blocks`, `tokenize_blocks`: cached on disk,
in several processes for a large corpus); masking (`make_collator`: 80/10/10, or whole words); and the validation
scores: the same masked positions at every evaluation (`masked_validation_batches`), loss per masked token,
perplexity, top-1 accuracy and that of always guessing the most frequent token (`masked_token_sums`,
`masked_token_scores`)."""

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling

from vanilla_transformer.scripts.training.batching import token_batches
from vanilla_transformer.scripts.training.embedded_corpora import embedded_dataset, is_embedded
from vanilla_transformer.scripts.training.errors import DataError, DataFileNotFoundError
from vanilla_transformer.scripts.training.data_files import cached_dataset, load_hub_split, text_lines
from vanilla_transformer.scripts.training.translation_data import map_processes, numpy_columns
from vanilla_transformer.tokenization import WholeWordMaskCollator

BLOCKS_VERSION = "1"  # bump when tokenize_blocks changes what it writes: old caches are then not reused


def load_texts(args) -> datasets.DatasetDict:
    """Splits "train" and "validation", each with one column "text", blank lines dropped. A file that is empty or
    blank, not UTF-8 or a broken .gz, or a dataset column that is not text: a `DataError` naming it."""
    if args.dataset_name:
        splits = {"train": args.train_split, "validation": args.validation_split}
        data = datasets.DatasetDict({ours: load_hub_split(args.dataset_name, args.dataset_config_name, theirs)
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
    """An embedded corpus's split (`embedded_corpora`), or one row per line of a text file (.gz too), read by the one
    reader (`data_files.text_lines`: errors name the file and line) and cached by `datasets` under the file's path,
    size and modification time (`data_files.cached_dataset`)."""
    if is_embedded(path):
        return embedded_dataset(path)
    file = Path(path)
    if not file.is_file():
        raise DataFileNotFoundError(f"{path}: no such file" + (" (it is a folder)" if file.is_dir() else ""))
    return cached_dataset(_lines, [file], datasets.Features({"text": datasets.Value("string")}), path=path)


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


def make_collator(tokenizer, args, seed: int | None = None) -> DataCollatorForLanguageModeling:
    """Pads and masks a batch of blocks. `seed=None` draws from torch's global RNG, which the checkpoints save:
    a resumed run masks as the interrupted one would have."""
    collator = WholeWordMaskCollator if args.whole_word_mask else DataCollatorForLanguageModeling
    return collator(tokenizer, mlm_probability=args.mlm_probability, seed=seed)


def collator_columns(args) -> list[str]:
    return ["input_ids", "special_tokens_mask"] + (["offset_mapping"] if args.whole_word_mask else [])


def masked_validation_batches(blocks: datasets.Dataset, tokenizer, args, seed: int) -> list[dict]:
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


def group_blocks(documents: dict[str, list[list]], block_size: int, cls_id: int, sep_id: int) -> dict[str, list]:
    """Documents tokenized without special tokens -> blocks of `block_size` tokens: BERT's input format.

    Each document is closed with [SEP], the documents are concatenated, and the stream is cut into pieces of
    `block_size - 1` tokens, each opened with [CLS]: "[CLS] ... end of a document [SEP] next document ...".
    (The grouping of transformers' run_mlm.py, but with [CLS] first in every block, where fine-tuning reads the
    sequence, and with the shorter last block kept rather than dropped: every token is trained on.)
    Returns input_ids and special_tokens_mask (so the collator never masks [CLS] or [SEP]); offset_mapping too
    when the documents have it (whole-word masking: a special token between two pieces ends a word)."""
    columns = {"input_ids": [], "special_tokens_mask": []}
    with_offsets = "offset_mapping" in documents
    if with_offsets:
        columns["offset_mapping"] = []
    for index, ids in enumerate(documents["input_ids"]):
        columns["input_ids"] += [*ids, sep_id]
        columns["special_tokens_mask"] += [0] * len(ids) + [1]
        if with_offsets:
            columns["offset_mapping"] += [*map(tuple, documents["offset_mapping"][index]), (0, 0)]
    first = {"input_ids": cls_id, "special_tokens_mask": 1, "offset_mapping": (0, 0)}
    piece = block_size - 1
    return {
        name: [[first[name], *stream[start : start + piece]] for start in range(0, len(stream), piece)]
        for name, stream in columns.items()
    }
