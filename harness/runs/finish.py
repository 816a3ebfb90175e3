"""The end of a training: dev evaluation per epoch, the reported model saved, predictions, timing
files, the registered MLflow model."""
from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from harness.core import names
from harness.training.evaluation import dev_metric_names, selection_score, write_predictions
from harness.tracking.tracker import RunTracker
from harness.runs.setup import Run


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_timing(out_dir: Path, rank: int, step_seconds: list[float], grad_accum: int) -> None:
    """Per-rank optimizer-step times and peak memory (process RSS; on a GPU also the most the
    process allocated there), read by benchmarks/distributed.py and benchmarks/gpu.py."""
    folder = out_dir / "timing"
    folder.mkdir(parents=True, exist_ok=True)
    peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    (folder / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "step_seconds": step_seconds, "grad_accum": grad_accum, "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": peak_gpu_mb}))


def record_evaluation(run: Run, epoch: int, metrics: dict[str, float], rows: dict[str, list],
                      validation: dict | None = None) -> None:
    """Logs an epoch's dev metrics as dev_epoch/* (and validation metrics as val_epoch/*); if this
    epoch is the one to report (the best so far by `selection_score`, on validation where a split
    is held out, else on dev as the CS224N starter keeps its best dev checkpoint; or the last with
    report_epoch="last"), it becomes the run's dev/* (and val/*) and its predictions are written."""
    state = run.state
    if run.tracker:
        run.tracker.log_metrics({**dev_metric_names(metrics, names.DEV_EPOCH_PREFIX),
                                 **(dev_metric_names(validation, names.VALIDATION_EPOCH_PREFIX) if validation else {})},
                                step=state.step)
    chooser, reported = (validation, state.validation_metrics) if validation else (metrics, state.metrics)
    not_better = state.metrics and selection_score(chooser) <= selection_score(reported)
    if run.config.report_epoch == "best" and not_better:
        return
    state.metrics, state.metrics_epoch, state.validation_metrics = metrics, epoch, validation or {}
    if run.accelerator.is_main_process:
        write_predictions(rows, run.out_dir / names.PREDICTIONS)
    if run.config.save_model:
        save_reported_model(run)


def save_reported_model(run: Run, epoch: int | None = None, metrics: dict | None = None) -> None:
    """Writes the reported epoch's model (or `epoch`'s) as the artifact files of harness.runs.trained,
    logged by `finish`. Every rank calls it: ZeRO-3 gathers the partitions."""
    from harness.runs.trained import save_model

    accelerator, state = run.accelerator, run.state
    epoch = state.metrics_epoch if epoch is None else epoch
    weights = accelerator.get_state_dict(run.model)
    if accelerator.is_main_process:
        save_model(run.out_dir / "model", weights, run.config, run.variant_config, run.tokenizer,
                   accelerator.unwrap_model(run.model), epoch, state.step,
                   state.metrics if metrics is None else metrics)
    state.model_saved_epoch = epoch


def finish(run: Run, step_seconds: list[float], started: float, train_seconds: float) -> None:
    config, accelerator, tracker, out_dir = run.config, run.accelerator, run.tracker, run.out_dir
    if config.save_model and not run.state.model_saved_epoch:
        # Resumed from a checkpoint written before the reported epoch's model was saved (or without
        # --save-model): the last epoch's model is saved instead, and says so.
        accelerator.print(f"warning: the reported epoch's ({run.state.metrics_epoch}) model was not saved before "
                          f"the resume; saving the last epoch's ({config.epochs}) instead")
        save_reported_model(run, epoch=config.epochs, metrics={})
    write_timing(out_dir, accelerator.process_index, step_seconds, config.grad_accum)
    if accelerator.is_main_process:
        # The reported epoch's, written by record_evaluation (also before a resume).
        for task in run.tasks:
            tracker.log_artifact(out_dir / names.PREDICTIONS / names.predictions_file(task), names.PREDICTIONS)
        if config.save_model:  # the reported epoch's, written by record_evaluation, and its MLflow model
            from harness.runs import mlflow_model
            from harness.runs.trained import ARTIFACT_PATH

            pyfunc = mlflow_model.save_mlflow_model(out_dir / "model", out_dir / mlflow_model.ARTIFACT_PATH)
            for source, artifact_path in ((out_dir / "model", ARTIFACT_PATH), (pyfunc, mlflow_model.ARTIFACT_PATH)):
                for path in sorted(source.rglob("*")):
                    if path.is_file():
                        folder = path.parent.relative_to(source).as_posix()
                        tracker.log_artifact(path, artifact_path if folder == "." else f"{artifact_path}/{folder}")
        tracker.log_metrics({**dev_metric_names(run.state.metrics), names.REPORTED_EPOCH: run.state.metrics_epoch,
                             **(dev_metric_names(run.state.validation_metrics, names.VALIDATION)
                                if run.state.validation_metrics else {})}, step=run.state.step)
        skipped_rows = [(name, line, problem) for t in run.tasks for name, rows_ in run.data[t].skipped.items()
                        for line, problem in rows_]
        if skipped_rows:
            skipped_file = out_dir / "skipped_rows.csv"
            with open(skipped_file, "w", newline="") as fp:
                csv.writer(fp).writerows([("file", "line", "problem"), *skipped_rows])
            tracker.log_artifact(skipped_file)
        tracker.log_metrics({names.TRAIN_SECONDS: train_seconds, "time/total_seconds": time.perf_counter() - started,
                             "time/step_median_seconds": float(np.median(step_seconds)) if step_seconds else 0.0,
                             "memory/peak_rss_mb": peak_rss_mb()}, step=run.state.step)
        unsent = tracker.finish("FINISHED", fallback_dir=out_dir)
        if config.register_model:
            register_model(tracker, config.register_model, unsent)
        if not config.keep_checkpoint:
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        accelerator.print(f"MLflow run {tracker.run_id} in {tracker.tracking_uri}")
    accelerator.wait_for_everyone()


def register_model(tracker: RunTracker, name: str, unsent: Path | None) -> None:
    """--register-model: the run's MLflow model as a new version of `name` in the store's Model
    Registry. The run is recorded whatever happens here: a failure is reported, not raised."""
    from harness.runs.mlflow_model import ARTIFACT_PATH, register

    how = f"register it later with mlflow.register_model('runs:/{tracker.run_id}/{ARTIFACT_PATH}', '{name}')"
    if unsent:
        print(f"warning: model not registered as {name!r}: the run's records (its model among them) are waiting in "
              f"{unsent}; send them with `mtl-bench replay`, then {how}", file=sys.stderr)
        return
    try:
        version = register(tracker.tracking_uri, tracker.run_id, name)
    except Exception as exc:
        print(f"warning: model not registered as {name!r} ({type(exc).__name__}: {str(exc)[:500]}); {how}",
              file=sys.stderr)
        return
    print(f"registered model {name!r} version {version.version}: models:/{name}/{version.version}")
