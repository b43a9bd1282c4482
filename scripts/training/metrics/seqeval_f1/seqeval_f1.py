"""Entity-level precision, recall and F1, and token accuracy, for token classification (named entities), as an
`evaluate` metric that loads offline: `evaluate.load(str(METRICS_DIR / "seqeval_f1"))`. The definition is seqeval's
default (Nakayama 2018, after the CoNLL-2000 `conlleval` script), written here without the seqeval package: its
lenient chunking reads IOB1, IOB2, IOE1, IOE2 and BIOES tags alike, and an `I-` that follows `O` or another type
starts a chunk (as conlleval does). An entity counts when its type, start and end all match; the scores are micro
averages over every entity of every sentence. Self-contained (datasets, evaluate): `evaluate.load` copies this file
into its module cache and imports it from there.

    metric = evaluate.load(path)
    metric.compute(predictions=[["B-LOC", "I-LOC", "O"]], references=[["B-LOC", "O", "O"]])
    # {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.666..., "LOC_f1": 0.0, "LOC_number": 1}
"""

import datasets
import evaluate

_DESCRIPTION = "Entity-level precision, recall and F1 (seqeval's default, conlleval-style chunks) and token accuracy."
_INPUTS = """
Args:
    predictions: per sentence, the predicted tags (strings such as "B-LOC", "I-LOC", "O").
    references: per sentence, the true tags; each sentence as long as its prediction.
Returns:
    {"precision", "recall", "f1": over all entities; "accuracy": over all tokens;
     "<TYPE>_f1", "<TYPE>_number": per entity type of the references, its F1 and how many entities it has}
"""


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """The chunks of one sentence as (type, first token, last token), by conlleval's rules of where a chunk begins
    and ends (seqeval's `get_entities`, non-strict): a prefix B/I/E/S (any other, such as "O", is outside)."""
    chunks, begin = set(), 0
    previous_tag, previous_type = "O", ""
    for i, tag_and_type in enumerate([*tags, "O"]):  # a final "O" closes the last chunk
        tag = tag_and_type[:1]
        type_ = tag_and_type[1:].split("-", maxsplit=1)[-1] or "_"
        if _chunk_ends(previous_tag, tag, previous_type, type_):
            chunks.add((previous_type, begin, i - 1))
        if _chunk_starts(previous_tag, tag, previous_type, type_):
            begin = i
        previous_tag, previous_type = tag, type_
    return chunks


def _chunk_ends(previous_tag: str, tag: str, previous_type: str, type_: str) -> bool:
    if previous_tag in ("E", "S"):
        return True
    if previous_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return previous_tag not in ("O", ".") and previous_type != type_


def _chunk_starts(previous_tag: str, tag: str, previous_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if previous_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and previous_type != type_


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(correct: int, predicted: int, true: int) -> float:
    return _ratio(2 * correct, predicted + true)  # the harmonic mean of precision and recall, 0 without entities


class SeqevalF1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references) -> dict:
        true, predicted = set(), set()
        tokens = right = 0
        for sentence, (guess, gold) in enumerate(zip(predictions, references)):
            if len(guess) != len(gold):
                raise ValueError(f"sentence {sentence}: {len(guess)} predicted tags for {len(gold)} true ones")
            true |= {(sentence, *entity) for entity in entities(gold)}
            predicted |= {(sentence, *entity) for entity in entities(guess)}
            tokens += len(gold)
            right += sum(a == b for a, b in zip(guess, gold))
        correct = true & predicted
        scores = {"precision": _ratio(len(correct), len(predicted)), "recall": _ratio(len(correct), len(true)),
                  "f1": _f1(len(correct), len(predicted), len(true)), "accuracy": _ratio(right, tokens)}
        for type_ in sorted({entity[1] for entity in true}):
            count = sum(entity[1] == type_ for entity in true)
            scores[f"{type_}_f1"] = _f1(sum(entity[1] == type_ for entity in correct),
                                        sum(entity[1] == type_ for entity in predicted), count)
            scores[f"{type_}_number"] = count
        return scores
