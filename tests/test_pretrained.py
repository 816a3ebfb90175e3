"""The one test that loads the real packaged all-MiniLM-L6-v2 checkpoint and trains it."""
import pytest
import torch

from harness.config import resolve_config
from harness.model import load_encoder
from harness.train import train

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
