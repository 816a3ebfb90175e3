"""The GLUE tasks (harness/tasks/glue.py): each reader on small made-up files written in GLUE's real
layouts (headers, CoLA's headerless train/dev, label strings, quote characters), bad rows named by
file and line, the binary F1, the GLUE score, MNLI's matched and mismatched dev sets scored by one
head, and one real training of three GLUE tasks."""
from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as sk

import harness.tasks.glue as glue  # registers the GLUE tasks, as the entry point `glue` does
from harness.testing import REPO
from harness.testing import run_cli as cli
from harness.tasks import DataError, get_group, get_task, overall_formula
from harness.tasks.metrics import f1
from harness.training.data import read_rows

MNLI_COLUMNS = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
# Per task: its folder, the header of train, dev and test (None: no header), and one row of each.
# `i` numbers the row, `label` is its label as the file writes it.
LABELS = {"cola": ["0", "1"], "sst2": ["0", "1"], "mrpc": ["0", "1"], "qqp": ["0", "1"],
          "stsb": ["0.000", "2.500", "5.000", "3.800"], "mnli": ["entailment", "neutral", "contradiction"],
          "qnli": ["entailment", "not_entailment"], "rte": ["entailment", "not_entailment"], "wnli": ["0", "1"]}
EXPECTED = {"cola": [0, 1], "sst2": [0, 1], "mrpc": [0, 1], "qqp": [0, 1], "stsb": [0.0, 2.5, 5.0, 3.8],
            "mnli": [0, 1, 2], "qnli": [0, 1], "rte": [0, 1], "wnli": [0, 1]}


def s(i: int, word: str = "sentence") -> str:
    return f"the {word} number {i} , it's fine"


LAYOUT = {
    "cola": ("CoLA", None, ["index", "sentence"],
             lambda i, label: ["gj04", label, "" if label == "1" else "*", s(i)],
             lambda i: [str(i), s(i)]),
    "sst2": ("SST-2", ["sentence", "label"], ["index", "sentence"],
             lambda i, label: [s(i), label], lambda i: [str(i), s(i)]),
    "mrpc": ("MRPC", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
             ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
             lambda i, label: [label, str(1000 + i), str(2000 + i), s(i), s(i, "paraphrase")],
             lambda i: [str(i), str(1000 + i), str(2000 + i), s(i), s(i, "paraphrase")]),
    "qqp": ("QQP", ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], ["id", "question1", "question2"],
            lambda i, label: [str(500 + i), str(i), str(i + 1), s(i, "question") + "?", s(i, "query") + "?", label],
            lambda i: [str(500 + i), s(i, "question") + "?", s(i, "query") + "?"]),
    "stsb": ("STS-B", ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
                       "sentence2", "score"],
             ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"],
             lambda i, label: [str(i), "main-captions", "MSRvid", "2012test", "0001", "none", "none", s(i),
                               s(i, "caption"), label],
             lambda i: [str(i), "main-captions", "MSRvid", "2012test", "0001", "none", "none", s(i), s(i, "caption")]),
    # MNLI's texts hold quote characters, unbalanced: read as text (csv.QUOTE_NONE), never as quoting.
    "mnli": ("MNLI", MNLI_COLUMNS + ["label1", "gold_label"], MNLI_COLUMNS,
             lambda i, label: [str(i), str(100 + i), f"{100 + i}e", "slate", "( ( The x ) y )", "( z )", "(ROOT (S))",
                               "(ROOT (S))", f'He said "it {i} is fine', f'"Fine {i}," she said "', label, label],
             lambda i: [str(i), str(100 + i), f"{100 + i}e", "slate", "( a )", "( b )", "(ROOT)", "(ROOT)",
                        f'He said "it {i} is fine', f'She said "{i}"']),
    "qnli": ("QNLI", ["index", "question", "sentence", "label"], ["index", "question", "sentence"],
             lambda i, label: [str(i), f'What is "x{i}?', f'The "answer" is {i}.', label],
             lambda i: [str(i), f'What is "x{i}?', f'The "answer" is {i}.']),
    "rte": ("RTE", ["index", "sentence1", "sentence2", "label"], ["index", "sentence1", "sentence2"],
            lambda i, label: [str(i), s(i), s(i, "hypothesis"), label], lambda i: [str(i), s(i), s(i, "hypothesis")]),
    "wnli": ("WNLI", ["index", "sentence1", "sentence2", "label"], ["index", "sentence1", "sentence2"],
             lambda i, label: [str(i), s(i), s(i, "hypothesis"), label], lambda i: [str(i), s(i), s(i, "hypothesis")]),
}


