"""What a tokenizer trainer reads: the non-blank texts, counted, without control characters (reported with counts), a
very long one in pieces (bounded memory), and what to say when they cannot make the vocabulary that was asked for."""

import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator

# A longer text goes to the trainer in pieces cut at spaces: a whole 50 MB line at once takes gigabytes in the
# trainer's pre-tokenization (words are what it counts, and a cut at a space changes none of them)
PIECE_CHARACTERS = 100_000
# C0 and C1 control characters but tab, line feed and carriage return: NUL bytes and escape codes are no text (a
# UTF-16 file read as UTF-8 puts a NUL after each letter), and a trainer would make vocabulary entries of them.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_CONTROL_NAMES = {"\x00": "NUL", "\x1b": "ESC", "\x7f": "DEL", "\x0b": "vertical tab", "\x0c": "form feed"}


class SmallVocabularyWarning(UserWarning):
    """The corpus gave a much smaller vocabulary than asked for: most text outside it will be [UNK] or single
    characters."""


class ControlCharacterWarning(UserWarning):
    """The corpus held control characters (NUL bytes, escape codes), removed before training; with their counts."""


def _without_control(match: re.Match) -> str:
    return " " if match.group().isspace() else ""  # a form feed or a file separator still separates words


def _pieces(text: str) -> Iterator[str]:
    """`text` in pieces of at most PIECE_CHARACTERS, cut at a space (dropped) where there is one."""
    start = 0
    while len(text) - start > PIECE_CHARACTERS:
        cut = text.rfind(" ", start + 1, start + PIECE_CHARACTERS)
        if cut == -1:  # no space: one "word" that long is cut anywhere
            cut = start + PIECE_CHARACTERS
        yield text[start:cut]
        start = cut + (text[cut] == " ")
    yield text[start:]


class TrainingTexts:
    """Iterate the non-blank texts of `texts` (blank ones carry nothing to learn), counting them as they go, with
    control characters removed (counted, and reported by `check_learned`), a very long one in pieces."""

    def __init__(self, texts: Iterable[str]):
        self.texts = texts
        self.count = self.characters = self.blank = self.with_control = 0
        self.control = Counter()

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            if text and CONTROL_CHARACTERS.search(text):
                self.with_control += 1
                self.control.update(CONTROL_CHARACTERS.findall(text))
                text = CONTROL_CHARACTERS.sub(_without_control, text)
            if text and not text.isspace():
                self.count += 1
                self.characters += len(text)
                yield from _pieces(text)
            else:
                self.blank += 1

    def check_learned(self, learned: int, asked: int, special: int) -> None:
        """After training: refuse an empty corpus (nothing would come of it but the special tokens), and warn when the
        vocabulary came out at less than half of `asked` (special tokens counted in both), or when control characters
        were removed."""
        if self.control:
            counts = ", ".join(f"{_CONTROL_NAMES.get(char, f'U+{ord(char):04X}')} x {count:,}"
                               for char, count in self.control.most_common(5))
            more = f" and {len(self.control) - 5} other kinds" if len(self.control) > 5 else ""
            warnings.warn(
                f"the corpus holds {self.control.total():,} control characters in {self.with_control:,} of its texts "
                f"({counts}{more}): they were removed before training (no vocabulary entry is made of them). A file "
                "in another encoding (UTF-16 read as UTF-8 has a NUL after each letter) or a binary file gives them: "
                "check the input files",
                ControlCharacterWarning,
                stacklevel=3,
            )
        if self.count == 0:
            raise ValueError(
                f"no text to learn a vocabulary from: the corpus is empty or all {self.blank} of its texts are blank; "
                "check the input file(s)"
            )
        if learned < asked / 2:
            warnings.warn(
                f"the tokenizer learned {learned:,} tokens of the {asked:,} asked for ({learned - special:,} besides the "
                f"{special} special ones) from {self.count:,} texts ({self.characters:,} characters): the corpus is "
                "too small for this vocabulary size; train on more text, or ask for a smaller vocabulary",
                SmallVocabularyWarning,
                stacklevel=3,
            )
