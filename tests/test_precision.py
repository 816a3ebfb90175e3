"""Mixed precision, and launch configs that disagree with the run.

bf16 runs on CPU (autocast) with 1 process, 2-process DDP and DeepSpeed ZeRO-2 on gloo; fp16
needs a GPU and is refused here. Every value a launch config and the run config can both set
is compared before training.
"""
import glob
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import make_tiny_bert
from harness.core.config import resolve_config
from harness.training.data import collate, load_task_data
from harness.testing import launch, run_cli
from harness.training.distributed import LaunchError, check_run_settings, launch_values, resolve_precision


def test_collate_pads_to_a_multiple_with_the_given_pad_id():
    batch = collate({"input_ids": [[101, 7, 102], [101, 102]], "token_type_ids": [[0, 0, 0], [0, 0]],
                     "label": [1, 0]}, pad_id=5, multiple=8)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][1].tolist() == [101, 102] + [5] * 6
    assert batch["attention_mask"].sum(1).tolist() == [3, 2]
    assert batch["token_type_ids"].shape == (2, 8)
    assert collate({"input_ids": [[1] * 9], "label": [0]}, multiple=8)["input_ids"].shape == (1, 16)


def test_task_data_carries_the_tokenizers_pad_id(tmp_path, tiny_bert, small_data):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    tokenizer.pad_token = "[UNK]"  # not id 0, which the collate used to assume
    data = load_task_data(small_data, ["sst"], tokenizer, 32, cache_dir=tmp_path / "cache")
    assert data["sst"].pad_id == tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("[UNK]") != 0


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_launch_values_name_each_value_and_where_it_came_from(tmp_path, monkeypatch):
    ds = write(tmp_path / "ds.json", json.dumps({
        "zero_optimization": {"stage": 1}, "gradient_accumulation_steps": 4, "train_micro_batch_size_per_gpu": "auto",
        "gradient_clipping": 0.5, "bf16": {"enabled": True}, "fp16": {"enabled": "auto"}}))
    cfg = write(tmp_path / "acc.yaml", f"distributed_type: DEEPSPEED\nnum_processes: 2\n"
                                       f"deepspeed_config:\n  deepspeed_config_file: {ds}\n")
    values = launch_values(cfg)
    assert values["world_size"] == (2, f"{cfg} num_processes")
    assert values["zero_stage"] == (1, f"{ds} zero_optimization.stage")
    assert values["grad_accum"] == (4, f"{ds} gradient_accumulation_steps")
    assert values["max_grad_norm"] == (0.5, f"{ds} gradient_clipping")
    assert values["mixed_precision"] == ("bf16", f"{ds} bf16.enabled")
    assert "batch_size" not in values  # "auto": left to the run
    # The same DeepSpeed file reached through the launcher's environment.
    for var, value in {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": ds,
                       "WORLD_SIZE": "2", "ACCELERATE_MIXED_PRECISION": "no"}.items():
        monkeypatch.setenv(var, value)
    env = launch_values("")
    assert env["grad_accum"][0] == 4 and env["zero_stage"][0] == 1 and env["mixed_precision"][0] == "bf16"
    # An inline DeepSpeed section reaches the run as ACCELERATE_* variables.
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    monkeypatch.setenv("ACCELERATE_GRADIENT_CLIPPING", "1.0")
    env = launch_values("")
    assert env["zero_stage"][0] == 3 and env["grad_accum"] == (2, "the launcher's environment "
                                                                   "(ACCELERATE_GRADIENT_ACCUMULATION_STEPS)")
    assert "mixed_precision" not in env  # the launcher's "no" is its default, not a choice


def test_run_settings_that_differ_from_the_launch_are_refused_naming_both(tmp_path):
    cfg = write(tmp_path / "acc.yaml", "distributed_type: DEEPSPEED\nnum_processes: 2\nmixed_precision: bf16\n"
                                       "deepspeed_config:\n  zero_stage: 3\n  gradient_accumulation_steps: 2\n"
                                       "  gradient_clipping: 1.0\n")
    launch = launch_values(cfg)
    with pytest.raises(LaunchError) as info:
        check_run_settings(resolve_config({"grad_accum": 1, "max_grad_norm": 0.5, "mixed_precision": "no"}), launch)
    message = str(info.value)
    assert f"grad_accum: the run config has 1 (--grad-accum), {cfg} deepspeed_config.gradient_accumulation_steps " \
           "has 2" in message
    assert f"max_grad_norm: the run config has 0.5 (--max-grad-norm), {cfg} deepspeed_config.gradient_clipping " \
           "has 1.0" in message
    assert f"mixed_precision: the run config has no (--mixed-precision), {cfg} mixed_precision has bf16" in message
    check_run_settings(resolve_config({"grad_accum": 2, "max_grad_norm": 1.0, "mixed_precision": "auto"}), launch)
    assert resolve_precision("auto", launch) == ("bf16", f"{cfg} mixed_precision")


