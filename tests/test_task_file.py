"""Tasks declared in a YAML file (`--task-file`, harness/tasks/taskfile.py): every format read to the
same rows, string labels mapped, bad fields and bad rows named, conflicts with registered tasks,
groups, the setting in flags, config files and sweep jobs, and a real training whose saved run is
evaluated, predicted and loaded as an MLflow model with the task file gone."""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.tasks import TaskError
from harness.testing import environment, run_cli
from harness.training.data import DataError, check_data_dir, read_rows

ROWS = [("0041", "a fine kettle", "positive"), ("0042", "it broke at once", "negative"), ("0043", "works well", "positive")]
REVIEWS = {"kind": "classification", "text_columns": ["text"], "label_column": "label", "id_column": "id",
           "labels": ["negative", "positive"]}


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """Each test registers into copies of the registries: its tasks are gone after it."""
    from harness.tasks import registry, taskfile

    registry.discover()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_GROUPS", dict(registry._GROUPS))
    monkeypatch.setattr(taskfile, "_LOADED", {})
    monkeypatch.setattr(taskfile, "_ORIGIN", {})


def columns(rows) -> dict[str, list]:
    return {"id": [r[0] for r in rows], "text": [r[1] for r in rows], "label": [r[2] for r in rows]}


def write_rows(folder: Path, format: str, split: str, rows) -> str:
    """`rows` (id, text, label) in `format`; the file's (or folder's) name relative to `folder`."""
    import datasets

    name = f"{split}.{format}"
    if format in ("csv", "tsv"):
        with open(folder / name, "w", newline="", encoding="utf-8") as fp:
            writer = csv.writer(fp, delimiter="\t" if format == "tsv" else ",")
            writer.writerow(["id", "text", "label"])
            writer.writerows(rows)
    elif format == "jsonl":
        (folder / name).write_text("".join(json.dumps(dict(zip(("id", "text", "label"), r))) + "\n" for r in rows))
    elif format == "parquet":
        datasets.Dataset.from_dict(columns(rows)).to_parquet(str(folder / name))
    else:  # disk: one saved Dataset per split
        datasets.Dataset.from_dict(columns(rows)).save_to_disk(str(folder / name))
    return name


def cached_dataset(cache: Path, splits: dict[str, list], folder: Path) -> None:
    """A dataset named `madeup` in a datasets cache folder, as `load_dataset` leaves one (built from
    JSON Lines files by the json builder under that name; nothing downloaded)."""
    from datasets.packaged_modules.json.json import Json

    files = {split: str(folder / write_rows(folder, "jsonl", f"cached-{split}", rows))
             for split, rows in splits.items()}
    Json(cache_dir=str(cache), dataset_name="madeup", data_files=files, hash="0" * 8).download_and_prepare()
    config_folder, = (cache / "madeup").glob("default-*")  # the custom data files' config id, renamed to `default`
    config_folder.rename(config_folder.parent / "default")


def write_task_file(folder: Path, tasks: dict, groups: dict | None = None, name: str = "tasks.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump({"tasks": tasks, **({"groups": groups} if groups else {})}, sort_keys=False))
    return path


def register(path: Path):
    from harness.tasks.taskfile import register_task_files

    return register_task_files(str(path))


def declared(tmp_path: Path, format: str, train=ROWS, dev=ROWS[:2], **fields) -> Path:
    """A task file declaring `reviews` with its train and dev data in `format`."""
    files = {"train": write_rows(tmp_path, format, "train", train), "dev": write_rows(tmp_path, format, "dev", dev)}
    return write_task_file(tmp_path, {"reviews": {"format": format, "files": files, **REVIEWS, **fields}})


SOURCES = ["csv", "tsv", "jsonl", "parquet", "disk", "disk-dict", "cache"]


@pytest.mark.parametrize("source", SOURCES)
def test_each_format_reads_the_same_rows(tmp_path, monkeypatch, source):
    import datasets
    import datasets.config

    if source == "disk-dict":  # a DatasetDict's folder, its `validation` split the task's dev
        datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns(ROWS)),
                              "validation": datasets.Dataset.from_dict(columns(ROWS[:2]))}
                             ).save_to_disk(str(tmp_path / "saved"))
        path = write_task_file(tmp_path, {"reviews": {"format": "disk", "path": "saved",
                                                      "splits": {"train": "train", "dev": "validation"}, **REVIEWS}})
    elif source == "cache":
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
        cached_dataset(tmp_path / "cache", {"train": ROWS, "validation": ROWS[:2]}, tmp_path)
        path = write_task_file(tmp_path, {"reviews": {"format": "cache", "dataset": "madeup",
                                                      "splits": {"train": "train", "dev": "validation"}, **REVIEWS}})
    else:
        path = declared(tmp_path, source)
    spec, = register(path)[0].tasks
    check_data_dir(tmp_path, ["reviews"])  # the preflight: every split there with its columns
    train = read_rows(tmp_path / spec.file("train"), spec)
    dev = read_rows(tmp_path / spec.file("dev"), spec)
    assert (train.ids, train.texts, train.labels) == (["0041", "0042", "0043"], [(r[1],) for r in ROWS], [1.0, 0.0, 1.0])
    assert (dev.ids, dev.labels) == (["0041", "0042"], [1.0, 0.0])  # ids as written, not 41
    assert spec.num_classes == 2


