"""MLflow tracking: one run per training, written only by the main process.

The embedded default store is ./mlruns: a SQLite database (mlruns/mlflow.db) with artifacts
beside it (mlruns/artifacts). MLFLOW_TRACKING_URI, or --tracking-uri, points elsewhere, for
instance at an `mlflow server`. Metrics are buffered and sent in batches: one call per metric
costs about 8 ms on SQLite. The loop flushes them with every checkpoint, so a resumed run
never records a step twice.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

from harness.core.names import STEP_METRIC

DEFAULT_STORE_DIR = "mlruns"
# One log_batch call takes at most 100 params and 1000 metrics (MLflow's limits).
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000


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


def get_or_create_experiment(client, name: str, tracking_uri: str) -> str:
    """The experiment's id, created if missing (its artifacts beside a SQLite store)."""
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


def check_reachable(tracking_uri: str, timeout: float = 10.0) -> None:
    """Fails at start, not after hours of training, if the tracking store cannot be used."""
    if tracking_uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status != 200:
                    raise OSError(f"HTTP {response.status}")
        except (OSError, urllib.error.URLError) as exc:
            raise TrackingError(f"MLflow tracking server {tracking_uri} cannot be reached ({url}: {exc}); "
                                "start it, or set --tracking-uri / MLFLOW_TRACKING_URI to another store") from None
    elif tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri[len("sqlite:///"):]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"tracking store {tracking_uri}: cannot create {folder} ({exc})") from None
        if not os.access(folder, os.W_OK):
            raise TrackingError(f"tracking store {tracking_uri}: {folder} is not writable")


def fail_fast_over_http(tracking_uri: str) -> None:
    """MLflow's own HTTP retries back off for minutes by default: one try and a 10 s timeout
    instead (the callers queue and retry, or report the store as unreachable)."""
    if tracking_uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def open_client(tracking_uri: str = ""):
    """An MlflowClient of the store a command reads (evaluate, predict, compare, replay), checked
    first as `train` and `sweep` check it: an unreachable server is an error in seconds, not a hang."""
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    fail_fast_over_http(uri)
    return MlflowClient(uri)


