"""Real multi-process training: 2 ranks on gloo under `accelerate launch`, DDP and DeepSpeed ZeRO-1/2/3.

Every launch is a real `accelerate launch --config_file launch/cpu-*.yaml`, the same files a
user runs. Tolerance for "the same parameters": 5e-5 absolute in fp32 (observed: about 4e-6).
"""
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import REPO, free_port, make_tiny_bert
from harness.testing import launch, launch_command, make_tiny_encoder, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

BACKENDS = {"ddp": "launch/cpu-ddp.yaml", "zero1": "launch/cpu-zero1.yaml", "zero2": "launch/cpu-zero2.yaml",
            "zero3": "launch/cpu-zero3.yaml"}
VARIANTS = ["multitask", "pals-parallel", "combined"]
ATOL = 5e-5
# 2 ranks x micro-batch 2 x accumulation 2 against 1 process x batch 8; 4 optimizer steps. With
# seed 0 the sampler draws quora, cfimdb, sst, sst: sts is never trained.
STEPS = ["--epochs", "1", "--batches-per-epoch", "4"]
UNTRAINED = "sts"
RESUME_STEPS = ["--epochs", "2", "--batches-per-epoch", "12", "--checkpoint-every", "3"]


def common_args(tiny_bert, small_data, out: Path, variant: str) -> list[str]:
    return ["--variant", variant, "--model", str(tiny_bert), "--data-dir", str(small_data), "--max-length", "32",
            "--lr", "1e-3", "--no-progress", "--save-model", "--output-dir", str(out / "out"),
            "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}", "--cache-dir", str(out / "cache")]


def single(args: list[str]):
    return run_cli("train", *args, timeout=400)


def final_weights(out: Path) -> dict:
    """The run's saved model (--save-model: the artifact folder harness.runs.trained writes, gathered from
    every rank under ZeRO-3), loaded back as `mtl-bench evaluate` loads it."""
    from harness.runs.trained import load_model

    (folder,) = glob.glob(str(out / "out" / "*" / "model"))
    return load_model(Path(folder)).model.state_dict()


def only_run(out: Path, experiment: str = "bert-mtl-bench"):
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, f"expected one MLflow run for the launch, found {len(runs)}"
    return client, runs[0]


@pytest.fixture(scope="module")
def tiny_bert_no_dropout(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("bert-nodrop"), dropout=0.0)


def train_checks(spec: dict, out: Path, config: str | None = None, timeout: int = 600):
    """Runs tests/helpers/train_checks.py: under `accelerate launch` with `config`, else as one plain process."""
    spec_file = out / "spec.json"
    spec_file.write_text(json.dumps(spec))
    script = [str(REPO / "tests" / "helpers" / "train_checks.py"), str(spec_file)]
    if config:
        return launch(config, [], script=script, launch_config=False, timeout=timeout)
    return subprocess.run([sys.executable, *script], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=timeout)


# SGD's update is linear in the gradient, so a wrong 1/world-size or 1/accumulation factor shows
# in the parameters (AdamW divides a constant factor out). Clipping would hide it too: 1e6 never clips.
SGD = ["--optimizer", "sgd", "--lr", "0.1", "--max-grad-norm", "1e6"]
FROZEN = ["--freeze-encoder"]
# Activation checkpointing on the ranks only: it must reproduce the one process without it.
# The inactive-task check (mode, variant): a hand-written variant and a peft one.
INACTIVE_CHECKS = [("skip", "pals-parallel"), ("skip", "lora")]
# lora, ia3: peft's adapters injected into the encoder, one per task, with the encoder trained and frozen.
CHECKS = [*VARIANTS, "multitask-sgd", "pals-parallel-frozen", "combined-checkpointed", "lora", "lora-frozen",
          "ia3-frozen"]


def variant_of(check: str) -> str:
    return check.removesuffix("-sgd").removesuffix("-frozen").removesuffix("-checkpointed")


def check_flags(tiny_bert, small_data, out: Path, check: str, launch_config: str | None) -> list[str]:
    variant = variant_of(check)
    # One store per launch (creating one costs seconds), an experiment per check.
    flags = common_args(tiny_bert, small_data, out / check, variant) + STEPS
    flags += ["--tracking-uri", f"sqlite:///{out / 'mlflow.db'}", "--experiment", check,
              "--cache-dir", str(out / "cache")]
    flags += ["--batch-size", "2", "--grad-accum", "2"] if launch_config else ["--batch-size", "8"]
    if check.endswith("-sgd"):
        flags += SGD
    if check.endswith("-frozen"):
        flags += FROZEN
    if check.endswith("-checkpointed") and launch_config:
        flags += ["--gradient-checkpointing"]
    return flags + (["--launch-config", launch_config] if launch_config else [])


