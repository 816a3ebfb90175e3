"""Checkpoints: Accelerate's saved state (model, optimizer, RNGs; DeepSpeed's engine files under
ZeRO) plus `loop_state.json`, where the loop is. A checkpoint is complete once loop_state.json
exists; only the newest complete one is kept.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class LoopState:
    """Where the loop is; saved with every checkpoint, beside Accelerate's model/optimizer/RNG state."""

    step: int = 0  # optimizer steps done
    epoch: int = 1  # 1-based epoch in progress
    step_in_epoch: int = 0
    run_id: str = ""
    metrics: dict = field(default_factory=dict)  # the dev metrics to report (the best or the last epoch's)
    metrics_epoch: int = 0  # the epoch they are from
    validation_metrics: dict = field(default_factory=dict)  # that epoch's validation metrics (if a split is held out)
    sampler: dict = field(default_factory=dict)
    streams: dict = field(default_factory=dict)
    train_seconds: float = 0.0  # training time up to this checkpoint, over all earlier segments of the run
    skipped_steps: int = 0  # fp16: optimizer steps the loss scaler skipped (inf/NaN gradients)
    tasks: list = field(default_factory=list)  # the run's task set (empty: a checkpoint from before it was recorded)
    model_saved_epoch: int = 0  # --save-model: the epoch whose model was written (0: none yet)
    # How the steps were laid out when it was written (0: a checkpoint from before they were recorded).
    world_size: int = 0
    batch_size: int = 0
    grad_accum: int = 0
    deepspeed: bool = False
    # The run's settings as it was started (TrainConfig fields, before "auto" values were resolved):
    # what a resume trains (empty: a checkpoint from before they were recorded).
    config: dict = field(default_factory=dict)


def upgrade_metrics(metrics: dict, primary_of) -> dict:
    """A checkpoint written before tasks had several metrics holds task -> the primary metric's
    value; today's hold task -> metric -> value. `primary_of(task)` names the primary metric."""
    return {t: v if isinstance(v, dict) else {primary_of(t): v} for t, v in metrics.items()}


def check_resume_tasks(state: LoopState, where: Path, tasks: list[str]) -> None:
    """A checkpoint continues only the task set it was written with (its heads and task parts)."""
    from harness.core.launch_config import LaunchError

    if state.tasks and list(state.tasks) != list(tasks):
        raise LaunchError(f"--resume {where}: written for tasks {','.join(state.tasks)}; this run has "
                          f"{','.join(tasks)} (--tasks): a checkpoint continues only its own task set")


def check_resume_layout(state: LoopState, where: Path, world_size: int, batch_size: int, grad_accum: int,
                        deepspeed: bool) -> None:
    """Refuses a resume that would silently change the data order or cannot load the state.

    The examples of an optimizer step depend only on the seed and the examples per step
    (world size x batch x accumulation; see TaskStream), so a checkpoint can continue under
    another world size when that product is unchanged, e.g. 2 processes x batch 8 on one
    process x batch 16. DDP and one-process checkpoints hold the whole model and optimizer, so
    they load under any world size (ranks without a saved RNG state keep the seed's). ZeRO
    checkpoints are partitioned by rank: they need the world size they were written with
    (DeepSpeed's universal-checkpoint conversion is not used here).
    """
    from harness.core.launch_config import LaunchError

    if not state.world_size:
        return
    written = f"{state.world_size} process(es) x batch {state.batch_size} x accumulation {state.grad_accum}"
    now = f"{world_size} x {batch_size} x {grad_accum}"
    old_step, new_step = state.world_size * state.batch_size * state.grad_accum, world_size * batch_size * grad_accum
    if old_step != new_step:
        raise LaunchError(f"--resume {where}: written with {written} = {old_step} examples per optimizer step; this "
                          f"run has {now} = {new_step}. The data order depends on the examples per step, so it would "
                          f"change: choose --batch-size and --grad-accum so that the product is {old_step}.")
    if deepspeed != state.deepspeed:
        raise LaunchError(f"--resume {where}: written {'with' if state.deepspeed else 'without'} DeepSpeed, this run "
                          f"is {'with' if deepspeed else 'without'} it; their checkpoint formats differ")
    if deepspeed and world_size != state.world_size:
        raise LaunchError(f"--resume {where}: a DeepSpeed ZeRO checkpoint written by {state.world_size} processes "
                          f"(partitioned by rank) cannot be loaded by {world_size}; resume with {state.world_size}")


# Settings a resume may change, since none of them changes what is trained: where records go and
# what is shown, how often checkpoints are written and whether the last is kept, how long a rank
# waits for a dead peer, where tokenised data is cached, whether the reported model is kept (and
# registered).
RESUME_MAY_CHANGE = ("resume", "progress", "tracking_uri", "system_metrics_interval", "checkpoint_every",
                     "keep_checkpoint", "dist_timeout", "cache_dir", "save_model", "register_model")
# The process layout: it may change as long as the examples per optimizer step stay the same
# (check_resume_layout), e.g. a 2-process DDP run resumed on one process with twice the batch.
RESUME_LAYOUT = ("batch_size", "grad_accum", "launch_config")


def read_loop_state(checkpoint: Path) -> LoopState:
    data = json.loads((Path(checkpoint) / "loop_state.json").read_text())
    known = set(LoopState.__dataclass_fields__)
    return LoopState(**{k: v for k, v in data.items() if k in known})


def resume_changes(recorded: dict, given: dict, where: Path) -> dict[str, tuple]:
    """Compares the settings a run was started with (`recorded`, from its checkpoint) with those
    given for its resume. A difference in a setting that changes what is trained is refused,
    naming each setting and both values; the others (RESUME_MAY_CHANGE, and RESUME_LAYOUT, which
    check_resume_layout checks) are returned as {setting: (recorded, given)} for the run's records."""
    from harness.core.config import ConfigError

    differ = {k: (recorded[k], given[k]) for k in recorded if k in given and recorded[k] != given[k]}
    if "variant_options" in differ and recorded.get("variant") == given.get("variant"):
        # Compared as the variant reads them ('48' from a command line is the integer 48), each by name.
        from variants import make_config

        then, now = (asdict(make_config(s["variant"], s["variant_options"])) for s in (recorded, given))
        del differ["variant_options"]
        differ.update({f"variant option {k}": (then[k], now[k]) for k in then if then[k] != now[k]})
    refused = {k: v for k, v in differ.items() if k not in RESUME_MAY_CHANGE + RESUME_LAYOUT}
    if refused:
        def flag(name: str) -> str:
            return f"-o {name.split()[-1]}=..." if name.startswith("variant option") else "--" + name.replace("_", "-")
        listed = "; ".join(f"{k}: {a!r} when started, {b!r} now ({flag(k)})" for k, (a, b) in sorted(refused.items()))
        raise ConfigError(f"--resume {where}: a resume trains the configuration the run was started with, and "
                          f"these settings would change it: {listed}. Resume without them (the checkpoint's "
                          "settings are used), or start a new run")
    return {k: v for k, v in differ.items() if k != "resume"}


CHECKPOINT_PREFIX = "step-"


def find_checkpoint(path: str | os.PathLike) -> Path:
    """`path` itself if it is a checkpoint, else the latest checkpoint under it."""
    path = Path(path)
    if (path / "loop_state.json").is_file():
        return path
    candidates = sorted((p for p in path.glob(f"checkpoints/{CHECKPOINT_PREFIX}*")
                         if (p / "loop_state.json").is_file()),
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