def test_the_preflight_refuses_a_launch_that_drifted_from_its_config_or_from_the_run(tmp_path, monkeypatch):
    """`preflight_launch`, as `train` calls it before any process group starts (here without one,
    the launcher's environment set as `accelerate launch` sets it): the environment against
    --launch-config, then what either fixes against the run config."""
    import re

    from harness.training.distributed import preflight_launch

    for var in list(os.environ):
        if var.startswith("ACCELERATE_") or var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            monkeypatch.delenv(var)
    ddp = write(tmp_path / "ddp.yaml", "distributed_type: MULTI_CPU\nnum_processes: 2\n")
    # `accelerate launch --cpu --num_processes 2` starts one process, without WORLD_SIZE.
    with pytest.raises(LaunchError, match=re.escape(f"world_size: {ddp} num_processes asks for 2, the launcher's "
                                                    "environment (WORLD_SIZE) gave 1")):
        preflight_launch(resolve_config({"launch_config": ddp}))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert preflight_launch(resolve_config({"launch_config": ddp}))["world_size"] == (2, f"{ddp} num_processes")

    zero = write(tmp_path / "zero.yaml", "distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n"
                                         "  zero_stage: 2\n  gradient_accumulation_steps: 2\n")
    for var, value in {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
                       "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2"}.items():
        monkeypatch.setenv(var, value)
    # The launch is the file's, but the run forms windows of 1 micro-step where DeepSpeed forms 2.
    with pytest.raises(LaunchError, match=re.escape(f"grad_accum: the run config has 1 (--grad-accum), {zero} "
                                                    "deepspeed_config.gradient_accumulation_steps has 2")):
        preflight_launch(resolve_config({"launch_config": zero, "grad_accum": 1}))
    agreed = preflight_launch(resolve_config({"launch_config": zero, "grad_accum": 2}))
    assert agreed["grad_accum"] == (2, f"{zero} deepspeed_config.gradient_accumulation_steps")
    assert agreed["zero_stage"] == (2, f"{zero} deepspeed_config.zero_stage")
    # Without --launch-config the environment alone is what the launch fixes, checked against the run the same way.
    with pytest.raises(LaunchError, match=re.escape("grad_accum: the run config has 1 (--grad-accum), the launcher's "
                                                    "environment (ACCELERATE_GRADIENT_ACCUMULATION_STEPS) has 2")):
        preflight_launch(resolve_config({"grad_accum": 1}))
    # Launched with another ZeRO stage than the file says (flags given to accelerate launch).
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(LaunchError, match=re.escape(f"zero_stage: {zero} deepspeed_config.zero_stage asks for 2, the "
                                                    "launcher's environment (ACCELERATE_DEEPSPEED_ZERO_STAGE) gave 3")):
        preflight_launch(resolve_config({"launch_config": zero, "grad_accum": 2}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal and defaults")
def test_fp16_is_refused_without_a_gpu_and_auto_means_fp32():
    with pytest.raises(LaunchError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", {})
    assert resolve_precision("auto", {}) == ("no", "auto: no GPU with bf16")
    assert resolve_precision("bf16", {}) == ("bf16", "the run config (--mixed-precision)")


# ---------------------------------------------------------------------------------------------
# Real trainings


def losses_of(tracking_uri: str, task: str = "sst") -> tuple[list[float], object]:
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id])
    history = sorted(client.get_metric_history(run.info.run_id, f"train/loss/{task}"), key=lambda h: h.step)
    return [h.value for h in history], run


@pytest.mark.slow
def test_bf16_trains_on_one_process_close_to_fp32_but_not_equal(tmp_path, small_data):
    from harness.runs.train import train

    bert = make_tiny_bert(tmp_path / "bert", dropout=0.0)
    curves = {}
    for precision in ("auto", "bf16"):
        uri = f"sqlite:///{tmp_path / precision}.db"
        train(resolve_config(dict(
            model=str(bert), data_dir=str(small_data), output_dir=str(tmp_path / precision),
            cache_dir=str(tmp_path / "cache"), tracking_uri=uri, epochs=1, batches_per_epoch=60, batch_size=8,
            lr=1e-3, max_length=32, scheduler="constant", progress=False, mixed_precision=precision,
            tasks="sst")))
        curves[precision], run = losses_of(uri)
        expected = "no" if precision == "auto" else "bf16"
        assert run.data.params["mixed_precision"] == expected and run.data.tags["mixed_precision"] == expected
    assert run.data.tags["mixed_precision.source"] == "the run config (--mixed-precision)"
    fp32, bf16 = np.array(curves["auto"]), np.array(curves["bf16"])
    assert np.mean(bf16[-10:]) < 0.7 * np.mean(bf16[:10])  # it learns
    assert np.abs(fp32 - bf16).max() < 0.05 * fp32.mean()  # close: bf16 keeps about 3 significant digits


@pytest.mark.slow
@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("auto", torch.float32)])
def test_the_prepared_model_computes_in_the_precision_asked_for(precision, dtype, tmp_path, tiny_bert, small_data):
    """The encoder's matrix products run in bf16 under --mixed-precision bf16 (Accelerate's
    autocast); a run that recorded bf16 but trained in fp32 would fail here."""
    from harness.training.evaluation import make_batch
    from harness.runs.setup import setup
    from variants import make_config

    config = resolve_config(dict(model=str(tiny_bert), data_dir=str(small_data), output_dir=str(tmp_path / "out"),
                                 cache_dir=str(tmp_path / "cache"), tracking_uri=f"sqlite:///{tmp_path}/m.db",
                                 max_length=32, progress=False, mixed_precision=precision))
    run = setup(config, make_config(config.variant), None)
    seen = []
    linear = next(m for m in run.model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    batch = make_batch(run.data["sst"].train, range(4), run.accelerator.device, run.data["sst"].pad_id, 8)
    batch.pop("labels")
    run.model("sst", **batch)
    assert seen == [dtype]
    run.tracker.finish("FINISHED")


@pytest.mark.slow
@pytest.mark.distributed
def test_an_inline_deepspeed_config_that_disagrees_with_the_run_exits_2_naming_both(tmp_path, tiny_bert, small_data):
    """A user's own config, as Accelerate's questionnaire writes it: Accelerate alone would use
    DeepSpeed's accumulation of 2 while the harness formed windows of 1."""
    config = write(tmp_path / "mine.yaml", (
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\ndeepspeed_config:\n"
        "  zero_stage: 3\n  gradient_accumulation_steps: 2\n  gradient_clipping: 1.0\n  zero3_init_flag: false\n"
        "num_machines: 1\nnum_processes: 2\nmachine_rank: 0\nmain_training_function: main\n"
        "rdzv_backend: static\nsame_network: true\nuse_cpu: false\n"))
    args = ["--model", str(tiny_bert), "--data-dir", str(small_data), "--output-dir", str(tmp_path / "out"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--cache-dir", str(tmp_path / "cache"),
            "--max-length", "32", "--batch-size", "2", "--epochs", "1", "--batches-per-epoch", "2", "--no-progress"]
    for with_file in (True, False):
        result = launch(config, args, launch_config=with_file)
        assert result.returncode != 0
        where = (f"{config} deepspeed_config.gradient_accumulation_steps" if with_file
                 else "the launcher's environment (ACCELERATE_GRADIENT_ACCUMULATION_STEPS)")
        assert f"grad_accum: the run config has 1 (--grad-accum), {where} has 2" in result.stderr, result.stderr[-3000:]
        assert "exit status 2" in result.stderr or "exitcode  : 2" in result.stderr, result.stderr[-3000:]
    # Settings that agree, but --save-model under ZeRO-3 without gathering the weights on save
    # (Accelerate's zero3_save_16bit_model defaults to false): refused before training, not at the save.
    result = launch(config, [*args, "--grad-accum", "2", "--save-model"], launch_config=True)
    assert "stage3_gather_16bit_weights_on_model_save" in result.stderr, result.stderr[-3000:]
    assert "exit status 2" in result.stderr or "exitcode  : 2" in result.stderr, result.stderr[-3000:]
    assert not list((tmp_path / "out").glob("*/model")), "refused before anything was trained or saved"
    # Made to agree, the same launch trains with DeepSpeed's accumulation and records it.
    result = launch(config, args + ["--grad-accum", "2"])
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id])
    assert run.data.params["grad_accum"] == "2" and run.data.tags["zero_stage"] == "3"


