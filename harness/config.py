"""The run configuration: one flat dataclass, named profiles, validation before anything heavy.

This module imports nothing heavy, so a typo in a flag fails in well under a second.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from harness.sampler import SCHEDULES

SCHEDULERS = ("constant", "linear")
TASK_PER = ("window", "micro")
# Kept here, not imported from the modules that use them, so that validation stays light.
INACTIVE_TASKS = ("skip", "zero-grad")  # see harness/optim.py
OPTIMIZERS = ("adamw", "sgd")
HEAD_INPUTS = ("cls", "pooler")  # see harness/model.py
REPORT_EPOCHS = ("best", "last")
PAIR_ENCODINGS = ("joint", "separate")
PRECISIONS = ("auto", "no", "bf16", "fp16")  # see harness/distributed.py resolve_precision

# Budgets. `paper` is the seed study's: 10 epochs x 400 batches at lr 1e-5, constant from the
# first step (the study has no warm-up, so the paper profile sets warmup_fraction=0 rather than
# inheriting TrainConfig's 0.1), full fine-tuning.
# `quick` is sized so one `multitask` run of the packaged MiniLM, dev evaluation included,
# takes about 3 minutes on a 2-core CPU machine (measured: see README).
PROFILES: dict[str, dict[str, Any]] = {
    "paper": dict(epochs=10, batches_per_epoch=400, batch_size=16, lr=1e-5, scheduler="constant",
                  warmup_fraction=0.0, max_length=128, eval_every_epoch=True),
    "quick": dict(epochs=4, batches_per_epoch=150, batch_size=16, lr=1e-4, scheduler="linear",
                  warmup_fraction=0.1, max_length=64, eval_every_epoch=False),
}


class ConfigError(ValueError):
    """An invalid setting. The message names the field, the value and what would be valid."""


@dataclass
class TrainConfig:
    variant: str = "multitask"
    profile: str = "quick"
    model: str = "default"  # the packaged all-MiniLM-L6-v2; or a BERT checkpoint folder
    data_dir: str = "data"
    output_dir: str = "outputs"
    seed: int = 0
    # Budget fields: these defaults are the quick profile's; the chosen profile always sets them.
    epochs: int = 4
    batches_per_epoch: int = 150  # optimizer steps per epoch
    batch_size: int = 16  # per process and micro-step
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # "sgd": plain SGD (tests use it: its update is linear in the gradient)
    inactive_tasks: str = "skip"  # what a step does to the tasks it does not train (harness/optim.py)
    freeze_encoder: bool = False  # train only the variant's parts and the heads (the starter's "pretrain")
    head_input: str = "cls"  # heads read the last layer's [CLS] state, or the pretrained "pooler"'s output
    gradient_checkpointing: bool = False  # recompute encoder layers in backward: less memory, more time
    scheduler: str = "linear"
    warmup_fraction: float = 0.1
    max_grad_norm: float = 1.0  # 0 disables clipping
    # "auto": the launch config's, else bf16 on a GPU that supports it, else fp32 ("no"). A value
    # that differs from the launch config's stops the run (exit 2) before training.
    mixed_precision: str = "auto"
    max_length: int = 64
    sampling: str = "annealed"
    pair_encoding: str = "joint"
    length_grouping: bool = True  # batch examples of similar length together (less padding)
    eval_batch_size: int = 64
    eval_every_epoch: bool = False
    report_epoch: str = "best"  # with eval_every_epoch: dev/* are the best epoch's (by dev/overall) or the "last"
    lenient_data: bool = False  # skip malformed rows (counted and recorded) instead of failing
    cache_dir: str = ""  # tokenised datasets; empty: the datasets library's cache
    experiment: str = "bert-mtl-bench"
    tracking_uri: str = ""  # empty: $MLFLOW_TRACKING_URI, else sqlite in ./mlruns
    run_name: str = ""
    progress: bool = True
    system_metrics_interval: float = 10.0  # seconds between MLflow system/* samples (CPU, memory, GPU); 0: none
    task_per: str = "window"  # one task per accumulation window (PALs code), or per "micro" step
    checkpoint_every: int = 0  # optimizer steps between checkpoints (0: only at the end of each epoch)
    keep_checkpoint: bool = False  # keep the last checkpoint after the run finishes
    resume: str = ""  # a checkpoint folder, or a run's output folder (its latest checkpoint)
    save_model: bool = False  # log the reported epoch's model as the MLflow artifact model/ (harness/trained.py)
    dist_timeout: int = 600  # seconds a rank waits in a collective before giving up (a dead peer)
    launch_config: str = ""  # the Accelerate config launched with; checked against what was obtained
    # Set by `mtl-bench sweep` for each job: the run becomes a child of the sweep's parent run.
    parent_run_id: str = ""
    sweep_id: str = ""
    sweep_job: str = ""  # the job's stable key within its sweep
    sweep_label: str = ""  # what `mtl-bench compare` groups by: the variant and any grid values
    # Comma-separated task set (see `mtl-bench tasks`); empty: the variant's own (the handout's four;
    # single-task: sst,cfimdb).
    tasks: str = ""
    variant_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"profile: unknown profile {self.profile!r}; known profiles: {', '.join(PROFILES)}")
        for name in ("epochs", "batches_per_epoch", "batch_size", "grad_accum", "max_length", "eval_batch_size",
                     "dist_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr: expected a positive learning rate, got {self.lr!r}")
        for name in ("weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: expected a value >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction: expected a value in [0, 1), got {self.warmup_fraction!r}")
        if self.task_per not in TASK_PER:
            raise ConfigError(f"task_per: {self.task_per!r} is not one of {list(TASK_PER)}")
        if isinstance(self.checkpoint_every, bool) or self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every: expected an integer >= 0, got {self.checkpoint_every!r}")
        interval = self.system_metrics_interval
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 <= interval < float("inf"):
            raise ConfigError(f"system_metrics_interval: expected seconds >= 0 (0 disables system metrics), "
                              f"got {interval!r}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler: {self.scheduler!r} is not one of {list(SCHEDULERS)}")
        for name, choices in (("sampling", SCHEDULES), ("pair_encoding", PAIR_ENCODINGS), ("optimizer", OPTIMIZERS),
                              ("inactive_tasks", INACTIVE_TASKS), ("head_input", HEAD_INPUTS),
                              ("report_epoch", REPORT_EPOCHS), ("mixed_precision", PRECISIONS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name}: {getattr(self, name)!r} is not one of {list(choices)}")
        if self.head_input == "pooler" and self.pair_encoding == "separate":
            raise ConfigError("head_input: 'pooler' reads the [CLS] state of a joint encoding; with "
                              "pair_encoding 'separate' the heads read mean-pooled sentences (use head_input 'cls')")

    def variant_settings(self) -> dict[str, Any]:
        """The variant's options, with the task set of --tasks."""
        options = dict(self.variant_options)
        if self.tasks:
            if "tasks" in options:
                raise ConfigError(f"tasks: given twice, as --tasks {self.tasks} and as the variant option "
                                  f"tasks={options['tasks']}; use --tasks")
            options["tasks"] = self.tasks
        return options

    @property
    def total_steps(self) -> int:
        return self.epochs * self.batches_per_epoch

    def flat(self) -> dict[str, Any]:
        """Flat key -> value, variant options as variant.<name>, for MLflow params."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "variant_options"}
        for key, value in self.variant_options.items():
            out[f"variant.{key}"] = ",".join(value) if isinstance(value, (tuple, list)) else value
        return out


def resolve_config(overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the profile's values, then explicit overrides; validated."""
    profile = overrides.get("profile", TrainConfig.profile)
    if profile not in PROFILES:
        raise ConfigError(f"profile: unknown profile {profile!r}; known profiles: {', '.join(PROFILES)}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; known: {sorted(names)}")
    config = TrainConfig(**{**PROFILES[profile], **overrides})
    config.validate()
    return config
