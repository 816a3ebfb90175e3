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
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from harness.config import TrainConfig
from harness.data import check_data_dir, collate, load_task_data
from harness.distributed import check_launch, check_same_task, clear_stale_zero3_gradients, make_accelerator
from harness.metrics import overall_score, task_metric
from harness.model import build_model, check_model, load_encoder, predictions, task_loss
from harness.params import count_parameters, optimizer_groups
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


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of 0-based optimizer step `step`: linear warm-up, then constant or linear decay."""
    total, warmup = config.total_steps, int(config.warmup_fraction * config.total_steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.scheduler == "linear":
        return config.lr * max(0.0, (total - step) / max(1, total - warmup))
    return config.lr


def set_learning_rates(optimizer, lr: float, tasks: set[str]) -> None:
    """Shared parameters and the parts of `tasks` get `lr`; other tasks' parts get 0.

    AdamW moves a parameter whose gradient is zero (momentum, weight decay), and under DDP or
    DeepSpeed an unused parameter's gradient is a zero tensor, not None. A learning rate of 0
    leaves it exactly unchanged on every backend.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr if (not group["task"] or group["task"] in tasks) else 0.0


def fill_missing_gradients(model) -> None:
    """Gives parameters without a gradient a zero one, so that AdamW's state advances the same
    way as under DeepSpeed, whose flat gradient buffers hold zeros for unused parameters."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)


@dataclass
class LoopState:
    """Where the loop is; saved with every checkpoint, beside Accelerate's model/optimizer/RNG state."""

    step: int = 0  # optimizer steps done
    epoch: int = 1  # 1-based epoch in progress
    step_in_epoch: int = 0
    run_id: str = ""
    metrics: dict = field(default_factory=dict)  # last dev metrics
    sampler: dict = field(default_factory=dict)
    streams: dict = field(default_factory=dict)


CHECKPOINT_PREFIX = "step-"


