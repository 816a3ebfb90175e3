"""Encoders beyond BERT (harness/model/encoders.py): tiny random RoBERTa, ELECTRA, DeBERTa-v2 and
ModernBERT checkpoints (harness.testing.make_tiny_encoder) load through AutoModel, build the
multitask model with the multitask and lora variants, save and load back with their own config
class, and are counted; what is not an encoder, and what does not fit one, is refused naming it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from harness.cli import main as cli_main
from harness.core.config import resolve_config
from harness.model.encoders import ModelError, check_max_length, check_model, load_encoder, model_type
from harness.model.network import build_model
from harness.model.params import count_parameters, parameter_table
from harness.testing import make_tiny_encoder
from variants import make_config

OTHERS = ["roberta", "electra", "deberta-v2", "modernbert"]
CLASSES = {"roberta": "RobertaModel", "electra": "ElectraModel", "deberta-v2": "DebertaV2Model",
           "modernbert": "ModernBertModel"}
PAIR = (["a man plays a guitar .", "a cat sleeps ."], ["a man is playing music .", "the stock market fell ."])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random encoder of each architecture, built once."""
    built = {}

    def get(arch: str):
        if arch not in built:
            built[arch] = make_tiny_encoder(tmp_path_factory.mktemp(f"tiny-{arch}"), arch)
        return built[arch]
    return get


def batch_of(tokenizer, pair: bool) -> dict:
    if pair:
        return dict(tokenizer(*PAIR, padding=True, return_tensors="pt"))
    return dict(tokenizer(PAIR[0], padding=True, return_tensors="pt", return_token_type_ids=False))


# The peft variants on every architecture (their sites differ); single-task is multitask's model on
# another task set, tried once.
CASES = [(arch, variant) for arch in OTHERS for variant in ("multitask", "lora", "ia3")] + [("roberta", "single-task")]
# ModernBERT's attention projects query, key and value in one layer: the peft variants' default
# sites name BERT's separate projections.
MODERNBERT_SITES = {"lora": "qkv", "ia3": "qkv,ffn-out"}


@pytest.mark.parametrize("arch, variant", CASES)
def test_each_architecture_trains_a_step_saves_and_loads_back_with_its_own_class(arch, variant, tiny, tmp_path):
    from harness.runs.trained import load_model, save_model

    folder = tiny(arch)
    assert model_type(str(folder)) == arch
    check_model(str(folder))
    encoder, tokenizer = load_encoder(str(folder))
    assert type(encoder).__name__ == CLASSES[arch]
    options = {"sites": MODERNBERT_SITES[variant]} if arch == "modernbert" and variant in MODERNBERT_SITES else {}
    config = resolve_config({"model": str(folder), "variant": variant, "tasks": "sst,sts", "max_length": 32,
                             "variant_options": options, "data_dir": str(tmp_path), "output_dir": str(tmp_path / "out"),
                             "progress": False})
    variant_config = make_config(variant, config.variant_settings())
    model = build_model(encoder, variant, variant_config, "joint")
    model.train()
    given = []  # what the encoder is called with: token types only where its forward names them
    model.encoder.register_forward_pre_hook(lambda _, args, kwargs: given.append(set(kwargs)), with_kwargs=True)
    loss = model("sts", **batch_of(tokenizer, pair=True)).pow(2).mean() + model("sst", **batch_of(tokenizer, False)).sum()
    loss.backward()
    assert torch.isfinite(loss)
    assert ("token_type_ids" in given[0]) is (arch != "modernbert")
    trained = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert any(n.startswith("heads.sts.") for n in trained) and any(n.startswith("encoder.") for n in trained)

    counts = count_parameters(model)
    own = sum(p.numel() for n, p in model.encoder.named_parameters()
              if model.variant.encoder_parameter_task(n) is None)
    assert counts.encoder == own
    assert (counts.task_specific["sst"] > 0) == (variant in ("lora", "ia3"))

    with torch.no_grad():  # weights no initialisation gives, so a lost one shows
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    model.eval()
    saved = save_model(tmp_path / "saved", model.state_dict(), config, variant_config, tokenizer, model, 1, 0, {})
    assert json.loads((saved / "encoder" / "config.json").read_text())["model_type"] == arch
    again = load_model(saved)
    assert type(again.model.encoder).__name__ == CLASSES[arch]
    for task, pair in (("sst", False), ("sts", True)):
        with torch.inference_mode():
            expected = model(task, **batch_of(tokenizer, pair))
            got = again.model(task, **batch_of(again.tokenizer, pair))
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch, config", [("gpt2", {"n_embd": 32, "n_layer": 2, "n_head": 2}),
                                          ("t5", {"d_model": 32, "num_layers": 2, "num_heads": 2})])
