"""The corpora of the corpus benchmark (scripts/benchmark_corpus.py), made from the reference corpora: `make_pairs`
(distinct translation pairs, two Multi30k pairs joined) and `make_text` (MLM documents of WikiText-2 sentences)."""

import re
from pathlib import Path

import numpy as np

from vanilla_transformer.scripts.benchmarking.common import read_lines
from vanilla_transformer.scripts.training.errors import ArgumentError


def make_pairs(multi30k: Path, count: int, folder: Path, seed: int = 0) -> list[Path]:
    """`count` distinct pairs into folder/train.de and folder/train.en: pair k is Multi30k training pairs i and j
    joined, (de_i + " " + de_j, en_i + " " + en_j), with i != j and every (i, j) drawn once."""
    german, english = read_lines(multi30k / "train.de.gz"), read_lines(multi30k / "train.en.gz")
    n = len(german)
    if count > n * (n - 1):
        raise ArgumentError(f"--pairs {count}: at most {n * (n - 1):,} distinct pairs from {n:,} Multi30k pairs")
    rng = np.random.default_rng(seed)
    codes = np.empty(0, dtype=np.int64)  # i * n + j
    while len(codes) < count:
        drawn = rng.integers(0, n * n, 2 * (count - len(codes)) + 16)
        codes = np.unique(np.concatenate([codes, drawn[drawn // n != drawn % n]]))
    codes = rng.permutation(codes)[:count]
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / "train.de", folder / "train.en"]
    with open(files[0], "w", encoding="utf-8") as de, open(files[1], "w", encoding="utf-8") as en:
        for i, j in zip(*(part.tolist() for part in np.divmod(codes, n))):
            de.write(f"{german[i]} {german[j]}\n")
            en.write(f"{english[i]} {english[j]}\n")
    return files


def make_text(wikitext: Path, megabytes: float, path: Path, seed: int = 0) -> int:
    """A text file of `megabytes` MB (10^6 bytes, or one document more), one document per line: each a string of
    WikiText-2 sentences drawn at random, as many as a paragraph of WikiText-2 has (at least 2), every document
    distinct. Returns the number of documents."""
    sentences, per_paragraph = [], []
    for name in ("valid.txt", "test.txt"):
        for line in read_lines(wikitext / name):
            if not line.strip() or line.strip().startswith("="):  # blank lines and section titles
                continue
            pieces = re.split(r"(?<= \.) ", line.strip())  # after " . ": WikiText's tokenized full stop
            sentences += pieces
            per_paragraph.append(max(2, len(pieces)))
    rng = np.random.default_rng(seed)
    target, written, seen = megabytes * 1e6, 0, set()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        while written < target:
            for size in rng.choice(per_paragraph, 1024).tolist():
                document = " ".join(sentences[i] for i in rng.integers(0, len(sentences), size).tolist())
                if document in seen:
                    continue
                seen.add(document)
                out.write(document + "\n")
                written += len(document.encode()) + 1
                if written >= target:
                    break
    return len(seen)

