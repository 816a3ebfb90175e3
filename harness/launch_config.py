"""Accelerate launch configs (the YAML files of launch/, or a user's own): the one reader.

`harness.distributed` reads what a launch fixes from it; sweeps read process counts and
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
