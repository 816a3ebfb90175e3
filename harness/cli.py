"""`mtl-bench`: train; list variants and tasks; print parameter counts; sweep and compare; use a
trained run (evaluate, predict, export).

Flags of `train` are generated from TrainConfig's fields (--batch-size sets batch_size), so a
new setting needs no CLI code. Variant options are `--option NAME=VALUE`, converted to the
type of the variant config's field and validated before anything heavy is imported.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
from pathlib import Path

from harness.config import (
    PROFILES,
    SWEEP_FIELDS,
    ConfigError,
    TrainConfig,
    convert_setting,
    read_config,
    resolve_config,
    setting_types,
)
from harness.values import parse_pair


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that name the closest valid choice or option, and without
    prefix matching of long options (`--epoch 1` is a typo, not `--epochs 1`): every long option is
    documented in full, so an abbreviation that works today could change meaning tomorrow."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # sub-commands' parsers are made of this class too
        super().__init__(*args, **kwargs)

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(choices)}"
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}; {hint}")

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def unrecognized(self, extra: list[str], note: str = ""):
        """Unknown arguments, each unknown option with the closest one this parser has."""
        def named(arg: str) -> str:
            option = arg.split("=", 1)[0]
            close = difflib.get_close_matches(option, list(self._option_string_actions), n=1, cutoff=0.6) \
                if option.startswith("--") else []
            return f"{arg} (did you mean {close[0]}?)" if close else arg
        self.error(f"unrecognized arguments: {' '.join(named(a) for a in extra)}{note}")


def _parse_options(pairs: list[str]) -> dict[str, str]:
    return dict(parse_pair(pair, "--option", ConfigError) for pair in pairs)


class _Registered:
    """argparse choices read from a registry only when used (parsing --variant, or printing help),
    so that commands that never name a variant do not import torch to build their parser."""

    def __init__(self, names):
        self._names, self._cache = names, None

    def _all(self) -> list[str]:
        if self._cache is None:
            self._cache = self._names()
        return self._cache

    def __contains__(self, item) -> bool:
        return item in self._all()

    def __iter__(self):
        return iter(self._all())


def _variant_names() -> list[str]:
    from variants import list_variants

    return [v.name for v in list_variants()]


def _typed(name: str):
    def parse(text: str):
        try:
            return convert_setting(name, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None
    parse.__name__ = name  # argparse names the type in its messages
    return parse


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field: its help text, its choices where the set is closed, its default."""
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="a YAML or JSON file of settings (.yaml/.yml or .json; as `mtl-bench sweep` "
                             "writes for each job: <job folder>/config.json); flags given beside it replace its "
                             "values")
    hints = setting_types()
    in_profiles = {name for values in PROFILES.values() for name in values}
    sweep_group = parser.add_argument_group("set by `mtl-bench sweep` for each of its jobs")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "variant_options":
            continue
        group = sweep_group if f.name in SWEEP_FIELDS else parser
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata["help"]
        choices = _Registered(_variant_names) if f.name == "variant" else f.metadata["choices"]
        if choices is not None:
            text += "; one of: %(choices)s"
        default = f"{f.default!r}" if f.default not in ("", None) else "none"
        text += f" (default: {default}" + (", or the profile's)" if f.name in in_profiles else ")")
        if hints[f.name] is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=text.replace("%(choices)s", ""))
        else:
            group.add_argument(flag, dest=f.name, type=_typed(f.name), default=None, choices=choices,
                                metavar="NAME" if f.name == "variant" else f.name.upper(), help=text)
    parser.add_argument("--option", "-o", action="append", default=[], metavar="NAME=VALUE",
                        help=TrainConfig.__dataclass_fields__["variant_options"].metadata["help"]
                        + " (repeatable)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from variants import make_config

    overrides = read_config(args.config) if getattr(args, "config", None) else {}
    options = dict(overrides.pop("variant_options", {}) or {})
    overrides.update({f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                      if f.name != "variant_options" and getattr(args, f.name, None) is not None})
    overrides["variant_options"] = {**options, **_parse_options(args.option)}
    recorded = {}
    if overrides.get("resume"):
        overrides, recorded = _resumed_settings(overrides)
    config = resolve_config(overrides)
    if recorded:  # before the variant reads its options: a resume that changes the variant is named as such
        from harness.checkpoint import resume_changes

        resume_changes(recorded, dataclasses.asdict(config), Path(config.resume))
    make_config(config.variant, config.variant_settings())  # unknown variant / bad option: fail now
    return config


def _resumed_settings(given: dict) -> dict:
    """A resume trains the configuration its run was started with: the checkpoint's settings, with
    those given now on top (train refuses any of them that would change what is trained)."""
    from harness.checkpoint import find_checkpoint, read_loop_state

    recorded = read_loop_state(find_checkpoint(given["resume"])).config
    if not recorded:  # a checkpoint from before settings were recorded: the given ones (train warns)
        return given, {}
    options = {**recorded.get("variant_options", {}), **given.get("variant_options", {})}
    return {**recorded, **given, "variant_options": options}, recorded


def cmd_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from harness.train import train

    metrics = train(config)
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    if not distributed or dist.get_rank() == 0:
        for name, value in metrics.items():
            print(f"{name}: {value:.4f}")
    if distributed:
        # DeepSpeed ZeRO-3 processes sometimes abort in interpreter teardown after a finished
        # run (SIGABRT, about 1 in 9 runs); a barrier and an immediate exit avoid it.
        dist.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def cmd_variants(args: argparse.Namespace) -> int:
    from variants import list_variants
    from variants.registry import default_task_set

    for variant in list_variants():
        print(f"{variant.name:30s} {variant.description}")
        if args.options:
            for f in dataclasses.fields(variant.config_class):
                if f.name == "tasks":  # not an option: the task set it trains without --tasks
                    default = default_task_set(variant.name)
                else:
                    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                print(f"    {f.name} = {default!r}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from harness.tasks import list_groups, list_tasks, overall_formula

    for spec in list_tasks():
        shape = "sentence pair" if spec.is_pair else "sentence"
        what = (f"{spec.num_classes} classes" if spec.kind == "classification"
                else f"{spec.label_range[0]:g}-{spec.label_range[1]:g}")
        print(f"{spec.name:12s} {spec.kind} of a {shape} ({what}); metrics {', '.join(spec.metrics)} "
              f"(primary {spec.primary_metric}); files {', '.join(spec.files.values())}")
        if args.verbose and spec.description:
            print(f"{'':12s} {spec.description}")
    for group in list_groups():
        overall = overall_formula(group.tasks).describe()
        print(f"group {group.name}{' (the default set)' if group.default else ''}: {','.join(group.tasks)}; "
              f"overall {overall}")
        if args.verbose and group.description:
            print(f"{'':12s} {group.description}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from harness.trained import evaluate_run

    evaluate_run(args.run_id, args.split, args.data_dir, args.tracking_uri, args.out,
                 [t for t in args.tasks.split(",") if t] if args.tasks else None, log=args.log,
                 cache_dir=args.cache_dir, base=args.base)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from harness.trained import predict_run

    predict_run(args.run_id, args.task, args.texts, args.file, args.tracking_uri, base=args.base)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from harness.export import export_run

    export_run(args.run_id, args.dir, args.tracking_uri, base=args.base)
    return 0


BASE_HELP = ("a run trained with --freeze-encoder: a folder holding its base checkpoint (checked by the SHA-256 "
             "of its weights); default: the installed package (--model default), the --model name as a folder, "
             "the Hugging Face cache")


def _add_use_parsers(sub) -> None:
    e = sub.add_parser("evaluate", help="score a saved run's model on dev again, or predict the test split",
                       description="Loads the model a run saved (--save-model), predicts every example of the split "
                                   "for each of its tasks, writes the prediction files (for the handout tasks the "
                                   "CS224N starter's sst-test-output.csv, para-..., sts-...) and logs them to the run "
                                   "under predictions/<split>/. With --split dev it prints the metrics beside the "
                                   "ones the run logged.")
    e.add_argument("run_id", help="the MLflow run id (printed at the end of `mtl-bench train`)")
    e.add_argument("--split", default="dev", choices=("dev", "test"))
    e.add_argument("--data-dir", default="", help="default: the run's own --data-dir")
    e.add_argument("--tasks", default="", help="comma-separated subset of the run's tasks (default: all)")
    e.add_argument("--out", default="", help="the prediction files go to OUT/<split>/ (default: the run's "
                                             "<output-dir>/evaluate/<run id>)")
    e.add_argument("--cache-dir", default="", help="tokenised datasets (default: the datasets library's cache)")
    e.add_argument("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI, else ./mlruns")
    e.add_argument("--log", action=argparse.BooleanOptionalAction, default=True,
                   help="log the prediction files to the run (default: yes)")
    e.add_argument("--base", default="", metavar="FOLDER", help=BASE_HELP)
    e.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("predict", help="predict with a saved run's model for sentences or sentence pairs",
                       description="Prints `prediction <tab> score <tab> input` per example: the class (score: its "
                                   "probability) or the value of a regression task; a pair's two sentences are shown "
                                   "joined by ' ||| '. A pair task takes its texts two at a time; in --file, one "
                                   "example per line, a pair's sentences tab-separated. Texts that begin with '-' "
                                   "go after '--'.")
    p.add_argument("run_id")
    p.add_argument("--task", required=True, help="one of the run's tasks")
    p.add_argument("texts", nargs="*", help="sentences (a pair task: two per example)")
    p.add_argument("--file", default=None, help="a file of examples, one per line")
    p.add_argument("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI, else ./mlruns")
    p.add_argument("--base", default="", metavar="FOLDER", help=BASE_HELP)
    p.set_defaults(func=cmd_predict)
    x = sub.add_parser("export", help="write a saved run's model as standard transformers / peft / safetensors folders",
                       description="Writes DIR/encoder/ (the trained encoder, transformers save_pretrained with its "
                                   "tokenizer; none for a frozen encoder), DIR/<task>/ (head.safetensors, head.json; "
                                   "for lora and ia3 the task's peft adapter, for PeftModel.from_pretrained), "
                                   "DIR/parts.safetensors and DIR/export.json (every variant, loadable by "
                                   "harness.export.load_export). See examples/load_exported_lora.py.")
    x.add_argument("run_id")
    x.add_argument("dir", help="a new or empty folder")
    x.add_argument("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI, else ./mlruns")
    x.add_argument("--base", default="", metavar="FOLDER", help=BASE_HELP)
    x.set_defaults(func=cmd_export)


def cmd_params(args: argparse.Namespace) -> int:
    from harness.params import parameter_table

    print(parameter_table(args.model, args.random_config, args.pair_encoding))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from harness.tracking import replay

    sent = replay(args.file, args.tracking_uri)
    print(f"sent {sent} queued records from {args.file}")
    return 0


def _comma_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def cmd_sweep(args: argparse.Namespace) -> int:
    from harness.sweeps import get_executor, load_spec, run_sweep

    spec = load_spec(args.file, args.name, args.variants, args.seeds, args.set, args.grid, args.option,
                     args.launch_config, args.setup)
    executor = get_executor(args.executor).from_args(args)
    states = run_sweep(spec, executor, wait=args.wait, dry_run=args.dry_run)
    if args.dry_run or (executor.detaches and not args.wait):
        return 0
    return 0 if all(s == "FINISHED" for s in states.values()) else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.analysis import compare

    compare(sweep=args.sweep, experiment=args.experiment, tracking_uri=args.tracking_uri, out_dir=args.out,
            baseline=args.baseline, test=args.test, resamples=args.resamples, select_best_by=args.select_best_by,
            select_over=tuple(x.strip() for x in args.select_over.split(",") if x.strip()), detect=args.detect,
            cost=args.cost)
    return 0


def _add_sweep_parser(sub) -> None:
    from harness.sweeps.executors import list_executors

    p = sub.add_parser("sweep", help="queue variants x seeds x settings, locally or on SLURM",
                       description="Expands a sweep into jobs (one `accelerate launch` of the harness each), "
                                   "records it as an MLflow parent run with a child run per job, and queues the "
                                   "jobs that have not finished. Run it again to re-run failed or missing jobs. "
                                   "A sweep file's `search:` runs an Optuna search (rounds of trials, each a job) "
                                   "instead of a grid, e.g. launch/sweeps/peft-quick-search.yaml.")
    p.add_argument("file", nargs="?", help="a sweep file (YAML), e.g. launch/sweeps/study-quick.yaml")
    p.add_argument("--name", default="", help="the sweep's id: a re-run of the same name goes on where it stopped "
                                              "(default: the file's name; required without a file)")
    p.add_argument("--variants", type=_comma_list, metavar="V1,V2",
                   help="comma-separated registered variants, `mtl-bench variants` (replaces the file's)")
    p.add_argument("--seeds", type=_comma_list, metavar="S1,S2", help="comma-separated integer seeds (replaces "
                                                                      "the file's)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a training setting for every job: any `mtl-bench train` setting by its field name "
                        "(`batch_size`), except those a sweep sets per job (variant, seed, run_name, resume, "
                        "launch_config, progress, sweep_*); e.g. --set profile=paper (repeatable)")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                   help="a training setting to vary: every value with every variant and seed (repeatable: "
                        "every combination); or a variant option as variant.NAME, e.g. variant.rank=4,8,16, varied "
                        "for the variants that have it")
    p.add_argument("--option", "-o", action="append", default=[], metavar="NAME=VALUE",
                   help="a variant option, given to the variants that have it, `mtl-bench variants --options` "
                        "(repeatable)")
    p.add_argument("--launch-config", default="", help="the Accelerate config of each job (default: "
                                                       "launch/single.yaml)")
    p.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="a shell line run before each job where it runs, after the file's setup: lines, e.g. "
                        "--setup 'module load cuda/12.4' (repeatable); the job then runs the `python` on PATH")
    p.add_argument("--dry-run", action="store_true", help="list the jobs (and, for a scheduler, the batch script "
                                                          "it would submit) and exit")
    executors = list_executors()
    queuing = ", ".join(e.name for e in executors if e.detaches)
    p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=False,
                   help=f"with an executor that queues jobs ({queuing}): wait until they leave the queue, then "
                        "report and close the sweep's parent run (default: no; the others always wait)")
    p.add_argument("--executor", default="local", choices=[e.name for e in executors],
                   help="where the jobs run: " + "; ".join(f"{e.name}: {e.description}" for e in executors)
                   + " (default: local)")
    for executor in executors:
        executor.add_arguments(p.add_argument_group(f"{executor.name} (--executor {executor.name})"))
    p.set_defaults(func=cmd_sweep)

    c = sub.add_parser("compare", help="the study's table, statistics and plots from a sweep's or experiment's runs")
    which = c.add_mutually_exclusive_group(required=True)
    which.add_argument("--sweep", help="a sweep id (its finished child runs; outputs logged to its parent run)")
    which.add_argument("--experiment", help="an experiment's finished runs, grouped by variant; several "
                       "experiments joined by commas are compared as one")
    c.add_argument("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI, else ./mlruns")
    c.add_argument("--out", default="", help="folder for the table and plots (default outputs/compare/<name>)")
    c.add_argument("--baseline", default=TrainConfig.variant, help="the variant others are compared with "
                                                                   "(default: %(default)s)")
    c.add_argument("--test", default="both", choices=("seeds", "bootstrap", "both"),
                   help="paired t-test over seeds, paired bootstrap over dev examples, or both (default: both)")
    c.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    c.add_argument("--select-best-by", default="", choices=("validation",),
                   help="compare each variant at its own best grid point: per seed, the point with the best "
                        "val/overall (runs trained with --validation-fraction), dev reported for it, and a table of "
                        "the points chosen (default: every grid point is a row of its own)")
    c.add_argument("--select-over", default="", metavar="SETTING[,SETTING]",
                   help="with --select-best-by: the grid settings to choose among, e.g. lr; the others stay rows "
                        "of their own (default: all grid settings)")
    from harness.names import COSTS

    c.add_argument("--cost", default="trainable", choices=tuple(COSTS),
                   help="the cost axis of the frontier and the score-against-parameters plot: "
                        + "; ".join(f"{k}: {v[1]}" for k, v in COSTS.items()) + " (default: %(default)s)")
    c.add_argument("--detect", type=float, default=None, metavar="D",
                   help="also report the seeds a paired t-test needs to detect a difference D of the overall "
                        "score at 80%% power, from each comparison's spread of per-seed differences")
    c.set_defaults(func=cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mtl-bench", description="Multitask BERT fine-tuning benchmark harness")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train one variant and record it in MLflow",
                             description="Trains one variant on its tasks (or --tasks) and records the run in MLflow: "
                                         "params, metrics, parameter counts, dev predictions. Every setting below is "
                                         "a field of harness/config.py TrainConfig; a --profile sets the budget.")
    _add_config_flags(p_train)
    p_train.set_defaults(func=cmd_train)
    p_variants = sub.add_parser("variants", help="list the registered variants")
    p_variants.add_argument("--options", action="store_true", help="also list each variant's options")
    p_variants.set_defaults(func=cmd_variants)
    p_tasks = sub.add_parser("tasks", help="list the registered tasks (--tasks chooses a run's)")
    p_tasks.add_argument("--verbose", "-v", action="store_true", help="also describe each task")
    p_tasks.set_defaults(func=cmd_tasks)
    _add_use_parsers(sub)
    p_params = sub.add_parser("params", help="parameter counts of every variant, without training")
    p_params.add_argument("--model", default="default", help="a BERT checkpoint folder (default: packaged MiniLM)")
    p_params.add_argument("--random-config", default="", metavar="H,L,A",
                          help="a random BERT of hidden size H, L layers, A heads instead of --model, e.g. 768,12,12")
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
    from harness.data import DataError
    from harness.launch_config import LaunchError
    from harness.model import ModelError
    from harness.sweeps import SweepError
    from harness.tasks import TaskError
    from harness.tracking import TrackingError
    from harness.train import NonFiniteLoss, TrainingStopped
    from harness.trained import TrainedModelError
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
