"""`mtl-bench sweep` and `mtl-bench compare`: their flags and commands."""
from __future__ import annotations

import argparse

from harness.core.config import TrainConfig


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
    from harness.cli.flags import register_task_files_of

    register_task_files_of(args, check_files=False)  # --task-file: tasks the runs trained (their data not read)
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
    from harness.core.names import COSTS

    c.add_argument("--cost", default="trainable", choices=tuple(COSTS),
                   help="the cost axis of the frontier and the score-against-parameters plot: "
                        + "; ".join(f"{k}: {v[1]}" for k, v in COSTS.items()) + " (default: %(default)s)")
    c.add_argument("--detect", type=float, default=None, metavar="D",
                   help="also report the seeds a paired t-test needs to detect a difference D of the overall "
                        "score at 80%% power, from each comparison's spread of per-seed differences")
    from harness.cli.flags import add_task_file_flag

    add_task_file_flag(c)
    c.set_defaults(func=cmd_compare)