def test_a_model_that_is_not_an_encoder_is_refused_naming_the_folder_and_its_model_type(arch, config, tmp_path):
    from transformers import AutoConfig

    folder = tmp_path / arch
    AutoConfig.for_model(arch, **config).save_pretrained(folder)
    kind = "not an encoder" if arch == "gpt2" else "an encoder-decoder"
    with pytest.raises(ModelError, match=rf"model_type '{arch}' is {kind}") as refused:
        check_model(str(folder))
    assert str(folder) in str(refused.value)
    with pytest.raises(ModelError, match=rf"model_type '{arch}' is {kind}"):
        load_encoder(str(folder))


def test_roberta_positions_start_after_the_padding_id_and_max_length_is_checked_against_them(tiny):
    encoder, tokenizer = load_encoder(str(tiny("roberta")))
    assert tokenizer.pad_token_id == 1 and encoder.config.max_position_embeddings == 130
    long = torch.full((1, 128), 5)
    with torch.no_grad():
        assert encoder(input_ids=long).last_hidden_state.shape == (1, 128, 32)  # 128 tokens fit
        with pytest.raises((IndexError, RuntimeError), match="out of"):  # 129 do not: positions 2..130
            encoder(input_ids=torch.full((1, 129), 5))
    check_max_length(encoder, 128, "tiny")
    with pytest.raises(ModelError, match=r"--max-length 129: --model tiny \(roberta\) takes at most 128 tokens per "
                                         r"sequence \(max_position_embeddings 130, numbered from pad_token_id \+ 1 = 2"):
        check_max_length(encoder, 129, "tiny")


def test_a_tokenizer_that_gives_token_types_the_model_lacks_is_refused(tiny, tmp_path):
    roberta = shutil.copytree(tiny("roberta"), tmp_path / "roberta-with-bert-tokenizer")
    encoder, tokenizer = load_encoder(str(roberta))  # its own tokenizer: one type for a pair, asked for
    assert set(tokenizer(*PAIR, return_token_type_ids=True)["token_type_ids"][0]) == {0}
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (roberta / name).unlink(missing_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(tiny("electra") / name, roberta / name)  # BERT's WordPiece: the second sentence is type 1
    with pytest.raises(ModelError, match=r"token type 1, and the model \(roberta\) has type_vocab_size 1"):
        load_encoder(str(roberta))


def test_the_pooler_is_loaded_only_where_the_architecture_has_one(tiny, tmp_path):
    with pytest.raises(ModelError, match=r"head_input 'pooler' needs a pooler, and electra \(ElectraModel\) has none"):
        load_encoder(str(tiny("electra")), pooler=True)
    with_pooler = make_tiny_encoder(tmp_path / "roberta-pooler", "roberta", pooler=True)
    encoder, _ = load_encoder(str(with_pooler), pooler=True)
    assert encoder.pooler is not None


def test_parameter_table_builds_random_encoders_of_other_architectures(tiny):
    from transformers import ElectraConfig, ElectraModel

    table = parameter_table(random_config="32,2,2", arch="electra")
    expected = sum(p.numel() for p in ElectraModel(ElectraConfig(hidden_size=32, num_hidden_layers=2,
                                                                 num_attention_heads=2, intermediate_size=128))
                   .parameters())
    assert "random electra (hidden 32, 2 layers, 2 heads)" in table
    assert f"| multitask | {expected:,} |" in table
    deberta = parameter_table(str(tiny("deberta-v2")))
    assert "| pals-parallel | not available on deberta-v2 |" in deberta
    modernbert = parameter_table(str(tiny("modernbert")))  # LoRA's default sites (query, value) are fused there
    assert "| lora | not with its default options: " in modernbert and "| multitask | " in modernbert
    with pytest.raises(ModelError, match=r"--arch gpt2: model_type 'gpt2' is not an encoder"):
        parameter_table(random_config="32,2,2", arch="gpt2")


def test_a_variant_that_cannot_hook_into_the_architecture_is_refused_before_training(tiny, small_data, tmp_path,
                                                                                    capsys):
    out = tmp_path / "out"
    code = cli_main(["train", "--model", str(tiny("deberta-v2")), "--variant", "pals-parallel", "--data-dir",
                     str(small_data), "--output-dir", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'db'}",
                     "--no-progress"])
    assert code == 2
    message = capsys.readouterr().err
    assert "variant 'pals-parallel'" in message and "model_type 'deberta-v2'" in message
    assert "Variants that support deberta-v2:" in message and "lora" in message
    assert not out.exists() and not (tmp_path / "db").exists()  # nothing set up, nothing trained


