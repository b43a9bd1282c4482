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

train_translation.py takes the folder with --tokenizer (without it, it trains a joint BPE itself).
"""

from collections.abc import Iterator
from dataclasses import dataclass, field

import datasets
from transformers import HfArgumentParser

from translation_data import open_text
from vanilla_transformer.tokenization import train_bpe_tokenizer


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
            raise ValueError(f"--kind {self.kind!r}: choose bpe or wordpiece")
        if bool(self.files) == bool(self.dataset_name):
            raise ValueError("give either --files or --dataset_name")
        if self.kind == "bpe" and self.lowercase is not None:
            raise ValueError("--lowercase applies to wordpiece; the BPE keeps case (detokenized, cased BLEU needs it)")


def texts(args: TokenizerArguments) -> Iterator[str]:
    if args.files:
        for path in args.files:
            with open_text(path) as handle:
                for line in handle:
                    yield line.rstrip("\r\n")
        return
    table = datasets.load_dataset(args.dataset_name, args.dataset_config, split=args.split).flatten()
    missing = [column for column in args.columns if column not in table.column_names]
    if missing:
        raise ValueError(
            f"{args.dataset_name} ({args.split}) has no column {missing}; its columns are {table.column_names} "
            "(a field of a dict column is 'column.field')"
        )
    for row in table.select_columns(args.columns):
        for column in args.columns:
            if isinstance(row[column], str):
                yield row[column]


def main(args: TokenizerArguments):
    if args.kind == "bpe":
        tokenizer = train_bpe_tokenizer(texts(args), vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    else:
        from vanilla_transformer.tokenization.wordpiece import train_wordpiece_tokenizer

        tokenizer = train_wordpiece_tokenizer(
            texts(args),
            vocab_size=args.vocab_size,
            min_frequency=args.min_frequency,
            lowercase=True if args.lowercase is None else args.lowercase,
        )
    tokenizer.save_pretrained(args.output_dir)
    sample = next(texts(args), "")
    print(f"{args.kind}: {len(tokenizer)} tokens, saved to {args.output_dir}")
    print(f"  {sample[:80]!r} -> {tokenizer.tokenize(sample)[:20]}")
    return tokenizer


if __name__ == "__main__":
    (arguments,) = HfArgumentParser(TokenizerArguments).parse_args_into_dataclasses()
    main(arguments)
