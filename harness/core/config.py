"""The run configuration: one flat dataclass, named profiles, validation before anything heavy.

This module imports nothing heavy, so a typo in a flag fails in well under a second.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.tasks.sampler import SCHEDULES

SCHEDULERS = ("constant", "linear", "cosine", "polynomial", "inverse_sqrt")  # see harness/training/optim.py
TASK_PER = ("window", "micro")
# Kept here, not imported from the modules that use them, so that validation stays light.
INACTIVE_TASKS = ("skip", "zero-grad")  # see harness/training/optim.py
OPTIMIZERS = ("adamw", "sgd")
HEAD_INPUTS = ("cls", "pooler")  # see harness/model/network.py
REPORT_EPOCHS = ("best", "last")
PAIR_ENCODINGS = ("joint", "separate")
PRECISIONS = ("auto", "no", "bf16", "fp16")  # see harness/training/distributed.py resolve_precision

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


# Fields a sweep sets for each job (its identity and its place in MLflow), not settings to vary.
SWEEP_FIELDS = ("parent_run_id", "sweep_id", "sweep_job", "sweep_label")


class ConfigError(ValueError):
    """An invalid setting. The message names the field, the value and what would be valid."""


def setting(default: Any, help: str, choices: tuple[str, ...] | None = None, listed: bool = False, **kwargs):
    """A TrainConfig field with its help text (shown by `mtl-bench train --help`) and, for a closed
    set of values, the set (argparse choices, and checked by `validate`). `listed`: a comma-separated
    list of strings, its flag repeatable and a YAML list accepted (`convert_setting` joins them)."""
    if "default_factory" not in kwargs:
        kwargs["default"] = default
    return field(metadata={"help": help, "choices": choices, "listed": listed}, **kwargs)


@dataclass
class TrainConfig:
    """Every setting of one training run. Each field is a `mtl-bench train` flag (--batch-size sets
    batch_size) with the help text given here. The budget fields' defaults are the quick profile's;
    the chosen profile always sets them, and an explicit value wins over the profile's."""

    variant: str = setting("multitask", "the method: a registered variant (`mtl-bench variants`)")
    profile: str = setting("quick", "a budget that sets the epochs, batches, batch size, learning rate, schedule, "
                           "warm-up, length and evaluation fields below (flags given beside it win)",
                           tuple(PROFILES))
    model: str = setting("default", "a BERT checkpoint folder (config, weights, tokenizer); 'default': the "
                         "packaged all-MiniLM-L6-v2")
    data_dir: str = setting("data", "the folder of the tasks' files (the CS224N handout's, for the four "
                            "handout tasks)")
    output_dir: str = setting("outputs", "where each run writes <run id>/ (checkpoints, predictions, timing)")
    seed: int = setting(0, "seeds the model's new parts, the task sampler and every task's data order")
    epochs: int = setting(4, "epochs of training")
    batches_per_epoch: int = setting(150, "optimizer steps per epoch")
    batch_size: int = setting(16, "examples per process and micro-step")
    grad_accum: int = setting(1, "micro-steps per optimizer step (gradient accumulation)")
    lr: float = setting(1e-4, "peak learning rate")
    weight_decay: float = setting(0.0, "AdamW's decoupled weight decay (SGD: L2)")
    optimizer: str = setting("adamw", "'adamw', or plain 'sgd' (tests use it: its update is linear in the "
                             "gradient)", OPTIMIZERS)
    inactive_tasks: str = setting("skip", "what a step does to the tasks it does not train: 'skip' leaves their "
                                  "parameters and optimizer state as they were (the seed's optimizer); "
                                  "'zero-grad' steps them with zero gradients (harness/training/optim.py)", INACTIVE_TASKS)
    freeze_encoder: bool = setting(False, "train only the variant's parts and the heads, not the pretrained "
                                   "encoder (the starter's 'pretrain' mode)")
    head_input: str = setting("cls", "what the heads read: the last layer's [CLS] state ('cls'), or the "
                              "pretrained pooler's output ('pooler')", HEAD_INPUTS)
    gradient_checkpointing: bool = setting(False, "recompute the encoder's layers in the backward pass: less "
                                           "memory, more time")
    compile: bool = setting(False, "torch.compile the model (the encoder and the variant's parts, in place: its "
                            "parameter and state-dict names stay as they are) before training, with dynamic shapes; "
                            "off by default: on a 2-core CPU a step is no faster (compiled / uncompiled 1.00) and "
                            "compiling the four tasks takes about 2.5 minutes (docs/benchmarks.md, Compiled "
                            "training). Not with DeepSpeed or --gradient-checkpointing")
    scheduler: str = setting("linear", "learning-rate schedule after the warm-up, transformers' (get_scheduler): "
                             "'constant', 'linear' decay to 0, 'cosine' decay to 0 (half a cycle), 'polynomial' "
                             "(power 1) decay to 1e-7, or 'inverse_sqrt' (after w warm-up steps lr x sqrt(w / step); "
                             "without a warm-up lr x sqrt(10000 / (step + 10000)))", SCHEDULERS)
    warmup_fraction: float = setting(0.1, "fraction of all steps spent warming up linearly from 0, in [0, 1)")
    max_grad_norm: float = setting(1.0, "global gradient-norm clipping; 0 disables it")
    mixed_precision: str = setting("auto", "'auto': the launch config's, else bf16 on a GPU that supports it, "
                                   "else fp32 ('no'); a value that differs from the launch config's stops the run "
                                   "(exit 2) before training", PRECISIONS)
    max_length: int = setting(64, "tokens per example (a pair: both sentences) after truncation")
    sampling: str = setting("annealed", "how a step's task is drawn: 'annealed' (N_i^a, a = 1 - 0.8 (e-1)/(E-1)), "
                            "'proportional' (N_i), 'sqrt' (N_i^0.5), 'uniform', or 'round-robin'", tuple(SCHEDULES))
    pair_encoding: str = setting("joint", "a sentence pair as one sequence ([CLS] a [SEP] b [SEP], 'joint') or "
                                 "two encoded separately and combined ('separate')", PAIR_ENCODINGS)
    length_grouping: bool = setting(True, "batch examples of similar length together (less padding)")
    eval_batch_size: int = setting(64, "examples per batch when evaluating")
    validation_fraction: float = setting(0.0, "fraction of each task's training rows held out as a validation "
                                         "split (chosen by a hash of task and row id: the same rows in every "
                                         "run, whatever the seed or file order), evaluated with dev and logged as "
                                         "val/*; the reported epoch is then the best on validation, and dev "
                                         "stays for reporting. 0: no validation split, in [0, 0.5]")
    eval_every_epoch: bool = setting(False, "evaluate on dev after every epoch (else only after the last)")
    report_epoch: str = setting("best", "with --eval-every-epoch: report the 'best' epoch's dev metrics (by the "
                                "overall score) or the 'last' one's", REPORT_EPOCHS)
    lenient_data: bool = setting(False, "skip malformed data rows (counted and recorded in the run) instead of "
                                 "failing on the first")
    cache_dir: str = setting("", "where tokenised datasets are cached; empty: the datasets library's cache")
    experiment: str = setting("bert-mtl-bench", "the MLflow experiment the run is recorded in")
    tracking_uri: str = setting("", "the MLflow store; empty: $MLFLOW_TRACKING_URI, else sqlite in ./mlruns")
    run_name: str = setting("", "the MLflow run's name; empty: <variant>-s<seed>")
    progress: bool = setting(True, "show a progress bar")
    system_metrics_interval: float = setting(10.0, "seconds between MLflow's system/* samples (CPU, memory, "
                                             "GPU); 0: none")
    task_per: str = setting("window", "one task per accumulation 'window' (the PALs code's), or a task drawn for "
                            "every 'micro' step", TASK_PER)
    checkpoint_every: int = setting(0, "optimizer steps between checkpoints; 0: only at the end of each epoch")
    keep_checkpoint: bool = setting(False, "keep the last checkpoint after the run finishes")
    resume: str = setting("", "continue from a checkpoint folder, or from a run's output folder (its latest "
                          "checkpoint), in the same MLflow run and with the settings it was started with (taken "
                          "from the checkpoint; a flag that would change what is trained is refused)")
    save_model: bool = setting(False, "log the reported epoch's model as the MLflow artifact model/, for "
                               "`mtl-bench evaluate` and `predict`, and as the MLflow model mlflow-model/ (a pyfunc: "
                               "mlflow.pyfunc.load_model, mlflow models serve)")
    register_model: str = setting("", "register the run's MLflow model (--save-model's mlflow-model/) in the tracking "
                                  "store's Model Registry under this name, as a new version; needs --save-model")
    dist_timeout: int = setting(600, "seconds a process waits in a collective before giving up (a dead peer)")
    launch_config: str = setting("", "the Accelerate config launched with; checked against the processes "
                                 "obtained and against this run's settings")
    parent_run_id: str = setting("", "the MLflow run this run is a child of (set by `mtl-bench sweep`)")
    sweep_id: str = setting("", "the sweep this run is a job of (set by `mtl-bench sweep`)")
    sweep_job: str = setting("", "the job's stable key within its sweep (set by `mtl-bench sweep`)")
    sweep_label: str = setting("", "what `mtl-bench compare` groups runs by: the variant and any grid values "
                               "(set by `mtl-bench sweep`)")
    task_file: str = setting("", "YAML files declaring tasks and task groups (format, files, columns, labels; "
                             "docs/writing-a-task.md, Tasks declared in a file), registered for the run beside the "
                             "installed ones and recorded with its saved model; comma-separated or the flag "
                             "repeated (a list in a config or sweep file), relative to the working folder",
                             listed=True)
    tasks: str = setting("", "comma-separated task set (`mtl-bench tasks`); empty: the variant's own task "
                         "group (single-task's: sentiment), else the default group's (`mtl-bench tasks`)")
    variant_options: dict[str, Any] = setting(None, "the variant's options (--option NAME=VALUE; `mtl-bench "
                                              "variants --options`)", default_factory=dict)

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
        if isinstance(self.validation_fraction, bool) or not 0 <= self.validation_fraction <= 0.5:
            raise ConfigError(f"validation_fraction: expected a fraction in [0, 0.5], got {self.validation_fraction!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction: expected a value in [0, 1), got {self.warmup_fraction!r}")
        if self.scheduler == "polynomial" and not self.lr > 1e-7:
            raise ConfigError(f"lr: the 'polynomial' schedule decays to transformers' lr_end 1e-7, so lr must be "
                              f"above it, got {self.lr!r}")
        if isinstance(self.checkpoint_every, bool) or self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every: expected an integer >= 0, got {self.checkpoint_every!r}")
        interval = self.system_metrics_interval
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 <= interval < float("inf"):
            raise ConfigError(f"system_metrics_interval: expected seconds >= 0 (0 disables system metrics), "
                              f"got {interval!r}")
        for f in dataclasses.fields(self):
            choices = f.metadata["choices"]
            if choices is not None and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name}: {getattr(self, f.name)!r} is not one of {list(choices)}")
        if self.compile and self.gradient_checkpointing:
            raise ConfigError("compile: torch.compile cannot trace the encoder's activation checkpointing (its "
                              "context_fn gives a recomputed layer the variant's hook state; torch 2.13's dynamo: "
                              "'checkpoint not implemented for ... context_fn'); use --compile or "
                              "--gradient-checkpointing, not both")
        if not isinstance(self.task_file, str):
            raise ConfigError(f"task_file: expected a string of comma-separated paths, got {self.task_file!r}")
        if self.register_model and not self.save_model:
            raise ConfigError(f"register_model: --register-model {self.register_model} registers the model the run "
                              "saves; add --save-model")
        if self.head_input == "pooler" and self.pair_encoding == "separate":
            raise ConfigError("head_input: 'pooler' reads the [CLS] state of a joint encoding; with "
                              "pair_encoding 'separate' the heads read mean-pooled sentences (use head_input 'cls')")

    def variant_settings(self) -> dict[str, Any]:
        """The variant's options, with the run's task set (--tasks) that the variant receives: the task
        set is a run setting, not a variant option (empty: the variant's default, variants.registry).
        A task group's name in --tasks stands for its tasks (`--tasks shop`, `--tasks sentiment,sts`)."""
        from harness.tasks.taskfile import task_set

        options = dict(self.variant_options)
        if "tasks" in options:
            raise ConfigError(f"tasks: the task set is the run setting --tasks (sweep files: tasks), not a variant "
                              f"option; use --tasks {options['tasks']}")
        if self.tasks:
            options["tasks"] = ",".join(task_set(self.tasks))
        return options

    @property
    def total_steps(self) -> int:
        return self.epochs * self.batches_per_epoch

    def flat(self) -> dict[str, Any]:
        """Every setting but the variant's options (a run logs those resolved: harness/core/names.py variant_param)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "variant_options"}


@functools.cache
def setting_types() -> dict[str, Any]:
    """Each TrainConfig field's type (resolved once: the annotations are strings)."""
    return typing.get_type_hints(TrainConfig)


