"""`mtl-bench`: train; list variants and tasks; print parameter counts; sweep and compare; use a
trained run (evaluate, predict, export).

Flags of `train` are generated from TrainConfig's fields (--batch-size sets batch_size), so a
new setting needs no CLI code. Variant options are `--option NAME=VALUE`, converted to the
type of the variant config's field and validated before anything heavy is imported.
"""
from __future__ import annotations

import argparse
import os
import sys

from harness.cli.commands import (
    _add_use_parsers,
    cmd_params,
    cmd_replay,
    cmd_tasks,
    cmd_train,
    cmd_variants,
)
from harness.cli.flags import _add_config_flags, _Parser, add_task_file_flag
from harness.cli.study import _add_sweep_parser
from harness.core.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mtl-bench", description="Multitask BERT fine-tuning benchmark harness")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train one variant and record it in MLflow",
                             description="Trains one variant on its tasks (or --tasks) and records the run in MLflow: "
                                         "params, metrics, parameter counts, dev predictions. Every setting below is "
                                         "a field of harness/core/config.py TrainConfig; a --profile sets the budget.")
    _add_config_flags(p_train)
    p_train.set_defaults(func=cmd_train)
    p_variants = sub.add_parser("variants", help="list the registered variants")
    p_variants.add_argument("--options", action="store_true", help="also list each variant's options")
    p_variants.set_defaults(func=cmd_variants)
    p_tasks = sub.add_parser("tasks", help="list the registered tasks (--tasks chooses a run's)")
    p_tasks.add_argument("--verbose", "-v", action="store_true", help="also describe each task")
    add_task_file_flag(p_tasks)
    p_tasks.set_defaults(func=cmd_tasks)
    _add_use_parsers(sub)
    p_params = sub.add_parser("params", help="parameter counts of every variant, without training")
    p_params.add_argument("--model", default="default",
                          help="an encoder checkpoint folder, any architecture (default: packaged MiniLM)")
    p_params.add_argument("--random-config", default="", metavar="H,L,A",
                          help="a random encoder (--arch) of hidden size H, L layers, A heads instead of --model, "
                               "e.g. 768,12,12")
    p_params.add_argument("--arch", default="bert", help="the architecture (transformers model_type) of "
                          "--random-config: bert, roberta, electra, deberta-v2, modernbert, ...")
    p_params.add_argument("--pair-encoding", default="joint", choices=("joint", "separate"))
    p_params.set_defaults(func=cmd_params)
    p_replay = sub.add_parser("replay", help="send a run's tracking fallback file to MLflow")
    p_replay.add_argument("file", help="tracking-fallback-<run id>.json, written when the store was away")
    p_replay.add_argument("--tracking-uri", default="", help="default: the URI recorded in the file")
    p_replay.set_defaults(func=cmd_replay)
    _add_sweep_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `mtl-bench` command. Output cut short by a reader that closes the pipe (`mtl-bench variants
    | head`) ends the command quietly, as the Python docs' "Note on SIGPIPE" advises: exit status 1
    and no traceback, whichever subcommand wrote it."""
    try:
        try:
            code = _main(argv)
        except SystemExit:  # argparse's --help and errors: what they printed is flushed here
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # now, not at exit, where a closed pipe would print "Exception ignored"
        return code
    except BrokenPipeError:
        try:  # the interpreter flushes stdout once more at exit: let that write go nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # a stdout that is not a file (in-process callers)
            pass
        return 1


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    # argparse gives a positional list to the first run of positionals only, so the texts of
    # `predict RUN --task sst "a sentence"` arrive as extra arguments: they are predict's texts.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "predict":
            sub.choices[args.command].unrecognized(extra)
        literal = extra[extra.index("--") + 1:] if "--" in extra else []
        before = extra[:extra.index("--")] if "--" in extra else extra
        options = [e for e in before if e.startswith("-")]
        if options:
            sub.choices["predict"].unrecognized(options, " (a text that begins with '-' goes after '--')")
        args.texts = [*args.texts, *before, *literal]
    try:
        return args.func(args)
    except BrokenPipeError:
        raise  # main's
    except Exception as exc:
        code = _exit_code(exc)
        if code is None:
            raise
        print(f"mtl-bench: error: {exc}", file=sys.stderr)
        return code


def _exit_code(exc: Exception) -> int | None:
    """Errors the user can act on get a one-line message and an exit code instead of a traceback."""
    from harness.analysis import CompareError
    from harness.training.data import DataError
    from harness.core.launch_config import LaunchError
    from harness.model.network import ModelError
    from harness.sweeps import SweepError
    from harness.tasks import TaskError
    from harness.tracking.tracker import TrackingError
    from harness.runs.loop import NonFiniteLoss, TrainingStopped
    from harness.runs.trained import TrainedModelError
    from variants import VariantError

    if isinstance(exc, TrainingStopped):
        return 128 + exc.signum  # as a process killed by that signal: schedulers requeue on it
    if isinstance(exc, NonFiniteLoss):
        return 3
    if isinstance(exc, (ConfigError, VariantError, DataError, ModelError, LaunchError, TrackingError,
                        SweepError, CompareError, TaskError, TrainedModelError, FileNotFoundError)):
        return 2
    return None


if __name__ == "__main__":
    sys.exit(main())
