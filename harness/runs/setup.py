"""A training's setup: the `Run` it holds (accelerator, model, optimizer, data, sampler, tracker,
loop state) and `setup`, which builds it, resuming from a checkpoint if given."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.core import names
from harness.training.checkpoint import (
    LoopState,
    check_resume_layout,
    check_resume_tasks,
    read_loop_state,
    save_checkpoint,
    upgrade_metrics,
)
from harness.core.config import TrainConfig
from harness.training.data import load_task_data
from harness.training.distributed import check_launch, make_accelerator, preflight_launch, resolve_precision
from harness.model.encoders import check_max_length
from harness.model.network import build_model, compile_model, load_encoder
from harness.training.optim import TaskSteps, make_optimizer
from harness.model.params import count_parameters
from harness.tasks.sampler import TaskSampler, TaskStream
from harness.tasks import get_task, overall_formula
from harness.tracking.tracker import RunTracker, device_tags, git_commit, resolve_tracking_uri


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


def setup(config: TrainConfig, variant_config, resume_from: Path | None, changes: dict | None = None) -> Run:
    """The Run of `config`: launch checked, model and data loaded, MLflow run started (or resumed)."""
    from accelerate.utils import DistributedType, broadcast_object_list, set_seed

    tasks = list(variant_config.tasks)
    state = _loop_state(config, resume_from)
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
    model, optimizer, data, tokenizer = _model_and_data(config, variant_config, accelerator, tasks)
    counts = count_parameters(model)  # after prepare: true sizes even when ZeRO-3 has partitioned them

    tracker = None
    if accelerator.is_main_process:
        tracker = _start_tracking(config, variant_config, state, accelerator, launch, overrides, precision_source,
                                  data, counts, resume_from, changes)
    state.run_id = broadcast_object_list([tracker.run_id if tracker else None])[0]
    run = Run(
        config=config, accelerator=accelerator, model=model, optimizer=optimizer, data=data, tasks=tasks,
        sampler=TaskSampler({t: len(data[t].train) for t in tasks}, config.sampling, config.epochs, config.seed),
        streams={t: make_stream(data[t].train, config.seed * 1000 + i, config, accelerator.num_processes)
                 for i, t in enumerate(tasks)},
        state=state, tracker=tracker, out_dir=Path(config.output_dir) / state.run_id,
        deepspeed=accelerator.distributed_type == DistributedType.DEEPSPEED, variant_config=variant_config,
        task_steps=TaskSteps(optimizer, config.inactive_tasks), tokenizer=tokenizer, launch_overrides=overrides)
    if resume_from:
        accelerator.load_state(str(resume_from))
        run.sampler.load_state_dict(state.sampler)
        for task, stream_state in state.streams.items():
            run.streams[task].load_state_dict(stream_state)
        accelerator.print(f"resumed from {resume_from} at optimizer step {state.step}")
    return run


def _loop_state(config: TrainConfig, resume_from: Path | None) -> LoopState:
    """The checkpoint's loop state, or a new one; with the configuration every checkpoint records."""
    state = read_loop_state(resume_from) if resume_from else LoopState()
    # What every checkpoint of the run records as its configuration: the settings it was started
    # with, as given (before "auto" values are resolved below), never a resume's.
    state.config = state.config or {**asdict(config), "resume": ""}
    state.metrics = upgrade_metrics(state.metrics, lambda t: get_task(t).primary_metric)
    return state


def _model_and_data(config: TrainConfig, variant_config, accelerator, tasks: list[str]):
    """The model with the variant's adapter and its optimizer, prepared by Accelerate; the tokenised data."""
    encoder, tokenizer = load_encoder(config.model, pooler=config.head_input == "pooler")
    check_max_length(encoder, config.max_length, config.model)  # before tokenising, not at the first long example
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
    return model, optimizer, data, tokenizer


def _start_tracking(config: TrainConfig, variant_config, state: LoopState, accelerator, launch: dict,
                    overrides: dict, precision_source: str, data: dict, counts, resume_from: Path | None,
                    changes: dict | None) -> RunTracker:
    """The main process's MLflow run: tags; a new run's params, parameter counts and resolved config,
    or a resumed run's resume record."""
    tasks = list(variant_config.tasks)
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
    return tracker
