"""A real (tiny) training run through the whole harness, read back through MLflow's client."""
import dataclasses

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from harness.core.config import resolve_config
from harness.tasks.handout import HANDOUT_TASKS
from harness.tasks import get_task
from harness.training.evaluation import dev_metric_names
from harness.runs.train import train
from harness.tasks.sampler import TaskStream

pytestmark = pytest.mark.slow


def tiny_config(tmp_path, tiny_bert, small_data, tracking_uri, **overrides):
    settings = dict(model=str(tiny_bert), data_dir=str(small_data), output_dir=str(tmp_path / "out"),
                    cache_dir=str(tmp_path / "cache"), tracking_uri=tracking_uri, epochs=2, batches_per_epoch=20,
                    batch_size=8, lr=1e-3, max_length=32, scheduler="constant", progress=False, run_name="t")
    settings.update(overrides)
    return resolve_config(settings)


def test_training_run_records_params_metrics_counts_and_artifacts(tmp_path, tiny_bert, small_data, tracking_uri):
    config = tiny_config(tmp_path, tiny_bert, small_data, tracking_uri)
    metrics = train(config)
    assert set(metrics) == {"dev/sst/accuracy", "dev/cfimdb/accuracy", "dev/quora/accuracy", "dev/sts/pearson",
                            "dev/overall"}
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.001" and run.data.params["variant"] == "multitask"
    assert run.data.params["batches_per_epoch"] == "20"
    for tag in ("variant", "seed", "model", "profile", "git_commit", "world_size"):
        assert tag in run.data.tags
    assert run.data.tags["world_size"] == "1"
    m = run.data.metrics
    for name, value in metrics.items():
        assert m[name] == pytest.approx(value)
    assert m["params/total"] == m["params/encoder"] + m["params/heads_total"]
    assert m["params/trainable"] == m["params/total"]
    assert m["params/task_specific/sst"] == 0
    # Sampler probabilities per epoch: the annealed formula with E = 2.
    sizes = {t: 48 for t in HANDOUT_TASKS}
    history = client.get_metric_history(run.info.run_id, "sampler/p/sst")
    assert [h.value for h in history] == pytest.approx([0.25, 0.25])
    steps = sum(len(client.get_metric_history(run.info.run_id, f"train/loss/{t}")) for t in sizes)
    assert steps == 40
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "predictions"} <= artifacts
    preds = {a.path for a in client.list_artifacts(run.info.run_id, "predictions")}
    assert preds == {f"predictions/dev-{t}.csv" for t in HANDOUT_TASKS}
    local = client.download_artifacts(run.info.run_id, "predictions/dev-sst.csv", str(tmp_path))
    lines = open(local).read().splitlines()
    assert lines[0] == "id,prediction,label" and len(lines) == 49


def test_loss_falls_during_training(tmp_path, tiny_bert, small_data, tracking_uri):
    config = tiny_config(tmp_path, tiny_bert, small_data, tracking_uri, epochs=1, batches_per_epoch=60,
                         tasks="sst")
    train(config)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id])
    losses = [h.value for h in sorted(client.get_metric_history(run.info.run_id, "train/loss/sst"),
                                      key=lambda h: h.step)]
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])


def test_lenient_mode_skips_counts_and_records_bad_rows(tmp_path, tiny_bert, small_data, tracking_uri):
    data = tmp_path / "data"
    data.mkdir()
    for path in small_data.iterdir():
        (data / path.name).write_bytes(path.read_bytes())
    with open(data / "ids-sst-train.csv", "a") as fp:
        fp.write("99\tbad1\tno label\t\n100\tbad2\t\t3\n")
    strict = tiny_config(tmp_path, tiny_bert, data, tracking_uri, epochs=1, batches_per_epoch=2)
    with pytest.raises(ValueError, match=r"ids-sst-train.csv, line 50: missing sentiment"):
        train(strict)
    lenient = tiny_config(tmp_path, tiny_bert, data, tracking_uri, epochs=1, batches_per_epoch=2, lenient_data=True)
    train(lenient)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id])
    assert run.data.metrics["data/skipped_rows/ids-sst-train.csv"] == 2
    assert "data/skipped_rows/ids-sst-dev.csv" not in run.data.metrics  # nothing skipped: no all-zero metric
    assert run.data.params["data.skipped_rows"] == "2"
    local = client.download_artifacts(run.info.run_id, "skipped_rows.csv", str(tmp_path))
    assert "ids-sst-train.csv,51,empty sentence" in open(local).read()


