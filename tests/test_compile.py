"""--compile: torch.compile of the model trains as the uncompiled model does, for every variant,
and leaves its names, parameter groups, counts, checkpoints and saved models as they were.

Compile time decides what runs here (2 shared CPU cores, tiny BERT: hidden 32, 2 layers):
tracing one task's training graph with dynamo alone takes about 3.5 s, with AOTAutograd's joint
graph ("aot_eager") about 13 s, with inductor's code generation (the default backend) 20 to 50 s.
So every registered variant is checked through dynamo's capture with the "eager" backend (what
is variant-specific: the task argument, the adapters' hooks and the state they keep between
calls, peft's injected layers), and two variants that cover every kind of part, `combined`
(PALs in parallel through forward hooks, on top, and EmBERT's task vectors) and `lora` (peft),
with inductor, the backend `--compile` uses.
"""
import functools

import pytest
import torch

from harness.core.config import ConfigError, TrainConfig, resolve_config
from variants import list_variants, make_config

VARIANTS = [v.name for v in list_variants()]


def tiny_settings(tmp_path, tiny_bert, small_data, **overrides):
    settings = dict(model=str(tiny_bert), data_dir=str(small_data), output_dir=str(tmp_path / "out"),
                    cache_dir=str(tmp_path / "cache"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", epochs=1,
                    batches_per_epoch=4, batch_size=8, lr=1e-3, max_length=32, scheduler="constant", progress=False,
                    system_metrics_interval=0, run_name="t")
    settings.update(overrides)
    return settings


def use_backend(monkeypatch, backend: str) -> None:
    """--compile with `backend` instead of inductor (see the module docstring)."""
    import harness.model.network
    import harness.runs.setup

    monkeypatch.setattr(harness.runs.setup, "compile_model", functools.partial(harness.model.network.compile_model,
                                                                          backend=backend))


def two_tasks(variant: str) -> tuple[str, str]:
    """Two of the variant's tasks: SST (short sentences: its batches differ in length at 32 tokens)
    and a pair regression (STS) where the variant has one, for a head and loss of another kind."""
    tasks = make_config(variant).tasks
    first = "sst" if "sst" in tasks else tasks[0]
    second = next((t for t in ("sts", *tasks) if t in tasks and t != first))
    return first, second


def train_steps(settings: dict, schedule: list[str], monkeypatch) -> dict:
    """harness.runs' own set-up and steps over a fixed task schedule: the losses, the final
    parameters by name, the padded length of each step's batch and the graphs dynamo compiled."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    import harness.runs.loop
    from harness.runs.loop import train_step
    from harness.runs.setup import setup
    from harness.runs.train import preflight

    torch._dynamo.reset()
    counters.clear()
    lengths = []
    real_make_batch = harness.runs.loop.make_batch

    def recording(*args, **kwargs):
        batch = real_make_batch(*args, **kwargs)
        lengths.append(batch["input_ids"].shape[1])
        return batch

    monkeypatch.setattr(harness.runs.loop, "make_batch", recording)
    config = resolve_config(settings)
    run = setup(config, *preflight(config))
    try:
        losses = []
        for task in schedule:
            losses.append(train_step(run, [task])[task])
            run.state.step += 1
        parameters = {n: p.detach().clone() for n, p in run.model.named_parameters()}
        compiled = run.model._compiled_call_impl is not None
    finally:
        run.tracker.finish()
    monkeypatch.setattr(harness.runs.loop, "make_batch", real_make_batch)
    return {"losses": losses, "parameters": parameters, "lengths": lengths, "compiled": compiled,
            "graphs": counters["stats"]["unique_graphs"]}


def compare(settings: dict, schedule: list[str], monkeypatch, rtol: float, atol: float) -> dict:
    plain = train_steps({**settings, "compile": False}, schedule, monkeypatch)
    compiled = train_steps({**settings, "compile": True}, schedule, monkeypatch)
    assert compiled["compiled"] and not plain["compiled"]
    assert compiled["lengths"] == plain["lengths"]  # the same batches
    assert compiled["losses"] == pytest.approx(plain["losses"], rel=rtol)
    assert list(compiled["parameters"]) == list(plain["parameters"])  # names (and groups) as they were
    for name, value in plain["parameters"].items():
        torch.testing.assert_close(compiled["parameters"][name], value, rtol=0, atol=atol, msg=name)
    moved = max((compiled["parameters"][n] - p).abs().max().item() for n, p in
                train_steps({**settings, "compile": False}, [], monkeypatch)["parameters"].items())
    assert moved > 100 * atol  # training moved the parameters far beyond the tolerance
    return compiled


def test_compile_is_off_by_default_a_flag_and_refused_with_gradient_checkpointing():
    import argparse

    from harness.cli import _add_config_flags, config_from_args

    assert TrainConfig().compile is False
    parser = argparse.ArgumentParser()
    _add_config_flags(parser)
    assert config_from_args(parser.parse_args(["--compile"])).compile is True
    assert config_from_args(parser.parse_args([])).compile is False
    assert resolve_config({"compile": True}).compile is True
    with pytest.raises(ConfigError, match=r"^compile: .*checkpoint.*use --compile or --gradient-checkpointing"):
        resolve_config({"compile": True, "gradient_checkpointing": True})


def test_compile_is_refused_with_deepspeed_before_anything_is_loaded(tmp_path, tiny_bert, small_data, monkeypatch):
    from harness.core.launch_config import LaunchError
    from harness.runs.train import preflight

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    config = resolve_config(tiny_settings(tmp_path, tiny_bert, small_data, compile=True))
    with pytest.raises(LaunchError, match=r"^compile: --compile is not supported with DeepSpeed \(the launcher's "
                                          r"environment \(ACCELERATE_USE_DEEPSPEED\)\)"):
        preflight(config)
    preflight(resolve_config(tiny_settings(tmp_path, tiny_bert, small_data)))  # without --compile: not refused


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_trains_compiled_as_uncompiled_with_one_graph_per_task(name, tmp_path, tiny_bert, small_data,
                                                                              monkeypatch):
    """Dynamo's capture ("eager" backend): the same kernels in the same order, dropout included, so
    the runs agree to float32 rounding (measured: bit for bit); the tolerance, 1e-6, only leaves
    room for that. Two tasks alternate (A, B, A, B) with batches of different lengths: one graph
    per task (the task name is specialised, so task B's step cannot reuse A's graph), none per
    length (dynamic shapes)."""
    use_backend(monkeypatch, "eager")
    first, second = two_tasks(name)
    schedule = [first, second, first, second]
    settings = tiny_settings(tmp_path, tiny_bert, small_data, variant=name, tasks=f"{first},{second}")
    compiled = compare(settings, schedule, monkeypatch, rtol=1e-6, atol=1e-6)
    assert compiled["lengths"][0] != compiled["lengths"][2], "the first task's two batches must differ in length"
    assert compiled["graphs"] == 2, f"{name}: {compiled['graphs']} graphs for 2 tasks"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["combined", "lora"])
def test_inductor_trains_as_uncompiled_within_float_tolerance(name, tmp_path, tiny_bert, small_data, monkeypatch):
    """Inductor, --compile's backend, fuses kernels and reorders float32 sums, so the runs differ by
    rounding, which AdamW's normalisation enlarges where a gradient is tiny: measured after these
    3 steps at lr 1e-3 (parameters moved up to 3.0e-3), losses within 1.4e-7 relative and
    parameters within 1.8e-6 (combined: 1.2e-6). Tolerances: 1e-5 relative on losses, 2e-5
    absolute on parameters (ten times the measured, 150 times below the moves). Inductor draws
    dropout masks from its own generator (equal in distribution, not in value); fallback_random
    makes it draw eager's, so the runs can be compared."""
    import torch._inductor.config

    first, second = two_tasks(name)
    settings = tiny_settings(tmp_path, tiny_bert, small_data, variant=name, tasks=f"{first},{second}")
    with torch._inductor.config.patch(fallback_random=True):
        compiled = compare(settings, [first, second, first], monkeypatch, rtol=1e-5, atol=2e-5)
    assert compiled["graphs"] == 2


@pytest.mark.slow
def test_a_compiled_runs_checkpoint_and_saved_model_load_uncompiled(tmp_path, tiny_bert, small_data, monkeypatch):
    """The compiled model is the same module (compiled in place): its checkpoint (Accelerate's
    state) and its --save-model weights have the uncompiled model's names, no `_orig_mod.`, and
    load strictly into an uncompiled model; the parameter counts and the recorded setting are
    those of any run."""
    from mlflow.tracking import MlflowClient

    from harness.training.checkpoint import find_checkpoint
    from harness.model.params import count_parameters
    from harness.runs.setup import setup
    from harness.runs.train import preflight, train
    from harness.runs.trained import load_model

    use_backend(monkeypatch, "eager")  # names and files do not depend on the backend
    settings = tiny_settings(tmp_path, tiny_bert, small_data, variant="pals-parallel", tasks="sst,sts", epochs=1,
                             batches_per_epoch=3, save_model=True, keep_checkpoint=True, compile=True)
    train(resolve_config(settings))
    client = MlflowClient(settings["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["compile"] == "True"
    out = tmp_path / "out" / run.info.run_id

    plain = setup(resolve_config({**settings, "compile": False, "run_name": "plain"}),
                  *preflight(resolve_config({**settings, "compile": False})))
    try:
        assert plain.model._compiled_call_impl is None
        names = list(plain.model.state_dict())
        saved = torch.load(out / "model" / "weights.pt", weights_only=True)
        assert list(saved) == names
        plain.accelerator.load_state(str(find_checkpoint(out)))  # strict: every name must fit
        for name, value in plain.model.state_dict().items():
            assert torch.equal(value, saved[name]), name  # the checkpoint is the saved (last) epoch's model
        counts = count_parameters(plain.model).as_metrics()  # the compiled run's, logged, are the same
        assert counts["params/task_specific/sst"] > 0 and counts["params/head/sts"] > 0
        assert {k: run.data.metrics[k] for k in counts} == pytest.approx(counts)
    finally:
        plain.tracker.finish()
    trained = load_model(out / "model")  # uncompiled, strict about names
    assert trained.model._compiled_call_impl is None and trained.config.compile is True
