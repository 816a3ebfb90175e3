import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk

from harness.tasks.metrics import METRICS, accuracy, macro_f1, mcc, pearson, spearman, task_metrics
from harness.tasks import get_task, overall_formula


def test_accuracy_against_numpy():
    rng = np.random.default_rng(0)
    preds, labels = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    assert accuracy(preds, labels) == pytest.approx(np.mean(preds == labels))
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5


def test_pearson_and_spearman_against_scipy():
    rng = np.random.default_rng(1)
    preds = rng.normal(size=100)
    labels = preds + rng.normal(size=100)
    assert pearson(preds, labels) == pytest.approx(stats.pearsonr(preds, labels)[0], rel=1e-12)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    # Spearman is Pearson of the ranks: a monotone, non-linear map keeps it at 1.
    assert spearman(preds, np.exp(preds)) == pytest.approx(1.0)
    assert pearson(preds, np.exp(preds)) < 0.95
    assert spearman(preds, labels) == pytest.approx(stats.spearmanr(preds, labels).statistic, rel=1e-12)
    assert math.isnan(spearman([2, 2, 2], [1, 2, 3]))


def test_macro_f1_and_mcc_by_hand():
    labels = [0, 0, 1, 1, 2, 2]
    preds = [0, 2, 0, 1, 2, 2]
    # per class (tp, fp, fn): 0: (1, 1, 1), 1: (1, 0, 1), 2: (2, 1, 0); F1 = 2tp / (2tp + fp + fn)
    f1 = [2 * 1 / (2 * 1 + 1 + 1), 2 * 1 / (2 * 1 + 0 + 1), 2 * 2 / (2 * 2 + 1 + 0)]
    assert macro_f1(preds, labels) == pytest.approx(np.mean(f1))
    assert macro_f1(preds, labels) == pytest.approx(sk.f1_score(labels, preds, average="macro"))
    assert mcc(preds, labels) == pytest.approx(sk.matthews_corrcoef(labels, preds))
    assert mcc([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert mcc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.0  # a constant predictor
    assert mcc([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


def test_macro_f1_weighs_every_class_alike_whatever_its_support():
    """Unbalanced classes, where macro and support-weighted F1 differ."""
    labels = [0, 0, 0, 0, 1]
    preds = [0, 0, 0, 1, 1]
    # class 0: (tp, fp, fn) = (3, 0, 1), F1 6/7; class 1: (1, 1, 0), F1 2/3
    assert macro_f1(preds, labels) == pytest.approx((6 / 7 + 2 / 3) / 2)
    assert (4 * 6 / 7 + 1 * 2 / 3) / 5 != pytest.approx((6 / 7 + 2 / 3) / 2)  # weighted by support: another value
    # A class only predicted, never a label, counts as one class with F1 0 (the classes present in either).
    # class 0: (2, 0, 0), F1 1; class 1: (1, 0, 1), F1 2/3; class 2: (0, 1, 0), F1 0
    assert macro_f1([0, 0, 1, 2], [0, 0, 1, 1]) == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_task_metrics_follow_the_spec_and_errors_name_the_metric():
    assert task_metrics(get_task("sts"), [0.0, 1.0, 2.0], [0.0, 2.0, 4.0]) == {"pearson": pytest.approx(1.0)}
    assert task_metrics(get_task("sst"), [1, 2], [1, 3]) == {"accuracy": 0.5}
    with pytest.raises(ValueError, match="accuracy needs two equal arrays"):
        accuracy([1, 2], [1])
    assert {m for m, v in METRICS.items() if v.kind == "regression"} == {"pearson", "spearman"}


def test_overall_is_the_cs224n_mean_for_handout_sets_and_the_primary_mean_otherwise():
    metrics = {"sst": {"accuracy": 0.5}, "quora": {"accuracy": 0.7}, "sts": {"pearson": 0.2},
               "cfimdb": {"accuracy": 0.9}}
    formula = overall_formula(list(metrics))
    assert formula.name == "cs224n" and formula.score(metrics) == pytest.approx((0.5 + 0.7 + 0.6) / 3)
    assert formula.describe() == "cs224n: mean(sst/accuracy, quora/accuracy, (sts/pearson + 1) / 2)"
    assert overall_formula(["sst", "quora", "sts"]).name == "cs224n"
    # Any other set: the mean of the primary metrics (the single-task baseline's set, a subset).
    assert overall_formula(["sst", "cfimdb"]).describe() == "mean: mean(sst/accuracy, cfimdb/accuracy)"
    assert overall_formula(["sts"]).score({"sts": {"pearson": 0.5}}) == pytest.approx(0.75)


def test_a_formula_of_several_metrics_per_task_averages_each_tasks_terms_first():
    """Two terms of one task make one task score (their mean), not two of the formula's equal terms;
    the CS224N formula (one term per task) scores exactly what its flat mean did."""
    from harness.tasks import OverallFormula

    formula = OverallFormula((("pair", "f1", False), ("pair", "accuracy", False), ("sim", "pearson", True)), "two")
    metrics = {"pair": {"f1": 0.9, "accuracy": 0.5}, "sim": {"pearson": 0.2}}
    assert formula.score(metrics) == pytest.approx(((0.9 + 0.5) / 2 + (0.2 + 1) / 2) / 2)
    assert formula.score(metrics) != pytest.approx((0.9 + 0.5 + 0.6) / 3)  # the flat mean: another value
    assert formula.describe() == "two: mean(mean(pair/f1, pair/accuracy), (sim/pearson + 1) / 2)"
    assert formula.score({"pair": {"f1": 0.9}, "sim": {"pearson": 0.2}}) is None  # a term's metric missing
    handout = {"sst": {"accuracy": 0.51}, "quora": {"accuracy": 0.73}, "sts": {"pearson": 0.37}}
    assert overall_formula(list(handout)).score(handout) == sum([0.51, 0.73, (0.37 + 1.0) / 2.0]) / 3  # bit for bit