@pytest.mark.slow
@pytest.mark.distributed
def test_bf16_with_two_processes_matches_one_process_within_bf16_tolerance(tmp_path, small_data):
    """DDP (autocast on gloo) and DeepSpeed ZeRO-2 against one process in bf16, with plain SGD
    (AdamW turns a parameter's tiny, rounding-dominated gradient into a full learning-rate step,
    so its result says little about the gradients; SGD's update is linear in them).

    DDP runs the same autocast as one process: its parameters are within 1% of how far training
    moved them (measured 0.06%). DeepSpeed's bf16 is another scheme: the module's weights are
    bf16 (an fp32 master copy lives in the optimizer) and the forward runs in bf16 throughout,
    so its saved weights are compared with the 1-process weights rounded to bf16, within 5%
    (measured 1.8%). A wrong 1/world-size or 1/accumulation factor would be about 50%.
    """
    bert = make_tiny_bert(tmp_path / "bert", dropout=0.0)
    common = ["--variant", "pals-parallel", "--model", str(bert), "--data-dir", str(small_data), "--max-length", "32",
              "--optimizer", "sgd", "--lr", "0.1", "--max-grad-norm", "1e6", "--no-progress", "--save-model",
              "--epochs", "1", "--batches-per-epoch", "6",
              "--mixed-precision", "bf16", "--cache-dir", str(tmp_path / "cache")]

    def out_args(name):
        return ["--output-dir", str(tmp_path / name), "--tracking-uri", f"sqlite:///{tmp_path / name}.db"]

    single = run_cli("train", *common, *out_args("one"), "--batch-size", "8", timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]
    results = {}
    for name, config in (("ddp", "launch/cpu-ddp.yaml"), ("zero2", "launch/cpu-zero2.yaml")):
        result = launch(config, common + out_args(name) + ["--batch-size", "2", "--grad-accum", "2"])
        assert result.returncode == 0, result.stderr[-3000:]
        _, run = losses_of(f"sqlite:///{tmp_path / name}.db")
        assert run.data.params["mixed_precision"] == "bf16" and run.data.tags["world_size"] == "2"
        results[name] = weights(tmp_path / name)
    reference = weights(tmp_path / "one")
    from accelerate.utils import set_seed

    from harness.model.network import build_model, load_encoder
    from variants import make_config

    set_seed(0)
    encoder, _ = load_encoder(str(bert))
    initial = build_model(encoder, "pals-parallel", make_config("pals-parallel"), "joint").state_dict()
    def norm(tensors):
        return float(torch.sqrt(sum((t ** 2).sum() for t in tensors)))

    moved = norm(reference[k] - initial[k].float() for k in reference)
    assert moved > 1e-3
    rounded = {k: v.to(torch.bfloat16).float() for k, v in reference.items()}
    distances = {}
    for name, params, against in (("ddp", results["ddp"], reference), ("zero2", results["zero2"], rounded)):
        assert params.keys() == reference.keys()
        distances[name] = norm(params[k] - against[k] for k in reference) / moved
        print(f"{name}: |p - p_one| / |p_one - p_init| = {distances[name]:.2e}")
    assert distances["ddp"] < 0.01 and distances["zero2"] < 0.05, distances


