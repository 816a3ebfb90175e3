"""A trained run's model: saved as an MLflow artifact, loaded back, and used (evaluate, predict).

With --save-model a run logs the artifact `model/` when the epoch it reports is chosen (the
best one by default, as the CS224N starter keeps its best dev checkpoint):
- `weights.pt`: the state dict, gathered from every rank (under ZeRO-3 too). It holds the
  variant's task-specific parts and the heads always, and the encoder's weights unless the
  encoder was frozen (--freeze-encoder): then the base checkpoint is referenced instead and
  checked by the SHA-256 of its weight files when loaded.
- `encoder/`: the encoder's config and tokenizer files, so that a fine-tuned encoder loads
  without the base checkpoint.
- `model.json`: the format, the resolved run and variant config, the tasks' specs as trained,
  the base checkpoint's reference and hash, and the epoch, step and dev metrics of the weights.

`mtl-bench evaluate RUN_ID` scores dev again or predicts the test split (writing the tasks'
prediction files, for the handout tasks the starter's submission files); `mtl-bench predict`
prints predictions for sentences given on the command line or in a file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ARTIFACT_PATH = "model"
FORMAT = "bert-mtl-bench-model"
FORMAT_VERSION = 1
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")


class TrainedModelError(ValueError):
    """A run without a usable model artifact, or a request it cannot answer. Exit 2."""


def local_checkpoint(model: str) -> Path:
    """The folder a --model resolves to here: a checkpoint folder, or a hub name's copy in the local cache."""
    from harness.model import resolve_model_path

    folder = Path(resolve_model_path(model))
    if folder.is_dir():
        return folder.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception as exc:
        raise TrainedModelError(f"base checkpoint {model}: not a folder and not in the local hub cache "
                                f"({type(exc).__name__})") from None


def checkpoint_sha256(model: str) -> str:
    """SHA-256 over a checkpoint's weight files (sorted by name): the check of a frozen encoder's base."""
    folder = local_checkpoint(model)
    files = sorted(p for p in folder.iterdir() if p.name in WEIGHT_FILES or p.name.endswith((".safetensors", ".bin")))
    if not files:
        raise TrainedModelError(f"base checkpoint {model} ({folder}): no weight files to check")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as fp:
            for block in iter(lambda: fp.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def save_model(folder: Path, weights: dict[str, torch.Tensor], config, variant_config, tokenizer, model,
               epoch: int, step: int, metrics: dict) -> Path:
    """Writes the artifact's files into `folder` (main process; `weights`, the state dict of the
    MultitaskModel `model`, gathered on every rank). A frozen encoder's own weights are left out;
    a variant's weights injected into the encoder (peft adapters) are kept."""
    from harness.params import parameter_group
    from harness.tasks import get_task, spec_summary

    folder.mkdir(parents=True, exist_ok=True)
    encoder_config = model.encoder.config
    if config.freeze_encoder:
        weights = {k: v for k, v in weights.items() if parameter_group(k, model.variant)[0] != "encoder"}
    torch.save({k: v.detach().cpu() for k, v in weights.items()}, folder / "weights.pt")
    encoder_folder = folder / "encoder"
    encoder_config.save_pretrained(encoder_folder)
    tokenizer.save_pretrained(encoder_folder)
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "train": dataclasses.asdict(config), "variant": dataclasses.asdict(variant_config),
        "tasks": {t: spec_summary(get_task(t)) for t in variant_config.tasks},
        "encoder": "base" if config.freeze_encoder else "saved",
        # A frozen encoder is not copied: its base is referenced (a folder by its absolute path) and checked.
        "base_model": str(local_checkpoint(config.model)) if config.freeze_encoder else config.model,
        "base_sha256": checkpoint_sha256(config.model) if config.freeze_encoder else None,
        "epoch": epoch, "step": step, "dev_metrics": metrics,
    }
    (folder / "model.json").write_text(json.dumps(meta, indent=2))
    return folder


@dataclass
class Trained:
    model: Any  # MultitaskModel, in eval mode
    tokenizer: Any
    config: Any  # TrainConfig as the run resolved it
    meta: dict

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.model.tasks


def _client(tracking_uri: str):
    import datasets

    # Output for a person reading predictions: no download or tokenising progress bars.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    datasets.disable_progress_bars()

    from harness.tracking import open_client

    return open_client(tracking_uri)


def download_model(run_id: str, tracking_uri: str, dst: Path) -> Path:
    client = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise TrainedModelError(f"run {run_id}: not found in {client.tracking_uri} ({type(exc).__name__}); is "
                                "--tracking-uri the store it was recorded in?") from None
    names = {a.path for a in client.list_artifacts(run_id)}
    if ARTIFACT_PATH not in names:
        raise TrainedModelError(f"run {run_id} ({run.data.tags.get('mlflow.runName', '')}) saved no model: it has no "
                                f"'{ARTIFACT_PATH}' artifact (train with --save-model to keep one)")
    return Path(client.download_artifacts(run_id, ARTIFACT_PATH, str(dst)))


def registered(task: str):
    """The spec of a task a saved run trained; unknown here: an error saying to install its package."""
    from harness.tasks import TaskError, get_task

    try:
        return get_task(task)
    except TaskError as exc:
        raise TaskError(f"{exc}: a saved run trained it; install the package that registers it") from None


