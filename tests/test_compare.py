"""`mtl-bench compare` (harness/analysis/): collecting runs, choosing grid points, the statistics,
the table and CSV, and what a comparison costs and can tell (synthetic records, no training)."""
import csv
import itertools
import math

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from harness.analysis import compare, registry
from harness.analysis.collect import CompareError, RunRecord, collect, stored_per_task
from harness.analysis.plots import _floor
from harness.analysis.registry import statistic
from harness.analysis.report import caption, csv_rows, markdown_table, write_csv
from harness.analysis.rows import Cell, Row, summarise
from harness.analysis.select import select_best
from harness.analysis.statistics import ALPHA, Interval, _needed, bootstrap_difference, frontier, holm, verdict
from harness.analysis.power import chance_level, detectable_difference, seeds_needed
from harness.sweeps import expand, load_spec
from harness.sweeps.labels import parse_label


def paired_power(effect: float, n: int, alpha: float = 0.05) -> float:
    """The power of a two-sided one-sample (paired) t-test, from the noncentral t distribution."""
    crit = stats.t.ppf(1 - alpha / 2, n - 1)
    nc = effect * math.sqrt(n)
    return float(stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc))


@pytest.mark.parametrize("n", [3, 5, 10])
def test_the_detectable_difference_is_where_a_paired_t_test_reaches_80_percent_power(n):
    differences = list(np.random.default_rng(n).normal(0.01, 0.02, size=n))
    sd = np.std(differences, ddof=1)
    mde = detectable_difference(differences)
    assert paired_power(mde / sd, n) == pytest.approx(0.8, abs=1e-3)
    assert paired_power(0.9 * mde / sd, n) < 0.8  # the smallest such difference


def test_with_many_seeds_the_detectable_difference_is_the_normal_closed_form():
    differences = list(np.random.default_rng(0).normal(0.0, 0.03, size=4000))
    sd = np.std(differences, ddof=1)
    closed_form = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd / math.sqrt(len(differences))  # 2.80 sd/sqrt(n)
    assert detectable_difference(differences) == pytest.approx(closed_form, rel=0.01)


def test_the_seeds_needed_are_the_fewest_that_reach_80_percent_power():
    differences = [0.010, 0.030, 0.020, -0.005]
    sd = np.std(differences, ddof=1)
    for target in (0.01, 0.02, 0.05):
        n = seeds_needed(target, differences)
        assert paired_power(target / sd, n) >= 0.8 > paired_power(target / sd, n - 1)
    assert math.isnan(seeds_needed(0.01, [0.02]))  # one seed: no spread to plan from
    assert math.isnan(detectable_difference([0.02, 0.02]))  # no spread


def test_a_difference_many_times_the_seeds_spread_needs_two_seeds_not_more():
    # ia3 against the heads alone in docs/results-lowparam-quick.md: a difference of 0.145 over seeds
    # whose differences spread by about 0.006. scipy's noncentral t gives NaN power at some n for such
    # effects, which once read as "needs 6 seeds" while 0.02 needed 3.
    differences = [0.139, 0.145, 0.151]
    assert seeds_needed(0.145, differences) == 2
    needed = [seeds_needed(d, differences) for d in (0.01, 0.02, 0.05, 0.1, 0.145, 0.3, 1.0)]
    assert needed == sorted(needed, reverse=True)  # a larger difference never needs more seeds


@pytest.mark.parametrize("effect,n", [(1.5, 4), (3.0, 3), (5.0, 2), (10.0, 2)])
def test_the_integrated_power_is_the_noncentral_t_power_where_scipy_computes_it(effect, n, monkeypatch):
    from statsmodels.stats.power import TTestPower

    from harness.analysis.power import t_test_power

    expected = paired_power(effect, n)
    monkeypatch.setattr(TTestPower, "power", lambda self, **kwargs: math.nan)  # force the integral
    assert t_test_power(effect, n) == pytest.approx(expected, abs=1e-6)


