"""A saved run as an MLflow model: a `mlflow.pyfunc` model that predicts as `mtl-bench predict` does.

With --save-model a run logs, beside its `model/` artifact (harness/runs/trained.py), the artifact
`mlflow-model/`: an MLflow model folder (MLmodel, the pickled `HarnessModel`, its requirements)
whose one artifact, `artifacts/model/`, is a copy of `model/`. It is loaded by
harness.runs.trained.load_model, so a frozen encoder's base is found as everywhere else
(harness.runs.trained.resolve_base), or from `base` in the model_config or $MTL_BENCH_BASE; its rows
are predicted by harness.runs.use.predict_examples. Tasks the run declared in a task file
(--task-file) are registered from the copies the artifact holds (`artifacts/model/task-files/`,
harness.runs.trained.register_saved_task_files), so the model loads and serves them where that file
is absent. Its requirements name the harness's
distribution (bert-mtl-bench) and the variant plugin's, not a copy of their code.

Its input and output columns, its refusals, serving and registering: docs/using-a-trained-run.md.
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException

ARTIFACT_PATH = "mlflow-model"
BASE_ENV = "MTL_BENCH_BASE"
DISTRIBUTION = "bert-mtl-bench"
TASK, TEXT, TEXT_B = "task", "text", "text_b"
PREDICTION, SCORE = "prediction", "score"


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", TASK), ColSpec("string", TEXT), ColSpec("string", TEXT_B, required=False)]),
        outputs=Schema([ColSpec("double", PREDICTION), ColSpec("double", SCORE)]))


def _bad_input(message: str) -> MlflowException:
    # INVALID_PARAMETER_VALUE: `mlflow models serve` answers 400 with this message.
    return MlflowException.invalid_parameter_value(message)


def _text(value) -> str:
    """A cell as text: "" for a missing one (None, NaN)."""
    return value.strip() if isinstance(value, str) else ""


class HarnessModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: loads the run's model once (load_context), predicts a frame's rows by task."""

    def load_context(self, context):
        from harness.runs.trained import TrainedModelError, load_model
        from harness.runs.use import _accelerator

        base = (context.model_config or {}).get("base") or os.environ.get(BASE_ENV, "")
        try:
            self.trained = load_model(Path(context.artifacts["model"]), base=base)
        except TrainedModelError as exc:
            raise TrainedModelError(f"{exc} (for the MLflow model: mlflow.pyfunc.load_model(uri, model_config="
                                    f"{{'base': FOLDER}}), or {BASE_ENV}=FOLDER for `mlflow models serve`)") from None
        self.accelerator = _accelerator()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from harness.runs.use import predict_examples

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        tasks = self.trained.tasks
        expected = (f"expected columns {TASK!r} (one of {', '.join(tasks)}), {TEXT!r} and, for a pair task, "
                    f"{TEXT_B!r}")
        missing = [c for c in (TASK, TEXT) if c not in frame.columns]
        if missing:
            raise _bad_input(f"input has no column {', '.join(map(repr, missing))}: {expected}")
        unknown = sorted({str(t) for t in frame[TASK]} - set(tasks))
        if unknown:
            raise _bad_input(f"column {TASK!r}: the model was not trained on {', '.join(map(repr, unknown))}; it "
                             f"predicts {', '.join(tasks)}")
        second = frame[TEXT_B] if TEXT_B in frame.columns else pd.Series([None] * len(frame), index=frame.index)
        rows: dict[str, list[int]] = {}
        examples: dict[str, list[tuple[str, ...]]] = {}
        for position, (task, text, text_b) in enumerate(zip(frame[TASK], frame[TEXT], second)):
            pair = self.trained.model.specs[task].is_pair
            text, text_b = _text(text), _text(text_b)
            if not text:
                raise _bad_input(f"row {position}: column {TEXT!r} is empty; task {task!r} needs a sentence there")
            if pair and not text_b:
                raise _bad_input(f"row {position}: column {TEXT_B!r} is " + ("missing" if TEXT_B not in frame.columns
                                 else "empty") + f"; task {task!r} takes sentence pairs ({TEXT!r} and {TEXT_B!r})")
            if not pair and text_b:
                raise _bad_input(f"row {position}: task {task!r} takes one sentence ({TEXT!r}), but {TEXT_B!r} "
                                 "holds one too; leave it empty")
            rows.setdefault(task, []).append(position)
            examples.setdefault(task, []).append((text, text_b) if pair else (text,))
        predictions, scores = [0.0] * len(frame), [0.0] * len(frame)
        for task, positions in rows.items():
            preds, task_scores = predict_examples(self.trained, task, examples[task], self.accelerator)
            for position, pred, score in zip(positions, preds, task_scores):
                predictions[position], scores[position] = float(pred), float(score)
        return pd.DataFrame({PREDICTION: predictions, SCORE: scores})


def requirements(variant: str) -> list[str]:
    """The model's pip requirements: the harness's distribution and that of the variant's plugin
    (when another package registered it), at the versions installed here."""
    from variants import get_variant

    names = [DISTRIBUTION]
    top = get_variant(variant).adapter_class.__module__.split(".")[0]
    names += [d for d in importlib.metadata.packages_distributions().get(top, []) if d not in names]
    found = []
    for name in names:
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


# The model's code, which MLflow copies into the model and runs to load it ("models from code"):
# the class is the installed harness's, nothing is pickled.
MODEL_CODE = """import mlflow

from harness.runs.mlflow_model import HarnessModel

mlflow.models.set_model(HarnessModel())
"""


def input_example(meta: dict) -> pd.DataFrame:
    """One row per task of a model (its model.json `meta`): what the UI shows and serving's example."""
    rows = [{TASK: task, TEXT: "A first sentence.", TEXT_B: "A second sentence." if len(spec["text_columns"]) == 2
             else ""} for task, spec in meta["tasks"].items()]
    return pd.DataFrame(rows, columns=[TASK, TEXT, TEXT_B])


def save_mlflow_model(model_folder: Path, path: Path) -> Path:
    """Writes the MLflow model of the harness artifact `model_folder` (harness.runs.trained.save_model's)
    to `path`, replacing what is there."""
    import json
    import tempfile

    meta = json.loads((Path(model_folder) / "model.json").read_text())
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "harness_model.py"
        code.write_text(MODEL_CODE)
        mlflow.pyfunc.save_model(path, python_model=str(code), artifacts={"model": str(model_folder)},
                                 signature=signature(), input_example=input_example(meta),
                                 pip_requirements=requirements(meta["train"]["variant"]),
                                 model_config={"base": ""})  # declared, so that load_model may give it
    return path


def register(tracking_uri: str, run_id: str, name: str):
    """Registers the run's logged MLflow model as a new version of registered model `name` in the
    tracking store's Model Registry (created if missing); returns the ModelVersion."""
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = RunsArtifactRepository.get_underlying_uri(f"runs:/{run_id}/{ARTIFACT_PATH}", tracking_uri)
    return client.create_model_version(name, source, run_id=run_id)