def inactive_name(mode: str, variant: str) -> str:
    return f"inactive-{mode}" if variant == "pals-parallel" else f"inactive-{variant}-{mode}"


def inactive_flags(tiny_bert, small_data, out: Path, mode: str, launch_config: str | None,
                   variant: str = "pals-parallel") -> list[str]:
    name = inactive_name(mode, variant)
    flags = common_args(tiny_bert, small_data, out / name, variant)
    flags += ["--tracking-uri", f"sqlite:///{out / 'mlflow.db'}", "--experiment", name,
              "--cache-dir", str(out / "cache")]
    flags += ["--weight-decay", "0.1", "--inactive-tasks", mode]
    flags += ["--batch-size", "2", "--grad-accum", "2"] if launch_config else ["--batch-size", "8"]
    return flags + (["--launch-config", launch_config] if launch_config else [])


@pytest.fixture(scope="module")
def references(tmp_path_factory, tiny_bert_no_dropout, small_data):
    """One process, batch 8, no accumulation: the results every launch must reproduce; and the
    inactive-task check on one process, with the default and with the old zero-gradient mode."""
    out = tmp_path_factory.mktemp("references")
    whole = common_args(tiny_bert_no_dropout, small_data, out / "resume-whole", "pals-parallel") + RESUME_STEPS + [
        "--batch-size", "8", "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}", "--experiment", "resume-whole"]
    spec = {"trainings": [check_flags(tiny_bert_no_dropout, small_data, out, c, None) for c in CHECKS] + [whole],
            "inactive": [{"flags": inactive_flags(tiny_bert_no_dropout, small_data, out, mode, None, variant),
                          "result": str(out / inactive_name(mode, variant))}
                         for mode, variant in INACTIVE_CHECKS + [("zero-grad", "pals-parallel")]]}
    result = train_checks(spec, out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def initial_weights(tiny_bert, variant) -> tuple[dict, dict]:
    """The model's weights at initialisation, and each weight's (group, task) (harness.model.params)."""
    from accelerate.utils import set_seed

    from harness.model.network import build_model, load_encoder
    from harness.model.params import parameter_group
    from variants import make_config

    set_seed(0)
    encoder, _ = load_encoder(str(tiny_bert))
    model = build_model(encoder, variant, make_config(variant), "joint")
    weights = model.state_dict()
    return weights, {k: parameter_group(k, model.variant) for k in weights}


def inactive_report(prefix: str, ranks: int) -> list[dict]:
    reports = [json.loads(Path(f"{prefix}-rank{r}.json").read_text()) for r in range(ranks)]
    assert all(r["world_size"] == ranks for r in reports)
    return reports


def assert_inactive_task_untouched(reports: list[dict], where: str) -> None:
    """The probe task (sst) trained at step 1, not drawn at steps 2-4, trained again at step 5."""
    for report in reports:
        steps = report["schedule"]
        assert steps[0]["tensors"] > 0
        for step in steps[1:4]:
            assert step["unchanged"], (f"{where}, rank {report['rank']}: sst's parameters or optimizer state moved "
                                       f"at step {step['step']}, which trained {step['task']}")
        assert not steps[4]["unchanged"], f"{where}: training sst again did not move it (the check sees nothing)"


def test_one_process_leaves_inactive_tasks_and_their_optimizer_state_untouched(references):
    for mode, variant in INACTIVE_CHECKS:
        assert_inactive_task_untouched(inactive_report(str(references / inactive_name(mode, variant)), 1),
                                       f"1 process, {variant}")
    # The old zero-gradient mode moves AdamW's state while a task is not drawn: the check sees it.
    old = inactive_report(str(references / "inactive-zero-grad"), 1)[0]["schedule"]
    assert not any(step["unchanged"] for step in old[1:4])


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_two_ranks_with_accumulation_match_one_process(backend, tmp_path, tiny_bert_no_dropout, small_data,
                                                       references):
    """One launch per backend: each variant (AdamW), multitask with SGD, pals-parallel with a frozen
    encoder, combined with gradient checkpointing, and the inactive-task check."""
    config = BACKENDS[backend]
    spec = {"trainings": [check_flags(tiny_bert_no_dropout, small_data, tmp_path, c, config) for c in CHECKS],
            "inactive": [{"flags": inactive_flags(tiny_bert_no_dropout, small_data, tmp_path, mode, config, variant),
                          "result": str(tmp_path / inactive_name(mode, variant))} for mode, variant in INACTIVE_CHECKS]}
    result = train_checks(spec, tmp_path, config)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]  # ZeRO-3 included: a clean exit
    for mode, variant in INACTIVE_CHECKS:
        assert_inactive_task_untouched(inactive_report(str(tmp_path / inactive_name(mode, variant)), 2),
                                       f"{backend}, {variant}")

    for check in CHECKS:
        variant = variant_of(check)
        got, expected = final_weights(tmp_path / check), final_weights(references / check)
        assert set(got) == set(expected)
        worst = max((got[k] - expected[k]).abs().max().item() for k in got)
        assert worst < ATOL, f"{backend}/{check}: parameters differ by {worst:.2e}"

        # The never-trained task's parameters are exactly where they started, on every backend.
        init, groups = initial_weights(tiny_bert_no_dropout, variant)
        untrained = [k for k in got if groups[k][1] == UNTRAINED]
        assert untrained and (variant == "multitask" or any(groups[k][0] == "task_specific" for k in untrained))
        for key in untrained:
            assert torch.equal(got[key], init[key]), f"{backend}/{check}: {key} moved although {UNTRAINED} was " \
                                                     "never trained"
        # quora was trained: its head moved, and its own parts (LoRA's A has no gradient in the first
        # step, its B has: some of them).
        heads = [k for k in got if groups[k] == ("head", "quora")]
        own = [k for k in got if groups[k] == ("task_specific", "quora")]
        assert heads and all(not torch.equal(got[k], init[k]) for k in heads), f"{backend}/{check}: quora's head"
        assert not own or any(not torch.equal(got[k], init[k]) for k in own), f"{backend}/{check}: quora's parts"
        encoder = [k for k in got if groups[k][0] == "encoder" and got[k].is_floating_point()]
        frozen = check.endswith("-frozen")
        assert all(torch.equal(got[k], init[k]) for k in encoder) == frozen, f"{backend}/{check}: frozen={frozen}"

        # One MLflow run per launch, with the same parameter counts as the single process.
        _, run = only_run(tmp_path, check)
        _, reference_run = only_run(references, check)
        assert run.data.tags["world_size"] == "2"
        counts = {k: v for k, v in run.data.metrics.items() if k.startswith("params/")}
        assert counts == {k: v for k, v in reference_run.data.metrics.items() if k.startswith("params/")}
        assert run.data.metrics["params/total"] > 0
        if check.endswith("-frozen"):
            assert counts["params/trainable"] == counts["params/total"] - counts["params/encoder"]
        if check.endswith("-checkpointed"):
            assert (run.data.params["gradient_checkpointing"], reference_run.data.params["gradient_checkpointing"]) \
                == ("True", "False")
        for name in ("dev/sst/accuracy", "dev/quora/accuracy", "dev/overall"):
            assert run.data.metrics[name] == pytest.approx(reference_run.data.metrics[name], abs=1e-4)


