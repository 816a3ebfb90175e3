"""`mtl-bench compare`: collect the runs, choose grid points if asked, summarise them into rows
with their statistics, write compare.md, compare.csv and the plots (and log them to a sweep's
parent run)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from harness.core import names
from harness.analysis.collect import CompareError, collect
from harness.analysis.plots import plots
from harness.analysis.report import caption, document, tables, write_csv
from harness.analysis.rows import Row, summarise
from harness.analysis.select import select_best
from harness.core.names import COSTS


def compare(sweep: str | None = None, experiment: str | None = None, tracking_uri: str = "", out_dir: str = "",
            baseline: str = "multitask", test: str = "both", resamples: int = 1000, out=print,
            select_best_by: str = "", select_over: tuple[str, ...] = (), detect: float | None = None,
            cost: str = "trainable") -> list[Row]:
    from harness.tracking.tracker import open_client

    if cost not in COSTS:
        raise CompareError(f"--cost: expected one of {list(COSTS)}, got {cost!r}")
    if detect is not None and not detect > 0:
        raise CompareError(f"--detect: expected a difference of the overall score > 0, got {detect!r}")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = open_client(tracking_uri)
    records, parent_id = collect(client, sweep, experiment, out)
    chosen = []
    if select_best_by:
        if select_best_by != "validation":
            raise CompareError(f"--select-best-by: expected 'validation', got {select_best_by!r}")
        records, chosen = select_best(records, tuple(select_over))
    elif select_over:
        raise CompareError("--select-over names the grid settings --select-best-by chooses among; give both")
    # A sweep's rows follow the order its file or command line listed the variants in.
    order = client.get_run(parent_id).data.params.get(names.SWEEP_VARIANTS, "").split(",") if parent_id else None
    title = sweep or "+".join(x.strip() for x in experiment.split(",") if x.strip())
    folder = Path(out_dir or Path("outputs") / "compare" / title)
    folder.mkdir(parents=True, exist_ok=True)
    if baseline not in {r.variant for r in records}:
        out(f"note: baseline {baseline!r} has no finished runs here: no differences or tests")
    with tempfile.TemporaryDirectory() as tmp:
        rows = summarise(records, baseline, test, resamples, client, Path(tmp), order, detect, cost)
    table = tables(rows, baseline, test, detect, chosen)
    (folder / "compare.md").write_text(document(title, len(records), rows, baseline, test, table))
    write_csv(rows, folder / "compare.csv")
    paths = [folder / "compare.md", folder / "compare.csv", *plots(rows, folder, baseline, title, cost)]
    if parent_id:
        for path in paths:
            client.log_artifact(parent_id, str(path), "compare")
    out(table)
    out(caption(rows, baseline, test))
    out(f"written to {folder}" + (f" and logged to the sweep's parent run {parent_id} (artifacts/compare)"
                                  if parent_id else ""))
    return rows
