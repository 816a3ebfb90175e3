"""`--select-best-by validation`: each variant at its own best grid point, chosen on validation."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from harness.core import names
from harness.analysis.collect import CompareError, RunRecord
from harness.sweeps.labels import Label, parse_label


@dataclass(frozen=True)
class Choice:
    """The grid point chosen for one variant (its kept label) and seed."""
    variant: str  # the row's label: the variant and the grid values not chosen among
    seed: int
    validation: float  # the chosen point's val/overall
    point: str  # its values chosen among ("lr=0.001"), "-" if none
    candidates: int  # the points it was chosen from


def select_best(records: list[RunRecord], over: tuple[str, ...] = ()) -> tuple[list[RunRecord], list[Choice]]:
    """Each variant's best grid point per seed by the validation score (val/overall), labelled by
    the variant alone so that variants are compared each at its own best point; and which point
    each got. Runs without a validation score are refused: choosing on dev would report dev twice.
    A NaN score (a constant predictor's correlation) counts as the worst.

    `over` names the grid settings chosen among (default: all of them). A grid setting it does not
    name stays in the label, so its values remain rows of their own: with over=("lr",) a sweep of
    lr x freeze_encoder gives "lora freeze_encoder=True" and "lora freeze_encoder=False", each at
    its own best learning rate."""
    missing = [r for r in records if r.validation is None]
    if missing:
        names_ = ", ".join(f"{r.run_id} ({r.label} seed {r.seed})" for r in missing[:5])
        raise CompareError(f"--select-best-by validation: {len(missing)} run(s) have no "
                           f"{names.overall_key(names.VALIDATION)} metric (train with --validation-fraction): {names_}")
    grid_settings = {setting for r in records for setting in parse_label(r.label).settings}
    unknown = sorted(set(over) - grid_settings)
    if unknown:
        raise CompareError(f"--select-over: {unknown} not among the grid settings of these runs "
                           f"({sorted(grid_settings) or 'none'})")

    def kept(record: RunRecord) -> str:
        grid = parse_label(record.label).grid
        return str(Label(record.variant, tuple(token for setting, token in grid if over and setting not in over)))

    def score(record: RunRecord) -> float:  # NaN (a constant predictor's r) counts as worst, as in training
        return -math.inf if math.isnan(record.validation) else record.validation

    best: dict[tuple[str, int], RunRecord] = {}
    for record in sorted(records, key=lambda r: r.label):  # ties: the first label in order
        key = (kept(record), record.seed)
        if key not in best or score(record) > score(best[key]):
            best[key] = record
    chosen = [Choice(v, s, r.validation, _point(r.label, v),
                     sum(1 for x in records if (kept(x), x.seed) == (v, s)))
              for (v, s), r in sorted(best.items())]
    selected = [dataclasses.replace(r, label=label) for (label, _), r in best.items()]
    return selected, chosen


def _point(label: str, kept: str) -> str:
    """The values of `label` that its kept label leaves out: the point chosen."""
    parsed = parse_label(kept)
    own = {parsed.variant, *parsed.tokens}
    return " ".join(token for token in parse_label(label).tokens if token not in own) or "-"
