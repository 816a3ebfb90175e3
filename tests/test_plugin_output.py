"""What plugins return is checked where it enters the harness: a task's reader (harness.training.data.check_rows)
and a variant's parts (the shapes of what its hooks and `top` give the model). Deliberately broken
plugins; a one-line error naming the task or variant, the file and what is wrong."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.training.data import DataError, TaskRows, read_rows
from harness.tasks import TaskSpec, register_task


def jsonl_task(name: str, reader) -> TaskSpec:
    return register_task(TaskSpec(name, "classification", ("text",), "y",
                                  {"train": "t.jsonl", "dev": "t.jsonl", "test": "t.jsonl"}, num_classes=3,
                                  reader=reader))


def rows_of(path, labelled, *, labels=True, width=1, label=1.0, ids=None):
    rows = TaskRows(Path(path))
    for i in range(3):
        rows.ids.append(ids[i] if ids else str(i))
        rows.texts.append(tuple(f"sentence {i}" for _ in range(width)))
        if labels:
            rows.labels.append(label)
    return rows


def test_an_unlabelled_split_may_leave_its_labels_empty_and_gets_the_placeholder(tmp_path):
    """The reader a user wrote returned no labels for the test split: the evaluation once ended in a
    pyarrow traceback; the contract says this is allowed, and the labels become 0.0."""
    spec = jsonl_task("plug-nolabels", lambda path, spec, lenient, labelled: rows_of(path, labelled,
                                                                                   labels=labelled))
    rows = read_rows(tmp_path / "t.jsonl", spec, labelled=False)
    assert rows.labels == [0.0, 0.0, 0.0]
    with pytest.raises(DataError, match=r"^task plug-nolabels-dev, .*t.jsonl: .* returned 3 ids but 0 labels \(one per "
                                        r"id\)$"):
        read_rows(tmp_path / "t.jsonl", jsonl_task("plug-nolabels-dev", lambda p, s, le, la: rows_of(p, la,
                                                                                                  labels=False)))


@pytest.mark.parametrize("broken, message", [
    (dict(label=5.0), r"label 5.0 for id 0 \(row 0\): y '5.0' is out of range \(expected an integer class in 0..2\)"),
    (dict(label=1.5), r"label 1.5 for id 0 \(row 0\): .*out of range"),
    (dict(label=float("nan")), r"label nan for id 0 \(row 0\): y 'nan' is not finite"),
    (dict(width=2), r"texts \('sentence 0', 'sentence 0'\) for id 0 \(row 0\); expected a tuple of 1 string\(s\) "
                    r"\(text\)"),
    (dict(ids=[0, 1, 2]), r"id 0 \(row 0\) of type int; ids are strings"),
])
def test_a_reader_that_returns_bad_rows_is_refused_naming_task_file_row_and_problem(tmp_path, broken, message):
    name = f"plug-bad-{abs(hash(json.dumps(broken, default=str))) % 10**8}"
    spec = jsonl_task(name, lambda path, spec, lenient, labelled: rows_of(path, labelled, **broken))
    with pytest.raises(DataError, match=rf"^task {name}, .*t.jsonl: .*returned {message}"):
        read_rows(tmp_path / "t.jsonl", spec)


def test_a_reader_that_returns_something_else_than_task_rows_is_refused(tmp_path):
    spec = jsonl_task("plug-list", lambda path, spec, lenient, labelled: [("0", "a", 1)])
    with pytest.raises(DataError, match=r"task plug-list, .*returned a list, not a harness.training.data.TaskRows"):
        read_rows(tmp_path / "t.jsonl", spec)


def test_a_broken_reader_stops_train_with_one_line_and_exit_2(tmp_path, tiny_bert, small_data, capsys):
    """Through the command, as a user meets it: exit 2, one line, no traceback."""
    from harness.cli import main

    def short(path, spec, lenient, labelled):
        rows = rows_of(path, labelled)
        rows.labels.pop()
        return rows

    jsonl_task("plug-short", short)
    (small_data / "t.jsonl").write_text("{}\n")
    try:
        code = main(["train", "--model", str(tiny_bert), "--data-dir", str(small_data), "--tasks", "sst,plug-short",
                     "--epochs", "1", "--batches-per-epoch", "1", "--no-progress", "--output-dir", str(tmp_path / "o"),
                     "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--cache-dir", str(tmp_path / "c"),
                     "--system-metrics-interval", "0"])
    finally:
        (small_data / "t.jsonl").unlink()
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert "task plug-short" in err and "returned 3 ids but 2 labels" in err


def tiny_model(adapter_class):
    from transformers import BertConfig, BertModel

    from harness.model.network import MultitaskModel
    from variants import make_config

    encoder = BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32), add_pooling_layer=False)
    config = make_config("multitask", {"tasks": "sst"})
    return MultitaskModel(encoder, adapter_class(config, encoder.config, ("sst",)), ("sst",))


def test_a_variant_whose_top_changes_the_shape_is_refused_naming_it_and_the_shapes():
    from variants import TaskAdapter, VariantError

    class FirstTokenTop(TaskAdapter):
        def top(self, hidden):
            return hidden[:, :1]

    model = tiny_model(FirstTokenTop)
    ids = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(VariantError, match=r"variant FirstTokenTop: top\(\) returned \(2, 1, 16\), expected a tensor "
                                           r"of the encoder's hidden states' shape \(2, 5, 16\)"):
        model("sst", ids, torch.ones_like(ids))


def test_a_variant_whose_hook_changes_a_layers_output_shape_is_refused():
    from variants import TaskAdapter, VariantError

    class WideningHook(TaskAdapter):
        def attach(self, encoder):
            last = encoder.encoder.layer[-1]

            def widen(module, args, output):
                hidden = output[0] if isinstance(output, tuple) else output
                widened = torch.cat([hidden, hidden[..., :1]], dim=-1)
                return (widened, *output[1:]) if isinstance(output, tuple) else widened

            last.register_forward_hook(widen)

    model = tiny_model(WideningHook)
    ids = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(VariantError, match=r"variant WideningHook: the encoder's output has shape \(2, 5, 17\) with "
                                           r"its hooks \(attach\), expected \(2, 5, 16\)"):
        model("sst", ids, torch.ones_like(ids))
