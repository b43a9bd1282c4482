"""chrF (Popović 2015) and chrF++ computed by the `sacrebleu` package, as an `evaluate` metric that loads offline
(evaluate 0.4.6 ships no metric scripts): `evaluate.load(str(METRICS_DIR / "chrf"))`, METRICS_DIR from
`vanilla_transformer.scripts.training.translation_eval` (this folder, installed with the package).
Self-contained, since `evaluate.load` copies this file into its module cache and imports it from there.

    chrf = evaluate.load(path)
    chrf.compute(predictions=["a dog runs ."], references=[["a dog runs ."]])["score"]             # chrF
    chrf.compute(predictions=..., references=..., word_order=2)["score"]                          # chrF++
"""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Character n-gram F-score (chrF, chrF++ with word_order=2) as computed by sacreBLEU."
_INPUTS = """
Args:
    predictions: one detokenized hypothesis per segment.
    references: per segment, one reference string or a list of references (the same number for every segment).
    char_order: character n-gram order (6). word_order: word n-gram order (0: chrF, 2: chrF++).
    beta: weight of recall (2). lowercase: case-insensitive. whitespace: count whitespace as characters.
Returns:
    {"score", "char_order", "word_order", "beta", "signature"}
"""


class ChrF(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Popović, 2015. chrF: character n-gram F-score for automatic MT evaluation.",
            inputs_description=_INPUTS,
            features=[
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            reference_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions, references, char_order=6, word_order=0, beta=2, lowercase=False, whitespace=False):
        references = [[r] if isinstance(r, str) else list(r) for r in references]
        if len({len(r) for r in references}) > 1:
            raise ValueError("chrF needs the same number of references for every segment")
        metric = sacrebleu.CHRF(
            char_order=char_order, word_order=word_order, beta=beta, lowercase=lowercase, whitespace=whitespace
        )
        result = metric.corpus_score(predictions, [list(streams) for streams in zip(*references)])
        return {
            "score": result.score,
            "char_order": char_order,
            "word_order": word_order,
            "beta": beta,
            "signature": str(metric.get_signature()),
        }
