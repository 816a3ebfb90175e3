"""Tasks (foundation, no torch): the registry of task specs and task groups (`registry`, re-exported
here: `from harness.tasks import TaskSpec, register_task` is the plugin API, with a reader's `TaskRows` and `DataError` from `rows`), the handout's tasks and
groups (`handout`), the metrics (`metrics`) and the task sampler (`sampler`)."""
from harness.tasks.registry import (ENTRY_POINT_GROUP, KINDS, SPLITS, OverallFormula, TaskError, TaskGroup,  # noqa: F401
                                    TaskSpec, default_group, default_tasks, discover, get_group, get_task,
                                    list_groups, list_tasks, overall_formula, register_group, register_task,
                                    spec_summary, task_order)
from harness.tasks.rows import DataError, TaskRows  # noqa: F401