@pytest.fixture(scope="module")
def tiny_roberta_no_dropout(tmp_path_factory):
    return make_tiny_encoder(tmp_path_factory.mktemp("roberta-nodrop"), "roberta", dropout=0.0)


@pytest.mark.parametrize("backend", ["ddp", "zero3"])
def test_a_roberta_encoder_on_two_ranks_matches_one_process(backend, tmp_path, tiny_roberta_no_dropout, small_data):
    """An encoder beyond BERT (RoBERTa: one token type, positions from the padding id, its own
    config class in the saved model) with LoRA's adapters injected: 2 ranks x micro-batch 2 x
    accumulation 2 give one process's batch-8 parameters and metrics, DDP and ZeRO-3 alike."""
    def flags(out: Path, launch_config: str | None) -> list[str]:
        layout = ["--batch-size", "2", "--grad-accum", "2", "--launch-config", launch_config] if launch_config \
            else ["--batch-size", "8"]
        return common_args(tiny_roberta_no_dropout, small_data, out, "lora") + STEPS + layout

    reference = single(flags(tmp_path / "one", None))
    assert reference.returncode == 0, reference.stderr[-3000:]
    result = launch(BACKENDS[backend], flags(tmp_path / "two", BACKENDS[backend]))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    got, expected = final_weights(tmp_path / "two"), final_weights(tmp_path / "one")
    assert set(got) == set(expected) and any(".lora_A." in k for k in got)
    worst = max((got[k] - expected[k]).abs().max().item() for k in got)
    assert worst < ATOL, f"{backend}/roberta: parameters differ by {worst:.2e}"
    _, run = only_run(tmp_path / "two")
    _, reference_run = only_run(tmp_path / "one")
    assert run.data.tags["world_size"] == "2"
    for name in ("dev/sst/accuracy", "dev/quora/accuracy", "dev/overall", "params/total", "params/encoder"):
        assert run.data.metrics[name] == pytest.approx(reference_run.data.metrics[name], abs=1e-4), name


