"""The embedded corpora: data every installation has, offline, named as a data source like a file or a Hub id, so
that the main job runs the commands themselves on them:

- `embedded:stdlib-docstrings:train` / `:validation`: English prose for masked-LM pretraining (pretrain_mlm.py's
  --train_file / --validation_file), the docstrings of Python's own standard library;
- `embedded:cldr-de-en:train` / `:validation`: German -> English pairs for translation (train_translation.py's
  --train_split / --validation_split), the CLDR display names that ship with Babel (`translation_data.babel_pairs`).

A corpus is shuffled with a fixed seed and its first documents (pairs) are the validation split, the rest training.

Every Python installation carries a few megabytes of human-written English prose in the docstrings of its standard
library ("Return a new list containing all items from the iterable in ascending order."). They are read here with
`ast` from the source files, nothing imported or executed, so the corpus is the same on every machine with the same
Python version, offline. Paragraphs become documents; doctest examples, signatures and lines that are mostly code
are left out.
"""

import ast
import random
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from vanilla_transformer.scripts.training.errors import DataFileNotFoundError

PREFIX = "embedded:"
HELD_OUT = {"stdlib-docstrings": 400, "cldr-de-en": 100}  # the validation split's size, documents or pairs

# Folders of the standard library that are tests, demos or vendored code rather than documented modules.
SKIPPED = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo", "__pycache__",
           "ensurepip", "venv", "pydoc_data", "config-3"}
WORD = re.compile(r"[A-Za-z][a-z]+")


def stdlib_docstrings(min_words: int = 6, max_documents: int | None = None) -> list[str]:
    """Unique docstring paragraphs of the standard library, in a fixed order (sorted file paths, then position)."""
    documents, seen = [], set()
    for text in _docstrings(Path(sysconfig.get_paths()["stdlib"])):
        for paragraph in re.split(r"\n\s*\n", text):
            paragraph = " ".join(paragraph.split())
            if paragraph in seen or not _is_prose(paragraph, min_words):
                continue
            seen.add(paragraph)
            documents.append(paragraph)
            if max_documents is not None and len(documents) >= max_documents:
                return documents
    if not documents:
        raise RuntimeError(f"no docstrings found under {sysconfig.get_paths()['stdlib']}")
    return documents


def _docstrings(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*.py")):
        if SKIPPED.intersection(path.relative_to(root).parts[:-1]) or path.name.startswith("test_"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                docstring = ast.get_docstring(node)
                if docstring:
                    yield docstring


def _is_prose(paragraph: str, min_words: int) -> bool:
    """Sentences, not code: enough words, mostly alphabetic, no doctest prompts or call signatures first."""
    if paragraph.startswith((">>>", "...", "$", "-", "*", "=", ":", "|", "+")) or "(" in paragraph[:30].split(" ")[0]:
        return False
    tokens = paragraph.split()
    words = sum(bool(WORD.fullmatch(token.strip(".,;:!?\"'()"))) for token in tokens)
    return words >= min_words and words >= 0.7 * len(tokens)


def is_embedded(name: str | None) -> bool:
    return bool(name) and name.startswith(PREFIX)


def embedded_split(name: str) -> list:
    """The documents (str) or pairs ((source, target)) of `embedded:<corpus>:<train|validation>`."""
    corpus, _, split = name.removeprefix(PREFIX).partition(":")
    if corpus not in HELD_OUT or split not in ("train", "validation"):
        raise DataFileNotFoundError(
            f"{name}: no such embedded corpus; there are "
            + ", ".join(f"{PREFIX}{known}:train and :validation" for known in HELD_OUT)
        )
    if corpus == "stdlib-docstrings":
        items = list(stdlib_docstrings())
    else:
        from vanilla_transformer.scripts.training.translation_data import babel_pairs

        items = list(babel_pairs("de", "en"))
    random.Random(0).shuffle(items)
    held_out = HELD_OUT[corpus]
    return items[:held_out] if split == "validation" else items[held_out:]


def embedded_dataset(name: str):
    """`embedded_split` as the `datasets.Dataset` a command reads: column "text" (documents) or "source" and
    "target" (pairs)."""
    import datasets

    items = embedded_split(name)
    if items and isinstance(items[0], tuple):
        return datasets.Dataset.from_dict({"source": [s for s, _ in items], "target": [t for _, t in items]})
    return datasets.Dataset.from_dict({"text": items})