def test_tokenised_data_is_cached_between_runs(tmp_path, tiny_bert, small_data):
    from transformers import AutoTokenizer

    from harness.training.data import load_task_data

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    first = load_task_data(small_data, ["sst"], tokenizer, 32, cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.glob("*.arrow"))
    assert len(files) == 2
    mtimes = [p.stat().st_mtime_ns for p in sorted(tmp_path.glob("*.arrow"))]
    second = load_task_data(small_data, ["sst"], tokenizer, 32, cache_dir=tmp_path)
    assert [p.stat().st_mtime_ns for p in sorted(tmp_path.glob("*.arrow"))] == mtimes
    assert second["sst"].train["input_ids"] == first["sst"].train["input_ids"]
    load_task_data(small_data, ["sst"], tokenizer, 16, cache_dir=tmp_path)  # another max_length: new cache
    assert len(list(tmp_path.glob("*.arrow"))) == 4


def test_task_stream_covers_each_pass_without_repeats_and_resumes():
    stream = TaskStream(10, seed=3)
    first_pass = np.concatenate([stream.take(4), stream.take(4), stream.take(2)])
    assert sorted(first_pass.tolist()) == list(range(10))
    state = stream.state_dict()
    following = stream.take(7)
    resumed = TaskStream(10, seed=3)
    resumed.load_state_dict(state)
    assert resumed.take(7).tolist() == following.tolist()


def test_separate_pair_encoding_trains_end_to_end(tmp_path, tiny_bert, small_data, tracking_uri):
    """--pair-encoding separate: each sentence encoded alone and mean-pooled; cosine for STS."""
    import csv
    import math

    from harness.training.data import read_task_file

    config = tiny_config(tmp_path, tiny_bert, small_data, tracking_uri, epochs=1, batches_per_epoch=8,
                         pair_encoding="separate")
    metrics = train(config)
    assert set(metrics) == {"dev/sst/accuracy", "dev/cfimdb/accuracy", "dev/quora/accuracy", "dev/sts/pearson",
                            "dev/overall"}
    for name, value in metrics.items():
        assert math.isfinite(value), name
        assert (-1.0 if name == "dev/sts/pearson" else 0.0) <= value <= 1.0, (name, value)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["pair_encoding"] == "separate"
    # The separate heads: STS is a parameter-free cosine, Quora a linear layer on [u, v, |u - v|].
    assert run.data.metrics["params/head/sts"] == 0
    assert run.data.metrics["params/head/quora"] == 3 * 32 + 1
    preds = {a.path for a in client.list_artifacts(run.info.run_id, "predictions")}
    assert preds == {f"predictions/dev-{t}.csv" for t in HANDOUT_TASKS}
    for task, spec in ((t, get_task(t)) for t in HANDOUT_TASKS):
        dev = read_task_file(small_data / spec.file("dev"), spec)
        local = client.download_artifacts(run.info.run_id, f"predictions/dev-{task}.csv", str(tmp_path / task))
        with open(local, newline="") as fp:
            rows = list(csv.DictReader(fp))
        assert sorted(r["id"] for r in rows) == sorted(dev.ids), task  # one row per dev example
        values = [float(r["prediction"]) for r in rows]
        assert all(math.isfinite(v) for v in values), task
        if task == "sts":  # cosine x 5: the 0-5 similarity scale, negative only for opposed embeddings
            assert all(-5.0 <= v <= 5.0 for v in values)
            assert len(set(values)) > 1 and max(values) > 1.0  # a real cosine x 5, not a raw cosine
        elif task == "quora":
            assert set(values) <= {0.0, 1.0}
        else:
            assert set(values) <= set(map(float, range(spec.num_classes)))


def the_run(tracking_uri):
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id])
    return client, run


