"""`mtl-bench`: train; list variants and tasks; print parameter counts; sweep and compare; use a
trained run (evaluate, predict, export). `main` and the parser in `main.py`; the train flags from
TrainConfig in `flags.py`; a run's commands in `commands.py`; sweep and compare in `study.py`."""
from harness.cli.flags import _add_config_flags, config_from_args  # noqa: F401
from harness.cli.main import build_parser, main  # noqa: F401
