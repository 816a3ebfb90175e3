"""`mtl-bench compare`: what a comparison costs and what it can tell (synthetic records, no training)."""
import math

import numpy as np
import pytest
from scipy import stats

from harness import compare as cmp
from harness.compare import RunRecord, _needed, frontier, markdown_table, stored_per_task, summarise
from harness.power import chance_level, detectable_difference, seeds_needed


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
    return RunRecord(f"{label}-{seed}", label, label.split()[0], seed, scores or {}, overall, trainable, 1.0, 60.0,
                     validation=validation, trainable=trainable, encoder_params=1000, stored_per_task=trainable // 4)


def test_the_frontier_marks_the_rows_that_no_cheaper_row_matches():
    rows = [{"variant": v, "overall_mean": s, "trainable_params": c, "overall_formula": "f"}
            for v, s, c in (("a", 0.70, 1000), ("b", 0.69, 100), ("c", 0.60, 500), ("d", 0.70, 2000),
                            ("e", 0.50, 10), ("f", math.nan, 1))]
    frontier(rows, "trainable")
    assert [r["variant"] for r in rows if r["frontier"]] == ["a", "b", "e"]  # d: a scores as well for less


def test_compare_rows_carry_costs_power_and_the_frontier(monkeypatch):
    base = [0.70, 0.71, 0.69]
    records = [record("multitask", s, base[s], 1000) for s in range(3)]
    records += [record("lora", s, base[s] - 0.01 + 0.002 * s, 40) for s in range(3)]
    records += [record("pals-top", s, base[s] + 0.001 * (s - 1) + 0.0005, 1200) for s in range(3)]
    records += [record("embert", s, base[s] - 0.02, 1100) for s in range(3)]
    rows = {r["variant"]: r for r in summarise(records, "multitask", "seeds", 0, detect=0.02)}
    lora = rows["lora"]
    assert (lora["trainable_params"], lora["trainable_fraction"], lora["stored_per_task"]) == (40, 0.04, 10)
    deltas = [records[3 + s].overall - records[s].overall for s in range(3)]  # about -0.010, -0.008, -0.006
    assert lora["detectable"] == pytest.approx(detectable_difference(deltas))
    assert lora["seeds_for_detect"] == seeds_needed(0.02, deltas)
    # pals-top scores 0.0005 more at more cost (on the frontier); embert less at more cost (off it).
    assert [v for v, r in rows.items() if r["frontier"]] == ["multitask", "lora", "pals-top"]
    table = markdown_table(list(rows.values()), "multitask", "seeds", detect=0.02)
    assert "| seeds to detect 0.02 |" in table.splitlines()[0]
    line = next(t for t in table.splitlines() if t.startswith("| lora |"))
    assert "| 40 (0.04x) | 10 (0.01x) | **yes** |" in line
    assert "| 1,100 (1.1x) | 275 (0.275x) |  |" in next(t for t in table.splitlines() if t.startswith("| embert |"))
    # lora's -0.008 with little spread needs no more than its 3 seeds; pals-top's +0.0005 would need many more.
    assert "t-test on" not in line
    pals = rows["pals-top"]
    assert pals["seeds_for_observed"] > 3
    assert cmp.caveats(pals) == f"t-test on 3 seeds; the observed Δ needs {_needed(pals['seeds_for_observed'])}"


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
    rows = {r["variant"]: r for r in summarise(records, "multitask", "seeds", 0, client=monkey_client,
                                               folder=tmp_path)}
    embert = rows["embert"]
    assert embert["at_chance"] == "sst,overall" and embert["chance_overall"] == pytest.approx(2 / 3)
    assert "not above chance: sst, overall" in cmp.caveats(embert)
    caption = cmp.caption(list(rows.values()), "multitask", "seeds")
    assert "overall 0.667" in caption


def test_bars_start_at_zero():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.bar([0, 1], [0.70, 0.72])
    cmp._floor(ax, [0.69, 0.71])
    assert ax.get_ylim()[0] == 0.0
    ax.bar([2], [-0.2])
    cmp._floor(ax, [-0.2])
    assert ax.get_ylim()[0] == pytest.approx(-0.25)
    plt.close(fig)


def test_experiments_joined_by_commas_are_compared_as_one_and_an_unknown_one_is_named(tracking_uri):
    """A study's rows can come from several experiments (frozen-encoder runs beside fine-tuned ones)."""
    from mlflow.tracking import MlflowClient

    from harness import names

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
    records, _ = cmp.collect(client, experiment="frozen, tuned", out=lambda *_: None)
    assert sorted((r.label, r.seed) for r in records) == [("multitask", 0), ("multitask", 1),
                                                           ("multitask freeze_encoder=True", 0),
                                                           ("multitask freeze_encoder=True", 1)]
    assert {r.label for r in cmp.collect(client, experiment="tuned", out=lambda *_: None)[0]} == {"multitask"}
    with pytest.raises(cmp.CompareError, match="no experiment 'nope'"):
        cmp.collect(client, experiment="tuned,nope")
