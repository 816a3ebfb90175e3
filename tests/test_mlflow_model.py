"""The MLflow model of a saved run (harness/runs/mlflow_model.py): loaded by mlflow.pyfunc, served by
`mlflow models serve`, registered by --register-model; its predictions are `mtl-bench predict`'s.

The fast tests log the MLflow model of a run whose weights are perturbed at random (test_export's
saved_run) to a real SQLite store; the slow ones train a run with --save-model --register-model
through the command line and serve it with a real server process."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import free_port
from harness.testing import run_cli
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from test_export import SENTENCES, saved_run

from harness.cli import main as cli_main
from harness.core.config import ConfigError, resolve_config
from harness.runs.mlflow_model import ARTIFACT_PATH, BASE_ENV, save_mlflow_model
from harness.runs.trained import TrainedModelError
from harness.runs.use import predict_run

STS = [("A man plays a guitar.", "A man is playing music."), ("A cat sleeps.", "The stock market fell.")]
# Tasks mixed and interleaved: each row's output must land on its own row.
FRAME = pd.DataFrame({"task": ["sst", "sts", "sst", "sts", "sst"],
                      "text": [SENTENCES[0], STS[0][0], SENTENCES[1], STS[1][0], SENTENCES[2]],
                      "text_b": [None, STS[0][1], None, STS[1][1], None]})


def expected_outputs(run_id: str, tracking_uri: str, base: str = "") -> list[tuple[float, float]]:
    """FRAME's rows as `mtl-bench predict` answers them, task by task, in FRAME's order."""
    quiet = dict(tracking_uri=tracking_uri, out=lambda *_: None, base=base)
    sst = iter(predict_run(run_id, "sst", SENTENCES, **quiet))
    sts = iter(predict_run(run_id, "sts", [t for pair in STS for t in pair], **quiet))
    return [next(sst if task == "sst" else sts) for task in FRAME["task"]]


def assert_same(got: pd.DataFrame, expected: list[tuple[float, float]]) -> None:
    assert list(got.columns) == ["prediction", "score"] and len(got) == len(expected)
    for (pred, score), (want_pred, want_score) in zip(got.itertuples(index=False), expected):
        assert pred == pytest.approx(want_pred, abs=1e-5) and score == pytest.approx(want_score, abs=1e-5)


def log_mlflow_model(tmp_path: Path, run_id: str, tracking_uri: str, variant: str) -> str:
    """Logs the MLflow model of saved_run's `model/` folder to the run, as training does; its URI."""
    folder = save_mlflow_model(tmp_path / f"saved-{variant}", tmp_path / "pyfunc")
    MlflowClient(tracking_uri).log_artifacts(run_id, str(folder), ARTIFACT_PATH)
    return f"runs:/{run_id}/{ARTIFACT_PATH}"