def device_tags() -> dict[str, Any]:
    """What the run ran on: the GPU (or CPU) model and count, and the torch, CUDA and NCCL versions."""
    import platform

    import torch

    tags: dict[str, Any] = {"torch.version": torch.__version__}
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:  # the GPUs this process was given (e.g. by a sweep)
        tags["cuda.visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    if torch.version.cuda:
        tags["cuda.version"] = torch.version.cuda  # the CUDA this torch was built with
    if torch.cuda.is_available():
        tags.update({"device.type": "cuda", "device.name": torch.cuda.get_device_name(),
                     "device.count": torch.cuda.device_count()})
        try:
            version = torch.cuda.nccl.version()
            tags["nccl.version"] = ".".join(map(str, version)) if isinstance(version, tuple) else version
        except Exception:  # a build without NCCL
            pass
    else:
        name = ""
        try:
            with open("/proc/cpuinfo") as fp:
                name = next((line.split(":", 1)[1].strip() for line in fp if line.startswith("model name")), "")
        except OSError:
            pass
        tags.update({"device.type": "cpu", "device.name": name or platform.processor() or platform.machine(),
                     "device.count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else os.cpu_count()})
    return tags


class TrackingError(RuntimeError):
    """The tracking store cannot be used at all (checked before training starts)."""


class RunTracker:
    """One MLflow run, written in order through a queue that survives store outages.

    Every record (params, tags, metrics, artifacts, the final status) is queued and sent in
    order. If the store is unreachable (a tracking server gone away, a locked SQLite file),
    the records stay queued and training goes on; the next flush sends them. If the store is
    still away when the run ends, the queue is written to a fallback file that
    `mtl-bench replay FILE` sends later. No record is dropped.
    """

    def __init__(self, tracking_uri: str, experiment: str, run_name: str = "", tags: dict[str, Any] | None = None,
                 run_id: str | None = None):
        fail_fast_over_http(tracking_uri)  # the queue retries instead
        from mlflow.tracking import MlflowClient

        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri
        with store_lock(tracking_uri):
            # Opening a SQLite store creates or migrates its schema; two processes doing that at
            # once can leave it half-migrated, so runs sharing a file take turns here.
            self.client = retry(lambda: MlflowClient(tracking_uri))
            retry(lambda: self.client.search_experiments(max_results=1))
        self.recorded_until = -1
        self._queue: list[dict] = []
        self._warned = False
        self._monitor = None
        self._resumed = bool(run_id)
        self._resumed_tags: dict[str, str] = {}
        if run_id:
            run = retry(lambda: self.client.get_run(run_id))
            self.run_id, self._resumed_tags = run.info.run_id, dict(run.data.tags)
            retry(lambda: self.client.update_run(self.run_id, status="RUNNING"))
            # A run killed after sending its metrics but before its checkpoint was complete
            # repeats those steps on resume, with the same values: record them once.
            history = retry(lambda: self.client.get_metric_history(self.run_id, STEP_METRIC))
            self.recorded_until = max((m.step for m in history), default=-1)
        else:
            experiment_id = retry(lambda: get_or_create_experiment(self.client, experiment, tracking_uri))
            # The REST store (an `mlflow server`) takes string tag values only; SQLite converts.
            tags = {k: str(v) for k, v in (tags or {}).items() if v is not None}
            run = retry(lambda: self.client.create_run(experiment_id, tags=tags, run_name=run_name or None))
            self.run_id = run.info.run_id

    def start_system_metrics(self, interval: float) -> None:
        """MLflow's system metrics (system/cpu_utilization_percentage, system/system_memory_usage_megabytes,
        disk, network, and system/gpu_<i>_* with nvidia-ml-py), sampled every `interval` seconds by a
        thread of MLflow's that logs straight to the store, until `finish`. 0: none.

        MLflow's thread stops for good if the store cannot be read; the rest of the run's records
        are queued as always.
        """
        if interval <= 0 or self._monitor is not None:
            return
        import psutil
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        psutil.cpu_percent()  # the first reading of a process is 0.0; the monitor's first then measures from here
        try:
            # A resumed run's samples continue after its last system/* step.
            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval, resume_logging=self._resumed,
                                                 tracking_uri=self.tracking_uri)
            self._monitor.start()
        except Exception as exc:  # telemetry must not stop a training
            warnings.warn(f"MLflow system metrics not recorded ({type(exc).__name__}: {exc})", stacklevel=2)
            self._monitor = None

    def resumed(self, step: int, changes: dict[str, tuple], tags: dict[str, Any]) -> None:
        """Records a resume at optimizer step `step`: the settings it changed ({name: (before, now)},
        only those that cannot change the result) in the run's history, and the tags of the stop or
        failure it continues from removed (they stay in the history), so a run that finishes does not
        look stopped."""
        changed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changes.items()))
        self.set_tags({**tags, "resumed_from_step": step,
                       f"history/step-{step:08d}/resumed": f"settings changed: {changed}" if changed
                       else "no setting changed"})
        stale = [k for k in self._resumed_tags if k.startswith(("stopped/", "failure/"))]
        if stale:
            self._queue.append({"op": "delete_tags", "items": stale})
            self.flush()

    def log_params(self, params: dict[str, Any]) -> None:
        self._queue.append({"op": "params", "items": {k: str(v) for k, v in params.items()}})
        self.flush()

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._queue.append({"op": "tags", "items": {k: str(v) for k, v in tags.items()}})
        self.flush()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queues metric values; they are sent at the next flush (each checkpoint, and the end)."""
        if step <= self.recorded_until:
            return
        now = int(time.time() * 1000)
        items = [[k, float(v), now, int(step)] for k, v in metrics.items()]
        if self._queue and self._queue[-1]["op"] == "metrics":
            self._queue[-1]["items"].extend(items)
        else:
            self._queue.append({"op": "metrics", "items": items})

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._queue.append({"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})
        self.flush()

    def flush(self) -> bool:
        """Sends queued records in order; True if all went. Never raises for an unreachable store."""
        while self._queue:
            try:
                send(self.client, self.run_id, self._queue[0])
            except Exception as exc:  # the store is away: keep everything and carry on training
                if not self._warned:
                    warnings.warn(f"MLflow store {self.tracking_uri} unavailable ({type(exc).__name__}: "
                                  f"{str(exc)[:200]}); training continues, records are kept and sent later",
                                  stacklevel=2)
                    self._warned = True
                return False
            self._queue.pop(0)
        if self._warned:
            warnings.warn(f"MLflow store {self.tracking_uri} is back; queued records sent", stacklevel=2)
            self._warned = False
        return True

    def finish(self, status: str = "FINISHED", fallback_dir: str | os.PathLike | None = None,
               attempts: int = 4) -> Path | None:
        """Ends the run. Returns the fallback file's path if the store could not take everything."""
        if self._monitor is not None:  # stopped first: nothing is written after the run ends
            self._monitor.finish()
            self._monitor = None
        self._queue.append({"op": "terminate", "status": status})
        for attempt in range(attempts):
            if self.flush():
                return None
            time.sleep(2 ** attempt)
        fallback = Path(fallback_dir or ".") / f"tracking-fallback-{self.run_id}.json"
        fallback.parent.mkdir(parents=True, exist_ok=True)
        fallback.write_text(json.dumps({"tracking_uri": self.tracking_uri, "run_id": self.run_id,
                                        "records": self._queue}))
        warnings.warn(f"MLflow store {self.tracking_uri} still unavailable: {len(self._queue)} records saved to "
                      f"{fallback}; send them with `mtl-bench replay {fallback}`", stacklevel=2)
        return fallback