@pytest.mark.parametrize("report", ["best", "last"])
def test_every_epoch_is_recorded_and_the_best_or_last_is_reported(report, tmp_path, tiny_bert, small_data,
                                                                   tracking_uri):
    config = tiny_config(tmp_path, tiny_bert, small_data, tracking_uri, epochs=4, batches_per_epoch=3,
                         eval_every_epoch=True, report_epoch=report, lr=3e-2, save_model=True)
    metrics = train(config)
    client, run = the_run(tracking_uri)
    epochs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "dev_epoch/overall"),
                                      key=lambda m: m.step)]
    assert len(epochs) == 4 and len(set(epochs)) > 1, "the epochs' scores must differ for this test to mean much"
    chosen = int(np.argmax(epochs)) if report == "best" else 3  # the first best, as the starter keeps it
    assert int(np.argmax(epochs)) != 3, "this budget is chosen so that the best epoch is not the last"
    assert run.data.metrics["dev/epoch"] == chosen + 1
    assert run.data.metrics["dev/overall"] == pytest.approx(epochs[chosen]) == pytest.approx(metrics["dev/overall"])
    sst = sorted(client.get_metric_history(run.info.run_id, "dev_epoch/sst/accuracy"), key=lambda m: m.step)
    assert run.data.metrics["dev/sst/accuracy"] == pytest.approx(sst[chosen].value)
    # The logged predictions are the reported epoch's.
    local = client.download_artifacts(run.info.run_id, "predictions/dev-sst.csv", str(tmp_path))
    rows = np.loadtxt(local, delimiter=",", skiprows=1, usecols=(1, 2))
    assert np.mean(rows[:, 0] == rows[:, 1]) == pytest.approx(sst[chosen].value)
    assert run.data.params["report_epoch"] == report
    # So is the saved model (--save-model): evaluated again, it scores the reported epoch's metrics.
    from harness.runs.use import evaluate_run

    again = dev_metric_names(evaluate_run(run.info.run_id, "dev", tracking_uri=tracking_uri,
                                          out_dir=str(tmp_path / "eval"), log=False))
    assert again == pytest.approx(metrics, abs=1e-6)


def test_a_frozen_encoder_trains_only_the_task_parts_and_heads(tmp_path, tiny_bert, small_data, tracking_uri):
    """...and its saved model refers to the base checkpoint (checked by hash) instead of copying it."""
    import shutil

    import torch

    from harness.model.network import load_encoder
    from harness.runs.trained import TrainedModelError, load_run

    base = tmp_path / "base"
    shutil.copytree(tiny_bert, base)
    config = tiny_config(tmp_path, base, small_data, tracking_uri, epochs=1, batches_per_epoch=6,
                         variant="pals-parallel", freeze_encoder=True, save_model=True,
                         variant_options={"pal_size": "12", "pal_heads": "2"})
    metrics = train(config)
    client, run = the_run(tracking_uri)
    m = run.data.metrics
    assert m["params/trainable"] == m["params/total"] - m["params/encoder"]
    assert run.data.params["freeze_encoder"] == "True"
    saved = torch.load(client.download_artifacts(run.info.run_id, "model/weights.pt", str(tmp_path / "dl")))
    assert saved and not any(k.startswith("encoder.") for k in saved)  # a reference, not a copy
    assert any(k.startswith("variant.per_task.") for k in saved) and any(k.startswith("heads.") for k in saved)

    trained = load_run(run.info.run_id, tracking_uri)
    assert trained.meta["encoder"] == "base"
    weights = trained.model.state_dict()
    encoder, _ = load_encoder(str(base))
    for name, value in encoder.state_dict().items():
        assert torch.equal(weights[f"encoder.{name}"], value), f"encoder.{name} moved although frozen"
    for key, value in saved.items():
        assert torch.equal(weights[key], value)
    assert any(not torch.equal(weights[k], torch.zeros_like(weights[k])) for k in weights if k.startswith("heads."))
    from harness.runs.use import evaluate_run

    again = evaluate_run(run.info.run_id, "dev", str(small_data), tracking_uri, str(tmp_path / "eval"), log=False)
    for name, value in metrics.items():
        assert dev_metric_names(again)[name] == pytest.approx(value, abs=1e-6), name

    # Another checkpoint under the same name (same architecture, other weights) is not the base the
    # run trained on: refused, where loading it would silently change the model.
    from transformers import BertModel

    other = BertModel.from_pretrained(base, add_pooling_layer=False)
    torch.nn.init.normal_(other.embeddings.word_embeddings.weight)
    other.save_pretrained(base)
    with pytest.raises(TrainedModelError, match="SHA-256"):
        load_run(run.info.run_id, tracking_uri)


