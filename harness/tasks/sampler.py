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


class TaskStream:
    """Endless shuffled passes over one task's training examples, deterministic given the seed.

    At every micro-step all ranks take the next world_size * batch_size indices of the same
    order and keep their own slice, so their examples differ and none is repeated before a
    pass is complete.

    With `lengths` (length-aware batching), each pass is shuffled, cut into pools of
    `pool_steps` optimizer steps, each pool sorted by length and cut into blocks of
    `step_size` examples (one optimizer step, all ranks together), and the blocks' order is
    shuffled. Examples batched together then have similar lengths and need little padding.
    The order depends only on the seed and the step size, never on how it is split into
    ranks and micro-steps, so 2 ranks x batch b x accumulation g read exactly what 1 process
    x batch 2bg reads.
    """

    def __init__(self, size: int, seed: int, lengths=None, step_size: int = 0, pool_steps: int = 50):
        if lengths is not None and (len(lengths) != size or step_size <= 0):
            raise ValueError("length-aware batching needs one length per example and a positive step size")
        self.size, self.seed = size, seed
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.step_size, self.pool_steps = step_size, pool_steps
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.size)
        if self.lengths is None:
            return order
        pool, blocks = self.step_size * self.pool_steps, []
        for start in range(0, self.size, pool):
            members = order[start:start + pool]
            members = members[np.argsort(self.lengths[members], kind="stable")]
            blocks.extend(members[i:i + self.step_size] for i in range(0, len(members), self.step_size))
        return np.concatenate([blocks[i] for i in rng.permutation(len(blocks))])

    def take(self, count: int) -> np.ndarray:
        out = []
        while count > 0:
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            chunk = self._order[self.position:self.position + count]
            out.append(chunk)
            self.position += len(chunk)
            count -= len(chunk)
        return np.concatenate(out)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation()