def write_glue(folder: Path, tasks=glue.GLUE_TASKS, rows: int = 12) -> Path:
    """Made-up files of `tasks` in GLUE's layout under folder/<Task>/ (train, dev, test; MNLI's dev and
    test matched and mismatched). Labels cycle through the task's label strings."""
    for task in tasks:
        name, header, test_header, row, test_row = LAYOUT[task]
        (folder / name).mkdir(parents=True, exist_ok=True)
        dev_names = ["dev_matched", "dev_mismatched"] if task == "mnli" else ["dev"]
        for offset, split in enumerate(["train", *dev_names]):
            file_header = header
            if task == "mnli" and split != "train":  # dev files: five annotators' labels, then gold_label
                file_header = MNLI_COLUMNS + ["label1", "label2", "label3", "label4", "label5", "gold_label"]
            lines = [] if file_header is None else ["\t".join(file_header)]
            for i in range(rows):
                labels = LABELS[task]
                label = labels[(i + offset) % len(labels)]
                fields = row(100 * offset + i, label)
                if task == "mnli" and split != "train":  # label1 (already there), label2-5, gold_label
                    fields = fields[:-1] + [label] * 4 + fields[-1:]
                lines.append("\t".join(fields))
            (folder / name / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        for split in (["test_matched", "test_mismatched"] if task == "mnli" else ["test"]):
            lines = ["\t".join(test_header)] + ["\t".join(test_row(i)) for i in range(5)]
            (folder / name / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def glue_data(tmp_path) -> Path:
    return write_glue(tmp_path / "glue_data")


@pytest.mark.parametrize("task", glue.GLUE_TASKS)
def test_each_reader_reads_the_real_layout_of_train_dev_and_test(glue_data, task):
    spec = get_task(task)
    train = read_rows(glue_data / spec.file("train"), spec)
    assert len(train) == 12
    labels = EXPECTED[task]
    assert train.labels == [float(labels[i % len(labels)]) for i in range(12)]
    assert all(len(t) == len(spec.text_columns) and all(t) for t in train.texts)
    dev = read_rows(glue_data / spec.file("dev"), spec)
    assert dev.labels[0] == float(labels[1 % len(labels)])  # the dev file's labels start one further on
    test = read_rows(glue_data / spec.file("test"), spec, labelled=False)
    assert len(test) == 5 and test.ids == [str(500 + i) if task == "qqp" else str(i) for i in range(5)]
    if spec.id_column:  # an id column: its values; none (CoLA, SST-2, MRPC): the line number
        assert train.ids[0] == ("500" if task == "qqp" else "0")
    else:
        assert train.ids[:2] == (["1", "2"] if task == "cola" else ["2", "3"])  # CoLA: no header line


def test_cola_reads_its_headerless_files_and_mnli_and_qnli_keep_quote_characters(glue_data):
    cola = read_rows(glue_data / "CoLA/train.tsv", get_task("cola"))
    assert cola.texts[0] == (s(0),) and cola.labels[:2] == [0.0, 1.0]
    mnli = read_rows(glue_data / "MNLI/dev_mismatched.tsv", get_task("mnli"))
    assert mnli.texts[0] == ('He said "it 200 is fine', '"Fine 200," she said "')
    assert mnli.labels[:3] == [2.0, 0.0, 1.0]  # contradiction, entailment, neutral (the file's offset 2)
    qnli = read_rows(glue_data / "QNLI/train.tsv", get_task("qnli"))
    assert qnli.texts[1] == ('What is "x1?', 'The "answer" is 1.') and qnli.labels[:2] == [0.0, 1.0]


@pytest.mark.parametrize("task, file, line, replace, message", [
    ("mnli", "MNLI/train.tsv", 3, ("\tneutral\tneutral", "\tneutral\tmaybe"),
     r"line 3: gold_label 'maybe' is not one of \['entailment', 'neutral', 'contradiction'\]"),
    ("rte", "RTE/dev.tsv", 2, ("\tnot_entailment", "\tentails"), r"line 2: label 'entails' is not one of"),
    ("cola", "CoLA/train.tsv", 2, ("gj04\t1", "gj04\t2"), r"line 2: label '2' is out of range \(expected an integer"),
    ("stsb", "STS-B/train.tsv", 3, ("\t2.500", "\t7.5"), r"line 3: score '7.5' is out of range \(expected a number in"),
    ("qqp", "QQP/train.tsv", 2, ("?\t0", "?"), r"line 2: expected 6 tab-separated fields \(id, .*\), found 5"),
    ("sst2", "SST-2/dev.tsv", 1, ("sentence\tlabel", "text\tlabel"),
     r"line 1: header \['text', 'label'\] lacks column\(s\) \['sentence'\]"),
    ("wnli", "WNLI/train.tsv", 2, ("\t" + s(0) + "\t", "\t \t"), r"line 2: empty sentence1"),
])
def test_a_bad_row_is_an_error_naming_the_file_and_line(glue_data, task, file, line, replace, message):
    path = glue_data / file
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert replace[0] in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(replace[0], replace[1], 1)
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}, ") + message):
        read_rows(path, get_task(task))
    if line > 1:  # lenient: the row skipped, with its line and problem
        rows = read_rows(path, get_task(task), lenient=True)
        assert len(rows) == 11 and rows.skipped[0][0] == line


def test_f1_is_the_positive_class_f1_of_scikit_learn():
    rng = np.random.default_rng(0)
    preds, labels = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    assert f1(preds, labels) == pytest.approx(sk.f1_score(labels, preds))
    # tp 2, fp 1, fn 1: 2 * 2 / (2 * 2 + 1 + 1)
    assert f1([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(4 / 6)
    assert f1([0, 0, 0], [1, 0, 1]) == 0.0  # nothing predicted positive
    assert task_metrics_of("mrpc", [1, 0, 1, 1], [1, 0, 0, 1]) == {"f1": pytest.approx(0.8), "accuracy": 0.75}


def task_metrics_of(task, preds, labels):
    from harness.tasks.metrics import task_metrics

    return task_metrics(get_task(task), preds, labels)


def test_the_glue_score_averages_a_tasks_metrics_first_then_the_nine_tasks_raw():
    metrics = {"cola": {"mcc": 0.5}, "sst2": {"accuracy": 0.9}, "mrpc": {"f1": 0.8, "accuracy": 0.7},
               "qqp": {"f1": 0.6, "accuracy": 0.8}, "stsb": {"pearson": 0.9, "spearman": 0.7},
               "mnli": {"accuracy": 0.8, "accuracy_mismatched": 0.6}, "qnli": {"accuracy": 0.85},
               "rte": {"accuracy": 0.65}, "wnli": {"accuracy": 0.55}}
    by_hand = (0.5 + 0.9 + 0.75 + 0.7 + 0.8 + 0.7 + 0.85 + 0.65 + 0.55) / 9
    formula = overall_formula(get_group("glue").tasks)
    assert formula.name == "glue" and formula.score(metrics) == pytest.approx(by_hand)
    assert "mean(mnli/accuracy, mnli/accuracy_mismatched)" in formula.describe()
    assert "cola/mcc" in formula.describe() and "(cola/mcc + 1) / 2" not in formula.describe()
    del metrics["mnli"]["accuracy_mismatched"]
    assert formula.score(metrics) is None  # a term's metric missing: no score, not a smaller mean


def test_mnli_is_one_head_scored_on_its_matched_and_mismatched_dev_files(glue_data, tiny_bert):
    """evaluate scores the mismatched file with MNLI's own head: the same predictions as scoring that
    file by hand with the model, and no head or task of its own."""
    from accelerate import Accelerator

    from harness.core.config import TrainConfig
    from harness.model.network import build_model, load_encoder
    from harness.tasks.metrics import accuracy
    from harness.training.data import load_task_data, tokenize_rows
    from harness.training.evaluation import dev_metric_names, evaluate, predict_dataset
    from variants import make_config

    encoder, tokenizer = load_encoder(str(tiny_bert))
    model = build_model(encoder, "multitask", make_config("multitask", {"tasks": "mnli,cola"}), "joint")
    assert sorted(model.heads) == ["cola", "mnli"]
    config = TrainConfig(model=str(tiny_bert), data_dir=str(glue_data), max_length=32, tasks="mnli,cola",
                         cache_dir=str(glue_data.parent / "cache"))
    data = load_task_data(glue_data, ["mnli", "cola"], tokenizer, 32, cache_dir=config.cache_dir)
    accelerator = Accelerator(cpu=True)
    metrics, rows = evaluate(model, data, config, accelerator)
    assert set(metrics["mnli"]) == {"accuracy", "accuracy_mismatched"} and set(metrics["cola"]) == {"mcc"}
    model.eval()  # as evaluate predicts: without dropout
    for file, metric in (("dev_matched", "accuracy"), ("dev_mismatched", "accuracy_mismatched")):
        file_rows = read_rows(glue_data / f"MNLI/{file}.tsv", get_task("mnli"))
        dataset = tokenize_rows(file_rows, get_task("mnli"), tokenizer, 32, "joint", config.cache_dir)
        preds, _ = predict_dataset(model, "mnli", dataset, config, accelerator)
        assert metrics["mnli"][metric] == pytest.approx(accuracy(preds, file_rows.labels))
    assert [r[0] for r in rows["mnli_mismatched"]] == [str(i) for i in range(200, 212)]
    names = dev_metric_names(metrics)
    assert {"dev/mnli/accuracy", "dev/mnli/accuracy_mismatched", "dev/cola/mcc"} <= set(names)


def test_mtl_bench_tasks_lists_the_glue_tasks_and_group(capsys):
    import argparse

    from harness.cli.commands import cmd_tasks

    cmd_tasks(argparse.Namespace(verbose=False, task_file=[]))
    out = capsys.readouterr().out
    assert "dev also MNLI/dev_mismatched.tsv (metrics accuracy_mismatched)" in out
    assert "group glue: cola,sst2,mrpc,qqp,stsb,mnli,qnli,rte,wnli; overall glue: mean(cola/mcc" in out



def test_the_cli_lists_the_default_group_first_whatever_registered_first(tmp_path):
    from harness.testing import run_cli

    listed = run_cli("tasks", env=glue_entry_point(tmp_path / "site"), timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    groups = [line.split(":")[0] for line in listed.stdout.splitlines() if line.startswith("group ")]
    assert groups[0] == "group handout (the default set)" and "group glue" in groups


def glue_entry_point(folder: Path) -> dict:
    """pyproject.toml's task entry points as an installed distribution's metadata on PYTHONPATH: what a
    fresh install of the project gives the CLI (the shared venv's editable install predates `glue`)."""
    entry_points = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    lines = [f"{name} = {value}" for name, value in entry_points["bert_mtl_bench.tasks"].items()]
    dist = folder / "bert_mtl_bench_glue_entry_points-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bert-mtl-bench-glue-entry-points\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[bert_mtl_bench.tasks]\n" + "\n".join(lines) + "\n")
    return {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
def test_a_real_training_of_cola_mnli_and_mrpc_records_every_dev_metric(tmp_path, tiny_bert):
    from mlflow.tracking import MlflowClient

    data = write_glue(tmp_path / "glue_data", ("cola", "mnli", "mrpc"), rows=16)
    env = glue_entry_point(tmp_path / "site")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trained = cli("train", "--variant", "multitask", "--tasks", "cola,mnli,mrpc", "--model", str(tiny_bert),
                  "--data-dir", str(data), "--epochs", "1", "--batches-per-epoch", "3", "--batch-size", "4",
                  "--max-length", "32", "--no-progress", "--tracking-uri", uri, "--output-dir", str(tmp_path / "out"),
                  "--cache-dir", str(tmp_path / "cache"), "--save-model", env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id])
    m = run.data.metrics
    expected = {f"dev/{task}/{metric}" for task in ("cola", "mnli", "mrpc") for metric in get_task(task).dev_metrics}
    assert expected == {"dev/cola/mcc", "dev/mnli/accuracy", "dev/mnli/accuracy_mismatched", "dev/mrpc/f1",
                        "dev/mrpc/accuracy"}
    assert expected <= set(m), sorted(set(m))
    assert "params/head/mnli" in m and not any("mismatched" in k for k in m if k.startswith("params/"))
    # Not the glue formula (the set lacks GLUE tasks): the mean of the primary metrics.
    assert run.data.params["overall_formula"] == "mean: mean((cola/mcc + 1) / 2, mnli/accuracy, mrpc/f1)"
    assert m["dev/overall"] == pytest.approx(((m["dev/cola/mcc"] + 1) / 2 + m["dev/mnli/accuracy"]
                                              + m["dev/mrpc/f1"]) / 3)
    predictions = tmp_path / "out"
    assert any(p.name == "dev-mnli_mismatched.csv" for p in predictions.rglob("*.csv"))
    # `mtl-bench evaluate` scores the saved model on both MNLI dev files, as training logged them.
    evaluated = cli("evaluate", run.info.run_id, "--tracking-uri", uri, env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    for name in ("dev/mnli/accuracy", "dev/mnli/accuracy_mismatched", "dev/overall"):
        assert f"{name}: {m[name]:.4f}" in evaluated.stdout, evaluated.stdout


def test_compare_scores_the_glue_formula_and_shows_mnli_mismatched(tracking_uri, tmp_path):
    """Runs of the nine GLUE tasks logged as a training logs them (every dev metric, the prediction
    files): compare's overall is the GLUE score of the logged metrics, MNLI's mismatched accuracy has
    a column, and the paired bootstrap over dev examples scores the formula's every metric."""
    from mlflow.tracking import MlflowClient

    from harness.analysis.run import compare
    from harness.analysis.statistics import bootstrap_difference
    from harness.core import names
    from harness.tasks.metrics import task_metrics
    from harness.training.evaluation import dev_metric_names, write_predictions

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("glue")
    rng = np.random.default_rng(0)
    labels = {t: (rng.uniform(0, 5, 40).round(1) if t == "stsb" else rng.integers(0, get_task(t).num_classes, 40)
                  .astype(float)) for t in glue.GLUE_TASKS}
    labels["mnli_mismatched"] = rng.integers(0, 3, 30).astype(float)
    logged, loaded = {}, {}
    for variant, correct in (("multitask", 0.6), ("pals", 0.9)):
        for seed in (0, 1):
            preds, metrics = {}, {}
            for unit, y in labels.items():
                task = "mnli" if unit == "mnli_mismatched" else unit
                wrong = rng.random(len(y)) > correct
                spec = get_task(task)
                p = (np.where(wrong, (y + 1) % spec.num_classes, y) if spec.kind == "classification"
                     else y + rng.normal(0, 2.0 - correct * 2, len(y)))
                preds[unit] = list(zip([str(i) for i in range(len(y))], p.tolist(), y.tolist()))
                loaded.setdefault((variant, seed), {})[unit] = {"ids": [str(i) for i in range(len(y))], "pred": p,
                                                                "label": y}
                scored = task_metrics(get_task(task), p, y)
                metrics.setdefault(task, {}).update(scored if unit == task else
                                                    {f"{m}_mismatched": v for m, v in scored.items()})
            run = client.create_run(experiment, tags={names.VARIANT: variant, names.SEED: str(seed)})
            client.log_param(run.info.run_id, names.TASKS_PARAM, ",".join(glue.GLUE_TASKS))
            for key, value in {**dev_metric_names(metrics), names.TASK_SPECIFIC_TOTAL: 0}.items():
                client.log_metric(run.info.run_id, key, value)
            for path in write_predictions(preds, tmp_path / f"{variant}-{seed}"):
                client.log_artifact(run.info.run_id, str(path), names.PREDICTIONS)
            client.set_terminated(run.info.run_id)
            logged[variant, seed] = metrics
    rows = compare(experiment="glue", tracking_uri=tracking_uri, out_dir=str(tmp_path / "compare"), resamples=100,
                   out=lambda *_: None)
    formula = overall_formula(glue.GLUE_TASKS)
    for row in rows:
        seeds = [logged[row.variant, s] for s in (0, 1)]
        assert row.overall.mean == pytest.approx(np.mean([formula.score(m) for m in seeds]))
        assert row.extra["mnli/accuracy_mismatched"].mean == pytest.approx(
            np.mean([m["mnli"]["accuracy_mismatched"] for m in seeds]))
    # The bootstrap's observed difference: the GLUE score of every metric, each from its own dev set.
    observed, _, _ = bootstrap_difference([(loaded["pals", s], loaded["multitask", s]) for s in (0, 1)],
                                          list(glue.GLUE_TASKS), resamples=20)
    assert observed == pytest.approx(np.mean([formula.score(logged["pals", s]) - formula.score(logged["multitask", s])
                                              for s in (0, 1)]))
    pals = next(r for r in rows if r.variant == "pals")
    assert 0 < pals.stats["ci"].low < pals.stats["ci"].high  # clearly better: the interval above 0
    table = (tmp_path / "compare" / "compare.md").read_text()
    assert "| MNLI acc | MNLI acc (mismatched) |" in table
    assert "mnli_accuracy_mismatched_mean" in (tmp_path / "compare" / "compare.csv").read_text()


DATASETS_GLUE = {  # the `datasets` GLUE configs' text columns and label names (nyu-mll/glue)
    "cola": (("sentence",), ["unacceptable", "acceptable"]), "sst2": (("sentence",), ["negative", "positive"]),
    "mrpc": (("sentence1", "sentence2"), ["not_equivalent", "equivalent"]),
    "qqp": (("question1", "question2"), ["not_duplicate", "duplicate"]), "stsb": (("sentence1", "sentence2"), None),
    "mnli": (("premise", "hypothesis"), ["entailment", "neutral", "contradiction"]),
    "qnli": (("question", "sentence"), ["entailment", "not_entailment"]),
    "rte": (("sentence1", "sentence2"), ["entailment", "not_entailment"]),
    "wnli": (("sentence1", "sentence2"), ["not_entailment", "entailment"]),
}


@pytest.mark.parametrize("task", glue.GLUE_TASKS)
def test_the_datasets_writer_writes_files_the_readers_read_with_the_same_labels(tmp_path, task):
    """examples/write_glue_data.py on in-memory `datasets` splits shaped as nyu-mll/glue's (it cannot
    download here): the files it writes read back with the labels' class ids unchanged."""
    import importlib.util

    from datasets import ClassLabel, Dataset, Features, Value

    loaded = importlib.util.spec_from_file_location("write_glue_data", REPO / "examples" / "write_glue_data.py")
    writer = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(writer)
    columns, names = DATASETS_GLUE[task]
    label = Value("float32") if names is None else ClassLabel(names=names)
    features = Features({**{c: Value("string") for c in columns}, "label": label, "idx": Value("int32")})
    labels = [1.5, 4.0, 0.2, 3.25] if names is None else [i % len(names) for i in range(4)]

    def split(rows_labels):
        texts = {c: [f'a "{c}"\twith {i}\nlines' for i in range(len(rows_labels))] for c in columns}
        return Dataset.from_dict({**texts, "label": rows_labels, "idx": list(range(len(rows_labels)))}, features)

    dev = ["validation_matched", "validation_mismatched"] if task == "mnli" else ["validation"]
    test = "test_matched" if task == "mnli" else "test"
    test_labels = [-1.0] * 3 if names is None else [-1] * 3
    writer.write_task(tmp_path, task, {"train": split(labels), **{d: split(labels) for d in dev},
                                       test: split(test_labels)})
    spec = get_task(task)
    for file in ("train", "dev", *spec.extra_dev):
        path = tmp_path / (spec.extra_dev[file] if file in spec.extra_dev else spec.file(file))
        rows = read_rows(path, spec)
        assert rows.labels == pytest.approx(labels)
        assert rows.texts[0] == tuple(f'a "{c}" with 0 lines' for c in columns)
    assert len(read_rows(tmp_path / spec.file("test"), spec, labelled=False)) == 3


def test_an_extra_dev_file_needs_a_metric_name_part_and_names_its_metrics():
    from harness.tasks import TaskError, TaskSpec

    def nli(**extra_dev):
        return TaskSpec("toy-nli", "classification", ("a", "b"), "y", {"train": "t.tsv", "dev": "d.tsv"},
                        num_classes=3, metrics=("accuracy", "mcc"), extra_dev=extra_dev)

    assert nli(far="far.tsv").dev_metrics == ("accuracy", "mcc", "accuracy_far", "mcc_far")
    assert nli(far="far.tsv").metric_source("mcc_far") == ("far", "mcc")
    with pytest.raises(TaskError, match="has no dev metric 'f1_far'"):
        nli(far="far.tsv").metric_source("f1_far")
    with pytest.raises(TaskError, match=r"extra_dev \{'Far Away': 'far.tsv'\}: expected names of lower-case"):
        nli(**{"Far Away": "far.tsv"})


def test_the_preflight_check_finds_a_missing_mismatched_dev_file_or_a_bad_header_before_training(glue_data):
    from harness.training.data import check_data_dir

    check_data_dir(glue_data, list(glue.GLUE_TASKS))
    (glue_data / "MNLI" / "dev_mismatched.tsv").unlink()
    with pytest.raises(DataError, match=re.escape(f"{glue_data / 'MNLI' / 'dev_mismatched.tsv'}: file not found")):
        check_data_dir(glue_data, ["mnli"])
    (glue_data / "QNLI" / "train.tsv").write_text("index\tquestion\ttext\tlabel\n0\tq\ts\tentailment\n")
    with pytest.raises(DataError, match=r"QNLI/train.tsv, line 1: header .* lacks column\(s\) \['sentence'\]"):
        check_data_dir(glue_data, ["qnli"])


def test_the_validation_split_scores_the_glue_formula_without_the_mismatched_term():
    """--validation-fraction holds rows out of train: no mismatched counterpart, so MNLI's score there is its
    matched accuracy alone, and the best epoch is still chosen by a score (not -inf every epoch)."""
    from harness.core import names
    from harness.training.evaluation import dev_metric_names, selection_score

    metrics = {t: {m: 0.5 for m in get_task(t).metrics} for t in glue.GLUE_TASKS}
    metrics["mnli"]["accuracy"] = 0.8
    expected = (8 * 0.5 + 0.8) / 9
    assert dev_metric_names(metrics, names.VALIDATION)["val/overall"] == pytest.approx(expected)
    assert selection_score(metrics) == pytest.approx(expected)
    metrics["mnli"]["accuracy_mismatched"] = 0.2  # dev: the term is there, and counts
    assert selection_score(metrics) == pytest.approx((8 * 0.5 + 0.5) / 9)
