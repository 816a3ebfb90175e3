"""The optimizer: one parameter group per task, what a step does to the tasks it does not train,
and each step's learning rate (`learning_rate`, transformers' schedules).

Each optimizer step trains the task of its accumulation window. What the step does to the other
tasks' parameters (their variant parts and heads) is `inactive_tasks`:

- "skip" (default): nothing. Their parameters and their optimizer state (AdamW's moments and
  step count) stay exactly as they were, weight decay included, as in the seed's optimizers:
  the CS224N starter's AdamW and the PALs code's BERTAdam both skip a parameter whose `grad` is
  None. Under DDP and DeepSpeed an unused parameter gets a zero gradient, not None, so the
  harness removes the gradients of inactive tasks' groups in a step pre-hook on the innermost
  torch optimizer. That is the optimizer DeepSpeed's ZeRO-1/2/3 call too: they keep the client
  optimizer's param groups (each group's dict, with its "task" key, now holding the group's
  flat fp32 partition) and step them one group at a time, so the same hook works on every
  backend.
- "zero-grad": the gradients stay zero tensors and the groups get learning rate 0. Parameters
  stay, but AdamW's moments decay and its step count advances between a task's visits (the
  harness's behaviour before "skip"; kept for comparison).
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from harness.core.config import INACTIVE_TASKS, TrainConfig
from harness.model.params import grouped_parameters


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """One parameter group for the shared trainable parameters and one per task (its parts and head).

    Frozen parameters (requires_grad False: a frozen encoder) are left out of the optimizer.
    """
    by_task: dict[str | None, list] = {None: []}
    for _, parameter, _, task in grouped_parameters(model):
        if parameter.requires_grad:
            by_task.setdefault(task, []).append(parameter)
    return [{"params": params, "task": task or "", "weight_decay": weight_decay}
            for task, params in by_task.items() if params]


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (the study's); plain SGD, whose update is linear in the gradient, for checks that a
    constant gradient factor (1/world size, 1/accumulation) is right: AdamW hides one."""
    groups = optimizer_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr)


# `--scheduler` choices (config.SCHEDULERS) by transformers' name (transformers.SchedulerType). The
# harness's warm-up comes before every one of them, so its 'constant' is transformers' constant_with_warmup
# (with warmup_fraction 0, transformers' 'constant'). Left out, as they need a setting the harness does not
# have or repeat one offered: constant_with_warmup (= constant here), cosine_with_restarts (at its default
# one cycle, cosine), cosine_with_min_lr, cosine_warmup_with_min_lr (need min_lr), warmup_stable_decay
# (needs num_decay_steps), reduce_lr_on_plateau and greedy (driven by a metric, not by the step).
TRANSFORMERS_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine",
                          "polynomial": "polynomial", "inverse_sqrt": "inverse_sqrt"}


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of 0-based optimizer step `step`, a pure function of the step (a resumed run
    needs only its step): a linear warm-up over the first int(warmup_fraction x total) steps, from
    lr/warmup at step 0 to lr at step warmup-1, then lr times transformers' schedule `config.scheduler`
    (transformers.get_scheduler) at that step. That is transformers' schedule as a torch optimizer
    stepped `step` times has it, except in the warm-up, taken one step ahead: transformers' first step
    trains at lr 0, the harness's at lr/warmup, and steps warmup-1 and warmup both train at lr. That
    warm-up is the harness's from before transformers' schedules, kept to the bit, as is 'linear' and
    'constant' (tests/test_config.py).

    The harness sets each parameter group's rate itself every step (TaskSteps.begin: an inactive task's
    group gets 0), so no LambdaLR steps the optimizer; the multiplier is read from the one
    get_scheduler builds (`_multiplier`)."""
    total, warmup = config.total_steps, int(config.warmup_fraction * config.total_steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    return config.lr * _multiplier(config.scheduler, config.lr, warmup, total)(step)


@functools.lru_cache(maxsize=16)
def _multiplier(scheduler: str, lr: float, warmup: int, total: int) -> Callable[[int], float]:
    """transformers' multiplier of the peak rate at a step: the lr_lambdas entry of the LambdaLR that
    get_scheduler builds on a one-parameter optimizer, built once per schedule (the public route: the
    lambdas themselves are private functions of transformers.optimization)."""
    from transformers import get_scheduler

    # At the run's lr: polynomial decays to transformers' lr_end as a fraction of the optimizer's lr.
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    schedule = get_scheduler(TRANSFORMERS_SCHEDULES[scheduler], optimizer, num_warmup_steps=warmup,
                             num_training_steps=total)
    (multiplier,) = schedule.lr_lambdas
    return multiplier


def innermost(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside Accelerate's and DeepSpeed's wrappers (they hold it as `.optimizer`)."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


class TaskSteps:
    """Sets each step's learning rates and keeps inactive tasks' groups out of the step (see above)."""

    def __init__(self, optimizer, inactive_tasks: str = "skip"):
        if inactive_tasks not in INACTIVE_TASKS:
            raise ValueError(f"inactive_tasks: {inactive_tasks!r} is not one of {list(INACTIVE_TASKS)}")
        self.optimizer = optimizer
        self.active: set[str] = set()
        self.inner = innermost(optimizer)
        self.skip = inactive_tasks == "skip"
        if self.skip:
            self.inner.register_step_pre_hook(self._drop_inactive_gradients)

    def begin(self, lr: float, tasks: set[str]) -> None:
        """Before a step's first backward: shared parameters and the parts of `tasks` get `lr`, others 0."""
        self.active = set(tasks)
        for group in self.optimizer.param_groups:
            group["lr"] = lr if (not group["task"] or group["task"] in tasks) else 0.0

    def _drop_inactive_gradients(self, optimizer, args, kwargs) -> None:
        for group in optimizer.param_groups:
            if group.get("task") and group["task"] not in self.active:
                for parameter in group["params"]:
                    parameter.grad = None


    def fill_missing_gradients(self) -> None:
        """Gives the parameters this step updates a zero gradient where they have none (a part the
        forward did not use), so that AdamW's state advances the same way as under DeepSpeed, whose
        flat gradient buffers hold zeros for unused parameters. Under "skip" inactive tasks'
        parameters are left without one: the step drops their gradients anyway, and zeros for
        them would cost an allocation the size of every other task's parts at every step."""
        for group in self.inner.param_groups:
            if self.skip and group.get("task") and group["task"] not in self.active:
                continue
            for parameter in group["params"]:
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
