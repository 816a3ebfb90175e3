"""The flags of `mtl-bench train`, generated from TrainConfig's fields (--batch-size sets batch_size),
and the run config they make (`config_from_args`, resumes included)."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
from pathlib import Path

from harness.core.config import (
    PROFILES,
    SWEEP_FIELDS,
    ConfigError,
    TrainConfig,
    convert_setting,
    read_config,
    resolve_config,
    setting_types,
)
from harness.core.values import parse_pair


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
        if f.metadata["listed"]:
            group.add_argument(flag, dest=f.name, action="append", default=None, metavar=f.name.upper(),
                               help=text + " (repeatable)")
        elif hints[f.name] is bool:
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
    overrides.update({f.name: _flag_value(f, getattr(args, f.name)) for f in dataclasses.fields(TrainConfig)
                      if f.name != "variant_options" and getattr(args, f.name, None) is not None})
    overrides["variant_options"] = {**options, **_parse_options(args.option)}
    recorded = {}
    if overrides.get("resume"):
        overrides, recorded = _resumed_settings(overrides)
    config = resolve_config(overrides)
    if recorded:  # before the variant reads its options: a resume that changes the variant is named as such
        from harness.training.checkpoint import resume_changes

        resume_changes(recorded, dataclasses.asdict(config), Path(config.resume))
    make_config(config.variant, config.variant_settings())  # unknown variant / bad option: fail now
    return config


def _flag_value(f: dataclasses.Field, value):
    """A flag's value as a setting: a repeatable flag's values (each maybe comma-separated) joined."""
    return ",".join(value) if f.metadata["listed"] else value


def add_task_file_flag(parser: argparse.ArgumentParser) -> None:
    """--task-file for commands that list or use tasks without training (`mtl-bench tasks`)."""
    parser.add_argument("--task-file", dest="task_file", action="append", default=[], metavar="FILE",
                        help="a YAML file declaring tasks and groups, registered beside the installed ones "
                             "(docs/writing-a-task.md; repeatable)")


def register_task_files_of(args: argparse.Namespace, check_files: bool = True) -> None:
    """Registers the tasks of the command's --task-file flags (add_task_file_flag); without
    `check_files` their data files need not exist."""
    from harness.tasks.taskfile import register_task_files

    register_task_files(",".join(args.task_file), check_files=check_files)


def _resumed_settings(given: dict) -> dict:
    """A resume trains the configuration its run was started with: the checkpoint's settings, with
    those given now on top (train refuses any of them that would change what is trained)."""
    from harness.training.checkpoint import find_checkpoint, read_loop_state

    recorded = read_loop_state(find_checkpoint(given["resume"])).config
    if not recorded:  # a checkpoint from before settings were recorded: the given ones (train warns)
        return given, {}
    options = {**recorded.get("variant_options", {}), **given.get("variant_options", {})}
    return {**recorded, **given, "variant_options": options}, recorded
