"""Parallel corpora for the translation scripts: the embedded default (Babel's CLDR display names), local files
(one sentence per line per language, plain or .gz; TSV with a header; JSON lines), or a `datasets` Hub id.

`load_parallel(split, corpus)` gives a `datasets.Dataset` with columns `source` and `target`; `tokenize_pairs`
adds token ids (cached on disk by `datasets.map`, keyed by the data and the tokenizer, in several processes for a
large corpus: `map_processes`); `trainable_pairs` drops pairs with an empty side or longer than the maximum length,
and says how many (`PairCounts.check`: a warning with the counts, an error when nothing is left); `pair_lengths`
gives the lengths that batches are cut from. The text and the token ids stay on disk, in Arrow files that
`datasets` memory-maps: a corpus larger than memory trains, and a second run reads the ids back in seconds.

A file that cannot be read as it should (missing, empty, not UTF-8, a truncated .gz, a ragged TSV line, a JSON line
that is no object or holds a number where the text should be) is a `DataError` naming the file and the line; the
files are read by the project's one reader (`data_files`), not by datasets' generic loaders, whose errors name
neither.
"""

import hashlib
import itertools
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from vanilla_transformer.scripts.training.data_files import (
    cached_dataset,
    load_hub_split,
    table_columns,
    table_rows,
    text_lines,
)
# Names that other modules import from here, where they were before `data_files` took them over.
from vanilla_transformer.scripts.training.data_files import READER_VERSION  # noqa: F401
from vanilla_transformer.scripts.training.data_files import load_hub_split as load_dataset_split  # noqa: F401
from vanilla_transformer.scripts.training.errors import DataError, DataFileNotFoundError, DataWarning

TOKENIZATION_VERSION = "2"  # bump when tokenize_pairs changes what it writes: old caches are then not reused


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


def read_lines(path: str | Path) -> list[str]:
    return list(text_lines(path))


