"""The CS224N handout's four tasks and their groups, registered like any task plugin (entry point
`handout`): the group `handout` (the four, the default task set, with the CS224N overall score) and
`sentiment` (SST and CFIMDB, the single-task baseline's set).

Their files are the handout's (--data-dir data holds them); the test files' predictions are
written as the starter code writes them (`sst-test-output.csv` with a header line
`id \\t Predicted_Sentiment ` and rows `<id> , <label> `), so that they can be submitted.
"""
from __future__ import annotations

from harness.tasks import TaskGroup, TaskSpec, register_group, register_task

SST = register_task(TaskSpec(
    "sst", "classification", ("sentence",), "sentiment",
    {"train": "ids-sst-train.csv", "dev": "ids-sst-dev.csv", "test": "ids-sst-test-student.csv"},
    num_classes=5, title="SST", output_file="sst-{split}-output.csv", output_column="Predicted_Sentiment",
    description="Stanford Sentiment Treebank: a movie-review phrase's sentiment, 5 classes"))
CFIMDB = register_task(TaskSpec(
    "cfimdb", "classification", ("sentence",), "sentiment",
    {"train": "ids-cfimdb-train.csv", "dev": "ids-cfimdb-dev.csv", "test": "ids-cfimdb-test-student.csv"},
    num_classes=2, title="CFIMDB", output_file="cfimdb-{split}-output.csv", output_column="Predicted_Sentiment",
    description="CFIMDB: a movie review's polarity, 2 classes"))
QUORA = register_task(TaskSpec(
    "quora", "classification", ("sentence1", "sentence2"), "is_duplicate",
    {"train": "quora-train.csv", "dev": "quora-dev.csv", "test": "quora-test-student.csv"},
    num_classes=2, binary_logit=True, title="Quora", output_file="para-{split}-output.csv",
    output_column="Predicted_Is_Paraphrase",
    description="Quora question pairs: is one question a paraphrase of the other"))
STS = register_task(TaskSpec(
    "sts", "regression", ("sentence1", "sentence2"), "similarity",
    {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test-student.csv"},
    label_range=(0.0, 5.0), metrics=("pearson",), title="STS", output_file="sts-{split}-output.csv",
    # The starter's spelling, kept so that its graders read the file.
    output_column="Predicted_Similiary",
    description="Semantic textual similarity of a sentence pair, 0-5"))

HANDOUT_TASKS: tuple[str, ...] = ("sst", "cfimdb", "quora", "sts")  # the default task set, in the study's order
# The CS224N overall score: mean(SST acc, Quora acc, (STS r + 1) / 2); (task, metric, a correlation).
CS224N_TERMS = (("sst", "accuracy", False), ("quora", "accuracy", False), ("sts", "pearson", True))

HANDOUT = register_group(TaskGroup(
    "handout", HANDOUT_TASKS, terms=CS224N_TERMS, formula="cs224n", default=True,
    description="the CS224N handout's four tasks; overall: mean(SST acc, Quora acc, (STS r + 1) / 2)"))
SENTIMENT = register_group(TaskGroup(
    "sentiment", ("sst", "cfimdb"), description="SST and CFIMDB: the single-task baseline's sentiment tasks"))
