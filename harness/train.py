"""The training loop. Read `train` at the bottom first: preflight, setup, train_loop, finish.

Each optimizer step trains one task, drawn by the TaskSampler; every rank draws the same
task because every rank's sampler has the same seed. Each rank reads its own slice of that
task's examples (TaskStream), so the slices of one optimizer step never overlap.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import names
from harness.checkpoint import (
    LoopState,
    check_resume_layout,
    check_resume_tasks,
    find_checkpoint,
    read_loop_state,
    resume_changes,
    save_checkpoint,
    upgrade_metrics,
)
from harness.config import TrainConfig
from harness.data import check_data_dir, load_task_data
from harness.distributed import (
    agree_on_step,
    all_finite,
    check_launch,
    clear_stale_zero3_gradients,
    make_accelerator,
    preflight_launch,
    resolve_precision,
)
from harness.evaluation import dev_metric_names, evaluate, make_batch, pad_multiple, selection_score, write_predictions
from harness.model import build_model, check_model, compile_model, load_encoder, task_loss
from harness.optim import TaskSteps, learning_rate, make_optimizer
from harness.params import count_parameters
from harness.sampler import TaskSampler, TaskStream
from harness.tasks import get_task, overall_formula
from harness.tracking import RunTracker, check_reachable, device_tags, git_commit, resolve_tracking_uri


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


class NonFiniteLoss(RuntimeError):
    def __init__(self, task: str, step: int, checkpoint: Path | None = None):
        self.task, self.step, self.checkpoint = task, step, checkpoint
        super().__init__(f"non-finite loss on task {task} at optimizer step {step}")


class TrainingStopped(RuntimeError):
    def __init__(self, signum: int, step: int, checkpoint: Path | None = None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.how_to_resume = ""  # set once the checkpoint is written: the run, its folder and the command
        super().__init__(f"stopped by {signal.Signals(signum).name} at optimizer step {step}")

    def __str__(self) -> str:
        return " ".join(filter(None, (super().__str__(), self.how_to_resume)))


def resume_command(run: "Run") -> str:
    """The command that continues `run` from its latest checkpoint, launched as it was."""
    import shlex

    resume = ["train", "--resume", str(run.out_dir)]
    if run.accelerator.num_processes == 1 and not run.config.launch_config:
        return shlex.join(["mtl-bench", *resume])
    launch = ["accelerate", "launch"]
    if run.config.launch_config:
        launch += ["--config_file", run.config.launch_config]
        for value, where in run.launch_overrides.values():  # where: "accelerate launch --num_processes"
            launch += [where.removeprefix("accelerate launch "), str(value)]
    else:
        launch += ["--num_processes", str(run.accelerator.num_processes)]
    return shlex.join([*launch, "-m", "harness.cli", *resume])


class StopSignals:
    """SIGTERM (a scheduler's preemption) and SIGINT set a flag; the loop stops at the next step."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Run:
    """Everything one training holds, built by `setup` and used by the loop."""

    config: TrainConfig
    accelerator: Any
    model: Any
    optimizer: Any
    data: dict
    tasks: list[str]
    sampler: TaskSampler
    streams: dict[str, TaskStream]
    state: LoopState
    tracker: RunTracker | None
    out_dir: Path
    deepspeed: bool
    variant_config: Any
    task_steps: TaskSteps
    started: float = 0.0  # perf_counter when this process started the run (or resumed it)
    seconds_before: float = 0.0  # training time of the segments before a resume
    tokenizer: Any = None
    # Flags given to `accelerate launch` over the launch config's values ({key: (value, "accelerate
    # launch --flag")}, from preflight_launch): recorded, and repeated in the command that resumes.
    launch_overrides: dict = field(default_factory=dict)

    def train_seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def checkpoint(self) -> Path:
        self.state.train_seconds = self.train_seconds()
        self.state.sampler = self.sampler.state_dict()
        self.state.streams = {t: s.state_dict() for t, s in self.streams.items()}
        return save_checkpoint(self.accelerator, self.out_dir, self.state, self.tracker)


def make_stream(dataset, seed: int, config: TrainConfig, world_size: int) -> TaskStream:
    lengths = None
    if config.length_grouping:
        lengths = [len(ids) for ids in dataset["input_ids"]]
        if "input_ids_b" in dataset.column_names:
            lengths = [max(a, len(b)) for a, b in zip(lengths, dataset["input_ids_b"])]
    return TaskStream(len(dataset), seed, lengths, step_size=world_size * config.batch_size * config.grad_accum)


def sweep_tags(config: TrainConfig) -> dict[str, str]:
    """Tags that make a sweep job's run a child of the sweep's parent run, and name its scheduler job."""
    tags = {}
    if config.parent_run_id:
        tags[names.PARENT_RUN] = config.parent_run_id  # nests the run under its parent in the MLflow UI
    if config.sweep_id:
        tags.update({names.SWEEP_ID: config.sweep_id, names.SWEEP_JOB: config.sweep_job,
                     names.SWEEP_LABEL: config.sweep_label or config.variant})
    # What the executor's job environment says of this job (e.g. SLURM's job id): harness/sweeps/executors.
    tags.update(json.loads(os.environ.get(names.RUN_TAGS_ENV) or "{}"))
    return tags


def preflight(config: TrainConfig):
    """Every check that needs no model and no process group: fails in seconds, naming the field.
    Returns the variant's config, the checkpoint to resume from, and the settings a resume changes
    ({setting: (when started, now)}, only those that cannot change what is trained)."""
    from variants import make_config

    variant_config = make_config(config.variant, config.variant_settings())
    resume_from, changes = None, {}
    if config.resume:
        resume_from = find_checkpoint(config.resume)
        recorded = read_loop_state(resume_from).config
        if recorded:
            changes = resume_changes(recorded, asdict(config), resume_from)
        else:
            print(f"warning: --resume {resume_from}: the checkpoint does not record the settings its run was started "
                  "with (written by an earlier version); the settings given now are used")
    check_data_dir(config.data_dir, list(variant_config.tasks))
    check_model(config.model)
    launch = preflight_launch(config)
    resolve_precision(config.mixed_precision, launch)  # fails here, not after loading
    if config.compile and launch["deepspeed"][0]:
        from harness.launch_config import LaunchError

        raise LaunchError(f"compile: --compile is not supported with DeepSpeed ({launch['deepspeed'][1]}): the "
                          "harness compiles the model before Accelerate wraps it, and DeepSpeed's engine (ZeRO-3's "
                          "parameter gathering hooks) is not traced or tested compiled here. Train without "
                          "--compile, or launch without DeepSpeed (one process, or DDP: launch/cpu-ddp.yaml)")
    if int(os.environ.get("RANK", "0")) == 0:
        check_reachable(resolve_tracking_uri(config.tracking_uri))
    return variant_config, resume_from, changes


def setup(config: TrainConfig, variant_config, resume_from: Path | None, changes: dict | None = None) -> Run:
    from accelerate.utils import DistributedType, broadcast_object_list, set_seed

    tasks = list(variant_config.tasks)
    state = read_loop_state(resume_from) if resume_from else LoopState()
    # What every checkpoint of the run records as its configuration: the settings it was started
    # with, as given (before "auto" values are resolved below), never a resume's.
    state.config = state.config or {**asdict(config), "resume": ""}
    state.metrics = upgrade_metrics(state.metrics, lambda t: get_task(t).primary_metric)
    launch = preflight_launch(config)
    overrides = {key: (value, where) for key, (value, where) in launch.items()
                 if where.startswith("accelerate launch --")}
    # "auto" becomes what it resolved to, so the run's params record the precision it trained in.
    config.mixed_precision, precision_source = resolve_precision(config.mixed_precision, launch)
    accelerator = make_accelerator(config.grad_accum, config.batch_size, config.dist_timeout, config.max_grad_norm,
                                   config.mixed_precision)
    launch = check_launch(accelerator, launch, config)
    if resume_from:  # before anything is loaded or recorded
        check_resume_tasks(state, resume_from, tasks)
        check_resume_layout(state, resume_from, accelerator.num_processes, config.batch_size, config.grad_accum,
                            launch["deepspeed"])
    state.tasks = tasks
    # The layout this run's checkpoints are written with.
    state.world_size, state.deepspeed = accelerator.num_processes, launch["deepspeed"]
    state.batch_size, state.grad_accum = config.batch_size, config.grad_accum
    set_seed(config.seed)
    encoder, tokenizer = load_encoder(config.model, pooler=config.head_input == "pooler")
    with accelerator.main_process_first():
        data = load_task_data(config.data_dir, tasks, tokenizer, config.max_length, config.pair_encoding,
                              lenient=config.lenient_data, cache_dir=config.cache_dir or None,
                              validation_fraction=config.validation_fraction)
    model = build_model(encoder, config.variant, variant_config, config.pair_encoding, config.head_input,
                        config.freeze_encoder, config.gradient_checkpointing)
    # from_pretrained returns the encoder in eval mode: without this the encoder trained without
    # dropout until the first evaluation (with the quick profile, for the whole run).
    model.train()
    optimizer = make_optimizer(model, config.optimizer, config.lr, config.weight_decay)
    if config.compile:
        compile_model(model)  # in place, before DDP wraps it: names and parameter groups unchanged
    model, optimizer = accelerator.prepare(model, optimizer)
    counts = count_parameters(model)  # after prepare: true sizes even when ZeRO-3 has partitioned them

    tracker = None
    if accelerator.is_main_process:
        tracker = RunTracker(resolve_tracking_uri(config.tracking_uri), config.experiment,
                             config.run_name or f"{config.variant}-s{config.seed}", run_id=state.run_id or None,
                             tags={names.VARIANT: config.variant, names.SEED: config.seed, "model": config.model,
                                   "profile": config.profile, "git_commit": git_commit(),
                                   "world_size": accelerator.num_processes, "backend": launch["distributed_type"],
                                   "zero_stage": launch["zero_stage"], "torch_threads": torch.get_num_threads(),
                                   "mixed_precision": config.mixed_precision,
                                   "mixed_precision.source": precision_source,
                                   # Flags given to `accelerate launch` over the launch config's values.
                                   **({"launch.overrides": "; ".join(f"{key} {value} ({where})" for key, (value, where)
                                                                     in overrides.items())} if overrides else {}),
                                   **sweep_tags(config)})
        if resume_from:
            tracker.resumed(state.step, changes or {}, sweep_tags(config))
        else:
            tracker.log_params({**config.flat(),
                                **{names.variant_param(k): (",".join(v) if isinstance(v, tuple) else v)
                                   for k, v in asdict(variant_config).items()},
                                names.OVERALL_FORMULA: overall_formula(tasks).describe(),
                                names.SKIPPED_ROWS_PARAM: sum(len(rows) for t in tasks
                                                              for rows in data[t].skipped.values()),
                                **{names.validation_rows_param(t): len(data[t].validation_ids) for t in tasks
                                   if config.validation_fraction > 0}})
            # A file's count is a metric only when rows were skipped: zeros would lead the UI's tables and charts.
            skipped = {names.skipped_rows_key(name): len(rows) for t in tasks
                       for name, rows in data[t].skipped.items() if rows}
            tracker.log_metrics({**counts.as_metrics(), **skipped}, step=0)
            # Written once, when the run starts: a resume trains this configuration (and may change
            # only settings that cannot change the result, recorded as tags by tracker.resumed).
            resolved = Path(config.output_dir) / tracker.run_id / "config.json"
            resolved.parent.mkdir(parents=True, exist_ok=True)
            resolved.write_text(json.dumps({"train": asdict(config), "variant": asdict(variant_config)}, indent=2))
            tracker.log_artifact(resolved)
        tracker.set_tags(device_tags())  # what it ran on (a resumed run: its latest segment)
    state.run_id = broadcast_object_list([tracker.run_id if tracker else None])[0]
    run = Run(config, accelerator, model, optimizer, data, tasks,
              TaskSampler({t: len(data[t].train) for t in tasks}, config.sampling, config.epochs, config.seed),
              {t: make_stream(data[t].train, config.seed * 1000 + i, config, accelerator.num_processes)
               for i, t in enumerate(tasks)},
              state, tracker, Path(config.output_dir) / state.run_id,
              accelerator.distributed_type == DistributedType.DEEPSPEED, variant_config,
              TaskSteps(optimizer, config.inactive_tasks), tokenizer=tokenizer, launch_overrides=overrides)
    if resume_from:
        accelerator.load_state(str(resume_from))
        run.sampler.load_state_dict(state.sampler)
        for task, stream_state in state.streams.items():
            run.streams[task].load_state_dict(stream_state)
        accelerator.print(f"resumed from {resume_from} at optimizer step {state.step}")
    return run


def train_step(run: Run, window: list[str]) -> dict[str, float]:
    """One optimizer step over an accumulation window; returns the mean loss per task, all ranks."""
    config, accelerator, model, optimizer, state = run.config, run.accelerator, run.model, run.optimizer, run.state
    run.task_steps.begin(learning_rate(config, state.step), set(window))
    if run.deepspeed:
        clear_stale_zero3_gradients(model)
    world, rank, micro = accelerator.num_processes, accelerator.process_index, config.batch_size
    losses: dict[str, list] = {}
    for task in window:
        indices = run.streams[task].take(world * micro)[rank * micro:(rank + 1) * micro]
        data = run.data[task]
        batch = make_batch(data.train, indices, accelerator.device, data.pad_id, pad_multiple(config))
        with accelerator.accumulate(model):
            loss = task_loss(task, model(task, **batch), batch["labels"], config.pair_encoding)
            if not all_finite(accelerator, loss):
                raise NonFiniteLoss(task, state.step + 1)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                if config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                if not run.deepspeed:
                    run.task_steps.fill_missing_gradients()
            optimizer.step()
            if accelerator.sync_gradients and accelerator.optimizer_step_was_skipped:
                # fp16 loss scaling met inf/NaN gradients: no update, a smaller scale next step. Counted,
                # not an error: only a non-finite loss (checked above) stops the run.
                state.skipped_steps += 1
            optimizer.zero_grad(set_to_none=True)
        losses.setdefault(task, []).append(loss.detach())
    return {t: accelerator.reduce(torch.stack(v).mean(), reduction="mean").item() for t, v in losses.items()}


def train_loop(run: Run, stop: StopSignals, step_seconds: list[float]) -> None:
    """Epochs of `batches_per_epoch` optimizer steps, each epoch's dev evaluation (see `record_evaluation`)."""
    config, state, tracker, sampler = run.config, run.state, run.tracker, run.sampler
    progress = None
    if run.accelerator.is_main_process and config.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=config.total_steps, initial=state.step, desc=f"{config.variant} training", unit="step",
                        disable=None)  # None: no bar when stderr is not a terminal (logs, CI)
    if tracker and state.step == 0:
        import psutil

        # From process start (imports, model and data loading, tokenisation) to the first step.
        tracker.log_metrics({names.STARTUP_SECONDS: time.time() - psutil.Process().create_time()}, step=0)
    while state.epoch <= config.epochs:
        epoch = state.epoch
        if state.step_in_epoch == 0 and tracker:
            tracker.log_metrics({f"sampler/p/{t}": p for t, p in sampler.probabilities(epoch).items()}, step=state.step)
        while state.step_in_epoch < config.batches_per_epoch:
            started = time.perf_counter()
            # The same task(s) on every rank, drawn by the shared-seed sampler.
            draws = 1 if config.task_per == "window" else config.grad_accum
            before_draw = sampler.state_dict()
            drawn = [sampler.sample(epoch) for _ in range(draws)]
            window = drawn * config.grad_accum if draws == 1 else drawn
            code = sum(run.tasks.index(t) * len(run.tasks) ** i for i, t in enumerate(drawn))
            if agree_on_step(run.accelerator, code, bool(stop.signum), state.step, run.tasks):
                # The step is not trained: its draw is undone, so the checkpoint's resume draws it again.
                sampler.load_state_dict(before_draw)
                raise TrainingStopped(stop.signum or signal.SIGTERM, state.step)
            losses = train_step(run, window)
            state.step += 1
            state.step_in_epoch += 1
            step_seconds.append(time.perf_counter() - started)
            if tracker:
                tracker.log_metrics({**{names.train_loss_key(t): v for t, v in losses.items()},
                                     names.STEP_METRIC: learning_rate(config, state.step - 1),
                                     **({"train/skipped_steps": state.skipped_steps}
                                        if config.mixed_precision == "fp16" else {})}, step=state.step)
            if progress:
                progress.update(1)
                progress.set_postfix(task="+".join(losses), loss=f"{sum(losses.values()) / len(losses):.3f}",
                                     epoch=epoch)
            if config.checkpoint_every and state.step % config.checkpoint_every == 0 \
                    and state.step_in_epoch < config.batches_per_epoch:
                run.checkpoint()
        if config.eval_every_epoch or epoch == config.epochs:
            validation = (evaluate(run.model, run.data, config, run.accelerator, "validation")[0]
                          if config.validation_fraction > 0 else {})
            record_evaluation(run, epoch, *evaluate(run.model, run.data, config, run.accelerator), validation)
        state.epoch += 1
        state.step_in_epoch = 0
        run.checkpoint()
    if progress:
        progress.close()


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
    """Writes the reported epoch's model (or `epoch`'s) as the artifact files of harness.trained,
    logged by `finish`. Every rank calls it: ZeRO-3 gathers the partitions."""
    from harness.trained import save_model

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
            from harness import mlflow_model
            from harness.trained import ARTIFACT_PATH

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
    from harness.mlflow_model import ARTIFACT_PATH, register

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