def test_heads_can_read_the_pretrained_pooler(tmp_path, small_data, tracking_uri):
    from conftest import make_tiny_bert

    from harness.model.network import ModelError, load_encoder

    without = make_tiny_bert(tmp_path / "no-pooler")
    with pytest.raises(ModelError, match=r"lacks 2 encoder weight\(s\).*pooler\.dense"):
        load_encoder(str(without), pooler=True)  # a random pooler would not be "the pretrained pooler"
    with_pooler = make_tiny_bert(tmp_path / "pooler", pooler=True)
    config = tiny_config(tmp_path, with_pooler, small_data, tracking_uri, epochs=1, batches_per_epoch=4,
                         head_input="pooler")
    metrics = train(config)
    assert np.isfinite(metrics["dev/overall"])
    _, run = the_run(tracking_uri)
    assert run.data.params["head_input"] == "pooler"
    # The pooler counts as encoder: dense H x H + H on the tiny BERT (hidden 32).
    assert run.data.metrics["params/encoder"] == count_encoder(with_pooler)


def count_encoder(folder):
    from transformers import BertModel

    return sum(p.numel() for p in BertModel.from_pretrained(folder, add_pooling_layer=True).parameters())


def test_training_has_dropout_from_the_first_step(tmp_path, tiny_bert, small_data, tracking_uri):
    """from_pretrained returns the encoder in eval mode; the harness must not train in it (it did,
    until its first evaluation, which the quick profile holds only at the end)."""
    import torch

    from harness.training.evaluation import make_batch
    from harness.runs.setup import setup
    from harness.runs.train import preflight

    config = tiny_config(tmp_path, tiny_bert, small_data, tracking_uri, epochs=1, batches_per_epoch=2)
    run = setup(config, *preflight(config))
    try:
        assert [name for name, module in run.model.named_modules() if not module.training] == []
        batch = make_batch(run.data["sst"].train, range(8), run.accelerator.device)
        batch.pop("labels")
        with torch.no_grad():
            first, second = run.model("sst", **batch), run.model("sst", **batch)
        assert not torch.equal(first, second)  # the tiny BERT's dropout (0.1) is active
    finally:
        run.tracker.finish()


def test_gradient_checkpointing_trains_as_without_it_and_checkpoints_every_layer(tmp_path, tiny_bert, small_data,
                                                                                  tracking_uri, monkeypatch):
    """Same losses step by step with dropout on (checkpointing replays each layer's RNG), the setting
    recorded, and every encoder layer checkpointed at every training step (tests/test_variants.py
    checks the gradients of every variant)."""
    from variants.base import TaskAdapter

    layers, steps = 2, 6  # the tiny BERT's layers
    contexts = []
    real_context = TaskAdapter.checkpoint_context

    def counted(self):
        contexts.append(self.task)
        return real_context(self)

    monkeypatch.setattr(TaskAdapter, "checkpoint_context", counted)
    losses = {}
    for checkpointing in (False, True):
        uri = tracking_uri.replace("mlflow.db", f"gc-{checkpointing}.db")
        train(tiny_config(tmp_path, tiny_bert, small_data, uri, epochs=1, batches_per_epoch=steps,
                          variant="pals-parallel", variant_options={"pal_size": "12", "pal_heads": "2"},
                          gradient_checkpointing=checkpointing))
        client, run = the_run(uri)
        assert run.data.params["gradient_checkpointing"] == str(checkpointing)
        losses[checkpointing] = sorted((m.step, m.key, m.value) for t in HANDOUT_TASKS
                                       for m in client.get_metric_history(run.info.run_id, f"train/loss/{t}"))
        assert len(contexts) == (layers * steps if checkpointing else 0)
    assert [s for s, _, _ in losses[True]] == list(range(1, steps + 1))
    assert [k for _, k, _ in losses[True]] == [k for _, k, _ in losses[False]]
    assert [v for _, _, v in losses[True]] == pytest.approx([v for _, _, v in losses[False]], rel=1e-6)


def system_metrics(client, run_id) -> dict[str, list]:
    return {key: sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            for key in client.get_run(run_id).data.metrics if key.startswith("system/")}


def monitor_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor" and t.is_alive()]


