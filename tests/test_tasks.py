"""Tasks as plugins (harness/tasks/registry.py), and using a trained run: evaluate, predict, test-set files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA
from harness.testing import run_cli as cli
from harness.training.data import DataError, check_data_dir, load_task_data, read_rows
from harness.tasks import TaskError, TaskSpec, get_task, overall_formula, register_task

HERE = Path(__file__).resolve().parent


def spec(**changes) -> TaskSpec:
    fields = dict(name="toy", kind="classification", text_columns=("a", "b"), label_column="y",
                  files={"train": "toy-train.csv", "dev": "toy-dev.csv"}, num_classes=3)
    return TaskSpec(**{**fields, **changes})


@pytest.mark.parametrize("changes, message", [
    ({"kind": "ranking"}, r"task 'toy': kind 'ranking' is not one of \['classification', 'regression'\]"),
    ({"text_columns": ("a", "b", "c")}, r"text_columns \['a', 'b', 'c'\]: expected one column"),
    ({"files": {"train": "t.csv"}}, r"expected the splits train and dev.*missing \['dev'\]"),
    ({"num_classes": 1}, r"num_classes 1: a classification task needs 2 or more"),
    ({"binary_logit": True}, r"binary_logit needs num_classes 2, not 3"),
    ({"metrics": ("pearson",)}, r"metric 'pearson' scores regression, not classification \(choose from "
                                r"\['accuracy', 'f1', 'macro_f1', 'mcc'\]\)"),
    ({"metrics": ("auc",)}, r"metric 'auc' is not one of"),
    ({"metrics": ("accuracy",), "primary": "mcc"}, r"primary 'mcc' is not one of its metrics \['accuracy'\]"),
    ({"kind": "regression", "label_range": (5.0, 0.0), "metrics": ("pearson",)}, r"label_range \(5.0, 0.0\)"),
])
def test_a_spec_that_cannot_work_is_refused_naming_the_task_and_field(changes, message):
    with pytest.raises(TaskError, match=message):
        spec(**changes)


def test_a_spec_defaults_its_metric_by_kind_and_names_are_checked():
    assert spec(name="toy-default").metrics == ("accuracy",)
    assert spec(name="toy-default-reg", kind="regression").metrics == ("pearson",)
    for bad in ("Toy", "a/b", "a,b", "overall", ""):
        with pytest.raises(TaskError, match="a task's name is lower-case letters"):
            spec(name=bad)
    with pytest.raises(TaskError, match="label_range"):
        spec(kind="regression", label_range=(1.0,))


def test_heads_losses_and_predictions_follow_the_kind(tiny_bert):
    """A regression with a label range not starting at 0 under separate encoding (cosine scaled to
    the range), and a binary task with one logit."""
    import torch

    from harness.model.network import build_model, load_encoder, predictions, task_loss
    from variants import make_config

    rating = register_task(spec(name="toy-rating", kind="regression", label_range=(1.0, 3.0)))
    binary = register_task(spec(name="toy-binary", num_classes=2, binary_logit=True))
    cosine = torch.tensor([-1.0, 0.0, 1.0])
    assert predictions(rating, cosine, "separate").tolist() == [-1.0, 1.0, 3.0]  # 1 + cos x 2: range ends at +-1
    labels = torch.tensor([1.0, 2.0, 3.0])
    assert task_loss(rating, torch.tensor([0.0, 0.5, 1.0]), labels, "separate").item() == pytest.approx(0.0)
    assert task_loss(rating, labels, labels, "joint").item() == 0.0  # joint: the head predicts the value itself
    logits = torch.tensor([-2.0, 3.0])
    assert predictions(binary, logits, "joint").tolist() == [0.0, 1.0]
    assert task_loss(binary, logits, torch.tensor([0.0, 1.0]), "joint").item() == pytest.approx(
        torch.nn.functional.softplus(torch.tensor([-2.0, -3.0])).mean().item())
    encoder, _ = load_encoder(str(tiny_bert))
    model = build_model(encoder, "multitask", make_config("multitask", {"tasks": "toy-rating,toy-binary"}), "separate")
    assert type(model.heads["toy-rating"]).__name__ == "CosineHead"
    assert model.heads["toy-binary"].linear.out_features == 1 and model.heads["toy-binary"].linear.in_features == 96


def test_a_checkpoint_from_before_tasks_had_several_metrics_is_upgraded_and_a_task_set_change_refused(tmp_path):
    from harness.training.checkpoint import LoopState, check_resume_tasks, upgrade_metrics
    from harness.training.distributed import LaunchError

    old = {"sst": 0.41, "sts": 0.8}
    assert upgrade_metrics(old, lambda t: get_task(t).primary_metric) == {"sst": {"accuracy": 0.41},
                                                                         "sts": {"pearson": 0.8}}
    new = {"sst": {"accuracy": 0.41}}
    assert upgrade_metrics(new, lambda t: "unused") == new
    check_resume_tasks(LoopState(), tmp_path, ["sst"])  # written before task sets were recorded
    check_resume_tasks(LoopState(tasks=["sst", "sts"]), tmp_path, ["sst", "sts"])
    with pytest.raises(LaunchError, match="written for tasks sst,sts; this run has sst,quora"):
        check_resume_tasks(LoopState(tasks=["sst", "sts"]), tmp_path, ["sst", "quora"])


def test_registry_knows_the_handout_tasks_and_refuses_a_second_different_spec():
    assert get_task("sst").num_classes == 5 and get_task("quora").binary_logit and get_task("sts").kind == "regression"
    with pytest.raises(TaskError, match="unknown task 'imdb'; known tasks: .*sst, cfimdb, quora, sts"):
        get_task("imdb")
    register_task(spec(name="toy-twice"))
    register_task(spec(name="toy-twice"))  # the same spec again (a module imported twice): harmless
    with pytest.raises(TaskError, match="'toy-twice' is registered twice"):
        register_task(spec(name="toy-twice", num_classes=4))


def test_overall_score_of_a_set_with_a_task_of_ones_own_is_the_mean_of_primary_metrics():
    register_task(spec(name="toy-reg", kind="regression", label_range=(1.0, 3.0), metrics=("spearman", "pearson")))
    register_task(spec(name="toy-cls", metrics=("mcc", "accuracy")))
    formula = overall_formula(["sst", "toy-reg", "toy-cls"])
    assert formula.describe() == "mean: mean(sst/accuracy, (toy-reg/spearman + 1) / 2, (toy-cls/mcc + 1) / 2)"
    metrics = {"sst": {"accuracy": 0.4}, "toy-reg": {"spearman": 0.6, "pearson": 0.0},
               "toy-cls": {"mcc": -0.2, "accuracy": 0.3}}
    assert formula.score(metrics) == pytest.approx((0.4 + 0.8 + 0.4) / 3)
    assert overall_formula(["sst", "quora", "sts"]).name == "cs224n"


def test_a_task_group_declares_its_tasks_and_its_overall_formula_and_one_group_is_the_default():
    from harness.tasks import TaskGroup, default_group, default_tasks, get_group, register_group

    handout = get_group("handout")
    assert default_group() is handout and default_tasks() == ("sst", "cfimdb", "quora", "sts")
    assert get_group("sentiment").tasks == ("sst", "cfimdb") and not get_group("sentiment").terms
    metrics = {"sst": {"accuracy": 0.5}, "cfimdb": {"accuracy": 0.9}, "quora": {"accuracy": 0.7},
               "sts": {"pearson": 0.4}}
    for tasks in (handout.tasks, ("sst", "quora", "sts")):  # the group's formula: the CS224N score, bit for bit
        assert overall_formula(tasks).score(metrics) == float(sum([0.5, 0.7, (0.4 + 1.0) / 2.0]) / 3)
    assert overall_formula(["sst", "cfimdb"]).name == "mean"  # a set without the formula's tasks: the mean
    # A group of one's own, with a formula of its own over some of its tasks.
    register_task(spec(name="toy-g1"))
    register_task(spec(name="toy-g2", kind="regression", metrics=("pearson",)))
    register_task(spec(name="toy-g3"))
    group = register_group(TaskGroup("toy-group", ("toy-g1", "toy-g2", "toy-g3"),
                                     terms=(("toy-g1", "accuracy", False), ("toy-g2", "pearson", True))))
    assert group.formula == "toy-group" and get_group("toy-group") is group
    formula = overall_formula(["toy-g2", "toy-g3", "toy-g1"])
    assert formula.describe() == "toy-group: mean(toy-g1/accuracy, (toy-g2/pearson + 1) / 2)"
    assert formula.score({"toy-g1": {"accuracy": 0.6}, "toy-g2": {"pearson": 0.2}, "toy-g3": {"accuracy": 0.0}}) \
        == pytest.approx((0.6 + 0.6) / 2)
    assert overall_formula(["toy-g1", "sst"]).name == "mean"  # outside the group
    with pytest.raises(TaskError, match="'toy-bad' is declared the default, but 'handout' already is"):
        register_group(TaskGroup("toy-bad", ("toy-g1",), default=True))
    with pytest.raises(TaskError, match=r"terms name \['sst'\], not among its tasks"):
        TaskGroup("toy-bad", ("toy-g1",), terms=(("sst", "accuracy", False),))
    with pytest.raises(TaskError, match="unknown task group 'nope'; known groups: .*handout, sentiment"):
        get_group("nope")


def test_the_run_config_chooses_the_task_set_and_the_variant_receives_it():
    """One setting, --tasks: a variant's config holds the set it was given; without one, single-task
    trains its group (sentiment) and every other variant the default group; a variant option
    `tasks` is refused."""
    from harness.core.config import ConfigError, resolve_config
    from variants import make_config

    def variant_tasks(**settings):
        config = resolve_config(settings)
        return make_config(config.variant, config.variant_settings()).tasks

    assert variant_tasks() == ("sst", "cfimdb", "quora", "sts")
    assert variant_tasks(variant="single-task") == ("sst", "cfimdb")
    assert variant_tasks(variant="single-task", tasks="sst,sts") == variant_tasks(tasks="sst,sts") == ("sst", "sts")
    with pytest.raises(ConfigError, match="tasks: the task set is the run setting --tasks .* use --tasks sst"):
        resolve_config({"variant_options": {"tasks": "sst"}}).variant_settings()


def test_a_tasks_primary_metric_other_than_its_first_is_the_one_the_overall_score_and_compare_use():
    """`primary` names the metric that scores the task, wherever it stands in `metrics`."""
    from harness.core.names import primary_key

    listed_first = register_task(spec(name="toy-first", metrics=("accuracy", "mcc")))
    named = register_task(spec(name="toy-primary", metrics=("accuracy", "mcc"), primary="mcc"))
    assert (listed_first.primary_metric, named.primary_metric) == ("accuracy", "mcc")
    assert primary_key("toy-primary") == "dev/toy-primary/mcc"
    formula = overall_formula(["sst", "toy-primary"])
    assert formula.describe() == "mean: mean(sst/accuracy, (toy-primary/mcc + 1) / 2)"
    metrics = {"sst": {"accuracy": 0.4}, "toy-primary": {"accuracy": 0.9, "mcc": 0.2}}
    assert formula.score(metrics) == pytest.approx((0.4 + (0.2 + 1) / 2) / 2)
    # The same values under the task that leaves it to the first metric: accuracy counts instead.
    assert overall_formula(["sst", "toy-first"]).score(
        {"sst": {"accuracy": 0.4}, "toy-first": {"accuracy": 0.9, "mcc": 0.2}}) == pytest.approx((0.4 + 0.9) / 2)


def test_a_task_with_its_own_reader_and_the_header_check_of_the_default_one(tmp_path, tiny_bert):
    """A task reading JSON lines; and a handout-format task whose file lacks a column."""
    from harness.training.data import TaskRows
    from harness.model.network import load_encoder

    def read_jsonl(path, task, lenient, labelled):
        rows = TaskRows(path)
        for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
            record = json.loads(line)
            if labelled and record.get("y") not in (0, 1):
                raise DataError(f"{path}, line {number}: y {record.get('y')!r} is not 0 or 1")
            rows.ids.append(str(record["id"]))
            rows.texts.append((record["text"],))
            rows.labels.append(float(record.get("y", 0)))
        return rows

    register_task(TaskSpec("toy-jsonl", "classification", ("text",), "y",
                           {"train": "toy.jsonl", "dev": "toy.jsonl"}, num_classes=2, reader=read_jsonl))
    (tmp_path / "toy.jsonl").write_text("\n".join(json.dumps({"id": i, "text": f"sentence {i}", "y": i % 2})
                                                  for i in range(6)))
    _, tokenizer = load_encoder(str(tiny_bert))
    data = load_task_data(tmp_path, ["toy-jsonl"], tokenizer, 16, cache_dir=tmp_path / "cache")
    assert data["toy-jsonl"].dev["label"] == [0.0, 1.0] * 3 and len(data["toy-jsonl"].train) == 6
    (tmp_path / "toy.jsonl").write_text('{"id": 1, "text": "x", "y": 7}')
    with pytest.raises(DataError, match=r"toy.jsonl, line 1: y 7 is not 0 or 1"):
        read_rows(tmp_path / "toy.jsonl", get_task("toy-jsonl"))

    register_task(spec(name="toy-pairs", files={"train": "pairs.csv", "dev": "pairs.csv"}))
    (tmp_path / "pairs.csv").write_text("id\ta\tlabel\n1\tx\t0\n")
    expected = (r"pairs.csv, line 1: header \['id', 'a', 'label'\] lacks column\(s\) \['b', 'y'\] "
                r"\(expected columns \['id', 'a', 'b', 'y'\] for task toy-pairs\)")
    with pytest.raises(DataError, match=expected):
        check_data_dir(tmp_path, ["toy-pairs"])


# ---------------------------------------------------------------------------------------------
# An installed task plugin, trained beside a handout task, then used: evaluate, test files, predict.

NLI_PREMISES = ["a man plays the guitar", "two dogs run in the park", "a woman reads a book", "the child eats an apple",
                "a cat sleeps on the sofa", "people walk along the beach", "a chef cooks pasta", "the band plays jazz"]


def write_nli(folder: Path) -> None:
    """A small 3-class file set: the hypothesis repeats the premise (0), adds to it (1) or negates it (2)."""
    def rows(count: int, start: int, labelled: bool = True):
        out = ["id\tpremise\thypothesis" + ("\tlabel" if labelled else "")]
        for i in range(start, start + count):
            premise, label = NLI_PREMISES[i % len(NLI_PREMISES)], i % 3
            hypothesis = [premise, premise + " today", "it is not true that " + premise][label]
            out.append(f"nli{i}\t{premise}\t{hypothesis}" + (f"\t{label}" if labelled else ""))
        return "\n".join(out) + "\n"

    (folder / "nli-train.csv").write_text(rows(60, 0))
    (folder / "nli-dev.csv").write_text(rows(24, 100))
    (folder / "nli-test.csv").write_text(rows(9, 200, labelled=False))


@pytest.fixture(scope="module")
def nli_plugin(tmp_path_factory):
    """tests/task_plugin_example pip-installed into a folder of its own, on PYTHONPATH for the CLI,
    and imported here (registering `nli` in this process as the entry point does in the CLI's)."""
    target = tmp_path_factory.mktemp("site")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(target), str(HERE / "task_plugin_example")],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    sys.path.insert(0, str(target))
    import mtl_bench_nli  # noqa: F401

    return {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
def test_a_plugin_task_trains_beside_a_handout_task_and_the_run_is_evaluated_predicted_and_submitted(
        tmp_path, tiny_bert, small_data, nli_plugin):
    from mlflow.tracking import MlflowClient

    from harness.training.evaluation import dev_metric_names
    from harness.runs.use import evaluate_run

    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    write_nli(data)
    test_lines = (DATA / "ids-sst-test-student.csv").read_text(encoding="utf-8").splitlines(keepends=True)[:13]
    (data / "ids-sst-test-student.csv").write_text("".join(test_lines), encoding="utf-8")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = nli_plugin

    listed = cli("tasks", env=env)
    assert listed.returncode == 0 and "nli" in listed.stdout and "macro_f1, accuracy, mcc" in listed.stdout

    common = ["--model", str(tiny_bert), "--data-dir", str(data), "--epochs", "2", "--batches-per-epoch", "4",
              "--batch-size", "4", "--max-length", "32", "--no-progress", "--tracking-uri", uri,
              "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--eval-every-epoch"]
    trained = cli("train", "--variant", "pals-parallel", "-o", "pal_size=12", "-o", "pal_heads=2", "--tasks", "sst,nli",
                  "--save-model", *common, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id])
    run_id, m = run.info.run_id, run.data.metrics
    assert run.data.params["overall_formula"] == "mean: mean(sst/accuracy, nli/macro_f1)"
    assert run.data.params["variant.tasks"] == "sst,nli"
    assert {"dev/nli/macro_f1", "dev/nli/accuracy", "dev/nli/mcc", "dev/sst/accuracy"} <= set(m)
    assert m["dev/overall"] == pytest.approx((m["dev/sst/accuracy"] + m["dev/nli/macro_f1"]) / 2)
    assert "params/task_specific/nli" in m and "params/head/nli" in m and "params/task_specific/sts" not in m
    assert m["params/head/nli"] == 3 * 32 + 3  # a 3-class pair task's head, on the joint [CLS]

    # dev scored again from the saved model: the run's metrics (the epoch it reports).
    again = evaluate_run(run_id, "dev", tracking_uri=uri, out_dir=str(tmp_path / "eval"), log=False)
    for name, value in dev_metric_names(again).items():
        assert value == pytest.approx(m[name], abs=1e-6), name
    shown = cli("evaluate", run_id, "--tracking-uri", uri, "--out", str(tmp_path / "eval-cli"), env=env)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"dev/nli/macro_f1: {m['dev/nli/macro_f1']:.4f} (the run logged {m['dev/nli/macro_f1']:.4f}" in shown.stdout

    # The test split: the starter's submission layout, logged to the run.
    submitted = cli("evaluate", run_id, "--split", "test", "--tracking-uri", uri, "--out", str(tmp_path / "sub"),
                    env=env)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    sst_lines = (tmp_path / "sub" / "test" / "sst-test-output.csv").read_text().splitlines(keepends=True)
    assert sst_lines[0] == "id \t Predicted_Sentiment \n"
    ids = [line.split("\t")[2] for line in test_lines[1:]]
    assert [line.split(" , ")[0] for line in sst_lines[1:]] == ids
    assert all(line.endswith(" \n") and line.split(" , ")[1].strip() in {"0", "1", "2", "3", "4"}
               for line in sst_lines[1:])
    nli_lines = (tmp_path / "sub" / "test" / "nli-test-output.csv").read_text().splitlines()
    assert nli_lines[0] == "id \t Predicted_Label " and len(nli_lines) == 10
    logged = {a.path for a in client.list_artifacts(run_id, "predictions/test")}
    assert logged == {"predictions/test/sst-test-output.csv", "predictions/test/nli-test-output.csv"}

    # predict: the same prediction as evaluate gave the same dev example, with its probability.
    dev_first = (data / "nli-dev.csv").read_text().splitlines()[1].split("\t")
    predicted = cli("predict", run_id, "--task", "nli", dev_first[1], dev_first[2], "--tracking-uri", uri, env=env)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    label, score, text = predicted.stdout.strip().split("\t")
    dev_out = (tmp_path / "eval" / "dev" / "nli-dev-output.csv").read_text().splitlines()
    assert dev_out[1] == f"{dev_first[0]} , {label} "
    assert 1 / 3 <= float(score) <= 1 and text == f"{dev_first[1]} ||| {dev_first[2]}"
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{dev_first[1]}\t{dev_first[2]}\n\nonly one sentence\n")
    bad = cli("predict", run_id, "--task", "nli", "--file", str(pairs), "--tracking-uri", uri, env=env)
    assert bad.returncode == 2 and f"{pairs}, line 3: expected two tab-separated sentences" in bad.stderr

    # What cannot be answered: exit 2, one line saying why.
    untrained = cli("predict", run_id, "--task", "sts", "a", "b", "--tracking-uri", uri, env=env)
    assert untrained.returncode == 2 and "did not train task 'sts'; it trained sst, nli" in untrained.stderr
    # A task registered nowhere that the run did not train: said so, not "install the package that registers it".
    unknown = cli("predict", run_id, "--task", "qnli", "a", "b", "--tracking-uri", uri, env=env)
    assert unknown.returncode == 2 and "did not train task 'qnli'; it trained sst, nli" in unknown.stderr
    assert "install" not in unknown.stderr
    without = cli("train", "--variant", "multitask", "--tasks", "sst", *common, env=env)
    assert without.returncode == 0, without.stderr[-2000:]
    (plain,) = [r for r in client.search_runs([run.info.experiment_id]) if r.info.run_id != run_id]
    nothing = cli("evaluate", plain.info.run_id, "--tracking-uri", uri, env=env)
    assert nothing.returncode == 2 and "saved no model" in nothing.stderr and "--save-model" in nothing.stderr
    foreign = tmp_path / "foreign" / "model"
    foreign.mkdir(parents=True)
    (foreign / "model.json").write_text(json.dumps({"format": "some-other-tool"}))
    client.log_artifacts(plain.info.run_id, str(foreign), "model")
    refused = cli("evaluate", plain.info.run_id, "--tracking-uri", uri, env=env)
    assert refused.returncode == 2 and "format 'some-other-tool'" in refused.stderr
    no_test = cli("evaluate", run_id, "--split", "test", "--tasks", "sst", "--data-dir", str(small_data),
                  "--tracking-uri", uri, env=env)
    assert no_test.returncode == 2 and "ids-sst-test-student.csv: file not found" in no_test.stderr
    gone = cli("evaluate", run_id, "--tracking-uri", uri, env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert gone.returncode == 2 and "unknown task 'nli'" in gone.stderr and "install the package" in gone.stderr

    # compare: a column per task of these runs, titled by its primary metric; overall scores of
    # different task sets (mean(sst, nli) and mean(sst)) are marked and not compared.
    compared = cli("compare", "--experiment", "bert-mtl-bench", "--tracking-uri", uri, "--test", "seeds",
                   "--out", str(tmp_path / "compare"), env=env)
    assert compared.returncode == 0, compared.stderr[-2000:]
    header = compared.stdout.splitlines()[0]
    assert header.startswith("| variant | n | SST acc | NLI macro-F1 | overall | Δ overall vs multitask |"), header
    row = next(line for line in compared.stdout.splitlines() if line.startswith("| pals-parallel |"))
    assert f"| {m['dev/nli/macro_f1']:.3f} | {m['dev/overall']:.3f} † | - |" in row
    assert ("† the overall score of another task set (mean: mean(sst/accuracy, nli/macro_f1)), not compared with "
            "multitask's (mean: mean(sst/accuracy))") in compared.stdout
