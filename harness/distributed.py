"""Accelerate set-up for one or many processes, and the checks that catch its silent modes.

On a machine without GPUs several launch modes quietly give something other than what was
asked for (see the README's "Distributed training"): `--cpu --num_processes 2` starts one
process; a plain Accelerator under a multi-process launch gives independent single-process
trainings; `cpu=True` silently drops the DeepSpeed plugin. `make_accelerator` picks the
combination that works and `check_launch` compares what was obtained with what the launch
asked for, before any training.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch


class LaunchError(RuntimeError):
    """The processes obtained are not the ones the launch asked for."""


def deepspeed_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def make_accelerator(grad_accum: int, batch_size: int, timeout_seconds: int = 600, max_grad_norm: float = 1.0):
    from datetime import timedelta

    from accelerate import Accelerator, DistributedDataParallelKwargs, InitProcessGroupKwargs

    # Per-task heads and adapters go unused in other tasks' steps. A rank that dies leaves the
    # others waiting in a collective: the process-group timeout bounds that wait.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    cpu_only = not torch.cuda.is_available()
    timeout = timedelta(seconds=timeout_seconds)
    if deepspeed_requested():
        handlers.append(InitProcessGroupKwargs(backend="gloo", timeout=timeout) if cpu_only
                        else InitProcessGroupKwargs(timeout=timeout))
        accelerator = Accelerator(gradient_accumulation_steps=grad_accum, kwargs_handlers=handlers)
        # No DataLoader is prepared (batches come from TaskStream), so DeepSpeed's "auto"
        # micro-batch size must be given here.
        plugin = accelerator.state.deepspeed_plugin
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size
        # Accelerate turns an "auto" gradient_clipping into 1.0 whatever the run asks for; DeepSpeed
        # clips inside its step (Accelerate's clip_grad_norm_ does nothing then), so it must get
        # --max-grad-norm itself (0 disables clipping, as without DeepSpeed).
        if plugin.deepspeed_config.get("gradient_clipping", "auto") == "auto":
            plugin.deepspeed_config["gradient_clipping"] = max_grad_norm
        return accelerator
    handlers.append(InitProcessGroupKwargs(timeout=timeout))
    return Accelerator(gradient_accumulation_steps=grad_accum, cpu=cpu_only, kwargs_handlers=handlers)


def _zero_stage_of(config_file: str | os.PathLike) -> int:
    path = Path(config_file)
    try:
        return int(json.loads(path.read_text()).get("zero_optimization", {}).get("stage", 0))
    except (OSError, ValueError) as exc:
        raise LaunchError(f"DeepSpeed config {path}: cannot read its zero_optimization.stage ({exc})") from None


def expected_launch(launch_config: str = "") -> dict:
    """What the launch asked for: from an Accelerate config file if given, else from the environment."""
    if launch_config:
        import yaml

        path = Path(launch_config)
        if not path.is_file():
            raise LaunchError(f"--launch-config {path}: file not found")
        cfg = yaml.safe_load(path.read_text()) or {}
        kind = str(cfg.get("distributed_type", "NO"))
        world = int(cfg.get("num_processes", 1))
        expected = {"world_size": world, "deepspeed": kind == "DEEPSPEED", "zero_stage": None, "source": str(path)}
        if kind == "DEEPSPEED":
            ds = cfg.get("deepspeed_config", {})
            expected["zero_stage"] = (_zero_stage_of(ds["deepspeed_config_file"]) if "deepspeed_config_file" in ds
                                      else int(ds.get("zero_stage", 0)))
        return expected
    expected = {"world_size": int(os.environ.get("WORLD_SIZE", "1")), "deepspeed": deepspeed_requested(),
                "zero_stage": None, "source": "the launcher's environment"}
    if expected["deepspeed"] and os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        expected["zero_stage"] = _zero_stage_of(os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"])
    return expected


def obtained_launch(accelerator) -> dict:
    from accelerate.utils import DistributedType

    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    stage = accelerator.state.deepspeed_plugin.zero_stage if deepspeed else None
    return {"world_size": accelerator.num_processes, "deepspeed": deepspeed, "zero_stage": stage,
            "distributed_type": str(accelerator.distributed_type)}


def check_launch(accelerator, launch_config: str = "") -> dict:
    """Raises LaunchError unless world size, DeepSpeed use and ZeRO stage are as launched."""
    expected, got = expected_launch(launch_config), obtained_launch(accelerator)
    problems = [f"{key}: expected {expected[key]}, got {got[key]}" for key in ("world_size", "deepspeed", "zero_stage")
                if expected[key] is not None and expected[key] != got[key]]
    if problems:
        raise LaunchError(f"the processes obtained do not match {expected['source']} ({'; '.join(problems)}; "
                          f"distributed type {got['distributed_type']}). On a machine without GPUs, launch "
                          "with launch/cpu-*.yaml (see README, Distributed training).")
    return got


def agree_on_step(accelerator, task_code: int, stop_requested: bool, step: int, tasks: list[str]) -> bool:
    """One collective per optimizer step: checks every rank drew the same task(s), and returns
    True on every rank if any rank was asked to stop (a signal may reach only one of them)."""
    if accelerator.num_processes == 1:
        return stop_requested
    drawn = accelerator.gather(torch.tensor([[task_code, int(stop_requested)]], device=accelerator.device)).tolist()
    codes = {code for code, _ in drawn}
    if len(codes) > 1:
        names = {rank: code for rank, (code, _) in enumerate(drawn)}
        raise RuntimeError(f"task sampler out of step across ranks at optimizer step {step}: task codes by rank "
                           f"{names} (tasks {tasks}). Every rank must use the same --seed and sampler state.")
    return any(flag for _, flag in drawn)


def all_finite(accelerator, loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank (all ranks must stop together, before backward)."""
    finite = torch.isfinite(loss.detach()).float().reshape(1)
    if accelerator.num_processes > 1:
        finite = accelerator.reduce(finite, reduction="sum") / accelerator.num_processes
    return bool(finite.item() == 1.0)


