"""Train a subword tokenizer and save it as a standard fast tokenizer (`AutoTokenizer.from_pretrained(folder)`):
a joint BPE for translation (pass source and target text together: the paper's shared vocabulary, section 5.1),
or a WordPiece for the BERT-style encoder. Text comes from files (one text per line, .gz accepted) or from
columns of a `datasets` dataset (a field of a dict column is "column.field", e.g. translation.de):

    python scripts/train_tokenizer.py --kind bpe --vocab_size 8000 --output_dir outputs/multi30k/tokenizer \\
        --files ../shared/data/multi30k/train.de.gz ../shared/data/multi30k/train.en.gz
    python scripts/train_tokenizer.py --kind bpe --vocab_size 32000 --output_dir outputs/wmt16/tokenizer \\
        --dataset_name wmt16 --dataset_config de-en --columns translation.de translation.en
    python scripts/train_tokenizer.py --kind wordpiece --vocab_size 30522 --output_dir outputs/wiki/tokenizer \\
        --dataset_name wikitext --dataset_config wikitext-103-raw-v1 --columns text

The text streams through the trainer (files line by line, a dataset a thousand rows at a time from its Arrow file):
a corpus larger than memory trains (docs/large-corpora.md). train_translation.py takes the folder with --tokenizer
(without it, it trains a joint BPE itself). Files that are missing, empty or blank, not UTF-8 or a broken .gz are
errors naming the file (and the line); a vocabulary that comes out smaller than --vocab_size is a warning with the
counts.
"""

import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from vanilla_transformer.scripts.training.errors import (
    ArgumentError,
    DataError,
    DataFileNotFoundError,
    DataWarning,
    run_command,
)
from vanilla_transformer.scripts.training.translation_data import load_dataset_split, text_lines
from vanilla_transformer.tokenization import train_bpe_tokenizer

PREVIEW_CHARACTERS = 200  # of the first text, tokenized for the 20-token preview printed at the end


@dataclass
class TokenizerArguments:
    output_dir: str = field(metadata={"help": "where tokenizer.json and tokenizer_config.json go"})
    kind: str = field(default="bpe", metadata={"help": "bpe (translation) or wordpiece (BERT-style encoder)"})
    vocab_size: int = field(default=8000, metadata={"help": "vocabulary size, special tokens included"})
    min_frequency: int = field(default=2, metadata={"help": "merge only pairs seen at least this often"})
    files: list[str] = field(default_factory=list, metadata={"help": "text files, one text per line (.gz ok)"})
    dataset_name: str | None = field(default=None, metadata={"help": "a datasets Hub id or local dataset folder"})
    dataset_config: str | None = None
    split: str = "train"
    columns: list[str] = field(default_factory=lambda: ["text"], metadata={"help": "text columns of the dataset"})
    lowercase: bool | None = field(
        default=None, metadata={"help": "wordpiece only: lowercase and strip accents, as BERT-uncased (unset: true)"}
    )

    def __post_init__(self):
        if self.kind not in ("bpe", "wordpiece"):
            raise ArgumentError(f"--kind {self.kind!r}: choose bpe or wordpiece")
        if bool(self.files) == bool(self.dataset_name):
            raise ArgumentError("give either --files or --dataset_name")
        if self.kind == "bpe" and self.lowercase is not None:
            raise ArgumentError("--lowercase applies to wordpiece; the BPE keeps case (detokenized, cased BLEU needs it)")
        special = 4 if self.kind == "bpe" else 5
        if self.vocab_size <= special:
            raise ArgumentError(f"--vocab_size {self.vocab_size}: the {self.kind} vocabulary has {special} special "
                             "tokens; give more")
        if self.min_frequency < 1:
            raise ArgumentError(f"--min_frequency must be at least 1, got {self.min_frequency}")


def texts(args: TokenizerArguments) -> Iterator[str]:
    if args.files:
        for path in args.files:
            yield from text_lines(path)
        return
    table = load_dataset_split(args.dataset_name, args.dataset_config, args.split).flatten()
    missing = [column for column in args.columns if column not in table.column_names]
    if missing:
        raise DataError(
            f"{args.dataset_name} ({args.split}) has no column {missing}; its columns are {table.column_names} "
            "(a field of a dict column is 'column.field')"
        )
    for batch in table.select_columns(args.columns).iter(batch_size=1000):  # from the Arrow file, never all at once
        for row in zip(*(batch[column] for column in args.columns)):
            yield from (text for text in row if isinstance(text, str))


def run(args: TokenizerArguments):
    for path in args.files:  # before the first file is read
        if not Path(path).is_file():
            raise DataFileNotFoundError(f"--files {path}: no such file" + (" (it is a folder)" if Path(path).is_dir()
                                                                           else ""))
    source = " ".join(args.files) if args.files else f"{args.dataset_name} ({args.split}, {', '.join(args.columns)})"
    sample = next((text for text in texts(args) if text and not text.isspace()), None)  # only the first text
    if sample is None:
        raise DataError(f"{source}: no text (empty, or blank lines only): nothing to train a tokenizer on")
    sample = sample[:PREVIEW_CHARACTERS]  # the preview tokenizes this much, not a whole (50 MB) first line
    counted = {"texts": 0}

    def counting(source: Iterator[str]) -> Iterator[str]:
        for text in source:
            counted["texts"] += bool(text and text.strip())
            yield text

    if args.kind == "bpe":
        tokenizer = train_bpe_tokenizer(counting(texts(args)), vocab_size=args.vocab_size,
                                        min_frequency=args.min_frequency)
    else:
        from vanilla_transformer.tokenization.wordpiece import train_wordpiece_tokenizer

        tokenizer = train_wordpiece_tokenizer(
            counting(texts(args)),
            vocab_size=args.vocab_size,
            min_frequency=args.min_frequency,
            lowercase=True if args.lowercase is None else args.lowercase,
        )
    if len(tokenizer) < args.vocab_size:
        warnings.warn(f"the {args.kind} tokenizer has {len(tokenizer):,} tokens, not --vocab_size {args.vocab_size:,}: "
                      f"its {counted['texts']:,} texts have too few distinct pieces for that vocabulary", DataWarning,
                      stacklevel=2)
    tokenizer.save_pretrained(args.output_dir)
    print(f"{args.kind}: {len(tokenizer)} tokens, saved to {args.output_dir}")
    print(f"  {sample[:80]!r} -> {tokenizer.tokenize(sample)[:20]}")
    return tokenizer


def main(argv: list[str] | None = None) -> int:
    return run_command(run, HfArgumentParser(TokenizerArguments).parse_args_into_dataclasses, argv)


if __name__ == "__main__":
    sys.exit(main())
