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
    sampler: dict = field(default_factory=dict)
    streams: dict = field(default_factory=dict)
    train_seconds: float = 0.0  # training time up to this checkpoint, over all earlier segments of the run


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
