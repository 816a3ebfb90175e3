"""How much a comparison of seeds can tell: the smallest difference a paired t-test would detect,
the seeds needed for a given difference (statsmodels' power analysis of the one-sample t-test,
which the paired test is on the per-seed differences), and each task's chance level.
"""
from __future__ import annotations

import math

import numpy as np

POWER = 0.8
ALPHA = 0.05  # two-sided, as the table's t-test


def detectable_difference(differences: list[float], power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest true mean difference that a two-sided paired t-test over these seeds detects
    with probability `power`: Cohen's d solved for the seeds' count, times the differences' standard
    deviation. NaN with fewer than 2 seeds or no spread (nothing to estimate it from)."""
    from statsmodels.stats.power import TTestPower

    n = len(differences)
    sd = float(np.std(differences, ddof=1)) if n > 1 else math.nan
    if n < 2 or not sd > 0:
        return math.nan
    effect = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power, alternative="two-sided")
    return float(effect) * sd


def seeds_needed(difference: float, differences: list[float], power: float = POWER, alpha: float = ALPHA,
                 most: int = 10_000) -> float:
    """Seeds a two-sided paired t-test needs to detect a true mean difference `difference` with
    probability `power`, given the spread of the per-seed differences seen (at least 2). NaN if the
    spread cannot be estimated; `most` + 1 stands for "more than `most`"."""
    from statsmodels.stats.power import TTestPower

    sd = float(np.std(differences, ddof=1)) if len(differences) > 1 else math.nan
    if not sd > 0 or not difference:
        return math.nan
    analysis = TTestPower()
    effect = abs(difference) / sd
    for n in range(2, most + 1):  # the smallest whole number of seeds that reaches the power
        if analysis.power(effect_size=effect, nobs=n, alpha=alpha, alternative="two-sided") >= power:
            return n
    return most + 1


def chance_level(metric: str, labels) -> float:
    """A task's primary metric for a predictor that ignores its input: the majority class for a
    classification metric (accuracy, macro-F1, MCC of the constant prediction), r = 0 for a
    correlation."""
    from harness.tasks.metrics import METRICS

    if metric in ("pearson", "spearman"):
        return 0.0
    labels = np.asarray(labels, dtype=float)
    values, counts = np.unique(labels, return_counts=True)
    majority = values[np.argmax(counts)]
    return float(METRICS[metric].fn(np.full(labels.shape, majority), labels))
