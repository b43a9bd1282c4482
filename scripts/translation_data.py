"""Parallel corpora for the translation scripts: the embedded default (Babel's CLDR display names), local files
(one sentence per line per language, plain or .gz; TSV with a header; JSON lines), or a `datasets` Hub id.

`load_parallel(split, corpus)` gives a `datasets.Dataset` with columns `source` and `target`; `tokenize_pairs`
adds token ids (cached on disk by `datasets.map`, keyed by the data and the tokenizer); `trainable_pairs` drops
pairs with an empty side or longer than the maximum length, and says how many.
"""

import csv
import gzip
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

TOKENIZATION_VERSION = "1"  # bump when tokenize_pairs changes what it writes: old caches are then not reused


def babel_pairs(source_lang: str = "de", target_lang: str = "en") -> list[tuple[str, str]]:
    """The embedded default corpus: CLDR locale display names that ship with Babel (no network), e.g.
    ("Vereinigtes Königreich", "United Kingdom"), ("Japanische Schrift", "Japanese"), ("Januar", "January").
    About 1,500 short human-written pairs: enough to see a model learn, not a real translation corpus."""
    from babel import Locale

    source, target = Locale.parse(source_lang), Locale.parse(target_lang)
    pairs = []
    for table in ("languages", "territories", "scripts", "currencies", "variants"):
        src_names, tgt_names = getattr(source, table), getattr(target, table)
        pairs += [(src_names[key], tgt_names[key]) for key in sorted(src_names) if key in tgt_names]
    for width in ("wide", "abbreviated"):
        for table in ("months", "days"):
            src_names = getattr(source, table)["format"][width]
            tgt_names = getattr(target, table)["format"][width]
            pairs += [(src_names[key], tgt_names[key]) for key in sorted(src_names)]
    return sorted({(s.strip(), t.strip()) for s, t in pairs if s.strip() and t.strip()})


def open_text(path: str | Path):
    """A text file, gzip-compressed if it ends in .gz. Lines end at "\\n" only: a stray "\\r" or Unicode line
    separator inside a sentence must not split it (that would misalign a parallel corpus)."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


def read_lines(path: str | Path) -> list[str]:
    with open_text(path) as handle:
        return [line.rstrip("\r\n") for line in handle]


def file_pairs(source_file: str | Path, target_file: str | Path) -> list[tuple[str, str]]:
    """One sentence per line in each file, line i of one the translation of line i of the other."""
    sources, targets = read_lines(source_file), read_lines(target_file)
    if len(sources) != len(targets):
        raise ValueError(
            f"{source_file} has {len(sources)} lines but {target_file} has {len(targets)}: parallel files must "
            "be aligned line by line"
        )
    return list(zip(sources, targets))


@dataclass
class CorpusArguments:
    source_lang: str = field(default="de", metadata={"help": "source language code (file suffix, column name)"})
    target_lang: str = field(default="en", metadata={"help": "target language code"})
    dataset_name: str | None = field(
        default=None, metadata={"help": "a datasets Hub id (or a local dataset folder); splits are then split names"}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "the configuration of --dataset_name"})
    source_column: str | None = field(
        default=None,
        metadata={"help": "column of the source text (default: the language code, or translation.<code>)"},
    )
    target_column: str | None = field(default=None, metadata={"help": "column of the target text"})


def load_parallel(split: str, corpus: CorpusArguments) -> datasets.Dataset:
    """The pairs of one split, as a Dataset with columns `source` and `target`. `split` is:
    - with --dataset_name: a split name of that dataset (train, validation, test);
    - a .tsv (with a header line naming the columns) or .jsonl / .json file, .gz accepted;
    - otherwise a path prefix of one file per language: `{split}.{lang}` or `{split}.{lang}.gz`,
      e.g. data/multi30k/train for train.de.gz and train.en.gz."""
    if corpus.dataset_name:
        table = datasets.load_dataset(corpus.dataset_name, corpus.dataset_config, split=split)
    elif split.removesuffix(".gz").endswith(".tsv"):
        table = _load_tsv(split)
    elif split.removesuffix(".gz").endswith((".jsonl", ".json")):
        table = datasets.load_dataset("json", data_files=split, split="train")
    else:
        return _load_line_aligned(split, corpus)
    return _source_and_target(table, corpus, where=f"{corpus.dataset_name or ''} {split}".strip())


def _load_tsv(path: str) -> datasets.Dataset:
    with open_text(path) as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
    return datasets.load_dataset(
        "csv",
        data_files=path,
        split="train",
        delimiter="\t",
        quoting=csv.QUOTE_NONE,  # quotes are text, not field delimiters
        keep_default_na=False,  # "NA", "null", "nan" are words, not missing values
        na_filter=False,
        features=datasets.Features({name: datasets.Value("string") for name in header}),  # "1984" stays text
    )


def _load_line_aligned(prefix: str, corpus: CorpusArguments) -> datasets.Dataset:
    files = []
    for lang in (corpus.source_lang, corpus.target_lang):
        candidates = [Path(f"{prefix}.{lang}"), Path(f"{prefix}.{lang}.gz")]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"no {candidates[0]} or {candidates[1]}: a split is a prefix of one file per language "
                f"({prefix}.{corpus.source_lang}, {prefix}.{corpus.target_lang}, .gz accepted), a .tsv or .jsonl "
                "file, or a split name with --dataset_name"
            )
        files.append(found.resolve())
    # The cache is keyed by the files' paths, sizes and modification times: an edited file is read again.
    stamp = json.dumps([[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files] + ["aligned-lines-1"])
    try:
        return datasets.Dataset.from_generator(
            _aligned_lines,
            gen_kwargs={"source_file": str(files[0]), "target_file": str(files[1])},
            features=datasets.Features({"source": datasets.Value("string"), "target": datasets.Value("string")}),
            fingerprint=hashlib.sha256(stamp.encode()).hexdigest()[:32],
        )
    except datasets.exceptions.DatasetGenerationError as error:
        if isinstance(error.__cause__, ValueError):  # our own message, not datasets' generic one
            raise error.__cause__ from None
        raise


def _aligned_lines(source_file: str, target_file: str):
    with open_text(source_file) as sources, open_text(target_file) as targets:
        for number, (source, target) in enumerate(itertools.zip_longest(sources, targets), start=1):
            if source is None or target is None:
                longer = target_file if source is None else source_file
                raise ValueError(
                    f"{source_file} and {target_file} have different numbers of lines ({longer} goes on at line "
                    f"{number}): parallel files must be aligned line by line"
                )
            yield {"source": source.rstrip("\r\n"), "target": target.rstrip("\r\n")}


def _source_and_target(table: datasets.Dataset, corpus: CorpusArguments, where: str) -> datasets.Dataset:
    table = table.flatten()  # a {"translation": {"de": ..., "en": ...}} column becomes translation.de, translation.en
    chosen = {}
    for side, explicit, lang in (
        ("source", corpus.source_column, corpus.source_lang),
        ("target", corpus.target_column, corpus.target_lang),
    ):
        candidates = [explicit] if explicit else [lang, f"translation.{lang}"]
        column = next((name for name in candidates if name in table.column_names), None)
        if column is None:
            raise ValueError(
                f"{where}: no {side} column {' or '.join(repr(c) for c in candidates)}; the columns are "
                f"{table.column_names}. Name it with --{side}_column (a field of a dict column is 'column.field')"
            )
        chosen[side] = column
    if chosen["source"] == chosen["target"]:
        raise ValueError(f"{where}: source and target are the same column {chosen['source']!r}")
    table = table.select_columns([chosen["source"], chosen["target"]])
    return table.rename_columns({column: side for side, column in chosen.items() if column != side})


def tokenize_pairs(pairs: datasets.Dataset, tokenizer) -> datasets.Dataset:
    """Add `input_ids` and `labels` (each ending in </s>), their lengths, and `empty` (a side is missing or blank).

    Cached by `datasets.map` beside the data's own cache files, under a name derived from those files and the
    tokenizer's full definition: a second run with the same data and tokenizer reads the ids from disk."""
    key = hashlib.sha256(
        json.dumps(
            [tokenizer.backend_tokenizer.to_str(), [f["filename"] for f in pairs.cache_files], len(pairs),
             TOKENIZATION_VERSION]
        ).encode()
    ).hexdigest()[:32]
    cache_file = Path(pairs.cache_files[0]["filename"]).parent / f"tokenized-{key}.arrow" if pairs.cache_files else None
    return pairs.map(
        _tokenize_batch,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer},
        cache_file_name=str(cache_file) if cache_file else None,
        new_fingerprint=key,
        desc="tokenizing",
    )


