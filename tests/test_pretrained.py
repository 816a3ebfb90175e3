"""The real packaged all-MiniLM-L6-v2 checkpoint: it loads, its weights are the trained ones, it
trains; and a checkpoint missing encoder weights is refused rather than half-randomly loaded."""
import logging
import shutil
import warnings

import pytest
import torch
from conftest import DATA

from harness.core.config import resolve_config
from harness.model.network import ModelError, load_encoder
from harness.runs.train import train

pytestmark = pytest.mark.slow


def test_packaged_checkpoint_loads_offline_with_its_tokenizer():
    encoder, tokenizer = load_encoder("default")
    assert (encoder.config.hidden_size, encoder.config.num_hidden_layers) == (384, 6)
    assert sum(p.numel() for p in encoder.parameters()) == 22_565_376
    ids = tokenizer("A fine film.")["input_ids"]
    assert tokenizer.unk_token_id not in ids
    with torch.no_grad():
        out = encoder(input_ids=torch.tensor([ids])).last_hidden_state
    assert out.shape == (1, len(ids), 384) and torch.isfinite(out).all()


def test_packaged_checkpoint_trains_a_few_steps(tmp_path, small_data, tracking_uri):
    config = resolve_config(dict(data_dir=str(small_data), output_dir=str(tmp_path / "out"),
                                 cache_dir=str(tmp_path / "cache"), tracking_uri=tracking_uri, epochs=1,
                                 batches_per_epoch=4, batch_size=4, max_length=32, progress=False))
    metrics = train(config)
    assert 0.0 <= metrics["dev/overall"] <= 1.0


def zero_shot_sts_pearson(encoder, tokenizer, pairs, labels) -> float:
    """Pearson r of cosine(mean-pooled u, mean-pooled v) with the gold STS scores, no training."""
    from harness.tasks.metrics import pearson
    from harness.model.network import mean_pool

    def embed(sentences):
        out = []
        for start in range(0, len(sentences), 32):
            batch = tokenizer(sentences[start:start + 32], padding=True, truncation=True, max_length=128,
                              return_tensors="pt")
            hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            out.append(mean_pool(hidden, batch["attention_mask"]))
        return torch.cat(out)

    encoder.eval()
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(embed([a for a, _ in pairs]), embed([b for _, b in pairs]))
    return pearson(cosine.tolist(), labels)


def test_packaged_checkpoint_weights_are_the_trained_ones_zero_shot_sts(caplog):
    """Random weights would fail this: zero-shot STS on the bundled dev data, real vs random.

    Measured on the first 300 rows of data/sts-dev.csv: r = 0.845 for the packaged model (0.838
    on all 863 rows), r = 0.41 to 0.45 for randomly initialised BertModels of the same config
    (seeds 0-4). The random ones are not near 0: mean pooling of random token embeddings still
    measures word overlap, which correlates with similarity. Hence the thresholds and the gap.
    """
    from transformers import BertModel

    from harness.training.data import read_task_file
    from harness.tasks import get_task

    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="harness.model.encoders"):
        warnings.simplefilter("error")  # its only unused weights are the pooler's: no warning
        encoder, tokenizer = load_encoder("default")
    assert "pooler weights (pooler.dense.bias, pooler.dense.weight) are unused on purpose" in caplog.text
    rows = read_task_file(DATA / "sts-dev.csv", get_task("sts"))
    pairs, labels = rows.texts[:300], rows.labels[:300]
    real = zero_shot_sts_pearson(encoder, tokenizer, pairs, labels)
    torch.manual_seed(0)
    random = zero_shot_sts_pearson(BertModel(encoder.config, add_pooling_layer=False), tokenizer, pairs, labels)
    assert real > 0.75, real
    assert random < 0.6, random
    assert real - random > 0.25, (real, random)


def test_checkpoint_missing_an_encoder_weight_is_refused_naming_it(tmp_path, tiny_bert):
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(tiny_bert, tmp_path / "damaged")
    weights = load_file(folder / "model.safetensors")
    key = "encoder.layer.1.attention.self.query.weight"
    del weights[key]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"lacks 1 encoder weight\(s\), which would be randomly initialised") as error:
        load_encoder(str(folder))
    assert key in str(error.value) and str(folder) in str(error.value)
    load_encoder(str(tiny_bert))  # the intact checkpoint loads


def test_unused_checkpoint_weights_warn_except_the_poolers(tmp_path, tiny_bert):
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(tiny_bert, tmp_path / "extra")
    weights = load_file(folder / "model.safetensors")
    weights["pooler.dense.weight"], weights["pooler.dense.bias"] = torch.zeros(32, 32), torch.zeros(32)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_encoder(str(folder))  # only the pooler's: unused on purpose, no warning
    weights["extra.dense.weight"] = torch.zeros(4, 4)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"1 weight\(s\) in the checkpoint .* left unused: extra\.dense\.weight$"):
        load_encoder(str(folder))
