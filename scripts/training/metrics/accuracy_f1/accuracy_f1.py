"""Accuracy and F1 for classification, as an `evaluate` metric that loads offline (evaluate 0.4.6 ships no metric
scripts): `evaluate.load(str(METRICS_DIR / "accuracy_f1"))`, METRICS_DIR from
`vanilla_transformer.scripts.training.translation_eval` (this folder, installed with the package). Self-contained (numpy,
datasets, evaluate), since `evaluate.load` copies this file into its module cache and imports it from there.

    metric = evaluate.load(path)
    metric.compute(predictions=[1, 0, 1], references=[1, 1, 1])              # binary F1 of class 1
    metric.compute(predictions=[2, 0, 1], references=[2, 1, 1], average="macro")  # mean of per-class F1
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy (fraction of exact matches) and F1 (harmonic mean of precision and recall)."
_INPUTS = """
Args:
    predictions: predicted class ids. references: true class ids.
    average: "binary" (F1 of `pos_label`) or "macro" (unweighted mean of the F1 of every class seen).
    pos_label: the positive class for average="binary".
Returns:
    {"accuracy": float, "f1": float}
"""


class AccuracyF1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, average: str = "binary", pos_label: int = 1) -> dict:
        predictions, references = np.asarray(predictions), np.asarray(references)
        if average == "binary":
            classes = [pos_label]
        elif average == "macro":
            classes = np.union1d(predictions, references)
        else:
            raise ValueError(f"average={average!r} is not supported; choose 'binary' or 'macro'")
        f1_scores = []
        for label in classes:
            true_positives = np.sum((predictions == label) & (references == label))
            errors = np.sum((predictions == label) != (references == label))  # false positives + false negatives
            denominator = 2 * true_positives + errors
            f1_scores.append(2 * true_positives / denominator if denominator else 0.0)
        return {"accuracy": float(np.mean(predictions == references)), "f1": float(np.mean(f1_scores))}
