"""`mtl-bench`: train, list variants, print parameter counts.

Flags of `train` are generated from TrainConfig's fields (--batch-size sets batch_size), so a
new setting needs no CLI code. Variant options are `--option NAME=VALUE`, converted to the
type of the variant config's field and validated before anything heavy is imported.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing

from harness.config import PROFILES, ConfigError, TrainConfig, resolve_config


def _parse_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {pair!r}: expected NAME=VALUE")
        options[key.strip().replace("-", "_")] = value
    return options


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "variant_options":
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        if hint is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, dest=f.name, type=hint, default=None, metavar=f.name.upper(),
                                help=f"default: {f.default!r}" + (" (or the profile's)" if any(
                                    f.name in p for p in PROFILES.values()) else ""))
    parser.add_argument("--option", "-o", action="append", default=[], metavar="NAME=VALUE",
                        help="a variant option (see `mtl-bench variants --options`)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from variants import make_config

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.name != "variant_options" and getattr(args, f.name, None) is not None}
    overrides["variant_options"] = _parse_options(args.option)
    config = resolve_config(overrides)
    make_config(config.variant, config.variant_options)  # unknown variant / bad option: fail now
    return config


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

    for variant in list_variants():
        print(f"{variant.name:30s} {variant.description}")
        if args.options:
            for f in dataclasses.fields(variant.config_class):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                print(f"    {f.name} = {default!r}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from harness.params import parameter_table

    print(parameter_table(args.model, args.random_config, args.pair_encoding))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from harness.tracking import replay

    sent = replay(args.file, args.tracking_uri)
    print(f"sent {sent} queued records from {args.file}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtl-bench", description="Multitask BERT fine-tuning benchmark harness")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train one variant and record it in MLflow")
    _add_config_flags(p_train)
    p_train.set_defaults(func=cmd_train)
    p_variants = sub.add_parser("variants", help="list the registered variants")
    p_variants.add_argument("--options", action="store_true", help="also list each variant's options")
    p_variants.set_defaults(func=cmd_variants)
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
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        code = _exit_code(exc)
        if code is None:
            raise
        print(f"mtl-bench: error: {exc}", file=sys.stderr)
        return code


def _exit_code(exc: Exception) -> int | None:
    """Errors the user can act on get a one-line message and an exit code instead of a traceback."""
    from harness.data import DataError
    from harness.distributed import LaunchError
    from harness.model import ModelError
    from harness.tracking import TrackingError
    from harness.train import NonFiniteLoss, TrainingStopped
    from variants import VariantError

    if isinstance(exc, TrainingStopped):
        return 128 + exc.signum  # as a process killed by that signal: schedulers requeue on it
    if isinstance(exc, NonFiniteLoss):
        return 3
    if isinstance(exc, (ConfigError, VariantError, DataError, ModelError, LaunchError, TrackingError,
                        FileNotFoundError)):
        return 2
    return None


if __name__ == "__main__":
    sys.exit(main())
