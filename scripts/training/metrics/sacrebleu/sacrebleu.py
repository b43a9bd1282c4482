"""Corpus BLEU computed by the `sacrebleu` package (Post 2018), as an `evaluate` metric that loads offline
(evaluate 0.4.6 ships no metric scripts): `evaluate.load(str(METRICS_DIR / "sacrebleu"))`, METRICS_DIR from
`vanilla_transformer.scripts.training.translation_eval` (this folder, installed with the package).
Self-contained, since `evaluate.load` copies this file into its module cache and imports it from there.

Defaults are the standard WMT setting: detokenized, cased output against raw references, 13a tokenization,
exponential smoothing; the returned `signature` records them.

    bleu = evaluate.load(path)
    bleu.compute(predictions=["a dog runs ."], references=[["a dog runs ."]])["score"]   # 0 to 100
"""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Corpus BLEU (Papineni et al. 2002) as computed by sacreBLEU, with its signature."
_INPUTS = """
Args:
    predictions: one detokenized hypothesis per segment.
    references: per segment, one reference string or a list of references (the same number for every segment).
    tokenize: sacreBLEU tokenizer ("13a", "intl", "zh", "ja-mecab", "char", "none", ...).
    lowercase: case-insensitive BLEU.
    smooth_method: "exp", "floor", "add-k" or "none"; smooth_value its parameter.
Returns:
    {"score", "counts", "totals", "precisions", "bp", "sys_len", "ref_len", "signature"}
"""


class SacreBleu(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Post, 2018. A Call for Clarity in Reporting BLEU Scores.",
            inputs_description=_INPUTS,
            features=[
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            reference_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(
        self, predictions, references, tokenize="13a", lowercase=False, smooth_method="exp", smooth_value=None
    ):
        references = [[r] if isinstance(r, str) else list(r) for r in references]
        if len({len(r) for r in references}) > 1:
            raise ValueError("sacreBLEU needs the same number of references for every segment")
        metric = sacrebleu.BLEU(
            tokenize=tokenize, lowercase=lowercase, smooth_method=smooth_method, smooth_value=smooth_value
        )
        result = metric.corpus_score(predictions, [list(streams) for streams in zip(*references)])
        return {
            "score": result.score,
            "counts": result.counts,
            "totals": result.totals,
            "precisions": result.precisions,
            "bp": result.bp,
            "sys_len": result.sys_len,
            "ref_len": result.ref_len,
            "signature": str(metric.get_signature()),
        }
