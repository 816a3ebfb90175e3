"""Dev metrics, chosen per task by name (TaskSpec.metrics): scikit-learn's for classification,
scipy's correlations for regression."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


def _arrays(name: str, predictions, labels, least: int = 1) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
    if predictions.shape != labels.shape or predictions.size < least:
        raise ValueError(f"{name} needs two equal arrays of at least {least} value(s); "
                         f"got {predictions.shape} and {labels.shape}")
    return predictions, labels


def accuracy(predictions: Sequence[float], labels: Sequence[float]) -> float:
    predictions, labels = _arrays("accuracy", predictions, labels)
    return float(np.mean(predictions == labels))


def macro_f1(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """F1 averaged over the classes present in the labels or the predictions (scikit-learn's "macro")."""
    from sklearn.metrics import f1_score

    predictions, labels = _arrays("macro_f1", predictions, labels)
    return float(f1_score(labels, predictions, average="macro", zero_division=0.0))


def f1(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """F1 of the positive class (label 1) of a binary task, scikit-learn's "binary" average (GLUE's F1
    for MRPC and QQP); 0 when nothing is predicted positive or no label is."""
    from sklearn.metrics import f1_score

    predictions, labels = _arrays("f1", predictions, labels)
    return float(f1_score(labels, predictions, average="binary", pos_label=1, zero_division=0.0))


def mcc(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Matthews correlation (multiclass: scikit-learn's generalisation); 0 for a constant predictor."""
    from sklearn.metrics import matthews_corrcoef

    predictions, labels = _arrays("mcc", predictions, labels)
    return float(matthews_corrcoef(labels, predictions))


def _correlation(name: str, fn, predictions, labels) -> float:
    predictions, labels = _arrays(name, predictions, labels, least=2)
    if np.all(predictions == predictions[0]) or np.all(labels == labels[0]):
        return math.nan  # undefined, not an exception: a constant predictor scores NaN (worst)
    return float(fn(predictions, labels).statistic)


def pearson(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson r via scipy; NaN when the predictions are constant."""
    from scipy import stats

    return _correlation("pearson", stats.pearsonr, predictions, labels)


def spearman(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Spearman's rank correlation via scipy; NaN when the predictions are constant."""
    from scipy import stats

    return _correlation("spearman", stats.spearmanr, predictions, labels)


@dataclass(frozen=True)
class Metric:
    fn: Callable[[Sequence[float], Sequence[float]], float]
    kind: str  # the task kind it scores: "classification" or "regression"
    correlation: bool  # in [-1, 1]: mapped to [0, 1] as (r + 1) / 2 in an overall score


METRICS: dict[str, Metric] = {
    "accuracy": Metric(accuracy, "classification", False),
    "macro_f1": Metric(macro_f1, "classification", False),
    "f1": Metric(f1, "classification", False),
    "mcc": Metric(mcc, "classification", True),
    "pearson": Metric(pearson, "regression", True),
    "spearman": Metric(spearman, "regression", True),
}


def task_metrics(spec, predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """Every metric of a task (TaskSpec), by name."""
    return {name: METRICS[name].fn(predictions, labels) for name in spec.metrics}
