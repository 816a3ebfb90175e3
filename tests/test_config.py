"""Profiles resolve to the budgets they claim: the learning-rate schedule each one gives."""
import pytest

from harness.config import resolve_config
from harness.train import learning_rate


def test_paper_profile_lr_is_constant_1e5_from_the_first_step():
    config = resolve_config({"profile": "paper"})
    assert config.total_steps == 10 * 400
    # The seed study: lr 1e-5 constant, no warm-up. Exactly 1e-5 at the first step, at the
    # step a 10% warm-up would have reached it, and at the last step.
    steps = (0, 1, 399, 400, config.total_steps - 1)
    assert {step: learning_rate(config, step) for step in steps} == {step: 1e-5 for step in steps}
    assert (config.lr, config.scheduler, config.warmup_fraction) == (1e-5, "constant", 0.0)


def test_quick_profile_warms_up_so_its_first_step_is_below_its_lr():
    config = resolve_config({"profile": "quick"})
    assert config.warmup_fraction == 0.1
    warmup = int(0.1 * config.total_steps)
    assert learning_rate(config, 0) == pytest.approx(config.lr / warmup)
    assert learning_rate(config, 0) < config.lr
    assert learning_rate(config, warmup - 1) == pytest.approx(config.lr)