def send(client, run_id: str, record: dict) -> None:
    from mlflow.entities import Metric, Param, RunTag

    op = record["op"]
    if op == "params":
        items = [Param(k, v) for k, v in record["items"].items()]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            client.log_batch(run_id, params=items[i:i + _PARAMS_PER_BATCH])
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in record["items"].items()])
    elif op == "metrics":
        items = record["items"]
        while items:  # sent in slices; a slice that went is removed, so a retry never repeats it
            client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in items[:_METRICS_PER_BATCH]])
            del items[:_METRICS_PER_BATCH]
    elif op == "delete_tags":
        items = record["items"]
        while items:  # one by one; a retry after an outage does not delete a tag twice
            try:
                client.delete_tag(run_id, items[0])
            except Exception as exc:
                if "RESOURCE_DOES_NOT_EXIST" not in str(getattr(exc, "error_code", "")) + str(exc):
                    raise
            del items[0]
    elif op == "artifact":
        client.log_artifact(run_id, record["path"], record["artifact_path"])
    elif op == "terminate":
        client.set_terminated(run_id, status=record["status"])
    else:
        raise ValueError(f"unknown tracking record {op!r}")


def replay(fallback_file: str | os.PathLike, tracking_uri: str = "") -> int:
    """Sends a fallback file's records to MLflow, in order. Returns how many were sent."""
    data = json.loads(Path(fallback_file).read_text())
    client = open_client(tracking_uri or data["tracking_uri"])
    for record in data["records"]:
        send(client, data["run_id"], record)
    return len(data["records"])


def search_all_runs(client, experiment_ids: list[str], filter_string: str = "") -> list:
    """Every run matching the filter, page by page (one search returns at most 1000)."""
    runs, token = [], None
    while True:
        page = retry(lambda: client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token))
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def store_lock(tracking_uri: str):
    """An inter-process lock beside a SQLite store's file; no lock for other stores."""
    import contextlib

    if not tracking_uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(tracking_uri[len("sqlite:///"):] + ".lock", timeout=300)


def retry(call, attempts: int = 5):
    """Start-up calls: a SQLite store shared by concurrent runs can be briefly locked, or have its
    schema created by another run at the same moment."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * 2 ** attempt)
