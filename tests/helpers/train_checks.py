"""Several checks in one process group: run as `accelerate launch ... train_checks.py SPEC.json`, or
with plain python for one process. A launch costs far more than a tiny training (imports, process
group, DeepSpeed's set-up), so the distributed tests run all of a backend's checks in one launch.

SPEC.json: {"trainings": [[train flags...], ...],
            "inactive": [{"flags": [train flags...], "result": "path prefix"}, ...]}.
- Each training is a full `mtl-bench train` (harness.runs.train.train) with those flags.
- "inactive" sets up a run with those flags and steps it through a fixed task schedule; after each
  step it records whether the probe task's master parameters and optimizer state (AdamW's
  moments and step count, whatever the backend keeps them in) are bitwise what they were after
  the probe's own step. Each rank writes <result>-rank<N>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's harness, as `-m harness.cli` gets

PROBE = "sst"
SCHEDULE = ["sst", "quora", "cfimdb", "quora", "sst"]  # the probe is not drawn at steps 2-4


def parse(flags: list[str]):
    from harness.cli import _add_config_flags, config_from_args

    parser = argparse.ArgumentParser()
    _add_config_flags(parser)
    return config_from_args(parser.parse_args(flags))


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()  # keeps the process group (PartialState) for the next training
    GradientState._reset_state()


def master_tensors(run, task: str) -> list[torch.Tensor]:
    """The tensors the innermost optimizer updates for `task`'s group: the parameters themselves
    (1 process, DDP), or DeepSpeed's flat fp32 partitions of this rank (ZeRO-1/2/3)."""
    inner = run.task_steps.inner
    groups = [i for i, g in enumerate(inner.param_groups) if g.get("task") == task]
    zero = getattr(run.model, "optimizer", None)
    if hasattr(zero, "fp32_partitioned_groups_flat"):  # ZeRO-3 attaches them to the group only during a step
        return [zero.fp32_partitioned_groups_flat[s] for s, g in zero.sub_group_to_group_id.items() if g in groups]
    return [p for i in groups for p in inner.param_groups[i]["params"]]


def snapshot(run, task: str) -> list[torch.Tensor]:
    inner = run.task_steps.inner
    out = []
    for tensor in master_tensors(run, task):
        out.append(tensor.detach().clone())
        state = inner.state.get(tensor, {})
        out.extend(torch.as_tensor(state[k]).detach().clone() for k in sorted(state))
    return out


def inactive_check(flags: list[str], result: str) -> None:
    from harness.runs.loop import train_step
    from harness.runs.setup import setup

    config = parse(flags)
    from harness.runs.train import preflight

    variant_config, *_ = preflight(config)
    run = setup(config, variant_config, None)
    after_own_step, report = None, []
    for step, task in enumerate(SCHEDULE):
        train_step(run, [task] * config.grad_accum)
        run.state.step += 1
        now = snapshot(run, PROBE)
        if step == 0:
            after_own_step = now
            report.append({"step": 1, "task": task, "tensors": len(now)})
            continue
        same = len(now) == len(after_own_step) and all(torch.equal(a, b) for a, b in zip(now, after_own_step))
        report.append({"step": step + 1, "task": task, "unchanged": same})
    if run.tracker:
        run.tracker.finish("FINISHED")
    rank = run.accelerator.process_index
    with open(f"{result}-rank{rank}.json", "w") as fp:
        json.dump({"rank": rank, "world_size": run.accelerator.num_processes, "schedule": report}, fp)


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    for flags in spec.get("trainings", []):
        from harness.runs.train import train

        train(parse(flags))
        reset_accelerate()
    for check in spec.get("inactive", []):
        inactive_check(check["flags"], check["result"])
        reset_accelerate()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # then exit at once, as `mtl-bench train` does (ZeRO-3 teardown aborts)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