def file_pairs(source_file: str | Path, target_file: str | Path) -> list[tuple[str, str]]:
    """One sentence per line in each file, line i of one the translation of line i of the other."""
    sources, targets = read_lines(source_file), read_lines(target_file)
    if len(sources) != len(targets):
        raise DataError(
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


def split_files(split: str, corpus: CorpusArguments) -> list[Path]:
    """The files a split is read from (none for a --dataset_name split), checked to exist: called before any data
    is read, so that a wrong validation path fails at once, not after the training data was loaded."""
    if corpus.dataset_name:
        return []
    if split.removesuffix(".gz").endswith((".tsv", ".jsonl", ".json")):
        if not Path(split).is_file():
            raise DataFileNotFoundError(
                f"{split}: " + ("it is a folder, not a file" if Path(split).is_dir() else "no such file")
                + "; a split is a .tsv or .jsonl file, a prefix of one file per language, or a split name with "
                "--dataset_name"
            )
        return [Path(split)]
    files = []
    for lang in (corpus.source_lang, corpus.target_lang):
        candidates = [Path(f"{split}.{lang}"), Path(f"{split}.{lang}.gz")]
        found = next((path for path in candidates if path.is_file()), None)
        folder = next((path for path in candidates if path.is_dir()), None)
        if found is None and folder is not None:
            inside = sorted(path.name for path in folder.iterdir())
            holds = f"it holds {', '.join(inside[:3])}{', ...' if inside[3:] else ''}" if inside else "empty"
            raise DataFileNotFoundError(
                f"{folder} is a folder ({holds}), not a file of sentences: a split is a prefix of one file per "
                f"language ({split}.{corpus.source_lang}, {split}.{corpus.target_lang}, .gz accepted), one sentence "
                "per line"
            )
        if found is None:
            raise DataFileNotFoundError(
                f"no {candidates[0]} or {candidates[1]}: a split is a prefix of one file per language "
                f"({split}.{corpus.source_lang}, {split}.{corpus.target_lang}, .gz accepted), a .tsv or .jsonl "
                "file, or a split name with --dataset_name"
            )
        files.append(found.resolve())
    return files


def load_parallel(split: str, corpus: CorpusArguments) -> datasets.Dataset:
    """The pairs of one split, as a Dataset with columns `source` and `target`. `split` is:
    - with --dataset_name: a split name of that dataset (train, validation, test);
    - a .tsv file (a header line naming the columns, then one pair per line, fields separated by tabs, quotes are
      text) or a .jsonl file (one JSON object per line; .json: that, or a list of objects), .gz accepted;
    - otherwise a path prefix of one file per language: `{split}.{lang}` or `{split}.{lang}.gz`,
      e.g. data/multi30k/train for train.de.gz and train.en.gz.
    A missing or null side is an empty string (such pairs are dropped and counted by `trainable_pairs`). A file
    that cannot be read as such (not UTF-8, a ragged TSV line, a JSON line that is no object or holds a number
    where the text should be, no pair at all): a `DataError` naming the file and the line."""
    files = split_files(split, corpus)
    if corpus.dataset_name:
        table = load_hub_split(corpus.dataset_name, corpus.dataset_config, split)
        return _source_and_target(table, corpus, where=f"{corpus.dataset_name} ({split})")
    if split.removesuffix(".gz").endswith(".tsv"):
        columns = _choose_columns(table_columns(files[0]), corpus, where=f"{split} (line 1, the header)")
        return _generate(_tsv_rows, files, path=str(files[0]), columns=columns)
    if split.removesuffix(".gz").endswith((".jsonl", ".json")):
        return _generate(_json_rows, files, path=str(files[0]), corpus=corpus)
    return _generate(_aligned_lines, files, source_file=str(files[0]), target_file=str(files[1]))


def _generate(generator, files: list[Path], **gen_kwargs) -> datasets.Dataset:
    return cached_dataset(generator, files, PAIR_FEATURES, **gen_kwargs)


PAIR_FEATURES = datasets.Features({"source": datasets.Value("string"), "target": datasets.Value("string")})


def _aligned_lines(source_file: str, target_file: str):
    number = 0
    for number, (source, target) in enumerate(
        itertools.zip_longest(text_lines(source_file), text_lines(target_file)), start=1
    ):
        if source is None or target is None:
            longer = target_file if source is None else source_file
            raise DataError(
                f"{source_file} and {target_file} have different numbers of lines ({longer} goes on at line "
                f"{number}): parallel files must be aligned line by line"
            )
        yield {"source": source, "target": target}
    if number == 0:
        raise DataError(f"{source_file} and {target_file} are empty: no pairs to read")


def _tsv_rows(path: str, columns: dict[str, str]):
    rows = 0
    for row in table_rows(path):  # a blank line: an empty pair, dropped and counted by trainable_pairs
        rows += 1
        yield {side: row.values[column] for side, column in columns.items()}
    if rows == 0:
        raise DataError(f"{path}: a header line and no pairs")


def _json_rows(path: str, corpus: CorpusArguments):
    columns = None
    for row in table_rows(path):
        if columns is None:  # the columns are chosen on the first row
            columns = _choose_columns(list(row.values), corpus, where=row.where)
        pair = {}
        for side, column in columns.items():
            value = row.values.get(column)
            if value is not None and not isinstance(value, str):
                raise DataError(f"{row.where}: {column!r} is a {type(value).__name__} ({json.dumps(value)[:60]}), "
                                "not a string: write the text as a JSON string")
            pair[side] = value
        yield pair


def _choose_columns(names: list[str], corpus: CorpusArguments, where: str) -> dict[str, str]:
    """{"source": column, "target": column}: --source_column / --target_column, else the language code, else
    translation.<code>."""
    chosen = {}
    for side, explicit, lang in (
        ("source", corpus.source_column, corpus.source_lang),
        ("target", corpus.target_column, corpus.target_lang),
    ):
        candidates = [explicit] if explicit else [lang, f"translation.{lang}"]
        column = next((name for name in candidates if name in names), None)
        if column is None:
            raise DataError(
                f"{where}: no {side} column {' or '.join(repr(c) for c in candidates)}; the columns are "
                f"{names}. Name it with --{side}_column (a field of a dict column is 'column.field')"
            )
        chosen[side] = column
    if chosen["source"] == chosen["target"]:
        raise DataError(f"{where}: source and target are the same column {chosen['source']!r}")
    return chosen


def _source_and_target(table: datasets.Dataset, corpus: CorpusArguments, where: str) -> datasets.Dataset:
    table = table.flatten()  # a {"translation": {"de": ..., "en": ...}} column becomes translation.de, translation.en
    chosen = _choose_columns(table.column_names, corpus, where)
    for column in chosen.values():
        dtype = getattr(table.features[column], "dtype", type(table.features[column]).__name__)
        if dtype not in ("string", "large_string"):
            raise DataError(f"{where}: column {column!r} holds {dtype}, not text; choose a text column with "
                            "--source_column / --target_column")
    if len(table) == 0:
        raise DataError(f"{where}: no rows")
    table = table.select_columns([chosen["source"], chosen["target"]])
    return table.rename_columns({column: side for side, column in chosen.items() if column != side})


def tokenize_pairs(pairs: datasets.Dataset, tokenizer) -> datasets.Dataset:
    """Add `input_ids` and `labels` (each ending in </s>), their lengths, and `empty` (a side is missing or blank).

    Cached by `datasets.map` beside the data's own cache files, under a name derived from those files and the
    tokenizer's full definition: a second run with the same data and tokenizer reads the ids from disk. A large
    corpus is tokenized by several processes (`map_processes`); the ids are stored as int32."""
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
        features=TOKENIZED_FEATURES,
        num_proc=map_processes(len(pairs)),
        cache_file_name=str(cache_file) if cache_file else None,
        new_fingerprint=key,
        desc="tokenizing",
    )


