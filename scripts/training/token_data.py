"""The data of token classification (scripts/finetune_token_classification.py): sentences of words, a tag per word
(named entities as B-/I- spans, e.g. "B-LOC I-LOC O"), from CoNLL-style files, JSON lines, or a Hub dataset.

- A CoNLL file (any name but .json/.jsonl, .gz accepted): a word per line, its tag in the last column (columns
  separated by spaces or tabs, as many on every line), a blank line between sentences; `-DOCSTART-` lines are
  skipped. A .json/.jsonl file (or a Hub dataset): a list of words and a list of tags per row (`--tokens_column`,
  `--tags_column`; a Hub ClassLabel's ids become its names).
- The tags are those of the training split ("O" first, then by entity type); a tag of the validation or test data
  that training never saw is a `DataError` naming where it is.
- `encode`: the word pieces of each sentence, its tag on the first piece of each word (-100, not scored, on the other
  pieces and the special tokens); a sentence longer than --max_seq_length pieces is split at word boundaries into
  parts (a warning counts them), and its parts are joined again for the predictions and the scores.
"""

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from transformers import Trainer

from vanilla_transformer.scripts.training.data_files import check_data_file, table_rows, table_type, text_lines
from vanilla_transformer.scripts.training.errors import DataError
from vanilla_transformer.scripts.training.finetuning import read_splits
from vanilla_transformer.scripts.training.finetuning_trainer import check_finite_scores

logger = logging.getLogger("finetune_token_classification")
IGNORED = -100  # the label of a piece that is not scored (transformers' convention: the loss skips it)
ENTITY_TAG = re.compile(r"O|[BIES]-.+")  # the IOB1/IOB2/IOE/BIOES forms the entity scores read


@dataclass
class Sentences:
    """One split's sentences, each traced back to where it starts (a file line, or a row of a Hub dataset)."""

    name: str  # train, validation, test
    source: str  # the file, or "<dataset> [split]"
    position: str  # "line" or "row"
    starts: list[int] = field(default_factory=list)
    words: list[list[str]] = field(default_factory=list)
    tags: list[list[str]] = field(default_factory=list)

    def add(self, start: int, words: list[str], tags: list[str]) -> None:
        self.starts.append(start)
        self.words.append(words)
        self.tags.append(tags)

    def head(self, limit: int | None) -> "Sentences":
        if limit is None or limit >= len(self.starts):
            return self
        return Sentences(self.name, self.source, self.position, self.starts[:limit], self.words[:limit],
                         self.tags[:limit])


def conll_sentences(name: str, path: Path) -> Sentences:
    sentences, words, tags, start, columns = Sentences(name, str(path), "line"), [], [], 0, None
    for number, line in enumerate([*text_lines(path), ""], start=1):  # a final blank line ends the last sentence
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences.add(start, words, tags)
            words, tags = [], []
            continue
        if columns is None:
            columns = (number, len(fields))
        if len(fields) < 2:
            raise DataError(f"{path}, line {number}: one column ({fields[0]!r}); a CoNLL line is a word and its tag "
                            "(in the last column), separated by a space or a tab")
        if len(fields) != columns[1]:
            raise DataError(f"{path}, line {number}: {len(fields)} columns, but line {columns[0]} has {columns[1]}: "
                            "every word line has the same columns (a space inside a word? a missing tag?)")
        start = start if words else number
        words.append(fields[0])
        tags.append(fields[-1])
    if not sentences.starts:
        raise DataError(f"{path}: no sentence in it (empty, blank or only -DOCSTART- lines); a CoNLL file has a word "
                        "and its tag per line and a blank line between sentences")
    return sentences


def json_sentences(name: str, path: Path, args) -> Sentences:
    sentences = Sentences(name, str(path), "line")
    for row in table_rows(path):
        sentence = [row.values.get(args.tokens_column), row.values.get(args.tags_column)]
        for column, option, values in zip((args.tokens_column, args.tags_column), ("tokens", "tags"), sentence):
            if not (isinstance(values, list) and all(isinstance(value, str) for value in values)):
                raise DataError(f"{row.where}: {column!r} (--{option}_column) is {str(values)[:60]}, not a list of "
                                f"strings; its columns are {list(row.values)}")
        check_sentence(row.where, *sentence)
        sentences.add(row.number, *sentence)
    if not sentences.starts:
        raise DataError(f"{path} holds no rows")
    sentences.position = row.position
    return sentences