def train(config: TrainConfig) -> dict[str, float]:
    """Runs one training as configured; returns the final dev metrics (on every rank)."""
    started = time.perf_counter()
    config = dataclasses.replace(config)  # setup resolves "auto" values in its own copy, not the caller's
    variant_config, resume_from, changes = preflight(config)
    run = setup(config, variant_config, resume_from, changes)
    run.started, run.seconds_before = started, run.state.train_seconds
    step_seconds: list[float] = []
    if run.tracker:  # stopped by tracker.finish, on every way out below
        run.tracker.start_system_metrics(config.system_metrics_interval)
    with StopSignals() as stop:
        try:
            train_loop(run, stop, step_seconds)
        except NonFiniteLoss as exc:
            # The model and optimizer are as the last completed step left them; the loop state is
            # the failed step's (its window was drawn), which resuming would retry differently.
            exc.checkpoint = run.checkpoint()
            _end_run(run, "FAILED", {"failure/reason": "non-finite loss", "failure/task": exc.task,
                                     "failure/step": exc.step, "failure/checkpoint": exc.checkpoint,
                                     f"history/step-{exc.step:08d}/failed": f"non-finite loss on {exc.task}, "
                                                                           f"checkpoint {exc.checkpoint}"})
            raise
        except TrainingStopped as exc:
            exc.checkpoint = run.checkpoint()
            exc.how_to_resume = (f"(checkpoint {exc.checkpoint}). MLflow run {run.state.run_id}, output folder "
                                 f"{run.out_dir}. Resume it with: {resume_command(run)}")
            signame = signal.Signals(exc.signum).name
            _end_run(run, "KILLED", {"stopped/signal": signame, "stopped/step": exc.step,
                                     "stopped/checkpoint": exc.checkpoint,
                                     f"history/step-{exc.step:08d}/stopped": f"{signame}, checkpoint {exc.checkpoint}"})
            raise
        except BaseException as exc:
            _end_run(run, "FAILED", {"failure/reason": f"{type(exc).__name__}: {exc}"[:5000],
                                     "failure/step": run.state.step})
            raise
    finish(run, step_seconds, started, run.train_seconds())
    return dev_metric_names(run.state.metrics)


def _end_run(run: Run, status: str, tags: dict) -> None:
    if run.tracker:
        run.tracker.set_tags(tags)
        run.tracker.finish(status, fallback_dir=run.out_dir)
