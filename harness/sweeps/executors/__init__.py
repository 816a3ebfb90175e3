"""Where a sweep's jobs run: one module per executor, each a subclass of `Executor`.

An executor is found by its `name` once its module is imported, and every module in this
folder is imported by `list_executors`: a new executor (Kubernetes, ...) is one new file
here, with its own command-line options (`add_arguments`, `from_args`) and no change elsewhere.
Every executor runs a job the same way: `python -m harness.sweeps.job JOBS_FILE INDEX`, after
the sweep's `setup:` lines (`job_shell_command`).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from harness.sweeps.spec import Job, SweepSpec

Report = Callable[[int, int, float], None]  # a job ended: (index, exit code, seconds)


class SweepError(RuntimeError):
    """A sweep cannot be expanded, submitted or followed; the message says why."""


@dataclass
class Placement:
    """Where this process runs its job, as the job runner (harness/sweeps/job.py) needs to know it."""

    machines: int = 1  # machines the job's processes span; this process runs `accelerate launch` on one
    machine_rank: int = 0
    main_host: str = ""  # where the machines meet (machines > 1)
    port: int = 0  # a port of the job's own for the rendezvous; 0: 29501 + the job's index
    cpus: int = 0  # CPUs of this machine for the job; 0: those this process may use
    tags: dict[str, str] = field(default_factory=dict)  # recorded on the job's run (e.g. the scheduler's job id)


class Executor:
    """Runs a sweep's jobs. `run_sweep` calls, in order: `check` (before anything is recorded),
    `active` (jobs of earlier submissions still queued or running, not to be submitted again),
    `submit` (the jobs to run), and `wait` (until they have ended). On the machine that runs a
    job, `placement` says where it runs (read from the scheduler's environment)."""

    name: ClassVar[str]
    description: ClassVar[str]
    detaches: ClassVar[bool] = False  # True: submitted jobs go on without us (--no-wait leaves them queued)

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        """The executor's own `mtl-bench sweep` options."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Executor:
        return cls()

    def check(self, spec: SweepSpec) -> None:
        """Raises if these jobs cannot run here (before the sweep is recorded)."""

    def active(self, folder: Path) -> set[str]:
        """Keys of this sweep's jobs still queued or running from earlier submissions."""
        return set()

    def dry_run(self, folder: Path, spec: SweepSpec, jobs: list[Job]) -> str:
        """What `submit` would hand to the scheduler for `jobs` (`mtl-bench sweep --dry-run` prints it)."""
        return ""

    def submit(self, jobs_file: Path, jobs: list[Job], report: Report) -> str:
        """Starts (or queues) the jobs; returns a line saying where they went."""
        raise NotImplementedError

    def wait(self) -> None:
        """Until every submitted job has ended (calling `report` for each, where it can)."""
        raise NotImplementedError

    @classmethod
    def placement(cls) -> Placement:
        """Called by the job runner on the machine that runs a job: one machine unless said otherwise."""
        return Placement()


def job_shell_command(jobs_file: Path | str, index: str, setup: list[str], python: str) -> list[str]:
    """The command of one job: the job runner, after the sweep's setup lines in one shell when it
    has any (the `python` they leave on PATH then runs it, e.g. an environment they activate)."""
    runner = [python, "-m", "harness.sweeps.job", str(jobs_file), index]
    if not setup:
        return runner
    import shlex

    return ["bash", "-c", "set -e\n" + "\n".join(setup) + "\nexec " + shlex.join(["python", *runner[1:]])]


_EXECUTORS: dict[str, type[Executor]] = {}


def register_executor(cls: type[Executor]) -> type[Executor]:
    """Class decorator: makes an executor available to `mtl-bench sweep --executor NAME`."""
    if not (isinstance(cls, type) and issubclass(cls, Executor)) or not getattr(cls, "name", ""):
        raise TypeError(f"{cls!r}: an executor is an Executor subclass with a name")
    _EXECUTORS[cls.name] = cls
    return cls


def list_executors() -> list[type[Executor]]:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return [_EXECUTORS[name] for name in sorted(_EXECUTORS)]


def get_executor(name: str) -> type[Executor]:
    known = {e.name: e for e in list_executors()}
    if name not in known:
        raise SweepError(f"--executor: unknown executor {name!r}; known: {', '.join(known)}")
    return known[name]
