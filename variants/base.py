"""What every variant is: a config dataclass and a TaskAdapter that adds parts around the encoder.

A TaskAdapter owns every parameter the method adds. Parameters specific to one task live under
`self.per_task[<task>]`; anything else it owns is shared across tasks. The parameter
accounting (`harness.model.params`) relies on exactly this layout, so a new variant gets correct
counts without writing any counting code.

The adapter never sees the optimizer, Accelerate, DeepSpeed or MLflow. It reaches into the
encoder through forward hooks installed by `attach`, so the encoder's own parameter names
(and a pretrained checkpoint's keys) stay as they are. The one exception is a variant built
on a library that injects its modules into the encoder (`peft`, variants/peft_adapters.py):
its parameters then live under the encoder, and its `encoder_parameter_task` names the task
of each, which the accounting and the optimizer's per-task groups follow.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from harness.tasks import TaskError, default_tasks, get_task


@dataclass
class VariantConfig:
    """Fields common to every variant. Subclasses add theirs and extend `validate`."""

    # The run's task set, received from the run config (--tasks; else the variant's group, else the
    # default group: variants.registry.make_config). Not an option: a run has one task set, --tasks.
    tasks: tuple[str, ...] = field(default_factory=default_tasks)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not self.tasks:
            raise ValueError("tasks: at least one task is needed")
        for task in self.tasks:
            try:
                get_task(task)
            except TaskError as exc:
                raise ValueError(f"tasks: {exc}") from None
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks: {list(self.tasks)} names a task twice")


def check_positive(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{name}: expected a positive number, got {value!r}")


def check_choice(config, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {list(choices)}")


class TaskAdapter(nn.Module):
    """Base of every variant: no added parameters, the encoder used as it is."""

    # Options under which the variant must leave the pretrained encoder's output unchanged at
    # initialisation (None: the method does not intend that). Checked by the registry tests.
    identity_options: ClassVar[dict | None] = {}
    # Attributes the hooks read that one encoder pass sets: activation checkpointing recomputes a
    # layer in the backward pass, after later passes have changed them (see checkpoint_context).
    hook_state: ClassVar[tuple[str, ...]] = ("_task", "_attention_mask")
    # The encoders (transformers `model_type`s) the variant can be built on; None: any encoder.
    # `variants.registry.check_architecture` refuses the others before a model is built, saying
    # what the variant needs (`architecture_needs`) and which variants support the encoder.
    architectures: ClassVar[tuple[str, ...] | None] = None
    architecture_needs: ClassVar[str] = ""

    @classmethod
    def check_encoder(cls, config: VariantConfig, model_type: str) -> None:
        """Raises ValueError if this variant, with these options, cannot be built on an encoder of
        `model_type` although the architecture is supported (e.g. a peft site the encoder lacks).
        Called before training (variants.registry.check_architecture); nothing to check here."""

    def __init__(self, config: VariantConfig, encoder_config, tasks: tuple[str, ...]):
        super().__init__()
        self.config = config
        self.tasks = tuple(tasks)
        self.per_task = nn.ModuleDict()
        self._task: str | None = None
        self._attention_mask: torch.Tensor | None = None

    def attach(self, encoder: nn.Module) -> None:
        """Installs forward hooks on the encoder. Called once, before training is prepared."""

    def encoder_parameter_task(self, name: str) -> str | None:
        """The task owning the encoder parameter `name` (relative to the encoder), if the variant
        put it there; None for the encoder's own parameters (the default: nothing is injected)."""
        return None

    def set_context(self, task: str, attention_mask: torch.Tensor) -> None:
        """Tells the hooks which task, and which padding mask, the next encoder pass is for."""
        self._task = task
        self._attention_mask = attention_mask

    def checkpoint_context(self):
        """torch.utils.checkpoint's context_fn: a layer recomputed in the backward pass sees the
        hook state of its own forward pass (the other pair sentence's mask, not the last layer's input)."""
        def state() -> dict:
            return {name: getattr(self, name) for name in self.hook_state}

        def load(values: dict) -> None:
            for name, value in values.items():
                setattr(self, name, value)

        saved = state()

        @contextlib.contextmanager
        def as_in_forward():
            current = state()
            load(saved)
            try:
                yield
            finally:
                load(current)

        return contextlib.nullcontext(), as_in_forward()

    @property
    def task(self) -> str:
        if self._task is None:
            raise RuntimeError("the adapter was used before set_context(task, mask)")
        return self._task

    def top(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Transforms the encoder's last hidden states before the task head (identity here)."""
        return hidden_states
