"""Using a saved run (harness/runs/trained.py): what `evaluate` answers and what it refuses.

The run is a real MLflow run with a real `model/` artifact, written by `save_model` as training
writes it, of a tiny random BERT that was never trained: evaluating needs a saved model, not a
good one."""
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from harness.core.config import resolve_config
from harness.runs.trained import ARTIFACT_PATH, TrainedModelError, save_model
from harness.runs.use import evaluate_run


@pytest.fixture
def saved_run(tmp_path, tiny_bert, small_data, tracking_uri) -> str:
    """The id of a run that trained (and saved a model for) sst alone."""
    from harness.model.network import build_model, load_encoder
    from variants import make_config

    config = resolve_config({"model": str(tiny_bert), "data_dir": str(small_data), "tasks": "sst", "max_length": 32,
                             "output_dir": str(tmp_path / "out"), "tracking_uri": tracking_uri, "progress": False})
    variant_config = make_config(config.variant, config.variant_settings())
    encoder, tokenizer = load_encoder(config.model)
    model = build_model(encoder, config.variant, variant_config, config.pair_encoding, config.head_input)
    folder = save_model(tmp_path / "saved", model.state_dict(), config, variant_config, tokenizer, model,
                        epoch=1, step=0, metrics={})
    client = MlflowClient(tracking_uri)
    run = client.create_run(client.create_experiment("trained-use"))
    client.log_artifacts(run.info.run_id, str(folder), ARTIFACT_PATH)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.mark.parametrize("tasks", [["sts"], ["sst", "sts"]])
def test_evaluate_refuses_tasks_the_run_did_not_train_before_predicting_anything(tmp_path, saved_run, tracking_uri,
                                                                                 tasks):
    out = tmp_path / "eval"
    with pytest.raises(TrainedModelError, match=rf"run {saved_run} did not train task\(s\) \W*sts\W*; "
                                                r"it trained \W*sst\W*"):
        evaluate_run(saved_run, "dev", tracking_uri=tracking_uri, out_dir=str(out), tasks=tasks, log=False,
                     cache_dir=str(tmp_path / "cache"))
    assert not out.exists()  # refused before any prediction file was written


def test_evaluate_scores_the_tasks_the_run_trained(tmp_path, saved_run, tracking_uri, small_data):
    """The other side of the refusal: --tasks naming a trained task (or no --tasks) is answered."""
    from harness.training.data import read_rows
    from harness.tasks import get_task

    out = tmp_path / "eval"
    for tasks in (["sst"], None):
        metrics = evaluate_run(saved_run, "dev", tracking_uri=tracking_uri, out_dir=str(out), tasks=tasks, log=False,
                               cache_dir=str(tmp_path / "cache"), out=lambda *_: None)
        assert list(metrics) == ["sst"]
    lines = (out / "dev" / "sst-dev-output.csv").read_text().splitlines()
    rows = read_rows(small_data / get_task("sst").file("dev"), get_task("sst"))
    predicted = dict(line.split(" , ") for line in lines[1:])
    assert list(predicted) == rows.ids
    accuracy = np.mean([float(predicted[i]) == label for i, label in zip(rows.ids, rows.labels)])
    assert metrics["sst"]["accuracy"] == pytest.approx(accuracy)