TOKENIZED_FEATURES = datasets.Features({
    "source": datasets.Value("string"), "target": datasets.Value("string"),
    "input_ids": datasets.List(datasets.Value("int32")), "labels": datasets.List(datasets.Value("int32")),
    "source_length": datasets.Value("int32"), "target_length": datasets.Value("int32"), "empty": datasets.Value("bool"),
})


def map_processes(rows: int, per_process: int = 100_000) -> int | None:
    """How many processes `datasets.map` should tokenize `rows` examples with: one per CPU core this process may
    use (at most one per `per_process` rows: starting a process costs about a second); None, the map's own
    process, for a small corpus. A second run finds the cached result whatever this says (datasets reuses the
    shards it wrote)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = min(cores, rows // per_process)
    return processes if processes > 1 else None


def _tokenize_batch(batch: dict, tokenizer) -> dict:
    sources = [text if isinstance(text, str) else "" for text in batch["source"]]  # None: a missing value
    targets = [text if isinstance(text, str) else "" for text in batch["target"]]
    encoded = tokenizer(sources, text_target=targets, return_attention_mask=False)
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

    def check(self, name: str, max_length: int) -> None:
        """A `DataWarning` with the counts when pairs were dropped; a `DataError` when none is left."""
        dropped = (f"{self.empty:,} with an empty side, {self.too_long:,} longer than --max_length {max_length} "
                   "tokens")
        if self.kept == 0:
            raise DataError(f"{name}: no pair left of {self.total:,}: {dropped}. "
                            + ("Raise --max_length" if self.too_long else "Check that both sides are filled"))
        if self.empty or self.too_long:
            warnings.warn(f"{name}: dropped {self.total - self.kept:,} of {self.total:,} pairs: {dropped}",
                          DataWarning, stacklevel=2)


def trainable_pairs(tokenized: datasets.Dataset, max_length: int) -> tuple[datasets.Dataset, PairCounts]:
    """Drop the pairs with an empty side, and those with a side longer than `max_length` tokens (</s> included)."""
    columns = numpy_columns(tokenized, ["source_length", "target_length", "empty"])
    empty = columns["empty"].astype(bool)
    too_long = ~empty & (np.maximum(columns["source_length"], columns["target_length"]) > max_length)
    keep = np.flatnonzero(~empty & ~too_long)
    counts = PairCounts(total=len(tokenized), empty=int(empty.sum()), too_long=int(too_long.sum()))
    return tokenized.select(keep), counts


def pair_lengths(tokenized: datasets.Dataset) -> np.ndarray:
    """Per pair, the longer side in tokens: a batch of n pairs padded to its longest is n x max(lengths) tokens,
    on each of the source and the target side."""
    columns = numpy_columns(tokenized, ["source_length", "target_length"])
    return np.maximum(columns["source_length"], columns["target_length"])


def numpy_columns(dataset: datasets.Dataset, columns: list[str]) -> dict[str, np.ndarray]:
    """Whole columns of numbers as numpy arrays, read from the Arrow file column by column. (datasets' "numpy"
    format makes a Python object per row of a file in several chunks: seconds and gigabytes for millions of rows.)"""
    table = dataset.with_format("arrow", columns=columns)[:]
    return {column: table[column].to_numpy() for column in columns}