def weights(folder: Path) -> dict:
    (path,) = glob.glob(str(folder / "*" / "model" / "weights.pt"))
    return {k: v.float() for k, v in torch.load(path).items()}


def test_a_resume_is_refused_where_it_would_change_the_data_order_or_cannot_load(tmp_path):
    from harness.training.checkpoint import LoopState, check_resume_layout

    ddp = LoopState(world_size=2, batch_size=8, grad_accum=1, deepspeed=False)
    check_resume_layout(ddp, tmp_path, 1, 16, 1, False)  # the same 16 examples per step
    check_resume_layout(ddp, tmp_path, 4, 2, 2, False)
    with pytest.raises(LaunchError, match=r"written with 2 process\(es\) x batch 8 x accumulation 1 = 16 examples "
                                          r"per optimizer step; this run has 1 x 8 x 1 = 8"):
        check_resume_layout(ddp, tmp_path, 1, 8, 1, False)
    zero = LoopState(world_size=2, batch_size=8, grad_accum=1, deepspeed=True)
    check_resume_layout(zero, tmp_path, 2, 8, 1, True)
    with pytest.raises(LaunchError, match="written by 2 processes .* cannot be loaded by 4"):
        check_resume_layout(zero, tmp_path, 4, 4, 1, True)
    with pytest.raises(LaunchError, match="written with DeepSpeed, this run is without it"):
        check_resume_layout(zero, tmp_path, 2, 8, 1, False)
    check_resume_layout(LoopState(), tmp_path, 3, 5, 1, False)  # written before layouts were recorded
