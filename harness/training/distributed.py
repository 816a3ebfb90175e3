"""Accelerate set-up for one or many processes, and the checks that catch its silent modes.

On a machine without GPUs several launch modes quietly give something other than what was
asked for (see docs/distributed.md): `--cpu --num_processes 2` starts one
process; a plain Accelerator under a multi-process launch gives independent single-process
trainings; `cpu=True` silently drops the DeepSpeed plugin. `make_accelerator` picks the
combination that works and `check_launch` compares what was obtained with what the launch
asked for, before any training.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from harness.core.launch_config import LaunchError, is_deepspeed, launcher_overrides, read_launch_config, world_size


def deepspeed_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def make_accelerator(grad_accum: int, batch_size: int, timeout_seconds: int = 600, max_grad_norm: float = 1.0,
                     mixed_precision: str = "no"):
    from datetime import timedelta

    from accelerate import Accelerator, DistributedDataParallelKwargs, InitProcessGroupKwargs
    from accelerate.state import AcceleratorState

    # Accelerate keeps one AcceleratorState per process and refuses a second Accelerator with
    # another precision; a process that trains twice (tests, benchmarks, notebooks) may ask for
    # one. Only the precision/plugin state is dropped; the process group (PartialState) stays.
    AcceleratorState._reset_state()
    # Per-task heads and adapters go unused in other tasks' steps. A rank that dies leaves the
    # others waiting in a collective: the process-group timeout bounds that wait.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    cpu_only = not torch.cuda.is_available()
    timeout = timedelta(seconds=timeout_seconds)
    if deepspeed_requested():
        handlers.append(InitProcessGroupKwargs(backend="gloo", timeout=timeout) if cpu_only
                        else InitProcessGroupKwargs(timeout=timeout))
        # mixed_precision fills the DeepSpeed config's "auto" fp16/bf16 fields.
        accelerator = Accelerator(gradient_accumulation_steps=grad_accum, mixed_precision=mixed_precision,
                                  kwargs_handlers=handlers)
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
    return Accelerator(gradient_accumulation_steps=grad_accum, mixed_precision=mixed_precision, cpu=cpu_only,
                       kwargs_handlers=handlers)


def _concrete(value) -> bool:
    return value is not None and str(value).lower() != "auto"


def _deepspeed_file_values(path: Path) -> dict[str, tuple[Any, str]]:
    """The values a DeepSpeed JSON config fixes (its "auto" fields are left to the run)."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LaunchError(f"DeepSpeed config {path}: cannot read it ({exc})") from None
    out: dict[str, tuple[Any, str]] = {}
    stage = cfg.get("zero_optimization", {}).get("stage", 0)
    out["zero_stage"] = (int(stage), f"{path} zero_optimization.stage")
    for key, name, cast in (("gradient_accumulation_steps", "grad_accum", int),
                            ("train_micro_batch_size_per_gpu", "batch_size", int),
                            ("gradient_clipping", "max_grad_norm", float)):
        if _concrete(cfg.get(key)):
            out[name] = (cast(cfg[key]), f"{path} {key}")
    enabled = {d: str(cfg.get(d, {}).get("enabled", "auto")).lower() for d in ("bf16", "fp16")}
    for dtype in ("bf16", "fp16"):
        if enabled[dtype] == "true":
            out["mixed_precision"] = (dtype, f"{path} {dtype}.enabled")
    if all(v == "false" for v in enabled.values()):
        out["mixed_precision"] = ("no", f"{path} bf16.enabled and fp16.enabled")
    return out