@pytest.mark.slow  # a process of its own
def test_the_tiny_encoder_command_writes_a_model_folder(tmp_path):
    made = subprocess.run([sys.executable, "-m", "harness.testing", "tiny-encoder", "--arch", "electra",
                           str(tmp_path / "e")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    assert f"wrote a tiny random electra to {tmp_path / 'e'}" in made.stdout
    assert model_type(str(tmp_path / "e")) == "electra" and (tmp_path / "e" / "tokenizer.json").is_file()


@pytest.mark.slow
def test_a_roberta_lora_run_trains_saves_evaluates_exports_and_serves_as_an_mlflow_model(tiny, small_data, tmp_path,
                                                                                        monkeypatch):
    """`mtl-bench train` on a tiny RoBERTa (pair tasks jointly encoded, positions from the padding
    id), then evaluate, export and the MLflow pyfunc on its saved model."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from harness.runs.export import load_export
    from harness.runs.use import evaluate_run, predict_run
    from harness.training.evaluation import dev_metric_names

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert cli_main(["train", "--model", str(tiny("roberta")), "--variant", "lora", "--data-dir", str(small_data),
                     "--epochs", "1", "--batches-per-epoch", "6", "--batch-size", "4", "--max-length", "128",
                     "--no-progress", "--save-model", "--output-dir", str(tmp_path / "out"), "--tracking-uri", uri,
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id])
    run_id = run.info.run_id
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith("dev/")}
    assert logged["dev/sts/pearson"] == logged["dev/sts/pearson"]  # not NaN: the pair task was predicted
    again = dev_metric_names(evaluate_run(run_id, "dev", str(small_data), uri, str(tmp_path / "eval"), log=False,
                                          cache_dir=str(tmp_path / "cache")))
    for name, value in again.items():
        assert value == pytest.approx(logged[name], abs=1e-6), name
    assert cli_main(["export", run_id, str(tmp_path / "exported"), "--tracking-uri", uri]) == 0
    exported = load_export(tmp_path / "exported")
    assert type(exported.model.encoder).__name__ == "RobertaModel"
    pair = ["A man plays a guitar.", "A man is playing music."]
    expected = predict_run(run_id, "sts", pair, tracking_uri=uri, out=lambda *_: None)
    served = mlflow.pyfunc.load_model(f"runs:/{run_id}/mlflow-model").predict(
        pd.DataFrame({"task": ["sts"], "text": [pair[0]], "text_b": [pair[1]]}))
    assert served["prediction"].tolist() == pytest.approx([p for p, _ in expected], abs=1e-5)