def _read_meta(meta_file: Path) -> dict:
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainedModelError(f"{meta_file}: not a bert-mtl-bench model artifact ({type(exc).__name__}: {exc})") \
            from None
    if meta.get("format") != FORMAT:
        raise TrainedModelError(f"{meta_file}: format {meta.get('format')!r} is not {FORMAT!r}: not a model this "
                                "harness saved")
    if meta.get("version") != FORMAT_VERSION:
        raise TrainedModelError(f"{meta_file}: format version {meta.get('version')!r}; this harness reads version "
                                f"{FORMAT_VERSION}")
    return meta


def load_model(folder: Path, device: str | torch.device = "cpu") -> Trained:
    """Rebuilds the model of an artifact folder (see the module docstring) and loads its weights."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from harness.config import TrainConfig
    from harness.model import build_model, load_encoder
    from harness.params import parameter_group
    from harness.tasks import spec_summary
    from variants import make_config

    folder = Path(folder)
    meta = _read_meta(folder / "model.json")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in meta["train"].items() if k in known})
    for task, recorded in meta["tasks"].items():
        now = spec_summary(registered(task))
        if now != recorded:
            raise TrainedModelError(f"task {task!r} is registered differently now than when run was trained "
                                    f"({recorded} then, {now} now)")
    variant_config = make_config(config.variant, {k: v for k, v in meta["variant"].items()})
    pooler = config.head_input == "pooler"
    if meta["encoder"] == "base":
        digest = checkpoint_sha256(meta["base_model"])
        if digest != meta["base_sha256"]:
            raise TrainedModelError(f"base checkpoint {meta['base_model']}: its weights have SHA-256 {digest[:16]}..., "
                                    f"not {meta['base_sha256'][:16]}... as when the run was trained with its encoder "
                                    "frozen; the artifact holds no encoder weights of its own")
        encoder, tokenizer = load_encoder(meta["base_model"], pooler=pooler)
    else:
        encoder = BertModel(BertConfig.from_pretrained(folder / "encoder"), add_pooling_layer=pooler)
        tokenizer = AutoTokenizer.from_pretrained(folder / "encoder")
    model = build_model(encoder, config.variant, variant_config, config.pair_encoding, config.head_input)
    weights = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys
               if not (meta["encoder"] == "base" and parameter_group(k, model.variant)[0] == "encoder")]
    if missing or result.unexpected_keys:
        raise TrainedModelError(f"{folder / 'weights.pt'} does not fit the model it describes: missing "
                                f"{missing[:10]}, unexpected {result.unexpected_keys[:10]}")
    model.to(device).eval()
    return Trained(model, tokenizer, config, meta)


@contextmanager
def downloaded_model(run_id: str, tracking_uri: str = ""):
    """A run's model artifact in a temporary folder, with its model.json read and checked: (folder, meta)."""
    with tempfile.TemporaryDirectory(prefix="mtl-bench-model-") as tmp:
        folder = download_model(run_id, tracking_uri, Path(tmp))
        yield folder, _read_meta(folder / "model.json")


def load_run(run_id: str, tracking_uri: str = "", device: str | torch.device = "cpu") -> Trained:
    with downloaded_model(run_id, tracking_uri) as (folder, _):
        return load_model(folder, device)


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
                 out=print) -> dict[str, dict[str, float]]:
    """Loads a run's model, predicts `split` of each of its tasks, writes the prediction files to
    <out_dir>/<split>/ and logs them to the run (under predictions/<split>/); for dev, returns
    and prints the metrics. The test split is read strictly (no row may be left out of a submission)."""
    from harness.data import check_data_dir, load_split, pad_id_of
    from harness.evaluation import predict_dataset
    from harness.metrics import task_metrics

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
        trained = load_model(model_folder)
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
        paths.append(write_outputs(task, split, rows.ids, preds, folder))
    if log:
        client = _client(tracking_uri)
        for path in paths:
            client.log_artifact(run_id, str(path), f"predictions/{split}")
    for path in paths:
        out(f"wrote {path}")
    if metrics:
        from harness.evaluation import dev_metric_names

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


def predict_run(run_id: str, task: str, texts: list[str], file: str | None = None, tracking_uri: str = "",
                out=print) -> list[tuple[float, float]]:
    """Prints `prediction <tab> score <tab> text` per example (score: the predicted class's
    probability, or the predicted value of a regression task)."""
    from harness.data import TaskRows, pad_id_of, tokenize_rows
    from harness.evaluation import predict_dataset

    with downloaded_model(run_id, tracking_uri) as (model_folder, meta):
        # First what the run trained: a task it did not train is refused whether or not it is registered here.
        if task not in meta["tasks"]:
            raise TrainedModelError(f"run {run_id} did not train task {task!r}; it trained "
                                    f"{', '.join(meta['tasks'])} (--task)")
        examples = read_inputs(task, texts, file)
        trained = load_model(model_folder)
    spec, config = trained.model.specs[task], trained.config
    rows = TaskRows(None, [str(i) for i in range(len(examples))], examples, [0.0] * len(examples))
    dataset = tokenize_rows(rows, spec, trained.tokenizer, config.max_length, config.pair_encoding)
    accelerator = _accelerator()
    trained.model.to(accelerator.device)
    preds, scores = predict_dataset(trained.model, task, dataset, config, accelerator, pad_id_of(trained.tokenizer))
    for pred, score, example in zip(preds, scores, examples):
        shown = int(pred) if spec.kind == "classification" else round(pred, 4)
        out(f"{shown}\t{score:.4f}\t{' ||| '.join(example)}")
    return list(zip(preds, scores))

