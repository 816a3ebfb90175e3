import math

import numpy as np
import pytest
from scipy import stats

from harness.metrics import accuracy, overall_score, pearson, task_metric


def test_accuracy_against_numpy():
    rng = np.random.default_rng(0)
    preds, labels = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    assert accuracy(preds, labels) == pytest.approx(np.mean(preds == labels))
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5


def test_pearson_against_scipy():
    rng = np.random.default_rng(1)
    preds = rng.normal(size=100)
    labels = preds + rng.normal(size=100)
    assert pearson(preds, labels) == pytest.approx(stats.pearsonr(preds, labels)[0], rel=1e-12)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_task_metric_dispatch_and_errors():
    assert task_metric("sts", [0.0, 1.0, 2.0], [0.0, 2.0, 4.0]) == pytest.approx(1.0)
    assert task_metric("sst", [1, 2], [1, 3]) == 0.5
    with pytest.raises(ValueError, match="equal, non-empty"):
        accuracy([1, 2], [1])


def test_overall_is_the_cs224n_mean():
    assert overall_score({"sst": 0.5, "quora": 0.7, "sts": 0.2, "cfimdb": 0.9}) == pytest.approx((0.5 + 0.7 + 0.6) / 3)
    assert overall_score({"sst": 0.5, "cfimdb": 0.9}) is None
