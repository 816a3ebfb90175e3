"""The training loop. Read `train` top to bottom: set up, loop over epochs, evaluate, record.

Each optimizer step trains one task, drawn by the TaskSampler; every rank draws the same
task because every rank's sampler has the same seed. Each rank reads its own slice of that
task's examples (TaskStream), so the slices of one optimizer step never overlap.
"""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from harness.config import TrainConfig
from harness.data import check_data_dir, collate, load_task_data
from harness.metrics import overall_score, task_metric
from harness.model import build_model, check_model, load_encoder, predictions, task_loss
from harness.params import count_parameters
from harness.sampler import TaskSampler
from harness.tracking import RunTracker, git_commit, resolve_tracking_uri


class TaskStream:
    """Endless shuffled passes over one task's training examples, deterministic given the seed.

    At every micro-step all ranks take the next world_size * batch_size indices of the same
    permutation and keep their own slice, so their examples differ and none is repeated
    before a pass is complete.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.size)

    def take(self, count: int) -> np.ndarray:
        out = []
        while count > 0:
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            chunk = self._order[self.position:self.position + count]
            out.append(chunk)
            self.position += len(chunk)
            count -= len(chunk)
        return np.concatenate(out)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation()


def make_accelerator(config: TrainConfig):
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # Per-task heads and adapters are unused in steps of other tasks.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    expected_world = int(os.environ.get("WORLD_SIZE", "1"))
    # On a machine without GPUs, a plain Accelerator under a multi-process launch silently
    # gives independent single-process trainings; cpu=True gives real DDP on gloo.
    cpu = not torch.cuda.is_available()
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum, cpu=cpu, kwargs_handlers=handlers)
    if accelerator.num_processes != expected_world:
        raise RuntimeError(f"launched with WORLD_SIZE={expected_world} but Accelerate started "
                           f"{accelerator.num_processes} process(es) ({accelerator.distributed_type})")
    return accelerator


def make_scheduler(optimizer, config: TrainConfig):
    total = config.total_steps
    warmup = int(config.warmup_fraction * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.scheduler == "linear":
            return max(0.0, (total - step) / max(1, total - warmup))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _batch(dataset, indices, device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in collate(dataset[[int(i) for i in indices]]).items()}


@torch.inference_mode()
def evaluate(model, data, config: TrainConfig, accelerator) -> tuple[dict[str, float], dict[str, list]]:
    """Dev metrics per task, and per-example predictions (id, prediction, label).

    Examples are sorted by length so batches carry little padding, and dealt to ranks so
    that every rank runs the same number of batches (ZeRO-3 needs every rank in every forward).
    """
    from accelerate.utils import gather_object

    model.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    metrics, rows = {}, {}
    for task, task_data in data.items():
        dev = task_data.dev
        order = np.argsort([len(x) for x in dev["input_ids"]], kind="stable")
        per_rank = -(-len(order) // world)
        padded = np.concatenate([order, order[: per_rank * world - len(order)]])
        mine = padded[rank::world]
        results = []
        for start in range(0, len(mine), config.eval_batch_size):
            chunk = mine[start:start + config.eval_batch_size]
            batch = _batch(dev, chunk, accelerator.device)
            labels = batch.pop("labels")
            preds = predictions(task, model(task, **batch), config.pair_encoding)
            results.extend(zip(chunk.tolist(), preds.float().cpu().tolist(), labels.cpu().tolist()))
        merged = {index: (pred, label) for index, pred, label in gather_object(results)}
        indices = sorted(merged)
        preds = [merged[i][0] for i in indices]
        labels = [merged[i][1] for i in indices]
        metrics[task] = task_metric(task, preds, labels)
        rows[task] = [(task_data.dev_ids[i], merged[i][0], merged[i][1]) for i in indices]
    model.train()
    return metrics, rows


def write_predictions(rows: dict[str, list], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for task, task_rows in rows.items():
        path = folder / f"dev-{task}.csv"
        with open(path, "w", newline="") as fp:
            writer = csv.writer(fp)
            writer.writerow(["id", "prediction", "label"])
            writer.writerows(task_rows)
        paths.append(path)
    return paths


def dev_metric_names(metrics: dict[str, float]) -> dict[str, float]:
    out = {f"dev/{task}/{'pearson' if task == 'sts' else 'accuracy'}": v for task, v in metrics.items()}
    overall = overall_score(metrics)
    if overall is not None:
        out["dev/overall"] = overall
    return out


def train(config: TrainConfig) -> dict[str, float]:
    """Runs one training as configured; returns the final dev metrics (on every rank)."""
    from accelerate.utils import set_seed

    from variants import make_config

    started = time.perf_counter()
    variant_config = make_config(config.variant, config.variant_options)
    tasks = list(variant_config.tasks)
    check_data_dir(config.data_dir, tasks)
    check_model(config.model)

    accelerator = make_accelerator(config)
    set_seed(config.seed)
    encoder, tokenizer = load_encoder(config.model)
    with accelerator.main_process_first():
        data = load_task_data(config.data_dir, tasks, tokenizer, config.max_length, config.pair_encoding,
                              lenient=config.lenient_data, cache_dir=config.cache_dir or None)
    model = build_model(encoder, config.variant, variant_config, config.pair_encoding)
    counts = count_parameters(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config)
    model, optimizer = accelerator.prepare(model, optimizer)

    sampler = TaskSampler({t: len(data[t].train) for t in tasks}, config.sampling, config.epochs, config.seed)
    streams = {t: TaskStream(len(data[t].train), seed=config.seed * 1000 + i) for i, t in enumerate(tasks)}
    world, rank, micro = accelerator.num_processes, accelerator.process_index, config.batch_size

    tracker = None
    if accelerator.is_main_process:
        tracker = RunTracker(resolve_tracking_uri(config.tracking_uri), config.experiment, config.run_name or
                             f"{config.variant}-s{config.seed}",
                             tags={"variant": config.variant, "seed": config.seed, "model": config.model,
                                   "profile": config.profile, "git_commit": git_commit(), "world_size": world})
        tracker.log_params({**config.flat(), **{f"variant.{k}": (",".join(v) if isinstance(v, tuple) else v)
                                                for k, v in asdict(variant_config).items()}})
        skipped = {f"data/skipped_rows/{name}": len(rows) for t in tasks for name, rows in data[t].skipped.items()}
        tracker.log_metrics({**counts.as_metrics(), **skipped}, step=0)
    out_dir = Path(config.output_dir) / (tracker.run_id if tracker else "run")

    progress = None
    if accelerator.is_main_process and config.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=config.total_steps, desc=f"{config.variant} training", unit="step")

    train_started = time.perf_counter()
    model.train()
    step, metrics = 0, {}
    for epoch in range(1, config.epochs + 1):
        probabilities = sampler.probabilities(epoch)
        if tracker:
            tracker.log_metrics({f"sampler/p/{t}": p for t, p in probabilities.items()}, step=step)
        for _ in range(config.batches_per_epoch):
            task = sampler.sample(epoch)
            window_loss = 0.0
            for _ in range(config.grad_accum):
                indices = streams[task].take(world * micro)[rank * micro:(rank + 1) * micro]
                batch = _batch(data[task].train, indices, accelerator.device)
                with accelerator.accumulate(model):
                    loss = task_loss(task, model(task, **batch), batch["labels"], config.pair_encoding)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                window_loss += loss.detach() / config.grad_accum
            scheduler.step()
            step += 1
            window_loss = accelerator.reduce(window_loss, reduction="mean").item()
            if tracker:
                tracker.log_metrics({f"train/loss/{task}": window_loss, "train/lr": scheduler.get_last_lr()[0]},
                                    step=step)
            if progress:
                progress.update(1)
                progress.set_postfix(task=task, loss=f"{window_loss:.3f}", epoch=epoch)
        if config.eval_every_epoch or epoch == config.epochs:
            metrics, rows = evaluate(model, data, config, accelerator)
            if tracker:
                tracker.log_metrics(dev_metric_names(metrics), step=step)
    if progress:
        progress.close()
    train_seconds = time.perf_counter() - train_started

    if tracker:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in write_predictions(rows, out_dir / "predictions"):
            tracker.log_artifact(path, "predictions")
        resolved = out_dir / "config.json"
        resolved.write_text(json.dumps({"train": asdict(config), "variant": asdict(variant_config)}, indent=2))
        tracker.log_artifact(resolved)
        skipped_rows = [(name, line, problem) for t in tasks for name, rows_ in data[t].skipped.items()
                        for line, problem in rows_]
        if skipped_rows:
            skipped_file = out_dir / "skipped_rows.csv"
            with open(skipped_file, "w", newline="") as fp:
                csv.writer(fp).writerows([("file", "line", "problem"), *skipped_rows])
            tracker.log_artifact(skipped_file)
        tracker.log_metrics({"time/train_seconds": train_seconds,
                             "time/total_seconds": time.perf_counter() - started}, step=step)
        tracker.finish("FINISHED")
        accelerator.print(f"MLflow run {tracker.run_id} in {tracker.tracking_uri}")
    accelerator.wait_for_everyone()
    return dev_metric_names(metrics)