def test_label_mapping_as_a_mapping_and_the_row_index_as_id(tmp_path):
    rows = [("x", "calm", "low"), ("y", "storm", "high"), ("z", "breeze", "mid")]
    path = declared(tmp_path, "jsonl", train=rows, dev=rows, labels={"low": 0, "mid": 1, "high": 2}, id_column=None)
    text = yaml.safe_load(path.read_text())
    del text["tasks"]["reviews"]["id_column"]
    path.write_text(yaml.safe_dump(text))
    spec, = register(path)[0].tasks
    rows_read = read_rows(tmp_path / spec.file("train"), spec)
    assert spec.num_classes == 3 and spec.id_column == ""
    assert rows_read.labels == [0.0, 2.0, 1.0] and rows_read.ids == ["0", "1", "2"]


def test_a_test_split_needs_no_label_column(tmp_path):
    path = declared(tmp_path, "csv")
    (tmp_path / "test.csv").write_text("id,text\nq1,unseen words\n")
    text = yaml.safe_load(path.read_text())
    text["tasks"]["reviews"]["files"]["test"] = "test.csv"
    path.write_text(yaml.safe_dump(text))
    spec, = register(path)[0].tasks
    check_data_dir(tmp_path, ["reviews"], ("test",))
    rows = read_rows(tmp_path / spec.file("test"), spec, labelled=False)
    assert (rows.ids, rows.texts, rows.labels) == (["q1"], [("unseen words",)], [0.0])


def test_the_handout_format_reads_as_the_handout_tasks_do(tmp_path):
    lines = ["\tid\tsentence\tsentiment", "0\th1\tgood\t1", "1\th2\tbad\t0"]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    path = write_task_file(tmp_path, {"polar": {
        "format": "handout", "files": {"train": "train.csv", "dev": "train.csv"}, "kind": "classification",
        "text_columns": "sentence", "label_column": "sentiment", "num_classes": 2}})
    spec, = register(path)[0].tasks
    assert spec.reader is None and spec.id_column == "id"
    rows = read_rows(spec.file("train"), spec)
    assert (rows.ids, rows.labels) == (["h1", "h2"], [1.0, 0.0])


@pytest.mark.parametrize("change, field, expected", [
    ({"colour": "red"}, "colour", "unknown field(s) ['colour']"),
    ({"num_classes": "two"}, "num_classes", "expected an integer, 2 or more, got 'two'"),
    ({"kind": "ranking"}, "kind", "expected classification or regression, got 'ranking'"),
    ({"text_columns": {"a": 1}}, "text_columns", "expected one column name"),
    ({"format": "xml"}, "format", "expected one of ['handout', 'csv'"),
    ({"files": {"train": "nope.csv", "dev": "dev.csv"}}, "files", "nope.csv: no such file"),
    ({"files": {"train": "train.csv"}}, "files", "expected the splits train and dev"),
    ({"labels": ["no", True]}, "labels", "quote the label names"),
    ({"labels": ["a", "b", "c"], "num_classes": 2}, "labels", "3 label(s)"),
    ({"path": "saved"}, "path", "not a field of format csv"),
])
def test_a_bad_field_names_the_file_the_task_and_the_field(tmp_path, change, field, expected):
    path = declared(tmp_path, "csv")
    text = yaml.safe_load(path.read_text())
    text["tasks"]["reviews"].update(change)
    path.write_text(yaml.safe_dump(text))
    with pytest.raises(TaskError) as error:
        register(path)
    message = str(error.value)
    assert f"task file {path}" in message and "'reviews'" in message and field in message, message
    assert expected in message, message


