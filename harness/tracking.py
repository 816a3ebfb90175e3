"""MLflow tracking: one run per training, written only by the main process.

The embedded default store is ./mlruns: a SQLite database (mlruns/mlflow.db) with artifacts
beside it (mlruns/artifacts). MLFLOW_TRACKING_URI, or --tracking-uri, points elsewhere, for
instance at an `mlflow server`. Metrics are buffered and sent in batches: one call per metric
costs about 8 ms on SQLite. The loop flushes them with every checkpoint, so a resumed run
never records a step twice.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

DEFAULT_STORE_DIR = "mlruns"
_BATCH_LIMIT = 100
STEP_METRIC = "train/lr"  # logged at every optimizer step: tells how far a run's records go  # MLflow's log_batch accepts at most 1000 metrics / 100 params per call


def default_tracking_uri() -> str:
    store = Path(DEFAULT_STORE_DIR).resolve()
    return f"sqlite:///{store / 'mlflow.db'}"


def resolve_tracking_uri(configured: str = "") -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _get_or_create_experiment(client, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if tracking_uri.startswith("sqlite:///"):
        # Keep artifacts beside the database instead of MLflow's ./mlartifacts default.
        db_path = Path(tracking_uri[len("sqlite:///"):])
        artifact_location = (db_path.parent / "artifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:
        # Another process created it between our lookup and create: use theirs.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class RunTracker:
    """A thin, explicit wrapper over MlflowClient for one run."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str = "", tags: dict[str, str] | None = None,
                 run_id: str | None = None):
        from mlflow.tracking import MlflowClient

        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.recorded_until = -1
        if run_id:
            self.run_id = self.client.get_run(run_id).info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            # A run killed after sending its metrics but before its checkpoint was complete
            # repeats those steps on resume, with the same values: record them once.
            history = self.client.get_metric_history(self.run_id, STEP_METRIC)
            self.recorded_until = max((m.step for m in history), default=-1)
        else:
            experiment_id = _get_or_create_experiment(self.client, experiment, tracking_uri)
            run = self.client.create_run(experiment_id, tags=tags or {}, run_name=run_name or None)
            self.run_id = run.info.run_id
        self._pending: list = []

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), _BATCH_LIMIT):
            self.client.log_batch(self.run_id, params=items[i:i + _BATCH_LIMIT])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if step <= self.recorded_until:
            return
        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())

    def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:1000], self._pending[1000:]
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status=status)
