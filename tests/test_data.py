import csv
import re
from pathlib import Path

import pytest
from conftest import DATA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.training.data import DataError, check_data_dir, collate, read_task_file
from harness.training.quora_split import assign_split
from harness.tasks.handout import HANDOUT_TASKS
from harness.tasks import get_task

HEADERS = {
    "sst": "\tid\tsentence\tsentiment\n",
    "quora": "\tid\tsentence1\tsentence2\tis_duplicate\n",
    "sts": "\tid\tsentence1\tsentence2\tsimilarity\n",
}
GOOD = {
    "sst": "0\ta1\tA fine film .\t3\n",
    "quora": "0\tq1\tHow do I learn?\tWhat is learning?\t0.0\n",
    "sts": "0\ts1\tA man sings.\tA man is singing.\t4.2\n",
}


def write(tmp_path: Path, task: str, *rows: str) -> Path:
    path = tmp_path / f"{task}.csv"
    path.write_text(HEADERS[task] + "".join(rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("task,row,problem", [
    ("sst", "1\ta2\tUnbalanced \"quote\t2\n", None),  # a quote inside a field is text, not an error
    ("sst", "1\ta2\t\"opened and never closed\t2\n2\ta3\tnext\t1\n", "unbalanced quote"),
    ("sst", "1\ta2\tNo label here\t\n", "missing sentiment"),
    ("sst", "1\ta2\tToo high\t5\n", r"sentiment '5' is out of range \(expected an integer class in 0..4\)"),
    ("sst", "1\ta2\tNot whole\t2.5\n", "out of range"),
    ("sst", "1\ta2\t   \t2\n", "empty sentence"),
    ("sst", "1\ta2\tshort row\n", "expected 4 tab-separated fields, found 3"),
    ("quora", "1\tq2\tOne?\tTwo?\t2.0\n", r"is_duplicate '2.0' is out of range \(expected 0 or 1\)"),
    ("quora", "1\tq2\tOne?\t\t1.0\n", "empty sentence2"),
    ("sts", "1\ts2\tA.\tB.\tfive\n", r"similarity 'five' is not numeric \(expected a number in \[0, 5\]\)"),
    ("sts", "1\ts2\tA.\tB.\tnan\n", "not finite"),
    ("sts", "1\ts2\tA.\tB.\t5.5\n", "out of range"),
])
def test_each_kind_of_bad_row_names_file_line_and_problem(tmp_path, task, row, problem):
    path = write(tmp_path, task, GOOD[task], row, GOOD[task])
    if problem is None:
        assert len(read_task_file(path, get_task(task))) == 3
        return
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}, line 3: .*{problem}"):
        read_task_file(path, get_task(task))
    lenient = read_task_file(path, get_task(task), lenient=True)
    assert len(lenient.skipped) == 1 and lenient.skipped[0][0] == 3
    assert len(lenient) == (1 if "never closed" in row else 2)  # the open quote swallows the rest


def test_unclosed_quote_at_end_of_file(tmp_path):
    path = write(tmp_path, "sst", GOOD["sst"], "1\ta2\t\"never closed\t2\n")
    with pytest.raises(DataError, match="line 3: unbalanced quote"):
        read_task_file(path, get_task("sst"))


def test_header_problems_are_errors_even_when_lenient(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("\tid\ttext\tsentiment\n0\ta\tx\t1\n")
    with pytest.raises(DataError, match=r"line 1: header .* lacks column\(s\) \['sentence'\]"):
        read_task_file(path, get_task("sst"), lenient=True)


def test_check_data_dir_names_missing_and_misheaded_files(tmp_path, small_data):
    with pytest.raises(DataError, match="ids-sst-train.csv: file not found"):
        check_data_dir(tmp_path, ["sst"])
    (tmp_path / "ids-sst-train.csv").write_text("\tid\tsentence\tlabel\n")
    (tmp_path / "ids-sst-dev.csv").write_text("\tid\tsentence\tsentiment\n")
    with pytest.raises(DataError, match=r"ids-sst-train.csv, line 1: .*lacks column\(s\) \['sentiment'\]"):
        check_data_dir(tmp_path, ["sst"])
    check_data_dir(small_data, list(HANDOUT_TASKS))


@pytest.mark.parametrize("task", list(HANDOUT_TASKS))
def test_bundled_files_load_strictly_with_the_expected_counts(task):
    expected = {"sst": (8544, 1101), "cfimdb": (1707, 245), "quora": (16194, 4018), "sts": (6040, 863)}[task]
    spec = get_task(task)
    counts = tuple(len(read_task_file(DATA / f, spec)) for f in (spec.file("train"), spec.file("dev")))
    assert counts == expected


def test_bundled_quora_split_is_the_hash_split_of_the_real_dev_file():
    spec = get_task("quora")
    train = read_task_file(DATA / "quora-train.csv", spec)
    dev = read_task_file(DATA / "quora-dev.csv", spec)
    assert all(assign_split(i) == "train" for i in train.ids)
    assert all(assign_split(i) == "dev" for i in dev.ids)
    assert not set(train.ids) & set(dev.ids)
    with open(DATA / "quora-excluded.csv", newline="") as fp:
        excluded = list(csv.DictReader(fp, delimiter="\t"))
    assert [row["line"] for row in excluded] == ["2577", "14222"]
    # 20,214 rows in the handout's quora-dev.csv: every one is in exactly one of the three files.
    assert len(train) + len(dev) + len(excluded) == 20214
    assert 0.78 < len(train) / 20212 < 0.82


def test_collate_pads_to_the_longest_and_masks():
    batch = collate({"input_ids": [[101, 7, 102], [101, 102]], "token_type_ids": [[0, 0, 0], [0, 0]],
                     "label": [1.0, 0.0]})
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [1.0, 0.0]


label_text = st.one_of(st.sampled_from(["0", "1", "2", "3", "4", "4.0", "", "5", "-1", "x", "2.5", "nan"]),
                       st.text(alphabet="0123456789.-e", max_size=4))
sentence_text = st.one_of(st.text(alphabet=st.characters(blacklist_characters="\t\n\r\"\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029",
                                                         blacklist_categories=("Cs",)), max_size=20),
                          st.just('"open'), st.just("   "))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(sentence_text, label_text), min_size=1, max_size=8))
def test_random_rows_are_loaded_correctly_or_refused_with_their_line(tmp_path, rows):
    path = tmp_path / "prop.csv"
    body = "".join(f"{i}\tid{i}\t{s}\t{l}\n" for i, (s, l) in enumerate(rows))
    path.write_text(HEADERS["sst"] + body, encoding="utf-8")

    def valid(sentence, label):
        if '"' in sentence[:1] or not sentence.strip():
            return False
        try:
            value = float(label)
        except ValueError:
            return False
        return value.is_integer() and 0 <= value < 5

    first_bad = next((i for i, row in enumerate(rows) if not valid(*row)), None)
    if first_bad is None:
        loaded = read_task_file(path, get_task("sst"))
        assert loaded.texts == [(s.strip(),) for s, _ in rows]
        assert loaded.labels == [float(l) for _, l in rows]
    else:
        with pytest.raises(DataError, match=rf"line {first_bad + 2}:"):
            read_task_file(path, get_task("sst"))
