"""Evaluation: a model's predictions for a tokenised dataset (on every rank, in the dataset's
order), the dev metrics of a task set, and the names they are logged under. Used by the loop
(harness/runs/train.py) and by saved runs (harness/runs/trained.py).

A task's extra dev files (TaskSpec.extra_dev: MNLI's mismatched dev set, loaded with its data:
harness.training.data.load_extra_dev) are scored on dev with the task's own head and metrics, as
`<metric>_<name>` beside its dev metrics (dev/mnli/accuracy_mismatched)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from harness.core import names
from harness.core.config import TrainConfig
from harness.training.data import collate
from harness.tasks.metrics import task_metrics
from harness.model.network import confidence, predictions
from harness.core.names import metric_key
from harness.tasks import get_task, overall_formula
from harness.tasks.registry import extra_metric


def pad_multiple(config: TrainConfig) -> int:
    """Batches are padded to a multiple of 8 tokens under mixed precision (tensor-core shapes)."""
    return 8 if config.mixed_precision in ("bf16", "fp16") else 1


def make_batch(dataset, indices, device, pad_id: int = 0, multiple: int = 1) -> dict[str, torch.Tensor]:
    """The examples `indices` of a tokenised dataset, collated (padded with `pad_id` to a multiple) on `device`."""
    return {k: v.to(device) for k, v in collate(dataset[[int(i) for i in indices]], pad_id, multiple).items()}


@torch.inference_mode()
def predict_dataset(model, task: str, dataset, config: TrainConfig, accelerator,
                    pad_id: int = 0) -> tuple[list[float], list[float]]:
    """The model's prediction and score (harness.model.network.confidence) for every example of a
    tokenised dataset, in the dataset's order, on every rank.

    Examples are sorted by length so batches carry little padding, and dealt to ranks so
    that every rank runs the same number of batches (ZeRO-3 needs every rank in every forward).
    """
    from accelerate.utils import gather_object

    spec = get_task(task)
    world, rank = accelerator.num_processes, accelerator.process_index
    order = np.argsort([len(x) for x in dataset["input_ids"]], kind="stable")
    per_rank = -(-len(order) // world)
    padded = np.concatenate([order, order[: per_rank * world - len(order)]])
    mine = padded[rank::world]
    results = []
    for start in range(0, len(mine), config.eval_batch_size):
        chunk = mine[start:start + config.eval_batch_size]
        batch = make_batch(dataset, chunk, accelerator.device, pad_id, pad_multiple(config))
        batch.pop("labels")
        outputs = model(task, **batch)
        preds = predictions(spec, outputs, config.pair_encoding).float().cpu().tolist()
        results.extend(zip(chunk.tolist(), preds, confidence(spec, outputs).cpu().tolist()))
    merged = {index: (pred, score) for index, pred, score in gather_object(results)}
    return [merged[i][0] for i in range(len(order))], [merged[i][1] for i in range(len(order))]


def evaluate(model, data, config: TrainConfig, accelerator,
             split: str = "dev") -> tuple[dict[str, dict[str, float]], dict[str, list]]:
    """Metrics per task of the `split` ("dev", or "validation": held out of train) (task -> metric ->
    value), and per-example predictions (id, prediction, label)."""
    model.eval()
    metrics, rows = {}, {}
    for task, task_data in data.items():
        dataset, ids = getattr(task_data, split), getattr(task_data, f"{split}_ids")
        preds, _ = predict_dataset(model, task, dataset, config, accelerator, task_data.pad_id)
        labels = dataset["label"]
        metrics[task] = task_metrics(task_data.spec, preds, labels)
        rows[task] = list(zip(ids, preds, labels))
        if split == "dev":
            extra_metrics, extra_rows = score_extra_dev(model, task, task_data.extra_dev, config, accelerator,
                                                        task_data.pad_id)
            metrics[task].update(extra_metrics)
            rows.update(extra_rows)
    model.train()
    return metrics, rows


def score_extra_dev(model, task: str, extra_dev: dict[str, tuple[list[str], object]], config: TrainConfig,
                    accelerator, pad_id: int = 0) -> tuple[dict[str, float], dict[str, list]]:
    """A task's metrics on its extra dev files (load_extra_dev's name -> (ids, dataset)), named
    `<metric>_<name>`, and their per-example rows under `<task>_<name>` (predictions/dev-<task>_<name>.csv)."""
    spec, metrics, rows = get_task(task), {}, {}
    for name, (ids, dataset) in extra_dev.items():
        preds, _ = predict_dataset(model, task, dataset, config, accelerator, pad_id)
        labels = dataset["label"]
        metrics.update({extra_metric(metric, name): value for metric, value in task_metrics(spec, preds, labels).items()})
        rows[extra_metric(task, name)] = list(zip(ids, preds, labels))
    return metrics, rows


def write_predictions(rows: dict[str, list], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for task, task_rows in rows.items():
        path = folder / names.predictions_file(task)
        with open(path, "w", newline="") as fp:
            writer = csv.writer(fp)
            writer.writerow(["id", "prediction", "label"])
            writer.writerows(task_rows)
        paths.append(path)
    return paths


def dev_metric_names(metrics: dict[str, dict[str, float]], prefix: str = names.DEV) -> dict[str, float]:
    """MLflow names: <prefix>/<task>/<metric> for every metric, and <prefix>/overall where the task set has one."""
    out = {metric_key(task, name, prefix): v for task, values in metrics.items() for name, v in values.items()}
    overall = overall_score(metrics)
    if overall is not None:
        out[names.overall_key(prefix)] = overall
    return out


def overall_score(metrics: dict[str, dict[str, float]]) -> float | None:
    """The task set's overall score. Metrics with none of an extra dev file's (the validation split, held
    out of train, has no MNLI mismatched counterpart) score the formula without those terms
    (OverallFormula.held_out); dev metrics always hold them (evaluate scores every extra dev file)."""
    formula = overall_formula(list(metrics))
    extra = any(name not in get_task(task).metrics for task, values in metrics.items() for name in values)
    return formula.score(metrics) if extra else formula.held_out().score(metrics)


def selection_score(metrics: dict[str, dict[str, float]]) -> float:
    """What picks the best epoch: the task set's overall score; NaN (a constant predictor's r) counts as worst."""
    score = overall_score(metrics)
    return -np.inf if score is None or np.isnan(score) else score
