"""The names runs are recorded under in MLflow: tags, params and metric keys.

Whatever one module writes and another reads (the training loop and `compare`, sweeps and
`compare`, the loop and `trained`) is named here once. A task's metric keys come from its
spec: `dev/<task>/<metric>` for each metric the spec lists, its primary one first.
"""
from __future__ import annotations

# Tags of every run
VARIANT = "variant"
SEED = "seed"

# Tags of sweep runs. The parent run has sweep.role = PARENT_ROLE; each job's run is its child
# (mlflow.parentRunId) with the sweep's id, the job's stable key and the label compare groups by.
PARENT_RUN = "mlflow.parentRunId"
SWEEP_ID = "sweep.id"
SWEEP_ROLE = "sweep.role"
SWEEP_JOB = "sweep.job"
SWEEP_LABEL = "sweep.label"
SWEEP_JOBS = "sweep.jobs"  # on the parent: how many jobs the sweep has
SWEEP_FINISHED = "sweep.finished_jobs"  # on the parent: how many finished, set when the sweep ends
PARENT_ROLE = "sweep"

# Tags that an executor's job environment adds to its run (JSON in this environment variable),
# e.g. SLURM's {"slurm.job_id": "<array>_<task>"}.
RUN_TAGS_ENV = "MTL_BENCH_RUN_TAGS"

# Params
SWEEP_VARIANTS = "variants"  # on a sweep's parent run: its variants in the order the sweep lists them


def variant_param(option: str) -> str:
    """A variant option's param: variant.<option> (every option, resolved, on every run)."""
    return f"variant.{option}"


TASKS_PARAM = variant_param("tasks")  # the run's task set, comma-separated
OVERALL_FORMULA = "overall_formula"
SKIPPED_ROWS_PARAM = "data.skipped_rows"  # rows skipped by --lenient-data, all files together


def validation_rows_param(task: str) -> str:
    """How many of a task's training rows --validation-fraction held out."""
    return f"data.validation_rows.{task}"

# Metrics
STEP_METRIC = "train/lr"  # logged at every optimizer step: tells how far a run's records go
DEV = "dev"  # the reported epoch's dev metrics
DEV_EPOCH_PREFIX = "dev_epoch"  # every evaluated epoch's, at its step (--eval-every-epoch)
VALIDATION = "val"  # the reported epoch's validation metrics (--validation-fraction): what chose it
VALIDATION_EPOCH_PREFIX = "val_epoch"  # every evaluated epoch's validation metrics
OVERALL = "overall"
REPORTED_EPOCH = "dev/epoch"
TASK_SPECIFIC_TOTAL = "params/task_specific_total"  # = params_key("task_specific_total")
RATIO_TO_ENCODER = "params/ratio_to_encoder"
TRAIN_SECONDS = "time/train_seconds"
STARTUP_SECONDS = "time/startup_seconds"  # process start to the first training step

# Artifacts
PREDICTIONS = "predictions"  # folder of a run's prediction files


def predictions_file(task: str, split: str = "dev") -> str:
    """A run's per-example predictions of a task: predictions/dev-<task>.csv (id, prediction, label)."""
    return f"{split}-{task}.csv"


def params_key(what: str) -> str:
    """Parameter-count metrics: params/total, params/task_specific/<task>, ... (harness/model/params.py)."""
    return f"params/{what}"


def metric_key(task: str, metric: str, prefix: str = DEV) -> str:
    """The MLflow metric name of a task's metric: dev/<task>/<metric>."""
    return f"{prefix}/{task}/{metric}"


def primary_key(task: str, prefix: str = DEV) -> str:
    """The key of the task's primary metric (its spec's `primary_metric`)."""
    from harness.tasks import get_task

    return metric_key(task, get_task(task).primary_metric, prefix)


def overall_key(prefix: str = DEV) -> str:
    return f"{prefix}/{OVERALL}"


def train_loss_key(task: str) -> str:
    return f"train/loss/{task}"


def skipped_rows_key(file: str) -> str:
    """Rows of a data file skipped by --lenient-data (logged only when there are any)."""
    return f"data/skipped_rows/{file}"


# The cost axes of `mtl-bench compare`'s frontier and score-against-parameters plot: the row's column
# and what it counts.
COSTS = {"trainable": ("trainable_params", "trainable parameters"),
         "stored": ("stored_per_task", "parameters stored per added task"),
         "task-specific": ("task_specific_params", "task-specific encoder parameters, all tasks (heads excluded)")}