def find_checkpoint(path: str | os.PathLike) -> Path:
    """`path` itself if it is a checkpoint, else the latest checkpoint under it."""
    path = Path(path)
    if (path / "loop_state.json").is_file():
        return path
    candidates = sorted((p for p in path.glob(f"checkpoints/{CHECKPOINT_PREFIX}*") if (p / "loop_state.json").is_file()),
                        key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
    if not candidates:
        raise FileNotFoundError(f"--resume {path}: no checkpoint there (expected a folder with loop_state.json, "
                                "or a run output folder with checkpoints/step-N)")
    return candidates[-1]


def save_checkpoint(accelerator, out_dir: Path, state: LoopState, tracker) -> Path:
    folder = out_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{state.step:08d}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        # Metrics up to this step are sent before the checkpoint is marked complete (loop_state.json).
        tracker.flush()
        (folder / "loop_state.json").write_text(json.dumps(asdict(state), default=_json_default))
        for older in folder.parent.glob(f"{CHECKPOINT_PREFIX}*"):
            if older != folder:
                shutil.rmtree(older, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    raise TypeError(f"cannot save {type(value).__name__} in loop_state.json")


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


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_timing(out_dir: Path, rank: int, step_seconds: list[float], grad_accum: int) -> None:
    """Per-rank optimizer-step times and peak memory, read by benchmarks/distributed.py."""
    folder = out_dir / "timing"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "step_seconds": step_seconds, "grad_accum": grad_accum, "peak_rss_mb": peak_rss_mb()}))


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
    from accelerate.utils import DistributedType, broadcast_object_list, set_seed

    from variants import make_config

    started = time.perf_counter()
    variant_config = make_config(config.variant, config.variant_options)
    tasks = list(variant_config.tasks)
    check_data_dir(config.data_dir, tasks)
    check_model(config.model)
    resume_from = find_checkpoint(config.resume) if config.resume else None
    state = LoopState(**json.loads((resume_from / "loop_state.json").read_text())) if resume_from else LoopState()

    accelerator = make_accelerator(config.grad_accum, config.batch_size)
    launch = check_launch(accelerator, config.launch_config)
    set_seed(config.seed)
    encoder, tokenizer = load_encoder(config.model)
    with accelerator.main_process_first():
        data = load_task_data(config.data_dir, tasks, tokenizer, config.max_length, config.pair_encoding,
                              lenient=config.lenient_data, cache_dir=config.cache_dir or None)
    model = build_model(encoder, config.variant, variant_config, config.pair_encoding)
    optimizer = torch.optim.AdamW(optimizer_groups(model, config.weight_decay), lr=config.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    counts = count_parameters(model)  # after prepare: true sizes even when ZeRO-3 has partitioned them
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED

    sampler = TaskSampler({t: len(data[t].train) for t in tasks}, config.sampling, config.epochs, config.seed)
    streams = {t: TaskStream(len(data[t].train), seed=config.seed * 1000 + i) for i, t in enumerate(tasks)}
    world, rank, micro = accelerator.num_processes, accelerator.process_index, config.batch_size

    tracker = None
    if accelerator.is_main_process:
        tracker = RunTracker(resolve_tracking_uri(config.tracking_uri), config.experiment,
                             config.run_name or f"{config.variant}-s{config.seed}", run_id=state.run_id or None,
                             tags={"variant": config.variant, "seed": config.seed, "model": config.model,
                                   "profile": config.profile, "git_commit": git_commit(), "world_size": world,
                                   "backend": launch["distributed_type"], "zero_stage": launch["zero_stage"]})
        if not resume_from:
            tracker.log_params({**config.flat(), **{f"variant.{k}": (",".join(v) if isinstance(v, tuple) else v)
                                                    for k, v in asdict(variant_config).items()}})
            skipped = {f"data/skipped_rows/{name}": len(rows) for t in tasks
                       for name, rows in data[t].skipped.items()}
            tracker.log_metrics({**counts.as_metrics(), **skipped}, step=0)
    state.run_id = broadcast_object_list([tracker.run_id if tracker else None])[0]
    out_dir = Path(config.output_dir) / state.run_id
    if resume_from:
        accelerator.load_state(str(resume_from))
        sampler.load_state_dict(state.sampler)
        for task, stream_state in state.streams.items():
            streams[task].load_state_dict(stream_state)
        accelerator.print(f"resumed from {resume_from} at optimizer step {state.step}")

    progress = None
    if accelerator.is_main_process and config.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=config.total_steps, initial=state.step, desc=f"{config.variant} training", unit="step",
                        disable=None)  # None: no bar when stderr is not a terminal (logs, CI)

    def checkpoint() -> None:
        state.sampler = sampler.state_dict()
        state.streams = {t: s.state_dict() for t, s in streams.items()}
        save_checkpoint(accelerator, out_dir, state, tracker)

    train_started = time.perf_counter()
    model.train()
    rows = None
    step_seconds: list[float] = []
    while state.epoch <= config.epochs:
        epoch = state.epoch
        if state.step_in_epoch == 0 and tracker:
            tracker.log_metrics({f"sampler/p/{t}": p for t, p in sampler.probabilities(epoch).items()}, step=state.step)
        while state.step_in_epoch < config.batches_per_epoch:
            # One optimizer step: the same task(s) on every rank, drawn by the shared-seed sampler.
            step_started = time.perf_counter()
            if config.task_per == "window":
                window = [sampler.sample(epoch)] * config.grad_accum
            else:
                window = [sampler.sample(epoch) for _ in range(config.grad_accum)]
            check_same_task(accelerator, sum(tasks.index(t) * len(tasks) ** i for i, t in enumerate(window)),
                            state.step, tasks)
            set_learning_rates(optimizer, learning_rate(config, state.step), set(window))
            if deepspeed:
                clear_stale_zero3_gradients(model)
            losses = {}
            for task in window:
                indices = streams[task].take(world * micro)[rank * micro:(rank + 1) * micro]
                batch = _batch(data[task].train, indices, accelerator.device)
                with accelerator.accumulate(model):
                    loss = task_loss(task, model(task, **batch), batch["labels"], config.pair_encoding)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        if config.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                        if not deepspeed:
                            fill_missing_gradients(model)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                losses.setdefault(task, []).append(loss.detach())
            state.step += 1
            state.step_in_epoch += 1
            step_seconds.append(time.perf_counter() - step_started)
            means = {t: accelerator.reduce(torch.stack(v).mean(), reduction="mean").item() for t, v in losses.items()}
            if tracker:
                tracker.log_metrics({**{f"train/loss/{t}": v for t, v in means.items()},
                                     "train/lr": learning_rate(config, state.step - 1)}, step=state.step)
            if progress:
                progress.update(1)
                progress.set_postfix(task="+".join(means), loss=f"{sum(means.values()) / len(means):.3f}", epoch=epoch)
            if config.checkpoint_every and state.step % config.checkpoint_every == 0 \
                    and state.step_in_epoch < config.batches_per_epoch:
                checkpoint()
        if config.eval_every_epoch or epoch == config.epochs:
            state.metrics, rows = evaluate(model, data, config, accelerator)
            if tracker:
                tracker.log_metrics(dev_metric_names(state.metrics), step=state.step)
        state.epoch += 1
        state.step_in_epoch = 0
        checkpoint()
    if progress:
        progress.close()
    train_seconds = time.perf_counter() - train_started

    if config.save_model:
        weights = accelerator.get_state_dict(model)  # every rank: ZeRO-3 gathers the partitions
        if accelerator.is_main_process:
            torch.save(weights, out_dir / "model.pt")
    write_timing(out_dir, accelerator.process_index, step_seconds, config.grad_accum)
    if rows is None:  # resumed from the checkpoint after the last evaluation
        state.metrics, rows = evaluate(model, data, config, accelerator)
    if accelerator.is_main_process:
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
        tracker.log_metrics({"time/train_seconds": train_seconds, "time/total_seconds": time.perf_counter() - started,
                             "time/step_median_seconds": float(np.median(step_seconds)) if step_seconds else 0.0,
                             "memory/peak_rss_mb": peak_rss_mb()}, step=state.step)
        tracker.finish("FINISHED")
        if not config.keep_checkpoint:
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        accelerator.print(f"MLflow run {tracker.run_id} in {tracker.tracking_uri}")
    accelerator.wait_for_everyone()
    return dev_metric_names(state.metrics)
