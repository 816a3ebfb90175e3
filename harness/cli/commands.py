"""`mtl-bench` commands of one run: train, variants, tasks, evaluate, predict, export, params, replay."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from harness.cli.flags import config_from_args, register_task_files_of


def cmd_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from harness.runs.train import train

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


def _task_line(spec, verbose: bool) -> str:
    shape = "sentence pair" if spec.is_pair else "sentence"
    what = (f"{spec.num_classes} classes" if spec.kind == "classification"
            else f"{spec.label_range[0]:g}-{spec.label_range[1]:g}")
    extra = "".join(f"; dev also {file} (metrics {', '.join(f'{m}_{name}' for m in spec.metrics)})"
                    for name, file in spec.extra_dev.items())
    line = (f"  {spec.name:12s} {spec.kind} of a {shape} ({what}); metrics {', '.join(spec.metrics)} "
            f"(primary {spec.primary_metric}); files {', '.join(spec.files.values())}{extra}")
    return line + (f"\n  {'':12s} {spec.description}" if verbose and spec.description else "")


def cmd_tasks(args: argparse.Namespace) -> int:
    """Each group with its overall formula (the default group first), and under it the tasks not
    listed under an earlier group; then the tasks of no group."""
    from harness.tasks import list_groups, list_tasks, overall_formula

    register_task_files_of(args)  # --task-file: its tasks listed beside the installed ones
    specs = {spec.name: spec for spec in list_tasks()}
    listed: set[str] = set()
    for group in sorted(list_groups(), key=lambda g: not g.default):  # stable: the others in registration order
        overall = overall_formula(group.tasks).describe()
        print(f"group {group.name}{' (the default set)' if group.default else ''}: {','.join(group.tasks)}; "
              f"overall {overall}")
        if args.verbose and group.description:
            print(f"  {group.description}")
        for task in group.tasks:
            if task in specs and task not in listed:
                print(_task_line(specs[task], args.verbose))
                listed.add(task)
    others = [spec for name, spec in specs.items() if name not in listed]
    if others:
        print("tasks in no group:")
        for spec in others:
            print(_task_line(spec, args.verbose))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from harness.runs.use import evaluate_run

    evaluate_run(args.run_id, args.split, args.data_dir, args.tracking_uri, args.out,
                 [t for t in args.tasks.split(",") if t] if args.tasks else None, log=args.log,
                 cache_dir=args.cache_dir, base=args.base)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from harness.runs.use import predict_run

    predict_run(args.run_id, args.task, args.texts, args.file, args.tracking_uri, base=args.base)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from harness.runs.export import export_run

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
                                   "harness.runs.export.load_export). See examples/load_exported_lora.py.")
    x.add_argument("run_id")
    x.add_argument("dir", help="a new or empty folder")
    x.add_argument("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI, else ./mlruns")
    x.add_argument("--base", default="", metavar="FOLDER", help=BASE_HELP)
    x.set_defaults(func=cmd_export)


def cmd_params(args: argparse.Namespace) -> int:
    from harness.model.params import parameter_table

    print(parameter_table(args.model, args.random_config, args.pair_encoding, args.arch))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from harness.tracking.tracker import replay

    sent = replay(args.file, args.tracking_uri)
    print(f"sent {sent} queued records from {args.file}")
    return 0
