"""Which task each optimizer step trains: annealed, proportional, square-root, uniform, round-robin.

Every rank builds the sampler with the same seed and draws the same sequence, so all ranks
train the same task at every step without communicating.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

SCHEDULES = ("annealed", "proportional", "sqrt", "uniform", "round-robin")


def annealing_exponent(epoch: int, num_epochs: int) -> float:
    """a = 1 - 0.8 (e - 1) / (E - 1) for the 1-based epoch e of E (Stickland & Murray 2019).

    With a single epoch there is nothing to anneal: a = 1 (proportional sampling).
    """
    if not 1 <= epoch <= num_epochs:
        raise ValueError(f"epoch must be in 1..{num_epochs}, got {epoch}")
    if num_epochs == 1:
        return 1.0
    return 1.0 - 0.8 * (epoch - 1) / (num_epochs - 1)


def task_probabilities(sizes: Mapping[str, int], schedule: str, epoch: int, num_epochs: int) -> dict[str, float]:
    """P(task i) for a 1-based epoch: proportional to N_i ** a with a set by the schedule."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown sampling schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if not sizes or any(n <= 0 for n in sizes.values()):
        raise ValueError(f"every task needs a positive number of training examples, got {dict(sizes)}")
    exponent = {"annealed": annealing_exponent(epoch, num_epochs), "proportional": 1.0, "sqrt": 0.5,
                "uniform": 0.0, "round-robin": 0.0}[schedule]
    weights = np.array([float(n) ** exponent for n in sizes.values()])
    return dict(zip(sizes, (weights / weights.sum()).tolist()))


class TaskSampler:
    """Draws one task per optimizer step; deterministic given the seed, with a saveable state."""

    def __init__(self, sizes: Mapping[str, int], schedule: str, num_epochs: int, seed: int):
        self.sizes = dict(sizes)
        self.tasks = list(self.sizes)
        self.schedule = schedule
        self.num_epochs = num_epochs
        task_probabilities(self.sizes, schedule, 1, num_epochs)  # validates arguments
        self.rng = np.random.default_rng(seed)
        self.draws = 0

    def probabilities(self, epoch: int) -> dict[str, float]:
        return task_probabilities(self.sizes, self.schedule, epoch, self.num_epochs)

    def sample(self, epoch: int) -> str:
        """The task for the next optimizer step of the given 1-based epoch."""
        if self.schedule == "round-robin":
            task = self.tasks[self.draws % len(self.tasks)]
        else:
            p = list(self.probabilities(epoch).values())
            task = self.tasks[int(self.rng.choice(len(self.tasks), p=p))]
        self.draws += 1
        return task

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "draws": self.draws, "tasks": self.tasks}

    def load_state_dict(self, state: dict) -> None:
        if state["tasks"] != self.tasks:
            raise ValueError(f"sampler state is for tasks {state['tasks']}, this run has {self.tasks}")
        self.rng.bit_generator.state = state["rng"]
        self.draws = state["draws"]