def hold_until_sampled(monkeypatch, tracking_uri, samples: int = 2, at_step: int = 1) -> None:
    """Holds training at `at_step` until MLflow's monitor has logged `samples` more system samples,
    so that the tests do not depend on how fast this machine trains."""
    import time

    import harness.runs.loop

    real_step = harness.runs.loop.train_step

    def step(run, window):
        if run.state.step + 1 == at_step:
            client = MlflowClient(tracking_uri)
            key = "system/cpu_utilization_percentage"
            target = len(client.get_metric_history(run.state.run_id, key)) + samples
            deadline = time.monotonic() + 120
            while len(client.get_metric_history(run.state.run_id, key)) < target:
                assert time.monotonic() < deadline, f"MLflow's monitor logged no {key} within 120 s"
                time.sleep(0.05)
        return real_step(run, window)

    monkeypatch.setattr(harness.runs.loop, "train_step", step)


def test_system_metrics_and_device_tags_are_recorded_while_the_run_runs(tmp_path, tiny_bert, small_data,
                                                                         tracking_uri, monkeypatch):
    import os

    import psutil
    import torch

    hold_until_sampled(monkeypatch, tracking_uri)
    train(tiny_config(tmp_path, tiny_bert, small_data, tracking_uri, epochs=1, batches_per_epoch=4,
                      system_metrics_interval=0.2))
    assert not monitor_threads(), "the monitor outlived its run"
    client, run = the_run(tracking_uri)
    assert run.info.status == "FINISHED" and run.data.params["system_metrics_interval"] == "0.2"
    history = system_metrics(client, run.info.run_id)
    cpu, memory = history["system/cpu_utilization_percentage"], history["system/system_memory_usage_megabytes"]
    assert len(cpu) >= 2 and [m.step for m in cpu] == list(range(len(cpu)))
    assert all(0 <= m.value <= 100 for m in cpu)
    assert all(0 < m.value < psutil.virtual_memory().total / 1e6 for m in memory)
    assert all(run.info.start_time <= m.timestamp <= run.info.end_time for ms in history.values() for m in ms)
    tags = run.data.tags
    if torch.cuda.is_available():
        expected = ("cuda", torch.cuda.get_device_name(), torch.cuda.device_count())
        assert tags["nccl.version"]
    else:
        with open("/proc/cpuinfo") as fp:
            model_name = next(line.split(":", 1)[1].strip() for line in fp if line.startswith("model name"))
        expected = ("cpu", model_name, len(os.sched_getaffinity(0)))
        assert "nccl.version" not in tags
    assert (tags["device.type"], tags["device.name"], int(tags["device.count"])) == expected
    assert tags["torch.version"] == torch.__version__ and tags.get("cuda.version") == torch.version.cuda


@pytest.mark.parametrize("end", ["non-finite loss", "error", "stopped"])
def test_the_system_metrics_monitor_stops_however_the_run_ends(end, tmp_path, tiny_bert, small_data, tracking_uri,
                                                               monkeypatch):
    """A failed or killed run stops it too; a resumed run's samples continue after its last step."""
    import harness.runs.loop
    from harness.runs.loop import NonFiniteLoss, TrainingStopped

    hold_until_sampled(monkeypatch, tracking_uri, at_step=2)
    if end == "non-finite loss":
        checks = []  # the third step's loss is "not finite"
        monkeypatch.setattr(harness.runs.loop, "all_finite", lambda accelerator, loss: len(checks.append(0) or checks) < 3)
    elif end == "error":
        monkeypatch.setattr(harness.runs.loop, "learning_rate", lambda config, step: 1 / 0 if step == 2 else 1e-3)
    else:
        monkeypatch.setattr(harness.runs.loop, "agree_on_step", lambda accelerator, code, stop, step, tasks: step == 3)
    config = tiny_config(tmp_path, tiny_bert, small_data, tracking_uri, epochs=1, batches_per_epoch=6,
                         system_metrics_interval=0.2)
    with pytest.raises((NonFiniteLoss, ZeroDivisionError, TrainingStopped)):
        train(config)
    assert not monitor_threads(), "the monitor outlived its run"
    client, run = the_run(tracking_uri)
    assert run.info.status == ("KILLED" if end == "stopped" else "FAILED")
    before = system_metrics(client, run.info.run_id)["system/cpu_utilization_percentage"]
    assert before and all(m.timestamp <= run.info.end_time for m in before)
    if end == "stopped":
        monkeypatch.undo()
        hold_until_sampled(monkeypatch, tracking_uri, at_step=5)
        train(dataclasses.replace(config, resume=str(tmp_path / "out" / run.info.run_id)))
        assert not monitor_threads()
        after = system_metrics(client, run.info.run_id)["system/cpu_utilization_percentage"]
        assert [m.step for m in after] == list(range(len(after))) and len(after) >= len(before) + 2