def _tokenize_batch(batch: dict, tokenizer) -> dict:
    sources = [text if isinstance(text, str) else "" for text in batch["source"]]  # None: a missing value
    targets = [text if isinstance(text, str) else "" for text in batch["target"]]
    encoded = tokenizer(sources, text_target=targets)
    return {
        "input_ids": encoded["input_ids"],
        "labels": encoded["labels"],
        "source_length": [len(ids) for ids in encoded["input_ids"]],
        "target_length": [len(ids) for ids in encoded["labels"]],
        "empty": [not s.strip() or not t.strip() for s, t in zip(sources, targets)],
    }


@dataclass
class PairCounts:
    total: int
    empty: int
    too_long: int

    @property
    def kept(self) -> int:
        return self.total - self.empty - self.too_long

    def describe(self, name: str, max_length: int) -> str:
        return (
            f"{name}: {self.total} pairs; dropped {self.empty} with an empty side and {self.too_long} longer than "
            f"{max_length} tokens; {self.kept} kept"
        )


def trainable_pairs(tokenized: datasets.Dataset, max_length: int) -> tuple[datasets.Dataset, PairCounts]:
    """Drop the pairs with an empty side, and those with a side longer than `max_length` tokens (</s> included)."""
    columns = tokenized.with_format("numpy", columns=["source_length", "target_length", "empty"])[:]
    empty = columns["empty"].astype(bool)
    too_long = ~empty & (np.maximum(columns["source_length"], columns["target_length"]) > max_length)
    keep = np.flatnonzero(~empty & ~too_long)
    counts = PairCounts(total=len(tokenized), empty=int(empty.sum()), too_long=int(too_long.sum()))
    return tokenized.select(keep), counts


def pair_lengths(tokenized: datasets.Dataset) -> np.ndarray:
    """Per pair, the longer side in tokens: a batch of n pairs padded to its longest is n x max(lengths) tokens,
    on each of the source and the target side."""
    columns = tokenized.with_format("numpy", columns=["source_length", "target_length"])[:]
    return np.maximum(columns["source_length"], columns["target_length"])
