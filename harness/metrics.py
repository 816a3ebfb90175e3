"""Dev metrics: accuracy for classification and paraphrase, Pearson r for similarity."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from harness.tasks import OVERALL_TASKS, TASKS


def accuracy(predictions: Sequence[float], labels: Sequence[float]) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.size == 0:
        raise ValueError(f"accuracy needs two equal, non-empty arrays; got {predictions.shape} and {labels.shape}")
    return float(np.mean(predictions == labels))


def pearson(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson r via scipy; NaN (not an exception) when the predictions are constant."""
    predictions, labels = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
    if predictions.shape != labels.shape or predictions.size < 2:
        raise ValueError(f"pearson needs two equal arrays of at least 2 values; got {predictions.shape}, {labels.shape}")
    if np.all(predictions == predictions[0]):
        return math.nan
    return float(stats.pearsonr(predictions, labels).statistic)


def task_metric(task: str, predictions: Sequence[float], labels: Sequence[float]) -> float:
    return pearson(predictions, labels) if TASKS[task].metric == "pearson" else accuracy(predictions, labels)


def overall_score(metrics: Mapping[str, float]) -> float | None:
    """mean(SST acc, Quora acc, (STS r + 1) / 2) as in the CS224N evaluation; None if a task is absent."""
    if not all(t in metrics for t in OVERALL_TASKS):
        return None
    return float(np.mean([metrics["sst"], metrics["quora"], (metrics["sts"] + 1.0) / 2.0]))