def test_chance_is_the_majority_class_for_a_classification_metric_and_0_for_a_correlation():
    labels = [0, 0, 0, 1, 2, 2]
    assert chance_level("accuracy", labels) == pytest.approx(0.5)
    assert chance_level("macro_f1", labels) == pytest.approx((2 * 0.5 / 1.5) / 3)  # F1 2/3 on class 0, 0 on two
    assert chance_level("mcc", labels) == 0.0
    assert chance_level("pearson", [0.1, 3.2, 4.0]) == 0.0


def test_stored_per_added_task_is_the_tasks_own_parts_and_head_plus_an_encoder_copy_when_it_was_fine_tuned():
    metrics = {"params/encoder": 1000, "params/task_specific/sst": 30, "params/task_specific/sts": 10,
               "params/head/sst": 5, "params/head/sts": 1}
    assert stored_per_task(metrics, ["sst", "sts"], encoder_trained=False) == 23  # mean(35, 11)
    assert stored_per_task(metrics, ["sst", "sts"], encoder_trained=True) == 1023


def record(label, seed, overall, trainable, scores=None, validation=None):
    return RunRecord(f"{label}-{seed}", label, parse_label(label).variant, seed, scores or {}, overall, trainable, 1.0, 60.0,
                     validation=validation, trainable=trainable, encoder_params=1000, stored_per_task=trainable // 4)


def test_the_frontier_marks_the_rows_that_no_cheaper_row_matches():
    rows = [Row(v, overall=Cell(s), trainable_params=c, overall_formula="f")
            for v, s, c in (("a", 0.70, 1000), ("b", 0.69, 100), ("c", 0.60, 500), ("d", 0.70, 2000),
                            ("e", 0.50, 10), ("f", math.nan, 1))]
    on = frontier(rows, "trainable")
    assert [r.variant for r, yes in zip(rows, on) if yes] == ["a", "b", "e"]  # d: a scores as well for less


def test_compare_rows_carry_costs_power_and_the_frontier(monkeypatch):
    base = [0.70, 0.71, 0.69]
    records = [record("multitask", s, base[s], 1000) for s in range(3)]
    records += [record("lora", s, base[s] - 0.01 + 0.002 * s, 40) for s in range(3)]
    records += [record("pals-top", s, base[s] + 0.001 * (s - 1) + 0.0005, 1200) for s in range(3)]
    records += [record("embert", s, base[s] - 0.02, 1100) for s in range(3)]
    rows = {r.variant: r for r in summarise(records, "multitask", "seeds", 0, detect=0.02)}
    lora = rows["lora"]
    assert (lora.trainable_params, lora.trainable_fraction, lora.stored_per_task) == (40, 0.04, 10)
    deltas = [records[3 + s].overall - records[s].overall for s in range(3)]  # about -0.010, -0.008, -0.006
    assert lora.stats["detectable"] == pytest.approx(detectable_difference(deltas))
    assert lora.stats["seeds_for_detect"] == seeds_needed(0.02, deltas)
    # pals-top scores 0.0005 more at more cost (on the frontier); embert less at more cost (off it).
    assert [v for v, r in rows.items() if r.stats["frontier"]] == ["multitask", "lora", "pals-top"]
    table = markdown_table(list(rows.values()), "multitask", "seeds", detect=0.02)
    assert "| seeds to detect 0.02 |" in table.splitlines()[0]
    line = next(t for t in table.splitlines() if t.startswith("| lora |"))
    assert "| 40 (0.04x) | 10 (0.01x) | **yes** |" in line
    assert "| 1,100 (1.1x) | 275 (0.275x) |  |" in next(t for t in table.splitlines() if t.startswith("| embert |"))
    # lora's -0.008 with little spread needs no more than its 3 seeds; pals-top's +0.0005 would need many more.
    assert "t-test on" not in line
    pals = rows["pals-top"].stats
    assert pals["seeds_for_observed"] > 3
    assert pals["caveats"] == f"t-test on 3 seeds; the observed Δ needs {_needed(pals['seeds_for_observed'])}"


def test_a_verdict_from_two_seeds_at_chance_is_flagged_not_read_as_a_finding(tmp_path):
    """The case a user met: every model at chance, 2 seeds, and a t-test with one degree of freedom
    that called a variant better. The table names the chance level and the missing seeds."""
    def predictions(n, majority=1):
        labels = np.array([majority] * (n - n // 3) + [0] * (n // 3), dtype=float)
        return {"ids": [str(i) for i in range(n)], "pred": np.full(n, majority, dtype=float), "label": labels}

    records = []
    for label, shift in (("multitask", 0.0), ("embert", 0.004)):
        for seed in (0, 1):
            sst = 2 / 3 - 0.01 + shift + 0.0001 * seed  # at (below) the majority class's accuracy
            r = RunRecord(f"{label}-{seed}", label, label, seed, {"sst": sst}, sst, 0, 1.0, 60.0, formula="f",
                          trainable=10, encoder_params=1000)
            r.predictions = {"sst": predictions(30)}  # what load_predictions would read from the run
            records.append(r)
    monkey_client = object()  # chance_levels reads the records' predictions, already loaded
    rows = {r.variant: r for r in summarise(records, "multitask", "seeds", 0, client=monkey_client,
                                            folder=tmp_path)}
    embert = rows["embert"].stats
    assert embert["chance"].at_chance == "sst,overall" and embert["chance"].overall == pytest.approx(2 / 3)
    assert "not above chance: sst, overall" in embert["caveats"]
    assert "overall 0.667" in caption(list(rows.values()), "multitask", "seeds")


def test_bars_start_at_zero():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.bar([0, 1], [0.70, 0.72])
    _floor(ax, [0.69, 0.71])
    assert ax.get_ylim()[0] == 0.0
    ax.bar([2], [-0.2])
    _floor(ax, [-0.2])
    assert ax.get_ylim()[0] == pytest.approx(-0.25)
    plt.close(fig)


def test_experiments_joined_by_commas_are_compared_as_one_and_an_unknown_one_is_named(tracking_uri):
    """A study's rows can come from several experiments (frozen-encoder runs beside fine-tuned ones)."""
    from mlflow.tracking import MlflowClient

    from harness.core import names

    client = MlflowClient(tracking_uri)
    for experiment, label in (("frozen", "multitask freeze_encoder=True"), ("tuned", "multitask")):
        experiment_id = client.create_experiment(experiment)
        for seed in (0, 1):
            run = client.create_run(experiment_id, tags={names.VARIANT: "multitask", names.SEED: str(seed),
                                                         names.SWEEP_LABEL: label})
            client.log_param(run.info.run_id, names.TASKS_PARAM, "sst")
            client.log_metric(run.info.run_id, names.primary_key("sst"), 0.3 + seed / 10)
            client.log_metric(run.info.run_id, names.TASK_SPECIFIC_TOTAL, 0)
            client.set_terminated(run.info.run_id)
    records, _ = collect(client, experiment="frozen, tuned", out=lambda *_: None)
    assert sorted((r.label, r.seed) for r in records) == [("multitask", 0), ("multitask", 1),
                                                           ("multitask freeze_encoder=True", 0),
                                                           ("multitask freeze_encoder=True", 1)]
    assert {r.label for r in collect(client, experiment="tuned", out=lambda *_: None)[0]} == {"multitask"}
    with pytest.raises(CompareError, match="no experiment 'nope'"):
        collect(client, experiment="tuned,nope")


def _predictions(labels, correct_fraction, rng):
    labels = np.asarray(labels, dtype=float)
    pred = labels.copy()
    wrong = rng.random(len(labels)) > correct_fraction
    pred[wrong] = (labels[wrong] + 1) % 5
    return {"ids": [str(i) for i in range(len(labels))], "pred": pred, "label": labels}


def _sts(labels, noise, rng):
    labels = np.asarray(labels, dtype=float)
    return {"ids": [str(i) for i in range(len(labels))], "pred": labels + rng.normal(0, noise, len(labels)),
            "label": labels}


def test_the_paired_bootstrap_separates_a_real_difference_from_noise():
    rng = np.random.default_rng(0)
    n = 800
    sst, quora, sts = rng.integers(0, 5, n), rng.integers(0, 2, n), rng.uniform(0, 5, n)

    def model(accuracy, noise):
        return {"sst": _predictions(sst, accuracy, rng), "quora": _predictions(quora, accuracy, rng),
                "sts": _sts(sts, noise, rng)}

    same = model(0.6, 1.5)
    observed, low, high = bootstrap_difference([(same, same)], ["sst", "quora", "sts"], resamples=200)
    assert observed == 0 and low == 0 and high == 0
    # Two models of the same quality, different mistakes: the interval straddles 0.
    observed, low, high = bootstrap_difference([(model(0.6, 1.5), model(0.6, 1.5)) for _ in range(2)],
                                               ["sst", "quora", "sts"], resamples=300)
    assert low < 0 < high
    # A clearly better model: the whole interval is above 0, around the observed difference.
    observed, low, high = bootstrap_difference([(model(0.8, 0.5), model(0.6, 1.5))], ["sst", "quora", "sts"],
                                               resamples=300)
    assert 0 < low < observed < high


def test_compare_names_a_sweep_that_is_not_in_the_store(tracking_uri):
    MlflowClient(tracking_uri).search_experiments()  # creates the store
    with pytest.raises(CompareError, match="no sweep 'nope'"):
        compare(sweep="nope", tracking_uri=tracking_uri, out=lambda *_: None)


@pytest.mark.parametrize("row, test, expected", [
    (dict(delta_overall=0.02, ci_low=0.01, ci_high=0.03, p_seeds=0.01, p_seeds_holm=0.01), "both", "better"),
    (dict(delta_overall=-0.02, ci_low=-0.03, ci_high=-0.01, p_seeds=0.01, p_seeds_holm=0.01), "both", "worse"),
    (dict(delta_overall=0.02, ci_low=0.01, ci_high=0.03, p_seeds=0.20, p_seeds_holm=0.20), "both", "within noise"),
    (dict(delta_overall=0.02, ci_low=-0.01, ci_high=0.03, p_seeds=0.01, p_seeds_holm=0.01), "both", "within noise"),
    (dict(delta_overall=0.02, ci_low=-0.01, ci_high=0.03, p_seeds=0.01, p_seeds_holm=0.01), "seeds", "better"),
    # raw p below 0.05, Holm-adjusted not: the adjusted one decides
    (dict(delta_overall=0.02, ci_low=0.01, ci_high=0.03, p_seeds=0.03, p_seeds_holm=0.09), "both", "within noise"),
    (dict(delta_overall=0.02, ci_low=0.01, ci_high=0.03, p_seeds=float("nan"), p_seeds_holm=float("nan")),
     "both", "better"),  # 1 seed
    (dict(delta_overall=0.02, ci_low=float("nan"), ci_high=float("nan"), p_seeds=float("nan"),
          p_seeds_holm=float("nan")), "seeds", "untested"),  # 1 seed, no bootstrap: no test ran, no verdict
])
def test_a_difference_is_called_only_when_every_test_that_ran_finds_it(row, test, expected):
    ci = Interval(row["ci_low"], row["ci_high"])
    assert verdict(row["delta_overall"], row["p_seeds_holm"], ci, test) == expected


@pytest.mark.parametrize("raw, adjusted", [
    ([0.01, 0.04, 0.03, 0.20], [0.04, 0.09, 0.09, 0.20]),  # 4*0.01; 3*0.03; max(2*0.04, 0.09); 1*0.20
    ([0.4, 0.5, 0.6], [1.0, 1.0, 1.0]),  # 1.2, 1.0, 0.6 -> capped at 1, then kept monotone
    ([0.01, float("nan"), 0.04], [0.02, float("nan"), 0.04]),  # no t-test: NaN, and not counted in m
    ([0.03], [0.03]),  # one comparison: nothing to correct
    ([], []),
])
def test_holm_adjusts_p_values_step_down_monotone_and_capped_at_1(raw, adjusted):
    result = holm(raw)
    assert result == pytest.approx(adjusted, nan_ok=True)
    tested = sorted((p, a) for p, a in zip(raw, result) if not np.isnan(p))
    assert all(a1 <= a2 <= 1 for (_, a1), (_, a2) in itertools.pairwise(tested))
    assert all(a >= p for p, a in tested)


def _records(deltas: dict[str, list[float]]) -> list:
    """Synthetic runs: the baseline and each variant at seeds 0-2, overall = baseline's + delta."""
    base = [0.50, 0.52, 0.54]
    records = [RunRecord(f"multitask-{s}", "multitask", "multitask", s, {}, base[s], 0, 1.0, 60.0) for s in range(3)]
    for variant, ds in deltas.items():
        records += [RunRecord(f"{variant}-{s}", variant, variant, s, {}, base[s] + d, 10, 1.1, 60.0)
                    for s, d in enumerate(ds)]
    return records


def test_a_variant_beyond_noise_before_the_holm_correction_and_not_after_is_within_noise():
    clear = [0.100, 0.101, 0.102]  # t ~ 175: beyond noise after any correction
    marginal = [0.015, 0.030, 0.0225]  # t ~ 5.2, 2 df: raw p ~ 0.035
    noise = {"pals-parallel": [0.01, -0.02, 0.005], "combined": [-0.01, 0.02, 0.0]}

    alone = {r.variant: r.stats for r in summarise(_records({"pals-top": marginal}), "multitask", "seeds", 0)}
    assert alone["pals-top"]["p_seeds"] < ALPHA
    assert alone["pals-top"]["p_seeds_holm"] == pytest.approx(alone["pals-top"]["p_seeds"])  # 1 comparison
    assert alone["pals-top"]["verdict"] == "better"

    rows = summarise(_records({"embert": clear, "pals-top": marginal, **noise}), "multitask", "seeds", 0)
    by = {r.variant: r.stats for r in rows}
    pals = by["pals-top"]
    assert pals["p_seeds"] == pytest.approx(alone["pals-top"]["p_seeds"])
    assert pals["p_seeds"] < ALPHA <= pals["p_seeds_holm"]  # 2nd smallest of 4: 3 x raw
    assert pals["p_seeds_holm"] == pytest.approx(3 * pals["p_seeds"])
    assert pals["verdict"] == "within noise"
    assert by["embert"]["p_seeds_holm"] < ALPHA and by["embert"]["verdict"] == "better"
    assert by["multitask"]["verdict"] == "" and np.isnan(by["multitask"]["p_seeds_holm"])
    header = list(csv_rows(rows)[0])
    assert header.index("p_seeds_holm") == header.index("p_seeds") + 1  # next to the raw one in the CSV

    table = markdown_table(rows, "multitask", "seeds")
    assert "| p (paired t, seeds) | p Holm-adjusted |" in table
    assert f"| {pals['p_seeds']:.3f} | {pals['p_seeds_holm']:.3f} |" in table
    assert "Holm (step-down) is applied to the t-test p-values across the 4 comparison(s)" in caption(
        rows, "multitask", "seeds")


def test_compare_orders_rows_by_the_sweeps_variant_order_else_baseline_first_then_by_parameter_cost():
    """A plugin variant sorts by what it costs, not last behind a fixed list of in-tree names."""
    costs = {"multitask": 0, "pals-top": 900, "lowrank-plugin": 40, "embert": 3}
    records = [RunRecord(f"{v}-{s}", v, v, s, {}, 0.5 + 0.01 * s, n, 1.0, 60.0)
               for v, n in costs.items() for s in range(2)]
    rows = summarise(records, "multitask", "seeds", 0)
    assert [r.variant for r in rows] == ["multitask", "embert", "lowrank-plugin", "pals-top"]
    rows = summarise(records, "multitask", "seeds", 0, order=["pals-top", "multitask", "lowrank-plugin"])
    assert [r.variant for r in rows] == ["pals-top", "multitask", "lowrank-plugin", "embert"]


def test_select_best_breaks_a_tie_on_validation_by_the_first_label_in_order():
    """The documented tie rule (harness/analysis/select.py select_best): of grid points with the same
    validation score, the first label in sorted order wins, whatever the order the runs come in."""
    def record(label, seed, dev, validation):
        return RunRecord(f"{label}-{seed}", label, parse_label(label).variant, seed, {}, dev, 0, 1.0, 60.0,
                         validation=validation)

    tied = [record("multitask lr=1e-05", 0, 0.61, 0.70), record("multitask lr=0.001", 0, 0.55, 0.70),
            record("multitask lr=0.0001", 0, 0.80, 0.60)]
    assert sorted(r.label for r in tied)[0] == "multitask lr=0.0001"  # the first label overall, but not tied
    for runs in (tied, tied[::-1], [tied[1], tied[0], tied[2]]):
        selected, chosen = select_best(runs)
        assert [(r.label, r.overall) for r in selected] == [("multitask", 0.55)]  # lr=0.001 < lr=1e-05
        assert [c.point for c in chosen] == ["lr=0.001"]


def test_select_best_by_validation_takes_each_variants_best_point_per_seed_and_reports_its_dev():
    def record(variant, point, seed, dev, validation):
        label = f"{variant} lr={point}"
        return RunRecord(f"{label}-{seed}", label, variant, seed, {}, dev, 0 if variant == "multitask" else 10,
                         1.0, 60.0, validation=validation)

    records = [  # pals-top's best point on validation differs by seed; its best dev point is never chosen
        record("multitask", 1e-5, 0, 0.60, 0.61), record("multitask", 3e-5, 0, 0.62, 0.60),
        record("multitask", 1e-5, 1, 0.61, 0.62), record("multitask", 3e-5, 1, 0.63, 0.60),
        record("pals-top", 1e-4, 0, 0.70, 0.65), record("pals-top", 1e-3, 0, 0.75, 0.64),
        record("pals-top", 1e-4, 1, 0.66, 0.60), record("pals-top", 1e-3, 1, 0.80, 0.66),
    ]
    selected, chosen = select_best(records)
    assert {(r.variant, r.seed): (r.label, r.overall) for r in selected} == {
        ("multitask", 0): ("multitask", 0.60), ("multitask", 1): ("multitask", 0.61),
        ("pals-top", 0): ("pals-top", 0.70), ("pals-top", 1): ("pals-top", 0.80)}
    assert [(c.variant, c.seed, c.point, c.candidates) for c in chosen] == [
        ("multitask", 0, "lr=1e-05", 2), ("multitask", 1, "lr=1e-05", 2), ("pals-top", 0, "lr=0.0001", 2),
        ("pals-top", 1, "lr=0.001", 2)]
    rows = {r.variant: r.stats for r in summarise(selected, "multitask", "seeds", 0)}
    assert rows["pals-top"]["delta_overall"] == pytest.approx(((0.70 - 0.60) + (0.80 - 0.61)) / 2)
    with pytest.raises(CompareError, match="1 run\\(s\\) have no val/overall metric .*pals-top lr=0.001 seed 1"):
        select_best(records[:-1] + [record("pals-top", 1e-3, 1, 0.80, None)])
    # NaN (a constant predictor's correlation) is a score, the worst: never chosen over a number.
    with_nan = [record("pals-top", 1e-4, 1, 0.66, float("nan")) if (r.variant, r.seed, r.overall) == (
        "pals-top", 1, 0.66) else r for r in records]
    selected, _ = select_best(with_nan)
    assert {(r.variant, r.seed): r.overall for r in selected}[("pals-top", 1)] == 0.80


def test_select_over_keeps_the_other_grid_settings_as_rows_of_their_own():
    """lr x freeze_encoder for lora only: selecting over lr gives a frozen and a fine-tuned lora row,
    each at its own best lr, both compared with the baseline's row (which has no freeze_encoder)."""
    def record(label, seed, dev, validation):
        return RunRecord(f"{label}-{seed}", label, parse_label(label).variant, seed, {}, dev, 10, 1.0, 60.0,
                         validation=validation)

    records = [record("multitask lr=1e-05", s, 0.60, 0.60) for s in (0, 1)] + [
        record("multitask lr=3e-05", s, 0.65, 0.50) for s in (0, 1)] + [
        record("lora freeze_encoder=False lr=0.0001", s, 0.70, 0.70) for s in (0, 1)] + [
        record("lora freeze_encoder=False lr=0.001", s, 0.50, 0.40) for s in (0, 1)] + [
        record("lora freeze_encoder=True lr=0.0001", s, 0.55, 0.50) for s in (0, 1)] + [
        record("lora freeze_encoder=True lr=0.001", s, 0.62 + s / 100, 0.60) for s in (0, 1)]
    selected, chosen = select_best(records, ("lr",))
    assert sorted({r.label for r in selected}) == ["lora freeze_encoder=False", "lora freeze_encoder=True",
                                                   "multitask"]
    assert {(c.variant, c.seed): c.point for c in chosen}[("lora freeze_encoder=True", 1)] == "lr=0.001"
    rows = {r.variant: r.stats for r in summarise(selected, "multitask", "seeds", 0)}
    assert rows["lora freeze_encoder=True"]["delta_overall"] == pytest.approx((0.62 + 0.63) / 2 - 0.60)
    assert rows["lora freeze_encoder=False"]["delta_overall"] == pytest.approx(0.10)
    # Every grid point a row of its own: lora is compared with multitask at the same lr, whatever
    # its freeze_encoder (a setting multitask does not have).
    plain = records + [record("lora freeze_encoder=True lr=1e-05", s, 0.58, 0.5) for s in (0, 1)]
    rows = {r.variant: r.stats for r in summarise(plain, "multitask", "seeds", 0)}
    assert rows["lora freeze_encoder=True lr=1e-05"]["delta_overall"] == pytest.approx(0.58 - 0.60)
    assert rows["lora freeze_encoder=True lr=1e-05"]["paired_seeds"] == 2
    assert rows["lora freeze_encoder=True lr=0.001"]["paired_seeds"] == 0  # multitask has no lr=0.001
    # Without --select-over every grid setting is chosen among: one lora row.
    assert sorted({r.label for r in select_best(records)[0]}) == ["lora", "multitask"]
    with pytest.raises(CompareError, match=r"--select-over: \['lrr'\] not among the grid settings"):
        select_best(records, ("lrr",))


def test_select_over_a_variant_option_chooses_among_the_labels_a_sweep_gives_its_jobs():
    """compare reads a job's option from its label as it reads a setting: `--select-over variant.rank`
    gives a lora row per lr, each at its best rank, paired with multitask at the same lr."""
    jobs = expand(load_spec(None, "s", ["multitask", "lora"], [0, 1], grid=["variant.rank=4,8,16", "lr=1e-4,1e-3"]))
    rank = {4: 0.50, 8: 0.70, 16: 0.60}  # rank 8 best on validation; rank 16 best on dev (never chosen)
    records = [RunRecord(j.key, j.label, j.variant, j.seed, {}, 0.9 if j.options.get("rank") == 16 else 0.6,
                         10, 1.0, 60.0, validation=rank.get(j.options.get("rank"), 0.5)) for j in jobs]
    selected, chosen = select_best(records, ("variant.rank",))
    assert sorted({r.label for r in selected}) == ["lora lr=0.0001", "lora lr=0.001", "multitask lr=0.0001",
                                                   "multitask lr=0.001"]
    assert {c.point for c in chosen if c.variant.startswith("lora")} == {"variant.rank=8"}
    assert all(c.candidates == 3 for c in chosen if c.variant.startswith("lora"))
    rows = {r.variant: r.stats for r in summarise(selected, "multitask", "seeds", 0)}
    assert rows["lora lr=0.001"]["paired_seeds"] == 2 and rows["lora lr=0.001"]["delta_overall"] == pytest.approx(0)
    # Without --select-over, lr and rank are chosen among together.
    assert {c.point.split()[-1] for c in select_best(records)[1] if c.variant == "lora"} == {"variant.rank=8"}


def test_a_registered_statistic_is_a_column_of_the_table_and_the_csv(monkeypatch, tmp_path):
    """Adding a statistic is one registered function: its value on every row, its column in
    compare.md (after the built-in results, before the costs) and at the end of compare.csv."""
    monkeypatch.setattr(registry, "STATISTICS", dict(registry.STATISTICS))  # registered for this test only

    @statistic("median_delta", title="median Δ over seeds", cell=lambda v: "-" if math.isnan(v) else f"{v:+.4f}")
    def median_delta(row, study):
        return float(np.median(row.runs.deltas)) if row.runs.compared else math.nan

    rows = summarise(_records({"pals-top": [0.01, 0.05, 0.02], "embert": [-0.03, 0.0, -0.01]}), "multitask",
                     "seeds", 0)
    assert {r.variant: r.stats["median_delta"] for r in rows} == pytest.approx(
        {"multitask": math.nan, "pals-top": 0.02, "embert": -0.01}, nan_ok=True)
    header, _, *lines = markdown_table(rows, "multitask", "seeds").splitlines()
    assert "| caveats | median Δ over seeds | trainable params (x encoder) |" in header
    assert next(line for line in lines if line.startswith("| pals-top |")).split(" | ")[
        header.split(" | ").index("median Δ over seeds")] == "+0.0200"
    write_csv(rows, tmp_path / "compare.csv")
    with open(tmp_path / "compare.csv", newline="") as fp:
        table = {r["variant"]: r for r in csv.DictReader(fp)}
    assert list(table["embert"])[-2:] == ["frontier", "median_delta"]
    assert float(table["embert"]["median_delta"]) == pytest.approx(-0.01)
    assert table["multitask"]["median_delta"] == "nan"


def test_every_markdown_table_has_as_many_cells_in_each_line_as_in_its_header():
    """A delimiter row one cell short is not a table to GitHub's renderer: the page shows raw text."""
    from harness.analysis.report import task_difference_table

    import dataclasses

    records = [dataclasses.replace(r, scores={"sst": r.overall, "sts": r.overall / 2})
               for r in _records({"pals-top": [0.01, 0.05, 0.02], "embert": [-0.03, 0.0, -0.01]})]
    rows = summarise(records, "multitask", "seeds", 0)
    for table, shown in ((markdown_table(rows, "multitask", "seeds"), 3), (task_difference_table(rows, "multitask"), 2)):
        lines = [line for line in table.splitlines() if line.startswith("|")]
        widths = {line.strip().strip("|").count("|") for line in lines}
        assert len(lines) == shown + 2 and len(widths) == 1, table


def test_compare_takes_the_task_file_of_runs_that_trained_file_tasks(tmp_path, tracking_uri, capsys):
    """Runs of tasks declared in a file (--task-file) are compared once that file is given; without it
    the error names the run's recorded task file."""
    from mlflow.tracking import MlflowClient

    from harness.cli import main as cli_main
    from harness.core import names

    task_file = tmp_path / "tasks.yaml"
    task_file.write_text("tasks:\n  notes:\n    format: csv\n    files: {train: t.csv, dev: d.csv}\n"
                         "    kind: classification\n    num_classes: 2\n    text_columns: [text]\n"
                         "    label_column: label\n    title: Notes\n")
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("file-tasks")
    for seed in (0, 1):
        run = client.create_run(experiment_id, tags={names.VARIANT: "multitask", names.SEED: str(seed)})
        client.log_param(run.info.run_id, names.TASKS_PARAM, "sst,notes")
        client.log_param(run.info.run_id, "task_file", str(task_file))
        client.log_metric(run.info.run_id, names.primary_key("sst"), 0.3 + seed / 10)
        client.log_metric(run.info.run_id, "dev/notes/accuracy", 0.8)  # its task not registered here
        client.log_metric(run.info.run_id, names.TASK_SPECIFIC_TOTAL, 0)
        predictions = tmp_path / f"predictions-{seed}"
        predictions.mkdir()
        for task in ("sst", "notes"):  # the dev predictions compare reads for chance levels
            (predictions / f"dev-{task}.csv").write_text("id,prediction,label\n0,1,1\n1,0,1\n2,1,0\n")
        client.log_artifacts(run.info.run_id, str(predictions), names.PREDICTIONS)
        client.set_terminated(run.info.run_id)
    common = ["compare", "--experiment", "file-tasks", "--tracking-uri", tracking_uri, "--test", "seeds",
              "--out", str(tmp_path / "out")]
    assert cli_main(common) == 2
    err = capsys.readouterr().err
    assert "unknown task 'notes'" in err and f"--task-file (the run's: {task_file})" in err
    assert cli_main([*common, "--task-file", str(task_file)]) == 0
    table = (tmp_path / "out" / "compare.md").read_text()
    assert "| Notes acc |" in table and "| multitask | 2 | 0.350 ± 0.071 | 0.800 ± 0.000 |" in table
