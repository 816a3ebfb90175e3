"""An out-of-tree bert-mtl-bench task: natural language inference, a sentence pair into 3 classes.

Installed, it is found through the entry-point group `bert_mtl_bench.tasks` (see pyproject.toml):
`mtl-bench tasks` lists it and `mtl-bench train --tasks sst,nli` trains it beside a handout task.
Its files are tab-separated with a header, like the handout's: id, premise, hypothesis, label
(0 entailment, 1 neutral, 2 contradiction); the test file has no label column.
"""
from harness.tasks import TaskSpec, register_task

NLI = register_task(TaskSpec(
    name="nli",
    kind="classification",
    text_columns=("premise", "hypothesis"),
    label_column="label",
    files={"train": "nli-train.csv", "dev": "nli-dev.csv", "test": "nli-test.csv"},
    num_classes=3,
    metrics=("macro_f1", "accuracy", "mcc"),  # the first is the primary one: it enters the overall score
    output_column="Predicted_Label",
    title="NLI",
    description="premise and hypothesis: entailment (0), neutral (1) or contradiction (2)",
))