def launch_values(launch_config: str = "") -> dict[str, tuple[Any, str]]:
    """What the launch fixes, each value with where it came from: from an Accelerate config file
    if given, else from the environment `accelerate launch` (or torchrun) set up.

    Keys: world_size, deepspeed, zero_stage, and those the run config also sets: grad_accum,
    batch_size (per process and micro-step), max_grad_norm, mixed_precision. A key is absent
    where the launch leaves the value to the run ("auto", or not given). The launcher's
    ACCELERATE_MIXED_PRECISION=no is its default whatever the config said, so only bf16/fp16
    there count as a choice; a config file's `mixed_precision: 'no'` does count.
    """
    if launch_config:
        path = Path(launch_config)
        cfg = read_launch_config(path)
        deepspeed = is_deepspeed(cfg)
        out = {"world_size": (world_size(cfg), f"{path} num_processes"),
               "deepspeed": (deepspeed, f"{path} distributed_type")}
        if cfg.get("mixed_precision") is not None:
            out["mixed_precision"] = (str(cfg["mixed_precision"]), f"{path} mixed_precision")
        if deepspeed:
            ds = cfg.get("deepspeed_config", {}) or {}
            if "deepspeed_config_file" in ds:
                out.update(_deepspeed_file_values(Path(ds["deepspeed_config_file"])))
            else:
                out["zero_stage"] = (int(ds.get("zero_stage", 2)), f"{path} deepspeed_config.zero_stage")
                for key, name, cast in (("gradient_accumulation_steps", "grad_accum", int),
                                        ("gradient_clipping", "max_grad_norm", float)):
                    if _concrete(ds.get(key)):
                        out[name] = (cast(ds[key]), f"{path} deepspeed_config.{key}")
        return out
    env = os.environ
    where = "the launcher's environment"
    out = {"world_size": (int(env.get("WORLD_SIZE", "1")), f"{where} (WORLD_SIZE)"),
           "deepspeed": (deepspeed_requested(), f"{where} (ACCELERATE_USE_DEEPSPEED)")}
    if env.get("ACCELERATE_MIXED_PRECISION", "no").lower() in ("bf16", "fp16"):
        out["mixed_precision"] = (env["ACCELERATE_MIXED_PRECISION"].lower(), f"{where} (ACCELERATE_MIXED_PRECISION)")
    if deepspeed_requested():
        if env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
            out.update(_deepspeed_file_values(Path(env["ACCELERATE_DEEPSPEED_CONFIG_FILE"])))
        else:
            out["zero_stage"] = (int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")),
                                 f"{where} (ACCELERATE_DEEPSPEED_ZERO_STAGE)")
        for var, name, cast in (("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "grad_accum", int),
                                ("ACCELERATE_GRADIENT_CLIPPING", "max_grad_norm", float)):
            if _concrete(env.get(var)) and str(env.get(var)).lower() != "none":
                out[name] = (cast(env[var]), f"{where} ({var})")
    return out


# The run settings a launch config can also fix, and the flag that sets each in the run.
RUN_SETTINGS = {"grad_accum": "--grad-accum", "batch_size": "--batch-size", "max_grad_norm": "--max-grad-norm",
                "mixed_precision": "--mixed-precision"}


def resolve_precision(requested: str, launch: dict[str, tuple[Any, str]]) -> tuple[str, str]:
    """The precision to train in and where that choice came from. "auto" takes the launch's,
    else bf16 on a GPU that supports it, else fp32 ("no")."""
    if requested == "auto":
        if "mixed_precision" in launch:
            return launch["mixed_precision"]
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16", "auto: a GPU with bf16"
        return "no", "auto: no GPU with bf16"
    if requested == "fp16" and not torch.cuda.is_available():
        raise LaunchError("mixed_precision fp16 needs a CUDA GPU: on CPU Accelerate trains in fp32 instead, without "
                          "saying so. Use --mixed-precision bf16 (CPU autocast) or no.")
    if requested == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise LaunchError(f"mixed_precision bf16: {torch.cuda.get_device_name()} does not support bf16; "
                          "use --mixed-precision fp16 or no")
    return requested, "the run config (--mixed-precision)"


def check_run_settings(config, launch: dict[str, tuple[Any, str]]) -> None:
    """Raises LaunchError if the launch fixes a value the run config sets differently.

    Accelerate would otherwise pick one silently: an environment's or DeepSpeed config's
    gradient_accumulation_steps overrides the Accelerator's argument ("Using DeepSpeed's value"),
    so the harness's accumulation window and DeepSpeed's would differ and two tasks' gradients
    would share one optimizer step. Refusing (rather than adopting the launch's value) keeps the
    run config the one record of how a step is formed; the message says which two values to align.
    """
    problems = []
    for name, flag in RUN_SETTINGS.items():
        ours = getattr(config, name)
        if name not in launch or (name == "mixed_precision" and ours == "auto"):
            continue
        value, where = launch[name]
        if (float(ours) != float(value)) if name == "max_grad_norm" else ours != value:
            problems.append(f"{name}: the run config has {ours} ({flag}), {where} has {value}")
    if problems:
        raise LaunchError("the launch and the run config disagree (" + "; ".join(problems) + "). Make them equal: "
                          "change the run's flag, or the launch config (or set its value to \"auto\").")


def obtained_launch(accelerator) -> dict:
    from accelerate.utils import DistributedType

    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    got = {"world_size": accelerator.num_processes, "deepspeed": deepspeed,
           "zero_stage": accelerator.state.deepspeed_plugin.zero_stage if deepspeed else None,
           "grad_accum": accelerator.gradient_accumulation_steps, "mixed_precision": str(accelerator.mixed_precision),
           "distributed_type": str(accelerator.distributed_type)}
    if deepspeed:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        enabled = [d for d in ("bf16", "fp16") if str(ds.get(d, {}).get("enabled", False)).lower() == "true"]
        got["mixed_precision"] = enabled[0] if enabled else "no"
    return got


def check_launch(accelerator, launch: dict[str, tuple[Any, str]], config) -> dict:
    """Raises LaunchError unless the processes and settings obtained are those launched and asked for."""
    got = obtained_launch(accelerator)
    wanted = {k: v for k, v in launch.items() if k in ("world_size", "deepspeed", "zero_stage")}
    wanted["grad_accum"] = (config.grad_accum, "the run config (--grad-accum)")
    wanted["mixed_precision"] = (config.mixed_precision, "the run config (--mixed-precision, resolved)")
    if not got["deepspeed"]:
        wanted.pop("zero_stage", None)
    problems = [f"{key}: {where} asks for {value}, got {got[key]}" for key, (value, where) in wanted.items()
                if value != got[key]]
    if problems:
        raise LaunchError(f"the processes obtained do not match the launch ({'; '.join(problems)}; "
                          f"distributed type {got['distributed_type']}). On a machine without GPUs, launch "
                          "with launch/cpu-*.yaml (see README, Distributed training).")
    if getattr(config, "save_model", False) and got["deepspeed"] and got["zero_stage"] == 3:
        zero = accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
        if not zero.get("stage3_gather_16bit_weights_on_model_save"):
            raise LaunchError("--save-model under ZeRO-3 needs the partitioned weights gathered when saving: set "
                              "zero_optimization.stage3_gather_16bit_weights_on_model_save to true in the DeepSpeed "
                              "config (in an Accelerate config's deepspeed_config: zero3_save_16bit_model: true), "
                              "as launch/ds_zero3.json does")
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


def preflight_launch(config) -> dict[str, tuple[Any, str]]:
    """Before any process group starts: the launcher's environment must match --launch-config,
    and neither may fix a value the run config sets differently. Returns what the launch fixes.

    Values given as flags to `accelerate launch` override the file's, as Accelerate documents
    (their source says so: "accelerate launch --num_processes"), and are checked the same way.
    Catches `accelerate launch --cpu --num_processes 2` (one process, no WORLD_SIZE), a
    DeepSpeed file launched without DeepSpeed, and a launch config's accumulation, clipping,
    micro-batch or precision that differs from the run's, in well under a second.
    """
    env = launch_values("")
    launch = env
    if config.launch_config:
        # Accelerate's rule: a flag given to `accelerate launch` (--num_processes 4) wins over the
        # file's value, so the launch asked for is the file with the launcher's flags on top.
        launch = {**launch_values(config.launch_config), **launcher_overrides()}
        problems = [f"{key}: {launch[key][1]} asks for {launch[key][0]}, {env[key][1]} gave {env[key][0]}"
                    for key in ("world_size", "deepspeed", "zero_stage")
                    if key in launch and key in env and launch[key][0] != env[key][0]]
        if problems:
            raise LaunchError("the launch does not match --launch-config (" + "; ".join(problems) + "). Launch with "
                              f"`accelerate launch --config_file {config.launch_config} -m harness.cli train ...`.")
        # What the launcher's environment fixes beyond the file (e.g. flags given to accelerate launch).
        launch = {**env, **launch}
    check_run_settings(config, launch)
    return launch


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