def test_no_system_metrics_with_interval_0(tmp_path, tiny_bert, small_data, tracking_uri):
    train(tiny_config(tmp_path, tiny_bert, small_data, tracking_uri, epochs=1, batches_per_epoch=2,
                      system_metrics_interval=0))
    assert not monitor_threads()
    client, run = the_run(tracking_uri)
    assert run.data.params["system_metrics_interval"] == "0"
    assert system_metrics(client, run.info.run_id) == {}
    assert run.data.tags["device.type"] in ("cpu", "cuda")


def test_device_tags_name_the_gpus_and_the_cuda_and_nccl_versions(monkeypatch):
    """The CUDA branch, on a machine without a GPU: torch's answers are replaced by a GPU machine's."""
    import torch

    from harness.tracking.tracker import device_tags

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda.nccl, "version", lambda: (2, 27, 3))
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert device_tags() == {"torch.version": torch.__version__, "device.type": "cuda", "device.name": "NVIDIA H200",
                             "device.count": 8, "cuda.version": "12.8", "nccl.version": "2.27.3"}



def test_a_validation_split_is_held_out_of_train_chooses_the_reported_epoch_and_dev_stays_for_reporting(
        tmp_path, tiny_bert, small_data, tracking_uri):
    """--validation-fraction: the held-out rows are the same whatever the row order, never trained on,
    evaluated every epoch as val_epoch/*, and the reported epoch (dev/*, val/*) is the best on validation."""
    from harness.training.data import read_rows, validation_rows
    from harness.tasks import get_task

    rows = read_rows(small_data / "ids-sst-train.csv", get_task("sst"))
    held = validation_rows("sst", rows.ids, 0.25)
    assert 0 < sum(held) < len(held)
    shuffled = list(reversed(rows.ids))  # the same rows, whatever their order in the file
    assert {i for i, h in zip(shuffled, validation_rows("sst", shuffled, 0.25)) if h} == \
           {i for i, h in zip(rows.ids, held) if h}
    assert validation_rows("sst", rows.ids, 0.0) == [False] * len(rows.ids)
    wider = validation_rows("sst", rows.ids, 0.5)
    assert all(w for h, w in zip(held, wider) if h)  # a larger fraction keeps the smaller one's rows

    config = tiny_config(tmp_path, tiny_bert, small_data, tracking_uri, epochs=4, batches_per_epoch=3,
                         eval_every_epoch=True, lr=3e-2, validation_fraction=0.25)
    metrics = train(config)
    client, run = the_run(tracking_uri)
    assert run.data.params["validation_fraction"] == "0.25"
    assert int(run.data.params["data.validation_rows.sst"]) == sum(held)
    history = {k: [m.value for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)]
               for k in ("val_epoch/overall", "dev_epoch/overall")}
    assert len(history["val_epoch/overall"]) == 4
    chosen = int(np.argmax(history["val_epoch/overall"]))
    assert run.data.metrics["dev/epoch"] == chosen + 1  # chosen on validation...
    assert run.data.metrics["val/overall"] == pytest.approx(history["val_epoch/overall"][chosen])
    assert metrics["dev/overall"] == pytest.approx(history["dev_epoch/overall"][chosen])  # ...dev reported

    from harness.training.data import load_task_data
    from harness.model.network import load_encoder

    _, tokenizer = load_encoder(str(tiny_bert))
    data = load_task_data(small_data, ["sst"], tokenizer, 32, validation_fraction=0.25)["sst"]
    assert len(data.validation) == sum(held) and len(data.train) == len(held) - sum(held)
    assert data.validation_ids == [i for i, h in zip(rows.ids, held) if h]
    with pytest.raises(ValueError, match="validation_fraction: expected a fraction in \\[0, 0.5\\], got 0.9"):
        tiny_config(tmp_path, tiny_bert, small_data, tracking_uri, validation_fraction=0.9)