@pytest.fixture
def store(tracking_uri, monkeypatch) -> str:
    """The test's store as MLflow's default (runs:/ and models:/ URIs are resolved in it)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    return tracking_uri


def test_the_mlflow_model_predicts_as_predict_row_by_row_across_tasks(tmp_path, tiny_bert, store):
    run_id = saved_run(tmp_path, str(tiny_bert), store, "lora", {"rank": "4", "sites": "query,value"})
    model = mlflow.pyfunc.load_model(log_mlflow_model(tmp_path, run_id, store, "lora"))
    schema = model.metadata.get_input_schema()
    assert schema.input_names() == ["task", "text", "text_b"] and schema.required_input_names() == ["task", "text"]
    assert model.metadata.get_output_schema().input_names() == ["prediction", "score"]
    expected = expected_outputs(run_id, store)
    assert len({round(s, 3) for _, s in expected}) == len(expected)  # distinct scores: a row mix-up would show
    assert_same(model.predict(FRAME), expected)
    # A frame of one-sentence rows alone needs no text_b column.
    sst_only = FRAME[FRAME["task"] == "sst"][["task", "text"]]
    assert_same(model.predict(sst_only), [e for e, t in zip(expected, FRAME["task"]) if t == "sst"])
    requirements = (tmp_path / "pyfunc" / "requirements.txt").read_text().split()
    assert any(r.startswith("bert-mtl-bench==") for r in requirements)


def test_bad_input_is_refused_naming_the_column_or_task_and_what_was_expected(tmp_path, tiny_bert, store):
    run_id = saved_run(tmp_path, str(tiny_bert), store, "multitask")
    model = mlflow.pyfunc.load_model(log_mlflow_model(tmp_path, run_id, store, "multitask"))
    cases = [
        (pd.DataFrame({"task": ["quora"], "text": ["a"], "text_b": ["b"]}),
         r"column 'task': the model was not trained on 'quora'; it predicts sst, sts"),
        (pd.DataFrame({"task": ["sst"], "sentence": ["a"]}), r"missing inputs \['text'\]"),
        (pd.DataFrame({"task": ["sts"], "text": ["a"]}),
         r"row 0: column 'text_b' is missing; task 'sts' takes sentence pairs \('text' and 'text_b'\)"),
        (pd.DataFrame({"task": ["sst", "sts"], "text": ["a", "b"], "text_b": [None, " "]}),
         r"row 1: column 'text_b' is empty; task 'sts' takes sentence pairs"),
        (pd.DataFrame({"task": ["sst"], "text": ["a"], "text_b": ["b"]}),
         r"row 0: task 'sst' takes one sentence \('text'\), but 'text_b' holds one too"),
        (pd.DataFrame({"task": ["sst"], "text": [""]}), r"row 0: column 'text' is empty; task 'sst' needs a sentence"),
    ]
    for frame, message in cases:
        with pytest.raises(MlflowException, match=message):
            model.predict(frame)


def test_a_frozen_encoders_mlflow_model_finds_its_base_by_name_and_hash(tmp_path, tiny_bert, store, monkeypatch):
    base = tmp_path / "base"
    shutil.copytree(tiny_bert, base)
    run_id = saved_run(tmp_path, str(base), store, "pals-parallel", {"pal_size": "12", "pal_heads": "2"},
                       freeze=True)
    uri = log_mlflow_model(tmp_path, run_id, store, "pals-parallel")
    expected = expected_outputs(run_id, store)
    assert_same(mlflow.pyfunc.load_model(uri).predict(FRAME), expected)  # the base where it trained

    moved = tmp_path / "elsewhere"
    base.rename(moved)
    with pytest.raises(TrainedModelError, match=rf"not found; looked in local folder {re.escape(str(base))}: no such folder.*"
                                                rf"model_config=\{{'base': FOLDER\}}\), or {BASE_ENV}=FOLDER"):
        mlflow.pyfunc.load_model(uri)
    assert_same(mlflow.pyfunc.load_model(uri, model_config={"base": str(moved)}).predict(FRAME), expected)
    monkeypatch.setenv(BASE_ENV, str(moved))  # as `mlflow models serve` is told
    assert_same(mlflow.pyfunc.load_model(uri).predict(FRAME), expected)


def test_register_model_needs_save_model_and_is_refused_before_anything_runs(capsys):
    with pytest.raises(ConfigError, match=r"register_model: --register-model mine registers the model the run "
                                          r"saves; add --save-model"):
        resolve_config({"register_model": "mine"})
    assert resolve_config({"register_model": "mine", "save_model": True}).register_model == "mine"
    assert cli_main(["train", "--register-model", "mine", "--data-dir", "/nonexistent"]) == 2
    assert "add --save-model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_bert, small_data):
    """A run trained through the command line with --save-model --register-model tiny-mtl."""
    folder = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    args = ["train", "--model", str(tiny_bert), "--data-dir", str(small_data), "--output-dir", str(folder / "out"),
            "--cache-dir", str(folder / "cache"), "--tracking-uri", uri, "--tasks", "sst,sts", "--epochs", "1",
            "--batches-per-epoch", "4", "--batch-size", "8", "--lr", "1e-2", "--max-length", "32", "--no-progress",
            "--system-metrics-interval", "0", "--save-model", "--register-model", "tiny-mtl"]
    done = run_cli(*args, timeout=600, cwd=folder, one_thread=False)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id])
    return run.info.run_id, uri, done.stdout


@pytest.mark.slow
def test_a_trained_run_logs_its_mlflow_model_and_registers_it(trained_run, monkeypatch):
    run_id, uri, stdout = trained_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    assert "MLmodel" in {Path(a.path).name for a in client.list_artifacts(run_id, ARTIFACT_PATH)}
    assert "registered model 'tiny-mtl' version 1: models:/tiny-mtl/1" in stdout
    (version,) = client.search_model_versions("name = 'tiny-mtl'")
    assert str(version.version) == "1" and version.run_id == run_id and version.source.endswith(f"/{ARTIFACT_PATH}")
    expected = expected_outputs(run_id, uri)
    assert_same(mlflow.pyfunc.load_model("models:/tiny-mtl/1").predict(FRAME), expected)
    assert_same(mlflow.pyfunc.load_model(f"runs:/{run_id}/{ARTIFACT_PATH}").predict(FRAME), expected)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_mlflow_models_serve_answers_as_predict(trained_run, tmp_path):
    run_id, uri, _ = trained_run
    port = free_port()
    log = tmp_path / "serve.log"
    # A real server process, in a folder of its own: the model's code is the installed harness's.
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{run_id}/{ARTIFACT_PATH}",
                               "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"],
                              stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
                              env={**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": ""})
    try:
        deadline = time.time() + 300
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "server not up: " + log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(1)
        url = f"http://127.0.0.1:{port}/invocations"
        expected = expected_outputs(run_id, uri)
        split = json.loads(FRAME.to_json(orient="split", index=False))
        for body in ({"dataframe_split": split}, {"dataframe_records": FRAME.to_dict(orient="records")}):
            status, answer = post(url, body)
            assert status == 200, answer
            assert_same(pd.DataFrame(answer["predictions"]), expected)
        status, answer = post(url, {"dataframe_records": [{"task": "quora", "text": "a", "text_b": "b"}]})
        assert status == 400 and "the model was not trained on 'quora'; it predicts sst, sts" in answer["message"]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