@pytest.mark.parametrize("backend", ["ddp", "zero2"])
def test_two_nodes_end_as_two_processes_on_one_node(backend, tmp_path, tiny_bert_no_dropout, small_data, references):
    """Two `accelerate launch` commands, machine ranks 0 and 1 of a 2-node launch with one
    process each, meeting at 127.0.0.1 as two cluster nodes would at their main node."""
    config, port = BACKENDS[backend], free_port()
    flags = check_flags(tiny_bert_no_dropout, small_data, tmp_path, "multitask", config)
    nodes = [subprocess.Popen(launch_command(config, flags, launch_config=False, port=port, launcher_flags=[
                                  "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                                  "--main_process_ip", "127.0.0.1"]),
                              cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    got, expected = final_weights(tmp_path / "multitask"), final_weights(references / "multitask")
    worst = max((got[k] - expected[k]).abs().max().item() for k in got)
    assert worst < ATOL, f"{backend}: 2 nodes differ from 1 process (and so from 2 processes on 1 node) by {worst:.2e}"
    _, run = only_run(tmp_path, "multitask")  # one MLflow run, from the main node's rank 0
    _, reference_run = only_run(references, "multitask")
    assert run.data.tags["world_size"] == "2" and run.info.status == "FINISHED"
    for name in ("dev/sst/accuracy", "dev/quora/accuracy", "dev/overall", "params/total"):
        assert run.data.metrics[name] == pytest.approx(reference_run.data.metrics[name], abs=1e-4)


def test_a_desynchronised_sampler_stops_the_run_with_an_error(tmp_path, tiny_bert_no_dropout, small_data):
    result = launch(BACKENDS["ddp"], common_args(tiny_bert_no_dropout, small_data, tmp_path, "multitask")
                    + ["--epochs", "1", "--batches-per-epoch", "50", "--batch-size", "2"],
                    script=[str(REPO / "tests" / "helpers" / "desync_train.py"), "train"], timeout=180)
    assert result.returncode != 0
    assert "task sampler out of step across ranks" in result.stdout + result.stderr


def test_a_launch_that_gives_fewer_processes_than_its_config_is_refused(tmp_path, tiny_bert_no_dropout, small_data):
    # `accelerate launch --cpu --num_processes 2` starts ONE process: the run must notice.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "-m", "harness.cli",
               "train", "--launch-config", BACKENDS["ddp"],
               *common_args(tiny_bert_no_dropout, small_data, tmp_path, "multitask")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode != 0
    assert "world_size: accelerate launch --num_processes asks for 2, the launcher's environment (WORLD_SIZE) gave 1" \
        in result.stdout + result.stderr


def launch_over(config: str, launcher_flags: list[str], args: list[str]):
    """`accelerate launch --config_file CONFIG <launcher_flags>` of the harness, with --launch-config CONFIG."""
    return launch(config, args, launcher_flags=launcher_flags, timeout=300)


def test_a_process_count_given_to_accelerate_launch_overrides_the_file_and_is_recorded(tmp_path, tiny_bert_no_dropout,
                                                                                       small_data):
    """Accelerate's rule: `accelerate launch --num_processes N` wins over the file's num_processes.
    The run accepts the 2 processes it got from a file that says 4, and records both."""
    four = tmp_path / "cpu-ddp-4.yaml"
    four.write_text((REPO / BACKENDS["ddp"]).read_text().replace("num_processes: 2", "num_processes: 4"))
    result = launch_over(str(four), ["--num_processes", "2"],
                         common_args(tiny_bert_no_dropout, small_data, tmp_path, "multitask") + STEPS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _, run = only_run(tmp_path)
    assert run.data.tags["world_size"] == "2"
    assert run.data.tags["launch.overrides"] == "world_size 2 (accelerate launch --num_processes)"


@pytest.mark.parametrize("launcher_flags, message", [
    (["--mixed_precision", "bf16"],
     "mixed_precision: the run config has no (--mixed-precision), accelerate launch --mixed_precision has bf16"),
    (["--num_processes", "2", "--gradient_accumulation_steps", "2"],
     "grad_accum: the run config has 1 (--grad-accum), accelerate launch --gradient_accumulation_steps has 2"),
])
def test_a_launcher_flag_that_disagrees_with_the_run_is_refused_naming_both(launcher_flags, message, tmp_path,
                                                                            tiny_bert_no_dropout, small_data):
    result = launch_over(BACKENDS["ddp"], launcher_flags, common_args(tiny_bert_no_dropout, small_data, tmp_path,
                                                                      "multitask") + ["--mixed-precision", "no"])
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()  # refused before training


@pytest.mark.parametrize("backend", ["ddp", "zero2"])
def test_a_run_killed_mid_epoch_and_resumed_ends_as_an_uninterrupted_one(backend, tmp_path, tiny_bert_no_dropout,
                                                                        small_data, references):
    """Against the uninterrupted run on one process (batch 8), which every 2-rank run with
    micro-batch 2 x accumulation 2 reproduces (test_two_ranks_with_accumulation_match_one_process).
    The DDP run resumes on one process with the same examples per step; the ZeRO-2 run, whose
    checkpoint is partitioned by rank, on 2 ranks. A resume that would change the data order,
    or load a ZeRO checkpoint without DeepSpeed, is refused before training."""
    steps = RESUME_STEPS + ["--batch-size", "2", "--grad-accum", "2"]
    broken = tmp_path / "broken"
    process = launch(BACKENDS[backend], common_args(tiny_bert_no_dropout, small_data, broken, "pals-parallel") + steps,
                     wait=False)
    deadline = time.time() + 300
    marker = None
    while time.time() < deadline and process.poll() is None:
        found = glob.glob(str(broken / "out" / "*" / "checkpoints" / "step-00000015" / "loop_state.json"))
        if found:
            marker = found[0]
            break
        time.sleep(0.05)
    assert marker is not None, "the run ended or stalled before its step-15 checkpoint"
    # Mid-epoch 2, as a node failure: SIGKILL to the launcher and every rank (torchrun starts
    # the ranks in sessions of their own, so the launcher's process group does not reach them).
    import psutil

    launcher = psutil.Process(process.pid)
    for proc in [*launcher.children(recursive=True), launcher]:
        proc.send_signal(signal.SIGKILL)
    process.wait()
    (run_dir,) = glob.glob(str(broken / "out" / "*"))
    assert json.loads(Path(marker).read_text())["world_size"] == 2
    args = common_args(tiny_bert_no_dropout, small_data, broken, "pals-parallel") + RESUME_STEPS + ["--resume", run_dir]
    # On one process with fewer examples per step: the data order would change, so it is refused.
    # (A resume takes every setting from the checkpoint, the launch config and accumulation 2 too: a new
    # layout is given in full, here one plain process.)
    one = ["--launch-config", "", "--grad-accum", "1"]
    refused = single(args + ["--batch-size", "4", *one])
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "written with 2 process(es) x batch 2 x accumulation 2 = 8 examples per optimizer step; this run has " \
           "1 x 4 x 1 = 4" in refused.stderr
    if backend == "ddp":
        # The same 8 examples per step on one process: a DDP checkpoint continues there.
        result = single(args + ["--batch-size", "8", *one])
    else:
        refused = single(args + ["--batch-size", "8", *one])
        assert refused.returncode == 2 and "written with DeepSpeed, this run is without it" in refused.stderr
        result = launch(BACKENDS[backend], args + ["--batch-size", "2", "--grad-accum", "2"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "resumed from" in result.stdout + result.stderr

    got, expected = final_weights(broken), final_weights(references / "resume-whole")
    worst = max((got[k] - expected[k]).abs().max().item() for k in got)
    assert worst < ATOL
    client, run = only_run(broken)  # the resumed run continued the same MLflow run
    _, whole_run = only_run(references, "resume-whole")
    assert run.info.status == "FINISHED"
    for name in ("dev/sst/accuracy", "dev/sts/pearson", "dev/overall"):
        assert run.data.metrics[name] == pytest.approx(whole_run.data.metrics[name], abs=1e-4)
    logged_steps = sorted(m.step for t in ("sst", "cfimdb", "quora", "sts")
                          for m in client.get_metric_history(run.info.run_id, f"train/loss/{t}"))
    assert logged_steps == list(range(1, 25)), "a resumed run must record each step exactly once"
