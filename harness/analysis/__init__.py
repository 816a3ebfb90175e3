"""`mtl-bench compare`: the study's table, its statistics and its plots, from MLflow runs.

Read in this order:
- `collect.py`: the finished runs of a sweep or experiment(s) as `RunRecord`s, and their dev predictions.
- `select.py`: `--select-best-by validation`: each variant at its best grid point (`select_best`).
- `registry.py`: `@statistic`: a statistic is one registered function whose column the table,
  the CSV and the plots pick up.
- `statistics.py`: the built-in statistics (paired t-test and Holm, bootstrap, verdict, detectable
  difference and seeds needed via harness/analysis/power.py, chance levels, frontier), in column order.
- `rows.py`: `summarise`: one typed `Row` per label, paired with the baseline, statistics computed.
- `report.py`: compare.md (Markdown table and caption) and compare.csv.
- `plots.py`: overall.png, score_vs_params.png, per_task.png.
- `run.py`: `compare`, which ties them together (`mtl-bench compare`).
"""
from harness.analysis.collect import CompareError, RunRecord, collect
from harness.analysis.run import compare
from harness.analysis.registry import Statistic, Study, statistic
from harness.analysis.rows import Cell, Row, summarise
from harness.analysis.select import Choice, select_best

__all__ = ["Cell", "Choice", "CompareError", "Row", "RunRecord", "Statistic", "Study", "collect", "compare",
           "select_best", "statistic", "summarise"]