def convert_setting(name: str, raw: Any, where: str = "") -> Any:
    """A TrainConfig field's value from a string (command line, sweep file) or a YAML/JSON value."""
    from harness.core.values import convert

    hints = setting_types()
    if name not in hints:
        raise ConfigError(f"{where or 'setting'} {name!r}: not a setting; known: {sorted(hints)}")
    if TrainConfig.__dataclass_fields__[name].metadata["listed"] and isinstance(raw, list):
        if not all(isinstance(item, str) and item and "," not in item for item in raw):
            raise ConfigError(f"{f'{where} {name}'.strip()}: expected a list of names or paths (none empty, none "
                              f"holding a comma), got {raw!r}")
        raw = ",".join(raw)
    return convert(hints[name], raw, f"{where} {name}".strip(), ConfigError)


YAML_SUFFIXES = (".yaml", ".yml")  # a config file read (and written) as YAML; others as JSON


def write_config(config: TrainConfig, path: str | os.PathLike) -> Path:
    """The resolved config (every field) as YAML for a .yaml/.yml path, else as JSON: what `read_config`
    reads back as the same config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    if path.suffix.lower() in YAML_SUFFIXES:
        import yaml

        tmp.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    else:
        tmp.write_text(json.dumps(dataclasses.asdict(config), indent=1))
    tmp.replace(path)
    return path


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML or JSON file's settings (a mapping of TrainConfig fields), each checked and typed; not
    resolved, so flags given beside the file can still replace any of them. The suffix chooses the
    parser (.yaml/.yml, .json); another suffix is read as JSON, else as YAML. A file that does not
    parse is a ConfigError naming the file and the line (1-based) where the parser stopped."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc})") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = _parse_json(path, text)
    elif suffix in YAML_SUFFIXES:
        data = _parse_yaml(path, text)
    else:
        try:
            data = _parse_json(path, text)
        except ConfigError:
            data = _parse_yaml(path, text, "neither JSON nor YAML")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings (name: value), got "
                          f"{'nothing' if data is None else type(data).__name__}")
    return {name: convert_setting(name, value, f"config file {path}:") for name, value in data.items()}


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path}, line {exc.lineno}, column {exc.colno}: not valid JSON "
                          f"({exc.msg})") from None


def _parse_yaml(path: Path, text: str, what: str = "not valid YAML") -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start is not None:  # e.g. "while parsing a flow sequence": where it began
            problem += f"; {context} that began at line {start.line + 1}, column {start.column + 1}"
        raise ConfigError(f"config file {path}{where}: {what} ({problem})") from None


def resolve_config(overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the profile's values, then explicit overrides; validated. Its task files
    (--task-file) are loaded and their tasks registered in this process (harness/tasks/taskfile.py),
    so that its task set may name them: every process that resolves a run's config knows its tasks."""
    profile = overrides.get("profile", TrainConfig.profile)
    if profile not in PROFILES:
        raise ConfigError(f"profile: unknown profile {profile!r}; known profiles: {', '.join(PROFILES)}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; known: {sorted(names)}")
    config = TrainConfig(**{**PROFILES[profile], **overrides})
    config.validate()
    if config.task_file:
        from harness.tasks.taskfile import register_task_files

        register_task_files(config.task_file)
    return config
