"""Text for masked-LM pretraining: the main job's embedded English text (the docstrings of Python's own standard
library), and `group_blocks`, which cuts tokenized documents into BERT's input blocks.

Every Python installation carries a few megabytes of human-written English prose in the docstrings of its standard
library ("Return a new list containing all items from the iterable in ascending order."). They are read here with
`ast` from the source files, nothing imported or executed, so the corpus is the same on every machine with the same
Python version, offline. Paragraphs become documents; doctest examples, signatures and lines that are mostly code
are left out.
"""

import ast
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

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
