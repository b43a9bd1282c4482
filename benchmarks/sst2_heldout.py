"""A held-out slice of SST-2's training data that does not leak: whole sentences, with every phrase of them taken out
of the training rows.

GLUE's SST-2 training split holds the sentences of the treebank's training part and, as rows of their own, the
phrases of those sentences ("kids , spirit"). A random slice of it, such as ../shared/data/sst2/dev.tsv, therefore
scores phrases whose sentence, or whose sub-phrases, the model trained on: it rewards memorising phrases, and it ranks
recipes otherwise than GLUE dev (whole, unseen sentences) does (docs/finetuning.md, "Choosing on a slice of the
training data"). This script draws whole sentences from train.tsv (rows of at least --min_words words that are part
of no other row), holds them out, and drops from the training rows every phrase that occurs in one of them (on word
boundaries). Candidates are trained on the rest and scored on the held-out sentences; GLUE dev stays unseen.

    python benchmarks/sst2_heldout.py --data_dir ../shared/data/sst2 --out outputs/sst2-heldout

writes train.tsv and heldout.tsv in --out (the corpus itself stays out of the project) and prints their sizes.
"""

import argparse
import csv
import random
import sys
from pathlib import Path


def read_rows(path: Path) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as file:
        reader = csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header[:2] != ["sentence", "label"]:
            raise SystemExit(f"{path}: expected the header 'sentence<TAB>label', got {header!r}")
        return [(" ".join(row[0].split()), row[1]) for row in reader if row and row[0].strip()]


def split_without_leaks(rows: list[tuple[str, str]], count: int, min_words: int, seed: int):
    """(training rows, held-out rows): `count` whole sentences held out, and every row occurring in one of them (a
    phrase of a held-out sentence, on word boundaries) removed from the training rows."""
    texts = [text for text, _ in rows]
    long_ones = [i for i, text in enumerate(texts) if len(text.split()) >= min_words]
    random.Random(seed).shuffle(long_ones)
    everything = "\n".join(f" {text} " for text in texts)
    held_out = []
    for i in long_ones:  # a whole sentence is part of no other row: it occurs once in `everything`
        if everything.count(f" {texts[i]} ") == 1:
            held_out.append(i)
            if len(held_out) == count:
                break
    if len(held_out) < count:
        raise SystemExit(f"only {len(held_out)} whole sentences of at least {min_words} words; lower --count")
    held_text = "\n".join(f" {texts[i]} " for i in held_out)
    chosen = set(held_out)
    train = [row for i, row in enumerate(rows) if i not in chosen and f" {row[0]} " not in held_text]
    return train, [rows[i] for i in held_out]


def write_rows(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as file:
        file.write("sentence\tlabel\n")
        file.writelines(f"{text}\t{label}\n" for text, label in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="../shared/data/sst2", help="holds train.tsv (GLUE's SST-2 format)")
    parser.add_argument("--out", default="outputs/sst2-heldout")
    parser.add_argument("--count", type=int, default=1000, help="whole sentences to hold out")
    parser.add_argument("--min_words", type=int, default=8, help="shortest sentence to hold out (words)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = read_rows(Path(args.data_dir) / "train.tsv")
    train, held_out = split_without_leaks(rows, args.count, args.min_words, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / "train.tsv", train)
    write_rows(out / "heldout.tsv", held_out)
    print(f"{len(rows):,} training rows: {len(held_out):,} whole sentences held out, {len(rows) - len(train) - len(held_out):,} "
          f"phrases of them dropped, {len(train):,} rows left to train on ({out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