def hub_sentences(name: str, dataset: datasets.Dataset, source: str, args) -> Sentences:
    missing = [column for column in (args.tokens_column, args.tags_column) if column not in dataset.column_names]
    if missing:
        raise DataError(f"{source} has no column(s) {missing} (--tokens_column, --tags_column); it has "
                        f"{dataset.column_names}")
    feature = getattr(dataset.features[args.tags_column], "feature", None)
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    sentences = Sentences(name, source, "row")
    for row, (words, tags) in enumerate(zip(dataset[args.tokens_column], dataset[args.tags_column])):
        tags = [names[tag] for tag in tags] if names is not None else tags
        check_sentence(f"{source}, row {row}", words, tags)
        sentences.add(row, words, tags)
    return sentences


def check_sentence(where: str, words: list, tags: list) -> None:
    if not words:
        raise DataError(f"{where}: an empty sentence (no words); remove the row")
    if len(words) != len(tags):
        raise DataError(f"{where}: {len(words)} words but {len(tags)} tags: a tag per word")


def load_data(args) -> tuple[dict[str, Sentences], str | None]:
    """The train/validation/test sentences from the Hub or from local files, cut to the requested sizes, and the
    SHA-256 of the training file (what --resume checks)."""

    def from_file(split: str, option: str, path: str) -> Sentences:
        path = check_data_file(path, option)
        if table_type(path) in (".json", ".jsonl"):
            return json_sentences(split, path, args)
        return conll_sentences(split, path)

    return read_splits(args, from_file, lambda split, dataset, source: hub_sentences(split, dataset, source, args))


def choose_tags(splits: dict[str, Sentences], checkpoint: list[str] | None, model_name: str) -> list[str]:
    """The tags in id order: those of the training split ("O" first, then by entity type, B before I), in the
    checkpoint's order when it is a token classifier of the same tags; without training data, the checkpoint's.
    Every tag of the other splits must be one of them."""
    if "train" in splits:
        seen = {tag for tags in splits["train"].tags for tag in tags}
        tags = sorted(seen, key=lambda tag: (tag != "O", tag[2:], tag))
        if checkpoint is not None and set(checkpoint) == seen:
            tags = checkpoint  # the classifier's own id order: its head keeps its meaning
        where = f"the training data ({splits['train'].source})"
    elif checkpoint is not None:
        tags, where = checkpoint, f"the token classifier {model_name}"
    else:
        raise DataError(f"no training data, and {model_name} is not a token classifier: nothing to learn the tags "
                        "from; give --train_file")
    if len(tags) < 2:
        raise DataError(f"{where}: every word has the tag {tags[0]!r}; a tagger needs at least two tags (is the tag "
                        "in the last column?)")
    odd = sorted(tag for tag in tags if not ENTITY_TAG.fullmatch(tag))
    if odd:
        logger.warning("%s: the tags %s are not in the IOB/BIOES form (O, B-TYPE, I-TYPE, E-TYPE, S-TYPE): the "
                       "entity scores are not meaningful for them, token accuracy is", where, odd[:5])
    for split in splits.values():
        unknown = [(start, tag) for start, sentence in zip(split.starts, split.tags) for tag in sentence
                   if tag not in tags]
        if unknown:
            shown = ", ".join(f"{tag!r} (sentence at {split.position} {start})" for start, tag in unknown[:5])
            raise DataError(f"{split.source}: {len(unknown)} word(s) have a tag that is not a tag of {where}: {shown}; "
                            f"the tags are {tags}. Train on data that has them, or fix the tags")
    return tags


