"""The GLUE benchmark's nine tasks and the group `glue` with the GLUE score, registered like any task
plugin (entry point `glue`). No data is bundled: docs/glue.md says how to get it.

Files: the layout of the original `download_glue_data.py` under --data-dir (CoLA/, SST-2/, MRPC/,
QQP/, STS-B/, MNLI/, QNLI/, RTE/, WNLI/, each with train.tsv, dev.tsv and test.tsv; MNLI's dev and
test files are dev_matched/dev_mismatched and test_matched/test_mismatched), read by
harness/tasks/glue_readers.py. Columns and label strings are those of the files (checked against
transformers' GLUE processors). Labels: MNLI entailment 0, neutral 1, contradiction 2 (the
`datasets` GLUE ids); QNLI and RTE entailment 0, not_entailment 1; the others as in the files.

MNLI trains once (one head, one training set); its dev split is the matched set, and the mismatched
set is an extra dev file (TaskSpec.extra_dev) scored with the same head: dev/mnli/accuracy and
dev/mnli/accuracy_mismatched.

The GLUE score (the group's formula): the mean over the nine tasks of each task's score, where a
task with two metrics scores their mean (MRPC F1 and accuracy, QQP F1 and accuracy, STS-B Pearson
and Spearman, MNLI matched and mismatched accuracy), every metric raw (CoLA's MCC and STS-B's
correlations are not mapped to [0, 1]); the GLUE paper's rule (Wang et al., 2019, section 4:
multi-metric tasks are averaged first) and its leaderboard's, where MNLI-m and MNLI-mm make one
task (docs/glue.md). The GLUE leaderboard scores the test sets; here it is computed on dev. Test
predictions (`mtl-bench evaluate --split test`) are written in the harness's own format
(<task>-test-output.csv, class ids), not the GLUE server's submission format.
"""
from __future__ import annotations

from harness.tasks import TaskGroup, TaskSpec, register_group, register_task
from harness.tasks.glue_readers import COLA_COLUMNS, glue_reader

ENTAILMENT_3 = ("entailment", "neutral", "contradiction")  # MNLI's gold_label, in class-id order
ENTAILMENT_2 = ("entailment", "not_entailment")  # QNLI's and RTE's label


def _glue(name: str, folder: str, text_columns: tuple[str, ...], label_column: str, id_column: str = "",
          dev: str = "dev", test: str = "test", classes: tuple[str, ...] = (), columns: tuple[str, ...] = (),
          **fields) -> TaskSpec:
    """A GLUE task whose files are <folder>/train.tsv, <folder>/<dev>.tsv and <folder>/<test>.tsv."""
    files = {"train": f"{folder}/train.tsv", "dev": f"{folder}/{dev}.tsv", "test": f"{folder}/{test}.tsv"}
    return register_task(TaskSpec(
        name, fields.pop("kind", "classification"), text_columns, label_column, files, id_column=id_column,
        reader=glue_reader(classes, columns), **{"num_classes": 2, **fields}))


COLA = _glue("cola", "CoLA", ("sentence",), "label", columns=COLA_COLUMNS, metrics=("mcc",), title="CoLA",
             description="Corpus of Linguistic Acceptability: is the sentence grammatical; Matthews correlation")
SST2 = _glue("sst2", "SST-2", ("sentence",), "label", title="SST-2",
             description="Stanford Sentiment Treebank, binary: a movie-review sentence's polarity")
MRPC = _glue("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", metrics=("f1", "accuracy"), title="MRPC",
             description="Microsoft Research Paraphrase Corpus: is one sentence a paraphrase of the other")
QQP = _glue("qqp", "QQP", ("question1", "question2"), "is_duplicate", id_column="id",
            metrics=("f1", "accuracy"), title="QQP", description="Quora Question Pairs: are the questions duplicates")
STSB = _glue("stsb", "STS-B", ("sentence1", "sentence2"), "score", id_column="index", kind="regression",
             num_classes=0, label_range=(0.0, 5.0), metrics=("pearson", "spearman"), title="STS-B",
             description="Semantic Textual Similarity Benchmark: a sentence pair's similarity, 0-5")
MNLI = _glue("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", id_column="index", dev="dev_matched",
             test="test_matched", classes=ENTAILMENT_3, num_classes=3, title="MNLI",
             extra_dev={"mismatched": "MNLI/dev_mismatched.tsv"},
             description="Multi-Genre NLI: entailment, neutral or contradiction; dev matched (accuracy) and "
                         "mismatched (accuracy_mismatched), one head")
QNLI = _glue("qnli", "QNLI", ("question", "sentence"), "label", id_column="index", classes=ENTAILMENT_2,
             title="QNLI", description="Question NLI (from SQuAD): does the sentence answer the question")
RTE = _glue("rte", "RTE", ("sentence1", "sentence2"), "label", id_column="index", classes=ENTAILMENT_2,
            title="RTE", description="Recognizing Textual Entailment: entailment or not")
WNLI = _glue("wnli", "WNLI", ("sentence1", "sentence2"), "label", id_column="index", title="WNLI",
             description="Winograd NLI: is the sentence with the pronoun replaced entailed")

GLUE_TASKS: tuple[str, ...] = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")
# (task, metric, mapped to [0, 1]): every metric raw; a task's terms are averaged first (OverallFormula).
GLUE_TERMS = (("cola", "mcc", False), ("sst2", "accuracy", False),
              ("mrpc", "f1", False), ("mrpc", "accuracy", False), ("qqp", "f1", False), ("qqp", "accuracy", False),
              ("stsb", "pearson", False), ("stsb", "spearman", False),
              ("mnli", "accuracy", False), ("mnli", "accuracy_mismatched", False),
              ("qnli", "accuracy", False), ("rte", "accuracy", False), ("wnli", "accuracy", False))

GLUE = register_group(TaskGroup(
    "glue", GLUE_TASKS, terms=GLUE_TERMS,
    description="the GLUE benchmark's nine tasks; overall: the GLUE score, the mean of the task scores "
                "(a two-metric task: their mean), metrics raw"))
