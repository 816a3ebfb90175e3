"""A trained run used again: `mtl-bench evaluate RUN_ID` scores dev again or predicts the test split
(writing the tasks' prediction files, for the handout tasks the starter's submission files);
`mtl-bench predict` prints predictions for sentences given on the command line or in a file. The
saved model's format and loading: harness/runs/trained.py."""
from __future__ import annotations

from pathlib import Path

import torch
from harness.runs.trained import TrainedModelError, Trained, downloaded_model, load_model, log_files, registered


def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def write_outputs(task: str, split: str, ids: list[str], preds: list[float], folder: Path) -> Path:
    """A task's predictions as the CS224N starter writes them: a header line `id \\t <column> `,
    then `<id> , <prediction> ` per example (classes as integers)."""
    from harness.tasks import get_task

    spec = get_task(task)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / spec.output_name(split)
    with open(path, "w") as fp:
        fp.write(f"id \t {spec.output_column} \n")
        for example_id, pred in zip(ids, preds):
            value = int(pred) if spec.kind == "classification" else pred
            fp.write(f"{example_id} , {value} \n")
    return path


def evaluate_run(run_id: str, split: str = "dev", data_dir: str = "", tracking_uri: str = "", out_dir: str = "",
                 tasks: list[str] | None = None, log: bool = True, cache_dir: str = "",
                 out=print, base: str = "") -> dict[str, dict[str, float]]:
    """Loads a run's model, predicts `split` of each of its tasks, writes the prediction files to
    <out_dir>/<split>/ and logs them to the run (under predictions/<split>/); for dev, returns
    and prints the metrics. The test split is read strictly (no row may be left out of a submission)."""
    from harness.training.data import check_data_dir, load_extra_dev, load_split, pad_id_of
    from harness.training.evaluation import predict_dataset, score_extra_dev
    from harness.tasks.metrics import task_metrics

    if split not in ("dev", "test"):
        raise TrainedModelError(f"--split {split!r}: expected dev or test")
    with downloaded_model(run_id, tracking_uri) as (model_folder, meta):
        trained_tasks = list(meta["tasks"])
        chosen = list(tasks or trained_tasks)
        not_trained = [t for t in chosen if t not in trained_tasks]
        if not_trained:
            raise TrainedModelError(f"run {run_id} did not train task(s) {', '.join(not_trained)}; it trained "
                                    f"{', '.join(trained_tasks)} (--tasks)")
        for task in chosen:
            registered(task)
        data_dir = data_dir or meta["train"]["data_dir"]
        check_data_dir(data_dir, chosen, (split,))  # every file there before anything is predicted
        trained = load_model(model_folder, base=base)
    config = trained.config
    folder = Path(out_dir or Path(config.output_dir) / "evaluate" / run_id) / split
    accelerator = _accelerator()
    trained.model.to(accelerator.device)
    metrics, paths = {}, []
    for task in chosen:
        rows, dataset = load_split(data_dir, task, split, trained.tokenizer, config.max_length, config.pair_encoding,
                                   lenient=config.lenient_data and split == "dev", cache_dir=cache_dir or None)
        preds, _ = predict_dataset(trained.model, task, dataset, config, accelerator, pad_id_of(trained.tokenizer))
        if split == "dev":
            metrics[task] = task_metrics(trained.model.specs[task], preds, rows.labels)
            extra = load_extra_dev(data_dir, trained.model.specs[task], trained.tokenizer, config.max_length,
                                   config.pair_encoding, cache_dir or None)
            metrics[task].update(score_extra_dev(trained.model, task, extra, config, accelerator,
                                                 pad_id_of(trained.tokenizer))[0])
        paths.append(write_outputs(task, split, rows.ids, preds, folder))
    if log:
        log_files(run_id, tracking_uri, paths, f"predictions/{split}")
    for path in paths:
        out(f"wrote {path}")
    if metrics:
        from harness.training.evaluation import dev_metric_names

        recorded = trained.meta.get("dev_metrics", {})
        for name, value in dev_metric_names(metrics).items():
            task_metric = name.split("/")[1:]
            then = recorded.get(task_metric[0], {}).get(task_metric[1]) if len(task_metric) == 2 else None
            out(f"{name}: {value:.4f}" + (f" (the run logged {then:.4f} at epoch {trained.meta['epoch']})"
                                          if then is not None else ""))
    return metrics


def read_inputs(task: str, texts: list[str], file: str | None) -> list[tuple[str, ...]]:
    """Examples for `predict`: positional texts (a pair task takes them two at a time) or a file
    with one example per line (a pair's two sentences separated by a tab)."""
    spec = registered(task)
    width = len(spec.text_columns)
    examples: list[tuple[str, ...]] = []
    if file:
        path = Path(file)
        if not path.is_file():
            raise TrainedModelError(f"--file {file}: no such file")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            fields = tuple(f.strip() for f in line.split("\t")) if width == 2 else (line.strip(),)
            if len(fields) != width or not all(fields):
                expected = "two tab-separated sentences" if width == 2 else "a sentence"
                raise TrainedModelError(f"{path}, line {number}: expected {expected} for task {task}, "
                                        f"found {len(fields)} non-empty field(s)")
            examples.append(fields)
    if texts:
        if len(texts) % width:
            raise TrainedModelError(f"task {task} takes sentence pairs: give an even number of texts "
                                    f"(each two one pair), got {len(texts)}")
        examples.extend(tuple(texts[i:i + width]) for i in range(0, len(texts), width))
    if not examples:
        raise TrainedModelError("nothing to predict: give texts or --file")
    return examples


def predict_examples(trained: Trained, task: str, examples: list[tuple[str, ...]],
                     accelerator=None) -> tuple[list[float], list[float]]:
    """The prediction and score of each example (a tuple of the task's one or two texts) for `task`,
    as `predict` (and the MLflow model, harness/runs/mlflow_model.py) gives them: the class and its
    probability, or a regression task's value (twice)."""
    from harness.training.data import TaskRows, pad_id_of, tokenize_rows
    from harness.training.evaluation import predict_dataset

    spec, config = trained.model.specs[task], trained.config
    rows = TaskRows(None, [str(i) for i in range(len(examples))], examples, [0.0] * len(examples))
    dataset = tokenize_rows(rows, spec, trained.tokenizer, config.max_length, config.pair_encoding)
    accelerator = accelerator or _accelerator()
    trained.model.to(accelerator.device)
    return predict_dataset(trained.model, task, dataset, config, accelerator, pad_id_of(trained.tokenizer))


def predict_run(run_id: str, task: str, texts: list[str], file: str | None = None, tracking_uri: str = "",
                out=print, base: str = "") -> list[tuple[float, float]]:
    """Prints `prediction <tab> score <tab> text` per example (score: the predicted class's
    probability, or the predicted value of a regression task)."""
    with downloaded_model(run_id, tracking_uri) as (model_folder, meta):
        # First what the run trained: a task it did not train is refused whether or not it is registered here.
        if task not in meta["tasks"]:
            raise TrainedModelError(f"run {run_id} did not train task {task!r}; it trained "
                                    f"{', '.join(meta['tasks'])} (--task)")
        examples = read_inputs(task, texts, file)
        trained = load_model(model_folder, base=base)
    spec = trained.model.specs[task]
    preds, scores = predict_examples(trained, task, examples)
    for pred, score, example in zip(preds, scores, examples):
        shown = int(pred) if spec.kind == "classification" else round(pred, 4)
        out(f"{shown}\t{score:.4f}\t{' ||| '.join(example)}")
    return list(zip(preds, scores))