def encode(split: Sentences, tags: list[str], tokenizer, max_length: int) -> tuple[datasets.Dataset, list]:
    """The model's inputs: per part of a sentence, its word pieces with [CLS] and [SEP], and `labels`, the tag id of
    each word on its first piece (-100 elsewhere). Also, per part, (sentence index, indices of its scored words)."""
    ids = {tag: i for i, tag in enumerate(tags)}
    budget = max_length - tokenizer.num_special_tokens_to_add()
    pieces = tokenizer(split.words, is_split_into_words=True, add_special_tokens=False)
    spans = []  # (sentence, first word, end word): a sentence, or a part of one that fits the budget
    for index, words in enumerate(split.words):
        per_word = np.bincount(pieces.word_ids(index), minlength=len(words))
        start, used = 0, 0
        for word, count in enumerate(per_word.tolist()):
            if used + count > budget and word > start:
                spans.append((index, start, word))
                start, used = word, 0
            used += count
        spans.append((index, start, len(words)))
    encoded = tokenizer([split.words[index][start:end] for index, start, end in spans], is_split_into_words=True,
                        truncation=True, max_length=max_length)  # truncates only a word longer than a part
    labels, parts = [], []
    for k, (index, start, _) in enumerate(spans):
        word_ids = encoded.word_ids(k)
        firsts = {p for p, word in enumerate(word_ids) if word is not None and (p == 0 or word_ids[p - 1] != word)}
        labels.append([ids[split.tags[index][start + word]] if p in firsts else IGNORED
                       for p, word in enumerate(word_ids)])
        parts.append((index, [start + word_ids[p] for p in sorted(firsts)]))
    long = len({index for index, start, _ in spans if start > 0})
    if long:
        logger.warning("%s: %d of %d sentences are longer than --max_seq_length %d word pieces: they are split at word "
                       "boundaries into parts of at most %d (raise --max_seq_length, up to the model's "
                       "max_position_embeddings, to keep them whole)", split.source, long, len(split.words),
                       max_length, max_length)
    pieceless = sum(len(words) for words in split.words) - sum(len(scored) for _, scored in parts)
    if pieceless:
        logger.warning("%s: %d word(s) make no word piece (the tokenizer drops them): predicted O", split.source,
                       pieceless)
    return datasets.Dataset.from_dict({"input_ids": encoded["input_ids"], "labels": labels}), parts


def sentence_tags(predictions: np.ndarray, labels: np.ndarray, parts: list, split: Sentences,
                  tags: list[str]) -> list[list[str]]:
    """The predicted tag of every word of every sentence, its parts joined again (a word without pieces: O)."""
    predicted = [["O"] * len(sentence) for sentence in split.tags]
    for (index, scored), guess, gold in zip(parts, predictions, labels):
        for word, tag_id in zip(scored, guess[gold != IGNORED]):
            predicted[index][word] = tags[tag_id]
    return predicted


def predict_split(trainer: Trainer, split: Sentences, dataset: datasets.Dataset, parts: list, tags: list[str],
                  metric, output_dir: Path) -> dict:
    """Entity scores and token accuracy of the whole sentences, and the predictions (<split>_predictions.txt, CoNLL
    form: a word, its tag, the predicted tag per line; a blank line between sentences)."""
    name = split.name
    output = trainer.predict(dataset, metric_key_prefix=name)
    labels = [np.asarray(row) for row in dataset["labels"]]
    guesses = [row[: len(gold)] for row, gold in zip(output.predictions.argmax(-1), labels)]
    predicted = sentence_tags(guesses, labels, parts, split, tags)
    scores = metric.compute(predictions=predicted, references=split.tags)
    results = {f"{name}_loss": output.metrics[f"{name}_loss"], f"{name}_sentences": len(split.tags),
               **{f"{name}_{key}": value for key, value in scores.items()}}
    check_finite_scores(results, split.source)
    lines = []
    for words, gold, guess in zip(split.words, split.tags, predicted):
        lines += [f"{word} {tag} {prediction}" for word, tag, prediction in zip(words, gold, guess)] + [""]
    (output_dir / f"{name}_predictions.txt").write_text("\n".join(lines))
    results[f"{name}_predictions"] = f"{name}_predictions.txt"
    logger.info("%s: %s", name, results)
    return results
