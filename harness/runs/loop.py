"""The training loop: each optimizer step trains one task, drawn by the TaskSampler; every rank
draws the same task because every rank's sampler has the same seed. Each rank reads its own slice
of that task's examples (TaskStream), so the slices of one optimizer step never overlap. Stopping
cleanly on a signal or a non-finite loss."""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import torch

from harness.core import names
from harness.training.distributed import agree_on_step, all_finite, clear_stale_zero3_gradients
from harness.training.evaluation import evaluate, make_batch, pad_multiple
from harness.model.network import task_loss
from harness.training.optim import learning_rate
from harness.runs.finish import record_evaluation
from harness.runs.setup import Run


class NonFiniteLoss(RuntimeError):
    def __init__(self, task: str, step: int, checkpoint: Path | None = None):
        self.task, self.step, self.checkpoint = task, step, checkpoint
        super().__init__(f"non-finite loss on task {task} at optimizer step {step}")


class TrainingStopped(RuntimeError):
    def __init__(self, signum: int, step: int, checkpoint: Path | None = None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.how_to_resume = ""  # set once the checkpoint is written: the run, its folder and the command
        super().__init__(f"stopped by {signal.Signals(signum).name} at optimizer step {step}")

    def __str__(self) -> str:
        return " ".join(filter(None, (super().__str__(), self.how_to_resume)))


def resume_command(run: "Run") -> str:
    """The command that continues `run` from its latest checkpoint, launched as it was."""
    import shlex

    resume = ["train", "--resume", str(run.out_dir)]
    if run.accelerator.num_processes == 1 and not run.config.launch_config:
        return shlex.join(["mtl-bench", *resume])
    launch = ["accelerate", "launch"]
    if run.config.launch_config:
        launch += ["--config_file", run.config.launch_config]
        for value, where in run.launch_overrides.values():  # where: "accelerate launch --num_processes"
            launch += [where.removeprefix("accelerate launch "), str(value)]
    else:
        launch += ["--num_processes", str(run.accelerator.num_processes)]
    return shlex.join([*launch, "-m", "harness.cli", *resume])


class StopSignals:
    """SIGTERM (a scheduler's preemption) and SIGINT set a flag; the loop stops at the next step."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train_step(run: Run, window: list[str]) -> dict[str, float]:
    """One optimizer step over an accumulation window; returns the mean loss per task, all ranks."""
    config, accelerator, model, optimizer, state = run.config, run.accelerator, run.model, run.optimizer, run.state
    run.task_steps.begin(learning_rate(config, state.step), set(window))
    if run.deepspeed:
        clear_stale_zero3_gradients(model)
    world, rank, micro = accelerator.num_processes, accelerator.process_index, config.batch_size
    losses: dict[str, list] = {}
    for task in window:
        indices = run.streams[task].take(world * micro)[rank * micro:(rank + 1) * micro]
        data = run.data[task]
        batch = make_batch(data.train, indices, accelerator.device, data.pad_id, pad_multiple(config))
        with accelerator.accumulate(model):
            loss = task_loss(task, model(task, **batch), batch["labels"], config.pair_encoding)
            if not all_finite(accelerator, loss):
                raise NonFiniteLoss(task, state.step + 1)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                if config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                if not run.deepspeed:
                    run.task_steps.fill_missing_gradients()
            optimizer.step()
            if accelerator.sync_gradients and accelerator.optimizer_step_was_skipped:
                # fp16 loss scaling met inf/NaN gradients: no update, a smaller scale next step. Counted,
                # not an error: only a non-finite loss (checked above) stops the run.
                state.skipped_steps += 1
            optimizer.zero_grad(set_to_none=True)
        losses.setdefault(task, []).append(loss.detach())
    return {t: accelerator.reduce(torch.stack(v).mean(), reduction="mean").item() for t, v in losses.items()}


def train_loop(run: Run, stop: StopSignals, step_seconds: list[float]) -> None:
    """Epochs of `batches_per_epoch` optimizer steps, each epoch's dev evaluation (see `record_evaluation`)."""
    config, state, tracker, sampler = run.config, run.state, run.tracker, run.sampler
    progress = None
    if run.accelerator.is_main_process and config.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=config.total_steps, initial=state.step, desc=f"{config.variant} training", unit="step",
                        disable=None)  # None: no bar when stderr is not a terminal (logs, CI)
    if tracker and state.step == 0:
        import psutil

        # From process start (imports, model and data loading, tokenisation) to the first step.
        tracker.log_metrics({names.STARTUP_SECONDS: time.time() - psutil.Process().create_time()}, step=0)
    while state.epoch <= config.epochs:
        epoch = state.epoch
        if state.step_in_epoch == 0 and tracker:
            tracker.log_metrics({f"sampler/p/{t}": p for t, p in sampler.probabilities(epoch).items()}, step=state.step)
        while state.step_in_epoch < config.batches_per_epoch:
            started = time.perf_counter()
            # The same task(s) on every rank, drawn by the shared-seed sampler.
            draws = 1 if config.task_per == "window" else config.grad_accum
            before_draw = sampler.state_dict()
            drawn = [sampler.sample(epoch) for _ in range(draws)]
            window = drawn * config.grad_accum if draws == 1 else drawn
            code = sum(run.tasks.index(t) * len(run.tasks) ** i for i, t in enumerate(drawn))
            if agree_on_step(run.accelerator, code, bool(stop.signum), state.step, run.tasks):
                # The step is not trained: its draw is undone, so the checkpoint's resume draws it again.
                sampler.load_state_dict(before_draw)
                raise TrainingStopped(stop.signum or signal.SIGTERM, state.step)
            losses = train_step(run, window)
            state.step += 1
            state.step_in_epoch += 1
            step_seconds.append(time.perf_counter() - started)
            if tracker:
                tracker.log_metrics({**{names.train_loss_key(t): v for t, v in losses.items()},
                                     names.STEP_METRIC: learning_rate(config, state.step - 1),
                                     **({"train/skipped_steps": state.skipped_steps}
                                        if config.mixed_precision == "fp16" else {})}, step=state.step)
            if progress:
                progress.update(1)
                progress.set_postfix(task="+".join(losses), loss=f"{sum(losses.values()) / len(losses):.3f}",
                                     epoch=epoch)
            if config.checkpoint_every and state.step % config.checkpoint_every == 0 \
                    and state.step_in_epoch < config.batches_per_epoch:
                run.checkpoint()
        if config.eval_every_epoch or epoch == config.epochs:
            validation = (evaluate(run.model, run.data, config, run.accelerator, "validation")[0]
                          if config.validation_fraction > 0 else {})
            record_evaluation(run, epoch, *evaluate(run.model, run.data, config, run.accelerator), validation)
        state.epoch += 1
        state.step_in_epoch = 0
        run.checkpoint()
    if progress:
        progress.close()
