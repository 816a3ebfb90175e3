"""Profiles resolve to the budgets they claim: the learning-rate schedule each one gives."""
import pytest

from harness.core.config import resolve_config
from harness.training.optim import learning_rate


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


@pytest.mark.parametrize("warmup_fraction", [0.0, 0.1])
@pytest.mark.parametrize("scheduler", ["constant", "linear", "cosine", "polynomial", "inverse_sqrt"])
def test_every_scheduler_is_transformers_schedule_at_every_step(scheduler, warmup_fraction):
    """The lr of each step is what transformers.get_scheduler gives a torch optimizer stepped that many
    times; the warm-up's steps are one ahead (the harness's warm-up: its first step is not at lr 0)."""
    import torch
    from transformers import get_scheduler

    from harness.core.config import SCHEDULERS
    from harness.training.optim import TRANSFORMERS_SCHEDULES

    assert tuple(TRANSFORMERS_SCHEDULES) == SCHEDULERS == ("constant", "linear", "cosine", "polynomial", "inverse_sqrt")
    config = resolve_config({"scheduler": scheduler, "warmup_fraction": warmup_fraction, "lr": 3e-4, "epochs": 3,
                             "batches_per_epoch": 20})
    warmup, total = int(warmup_fraction * 60), 60
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=3e-4)
    schedule = get_scheduler("constant_with_warmup" if scheduler == "constant" else scheduler, optimizer,
                             num_warmup_steps=warmup, num_training_steps=total)
    transformers_lr = []  # transformers_lr[k]: the lr after k optimizer steps
    for _ in range(total + 1):
        transformers_lr.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    for step in range(total):
        if step < warmup:
            assert learning_rate(config, step) == pytest.approx(transformers_lr[step + 1], rel=1e-15, abs=0)
        else:
            assert learning_rate(config, step) == transformers_lr[step]
    assert (len(set(transformers_lr[warmup:total])) == 1) == (scheduler == "constant")  # only constant is flat


@pytest.mark.parametrize("profile", ["paper", "quick"])
@pytest.mark.parametrize("scheduler, warmup_fraction", [("constant", 0.0), ("constant", 0.1), ("linear", 0.0),
                                                        ("linear", 0.1), ("linear", 0.25)])
def test_the_schedules_from_before_transformers_give_the_same_rates_to_the_last_bit(profile, scheduler,
                                                                                   warmup_fraction):
    """The harness's own schedules before they came from transformers: linear warm-up from lr/w to lr over
    the first w steps, then lr ('constant') or linear decay to 0 over the rest ('linear')."""
    config = resolve_config({"profile": profile, "scheduler": scheduler, "warmup_fraction": warmup_fraction})
    lr, total = config.lr, config.total_steps
    warmup = int(warmup_fraction * total)

    def before(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * max(0.0, (total - step) / max(1, total - warmup)) if scheduler == "linear" else lr

    assert [learning_rate(config, step) for step in range(total)] == [before(step) for step in range(total)]


def test_a_config_file_is_read_as_yaml_or_json_and_a_broken_one_is_named_with_its_line(tmp_path, capsys):
    from harness.cli import main
    from harness.core.config import ConfigError, read_config, write_config

    yaml_text = "variant: pals-top\nepochs: 2\nlr: 3e-5  # PyYAML reads this as a string\nlength_grouping: false\n" \
                "variant_options:\n  pal_size: 12\n"
    json_text = '{"variant": "pals-top", "epochs": 2, "lr": 3e-5, "length_grouping": false,\n' \
                ' "variant_options": {"pal_size": 12}}'
    expected = {"variant": "pals-top", "epochs": 2, "lr": 3e-5, "length_grouping": False,
                "variant_options": {"pal_size": 12}}
    for name, text in (("a.yaml", yaml_text), ("a.yml", yaml_text), ("a.json", json_text), ("a.cfg", yaml_text),
                       ("a.cfg", json_text)):
        (tmp_path / name).write_text(text)
        assert read_config(tmp_path / name) == expected, name
    config = resolve_config({**expected, "scheduler": "cosine", "tasks": "sst,sts"})
    for name in ("written.yaml", "written.json"):
        assert resolve_config(read_config(write_config(config, tmp_path / name))) == config

    for name, text, where in (
            ("bad.yaml", "epochs: 2\nlr: [3e-5\nseed: 3\n",
             "line 3, column 5: not valid YAML (expected ',' or ']', but got ':'; while parsing a flow sequence "
             "that began at line 2, column 5)"),
            ("bad.cfg", "epochs: 2\nlr: [3e-5\nseed: 3\n", "line 3, column 5: neither JSON nor YAML (expected"),
            ("bad.json", '{"epochs": 2,\n "lr": }', "line 2, column 8: not valid JSON (Expecting value)"),
            ("empty.yaml", "", "expected a mapping of settings (name: value), got nothing")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError) as error:
            read_config(tmp_path / name)
        assert str(error.value).startswith(f"config file {tmp_path / name}"), error.value
        assert where in str(error.value), error.value
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert f"mtl-bench: error: config file {tmp_path / 'bad.yaml'}, line 3" in capsys.readouterr().err
