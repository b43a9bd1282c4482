"""What a tokenizer trainer reads: the non-blank texts, counted, and what to say when they cannot make the
vocabulary that was asked for."""

import warnings
from collections.abc import Iterable, Iterator


class SmallVocabularyWarning(UserWarning):
    """The corpus gave a much smaller vocabulary than asked for: most text outside it will be [UNK] or single
    characters."""


class TrainingTexts:
    """Iterate the non-blank texts of `texts` (blank ones carry nothing to learn), counting them as they go."""

    def __init__(self, texts: Iterable[str]):
        self.texts = texts
        self.count = self.characters = self.blank = 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            if text and not text.isspace():
                self.count += 1
                self.characters += len(text)
                yield text
            else:
                self.blank += 1

    def check_learned(self, learned: int, asked: int, special: int) -> None:
        """After training: refuse an empty corpus (nothing would come of it but the special tokens), and warn when the
        vocabulary came out at less than half of `asked` (special tokens counted in both)."""
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