def preflight_launch(launch_config: str) -> None:
    """Before any process group starts: the launcher's environment must match the launch config.

    Catches `accelerate launch --cpu --num_processes 2` (one process, no WORLD_SIZE) and a
    DeepSpeed file launched without DeepSpeed, in well under a second.
    """
    if not launch_config:
        return
    expected, env = expected_launch(launch_config), expected_launch("")
    problems = [f"{key}: {expected['source']} asks for {expected[key]}, the launcher gave {env[key]}"
                for key in ("world_size", "deepspeed") if expected[key] != env[key]]
    if expected["zero_stage"] is not None and env["zero_stage"] is not None and expected["zero_stage"] != env["zero_stage"]:
        problems.append(f"zero_stage: {expected['source']} asks for {expected['zero_stage']}, "
                        f"the launcher gave {env['zero_stage']}")
    if problems:
        raise LaunchError("the launch does not match --launch-config (" + "; ".join(problems) + "). Launch with "
                          f"`accelerate launch --config_file {launch_config} -m harness.cli train ...`.")


def clear_stale_zero3_gradients(model) -> None:
    """Zeroes ZeRO-3's gradient partitions before an optimizer step's first backward.

    ZeRO-3 (DeepSpeed 0.19) keeps every parameter's gradient partition in one persistent
    buffer and overwrites only the partitions of parameters used in the step. A task's parts
    not used in this step would hand their last gradient to AdamW again, so its moments would
    drift from those of every other backend (measured: 2.5e-4 parameter difference after 8
    steps). ZeRO-1/2 and DDP give such parameters zero gradients; this makes ZeRO-3 agree.
    """
    buffer = getattr(getattr(model, "optimizer", None), "grad_partitions_flat_buffer", None)
    if buffer is not None:
        buffer.zero_()
