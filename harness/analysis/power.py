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
    sd = float(np.std(differences, ddof=1)) if len(differences) > 1 else math.nan
    if not sd > 0 or not difference:
        return math.nan
    effect = abs(difference) / sd
    for n in range(2, most + 1):  # the smallest whole number of seeds that reaches the power
        if t_test_power(effect, n, alpha) >= power:
            return n
    return most + 1


def t_test_power(effect: float, n: int, alpha: float = ALPHA) -> float:
    """The power of a two-sided one-sample (paired) t-test over n seeds for a standardised effect.

    statsmodels' TTestPower, from scipy's noncentral t. For large effects (a difference many times
    the seeds' spread) scipy's noncentral t returns NaN at some n (e.g. effect 10 at n = 3), which
    would read as "not enough seeds"; there the power is integrated directly: P(T > c) =
    E over V ~ chi2(n - 1) of P(Z > c sqrt(V / (n - 1)) - effect sqrt(n)), Z standard normal.
    """
    import warnings

    from scipy import integrate, stats
    from statsmodels.stats.power import TTestPower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(TTestPower().power(effect_size=effect, nobs=n, alpha=alpha, alternative="two-sided"))
    if math.isfinite(value):
        return value
    df, shift = n - 1, effect * math.sqrt(n)
    critical = float(stats.t.isf(alpha / 2, df))

    def tail(sign: float) -> float:  # P(sign * T > critical)
        def inner(v: float) -> float:
            return stats.chi2.pdf(v, df) * stats.norm.sf(critical * math.sqrt(v / df) - sign * shift)
        return integrate.quad(inner, 0, math.inf, limit=200)[0]

    return min(1.0, tail(1.0) + tail(-1.0))


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
