"""Accelerate launch configs (the YAML files of launch/, or a user's own): the one reader.

`harness.training.distributed` reads what a launch fixes from it; sweeps read process counts and
rewrite it for SLURM's nodes x GPUs. Nothing here imports torch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class LaunchError(RuntimeError):
    """A launch (config file, launcher environment, or the processes obtained) that cannot be used
    as it is, or that disagrees with the run config. The message names both sides."""


def read_launch_config(path: str | os.PathLike) -> dict[str, Any]:
    """The Accelerate config file as a mapping; a missing or malformed file raises LaunchError."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise LaunchError(f"launch config {path}: file not found (see launch/ for the shipped ones)")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise LaunchError(f"launch config {path}: cannot read it ({exc})") from None
    if not isinstance(config, dict):
        raise LaunchError(f"launch config {path}: expected a mapping of Accelerate settings, got {config!r}")
    return config


def world_size(config: dict[str, Any]) -> int:
    """Processes in all, over every machine."""
    return int(config.get("num_processes", 1))


def processes_per_node(config: dict[str, Any]) -> int:
    return max(1, world_size(config) // int(config.get("num_machines", 1)))


def is_deepspeed(config: dict[str, Any]) -> bool:
    return str(config.get("distributed_type", "NO")) == "DEEPSPEED"


def is_distributed(config: dict[str, Any]) -> bool:
    return str(config.get("distributed_type", "NO")) != "NO"


# The `accelerate launch` options that override a config file's value (Accelerate's rule: a flag
# given to the launcher wins over the file), and the launch value each one sets.
LAUNCHER_OVERRIDES = {"num_processes": "world_size", "mixed_precision": "mixed_precision",
                      "gradient_accumulation_steps": "grad_accum", "zero_stage": "zero_stage",
                      "gradient_clipping": "max_grad_norm"}


def launcher_overrides(argv: list[str] | None = None) -> dict[str, tuple[Any, str]]:
    """The values given as flags to the `accelerate launch` that started this process (found among
    its parent processes, or `argv`, the launcher's arguments after `launch`), each with where it
    came from, e.g. {"world_size": (4, "accelerate launch --num_processes")}. Empty when this
    process was not started by `accelerate launch` (torchrun, srun, plain python)."""
    if argv is None:
        argv = _launcher_argv()
        if argv is None:
            return {}
    from accelerate.commands.launch import launch_command_parser

    try:
        args, _ = launch_command_parser().parse_known_args(argv)
    except SystemExit:  # not arguments accelerate's own parser takes: nothing to read
        return {}
    out: dict[str, tuple[Any, str]] = {}
    for option, key in LAUNCHER_OVERRIDES.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        cast = {"world_size": int, "grad_accum": int, "zero_stage": int, "max_grad_norm": float}.get(key, str)
        out[key] = (cast(value), f"accelerate launch --{option}")
    return out


def _launcher_argv() -> list[str] | None:
    """The arguments after `launch` of the nearest parent process that is `accelerate launch`."""
    import psutil

    try:
        for parent in psutil.Process().parents():
            cmdline = parent.cmdline()
            for i, part in enumerate(cmdline[:-1]):
                launcher = (Path(part).name == "accelerate" or part == "accelerate.commands.launch"
                            or part.endswith("accelerate/commands/launch.py"))
                if launcher:
                    rest = cmdline[i + 1:]
                    return rest[1:] if rest and rest[0] == "launch" else rest
    except (psutil.Error, OSError):
        return None
    return None