def test_a_missing_column_is_found_before_training(tmp_path):
    path = declared(tmp_path, "jsonl", text_columns=["txt"])
    register(path)
    with pytest.raises(DataError, match=rf"task file {re.escape(str(path))}: task 'reviews': text_columns: column "
                                        r"'txt' is not in .*train.jsonl \(its columns: \['id', 'text', 'label'\]\)"):
        check_data_dir(tmp_path, ["reviews"])


def test_a_key_given_twice_and_an_unknown_group_task_are_refused(tmp_path):
    path = declared(tmp_path, "csv")
    path.write_text(path.read_text().replace("    kind: classification\n",
                                             "    kind: classification\n    kind: regression\n"))
    with pytest.raises(TaskError, match=rf"task file {re.escape(str(path))}, line \d+: .*key 'kind' is given twice"):
        register(path)
    path = declared(tmp_path, "csv")
    text = yaml.safe_load(path.read_text())
    text["groups"] = {"shop": {"tasks": ["reviews", "nosuch"]}}
    path.write_text(yaml.safe_dump(text))
    with pytest.raises(TaskError, match=r"group 'shop': tasks: unknown task 'nosuch'"):
        register(path)


BAD_ROWS = [
    ("label out of range", ("a2", "it broke", 7), {"labels": None, "num_classes": 2}, r"label '?7'? is out of range"),
    ("empty text", ("a2", "", "negative"), {}, "empty text"),
    ("unmapped label", ("a2", "so-so", "neutral"), {}, r"label 'neutral' is not one of the declared labels"),
]


