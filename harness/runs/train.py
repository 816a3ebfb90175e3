"""One training: `preflight` (every check that needs no model), then `train`: `setup`
(harness/runs/setup.py), `train_loop` (loop.py), `finish` (finish.py). Read `train` first.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import time
from dataclasses import asdict


from harness.training.checkpoint import find_checkpoint, read_loop_state, resume_changes
from harness.core.config import TrainConfig
from harness.training.data import check_data_dir
from harness.training.distributed import preflight_launch, resolve_precision
from harness.training.evaluation import dev_metric_names
from harness.model.encoders import check_model, model_type
from harness.tracking.tracker import check_reachable, resolve_tracking_uri
from harness.runs.finish import finish
from harness.runs.loop import NonFiniteLoss, StopSignals, TrainingStopped, resume_command, train_loop
from harness.runs.setup import Run, setup


def preflight(config: TrainConfig):
    """Every check that needs no model and no process group: fails in seconds, naming the field.
    Returns the variant's config, the checkpoint to resume from, and the settings a resume changes
    ({setting: (when started, now)}, only those that cannot change what is trained)."""
    from variants import make_config
    from variants.registry import check_architecture

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
    # PALs, EmBERT: BERT-style layers only; peft: its sites where the encoder has them
    check_architecture(config.variant, model_type(config.model), variant_config)
    launch = preflight_launch(config)
    resolve_precision(config.mixed_precision, launch)  # fails here, not after loading
    if config.compile and launch["deepspeed"][0]:
        from harness.core.launch_config import LaunchError

        raise LaunchError(f"compile: --compile is not supported with DeepSpeed ({launch['deepspeed'][1]}): the "
                          "harness compiles the model before Accelerate wraps it, and DeepSpeed's engine (ZeRO-3's "
                          "parameter gathering hooks) is not traced or tested compiled here. Train without "
                          "--compile, or launch without DeepSpeed (one process, or DDP: launch/cpu-ddp.yaml)")
    if int(os.environ.get("RANK", "0")) == 0:
        check_reachable(resolve_tracking_uri(config.tracking_uri))
    return variant_config, resume_from, changes


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