@pytest.mark.parametrize("format", ["csv", "jsonl"])
@pytest.mark.parametrize("problem, bad, fields, expected", BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_a_bad_row_names_the_file_and_row(tmp_path, format, problem, bad, fields, expected):
    numbers = "labels" in fields  # labels as class numbers, not names
    rows = [("a1", "fine", 1 if numbers else "positive"), bad, ("a3", "works", 1 if numbers else "positive")]
    path = declared(tmp_path, format, train=rows, **fields)
    if fields.get("labels", "") is None:
        text = yaml.safe_load(path.read_text())
        del text["tasks"]["reviews"]["labels"]
        path.write_text(yaml.safe_dump(text))
    spec, = register(path)[0].tasks
    train = tmp_path / spec.file("train")
    with pytest.raises(DataError, match=rf"{re.escape(str(train))}, row 1: {expected}.* \(task reviews"):
        read_rows(train, spec)
    lenient = read_rows(train, spec, lenient=True)
    assert lenient.ids == ["a1", "a3"] and lenient.skipped == [(1, lenient.skipped[0][1])]
    assert re.match(expected, lenient.skipped[0][1])


def test_a_name_registered_with_another_spec_is_an_error_naming_both(tmp_path):
    path = declared(tmp_path, "csv")
    text = yaml.safe_load(path.read_text())
    text["tasks"]["sst"] = text["tasks"].pop("reviews")
    path.write_text(yaml.safe_dump(text))
    with pytest.raises(TaskError, match=rf"task file {re.escape(str(path))}: task 'sst' is registered already by an "
                                        r"installed task package \(entry points bert_mtl_bench.tasks: .*handout = "
                                        r"harness\..*num_classes: 2 here, 5 there"):
        register(path)
    first = declared(tmp_path, "csv")
    register(first)
    other = tmp_path / "other"
    other.mkdir()
    second = declared(other, "jsonl")
    with pytest.raises(TaskError, match=rf"task file {re.escape(str(second))}: task 'reviews' is registered already "
                                        rf"by task file {re.escape(str(first))}"):
        register(second)
    register(first)  # the same file again: the same specs, harmless
    text = yaml.safe_load(first.read_text())
    text["tasks"]["reviews"]["labels"] = ["positive", "negative"]  # the same spec, its labels read the other way
    first.write_text(yaml.safe_dump(text))
    with pytest.raises(TaskError, match=r"registered already by task file .*reader: DatasetReader\(format='csv', "
                                        r"labels=\{'positive': 0, 'negative': 1\}.* here, DatasetReader"):
        register(first)


def test_a_group_of_the_file_is_a_task_set_with_its_formula(tmp_path):
    from harness.core.config import resolve_config
    from harness.tasks import overall_formula
    from variants import make_config

    path = declared(tmp_path, "csv")
    text = yaml.safe_load(path.read_text())
    text["groups"] = {"shop": {"tasks": ["sst", "reviews"], "terms": ["sst/accuracy", ["reviews", "accuracy", False]]}}
    path.write_text(yaml.safe_dump(text))
    config = resolve_config({"task_file": str(path), "tasks": "shop"})
    tasks = make_config(config.variant, config.variant_settings()).tasks
    assert tasks == ("sst", "reviews")
    assert overall_formula(tasks).describe() == "shop: mean(sst/accuracy, reviews/accuracy)"


def test_tasks_lists_plugin_tasks_beside_file_tasks(tmp_path, capsys):
    from harness.cli.main import main

    assert main(["tasks", "--task-file", str(declared(tmp_path, "csv"))]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"^  sst +classification", listed, re.M), listed  # the handout's, an entry-point plugin
    assert re.search(r"^  reviews +classification of a sentence \(2 classes\)", listed, re.M), listed


def test_the_setting_from_flags_and_a_config_file(tmp_path):
    from harness.cli.flags import config_from_args
    from harness.cli.main import build_parser
    from harness.core.config import read_config

    first = declared(tmp_path, "csv")
    other = tmp_path / "other"
    other.mkdir()
    files = {split: write_rows(other, "jsonl", split, ROWS) for split in ("train", "dev")}
    second = write_task_file(other, {"topics": {"format": "jsonl", "files": files, **REVIEWS}})
    args = build_parser().parse_args(["train", "--task-file", str(first), "--task-file", str(second),
                                      "--tasks", "sst,reviews,topics"])
    config = config_from_args(args)
    assert config.task_file == f"{first},{second}"
    config_file = tmp_path / "job.yaml"
    config_file.write_text(yaml.safe_dump({"task_file": [str(first), str(second)], "tasks": "reviews,topics"}))
    assert read_config(config_file)["task_file"] == f"{first},{second}"


def test_a_saved_model_registers_its_task_files_without_the_originals(tmp_path, monkeypatch):
    from harness.runs.trained import register_saved_task_files, save_task_files
    from harness.tasks import get_task, registry

    path = declared(tmp_path, "csv")
    content = path.read_text()
    spec, = register(path)[0].tasks
    entries = save_task_files(tmp_path / "model", str(path))
    assert [(tmp_path / "model" / e["file"]).read_text() for e in entries] == [content]
    path.unlink()
    monkeypatch.setattr(registry, "_REGISTRY", {k: v for k, v in registry._REGISTRY.items() if k != "reviews"})
    register_saved_task_files(tmp_path / "model", {"task_files": json.loads(json.dumps(entries))})
    assert get_task("reviews") == spec  # its data paths still relative to the file's original folder


@pytest.mark.slow
def test_a_sweep_job_config_carries_the_task_file(tmp_path):
    """A sweep file's `set: {task_file: ...}`: each job's config.json names the file (absolute), and a
    fresh process that resolves that config (what each job's `mtl-bench train` does) knows its tasks."""
    from harness.core.config import read_config
    from harness.sweeps.files import job_config_path, write_jobs_file
    from harness.sweeps.spec import expand, load_spec

    path = declared(tmp_path, "csv")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "tf", "variants": ["multitask"], "seeds": [0],
                                     "set": {"task_file": str(path.relative_to(tmp_path)), "tasks": "sst,reviews"}}))
    jobs_file = tmp_path / "jobs.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)  # the sweep's relative task file is relative to where it is started
        spec = load_spec(sweep)
        jobs = expand(spec)
        write_jobs_file(tmp_path, spec, jobs, "parent", f"sqlite:///{tmp_path / 'mlflow.db'}", "tf")
    job_config = job_config_path(jobs_file, jobs[0])
    assert read_config(job_config)["task_file"] == str(path)
    code = ("import sys; from harness.core.config import read_config, resolve_config; from variants import make_config;"
            "c = resolve_config(read_config(sys.argv[1])); print(make_config(c.variant, c.variant_settings()).tasks)")
    done = subprocess.run([sys.executable, "-c", code, str(job_config)], capture_output=True, text=True,
                          env=environment(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "('sst', 'reviews')"


def pair_rows(count: int) -> list[dict]:
    topics = {"sport": ["the team won", "a late goal", "the match ended"],
              "food": ["add more salt", "bake the bread", "the soup is hot"]}
    rows = []
    for i in range(count):
        a, b = ("sport", "sport") if i % 3 == 0 else ("food", "food") if i % 3 == 1 else ("sport", "food")
        rows.append({"id": f"p{i}", "first": topics[a][i % 3], "second": topics[b][(i + 1) % 3],
                     "label": "same" if a == b else "different"})
    return rows


@pytest.mark.slow
def test_a_trained_run_is_used_without_its_task_file(tmp_path, tiny_bert, small_data):
    """`mtl-bench train --task-file` of a CSV and a JSON Lines task beside SST records the file; with the
    file moved away, `evaluate`, `predict` and the MLflow model still know the tasks."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    reviews = [(f"r{i}", f"this {w} is {'great' if i % 2 else 'awful'}", "positive" if i % 2 else "negative")
               for i, w in enumerate(["lamp", "kettle", "chair", "fan"] * 6)]
    for split, rows in (("train", reviews), ("dev", reviews[:12])):
        write_rows(folder, "csv", f"reviews-{split}", rows)
        (folder / f"topics-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pair_rows(len(rows))))
    path = write_task_file(folder, {
        "reviews": {"format": "csv", "files": {"train": "reviews-train.csv", "dev": "reviews-dev.csv"}, **REVIEWS},
        "topics": {"format": "jsonl", "files": {"train": "topics-train.jsonl", "dev": "topics-dev.jsonl"},
                   "kind": "classification", "text_columns": ["first", "second"], "label_column": "label",
                   "labels": ["different", "same"]}})
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    trained = run_cli("train", "--model", str(tiny_bert), "--data-dir", str(small_data), "--task-file", str(path),
                      "--tasks", "sst,reviews,topics", "--epochs", "1", "--batches-per-epoch", "3", "--batch-size", "8",
                      "--save-model", "--no-progress", "--system-metrics-interval", "0", "--tracking-uri", uri,
                      "--output-dir", str(tmp_path / "out"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_id = re.search(r"MLflow run (\w+) in", trained.stdout + trained.stderr).group(1)
    shutil.move(path, tmp_path / "moved-away.yaml")

    import mlflow

    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.data.params["task_file"] == str(path)
    copy = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model/task-files",
                                                    tracking_uri=uri, dst_path=str(tmp_path / "dl")))
    assert [p.read_text() for p in copy.iterdir()] == [(tmp_path / "moved-away.yaml").read_text()]

    evaluated = run_cli("evaluate", run_id, "--tracking-uri", uri)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    for task in ("reviews", "topics"):
        logged = run.data.metrics[f"dev/{task}/accuracy"]
        assert f"dev/{task}/accuracy: {logged:.4f} (the run logged {logged:.4f}" in evaluated.stdout, evaluated.stdout
    predicted = run_cli("predict", run_id, "--task", "topics", "--tracking-uri", uri, "add more salt", "the team won")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert re.fullmatch(r"[01]\t\d\.\d{4}\tadd more salt \|\|\| the team won", predicted.stdout.strip())

    code = ("import sys, mlflow.pyfunc, pandas as pd;"
            "m = mlflow.pyfunc.load_model(f'runs:/{sys.argv[1]}/mlflow-model');"
            "print(m.predict(pd.DataFrame({'task': ['reviews'], 'text': ['this fan is great'], 'text_b': ['']}))"
            "['prediction'].tolist())")
    served = subprocess.run([sys.executable, "-c", code, run_id], capture_output=True, text=True, timeout=300,
                            env=environment({"MLFLOW_TRACKING_URI": uri}))
    assert served.returncode == 0, served.stderr[-3000:]
    assert re.search(r"^\[[01]\.0\]$", served.stdout.strip(), re.M), served.stdout

    # An export carries copies of the task file too: the harness rebuilds the model from it elsewhere.
    exported = run_cli("export", run_id, str(tmp_path / "exported"), "--tracking-uri", uri)
    assert exported.returncode == 0, exported.stderr[-3000:]
    code = ("import sys; from harness.runs.export import load_export; t = load_export(sys.argv[1]);"
            "print(sorted(t.model.specs))")
    rebuilt = subprocess.run([sys.executable, "-c", code, str(tmp_path / "exported")], capture_output=True,
                             text=True, timeout=300, env=environment({}))
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert rebuilt.stdout.strip() == "['reviews', 'sst', 'topics']"
