"""The sweep dashboard: ``python scripts/report.py SWEEP_DIR [SWEEP_DIR ...]`` (a multirun writes it itself).

    records.py     runs on disk -> RunRecord per job -> ConfigGroup per configuration, on its task
    verdicts.py    per task: intervals, pairwise verdicts (Holm), seed-unstable flags; the aggregate
    plots.py       every figure (the interval plot first), inline SVG
    robustness.py  eval.json tables and receptive-field galleries
    page.py        SweepReport: report.html, report.md, report.json

Nothing here imports ``page`` except this file: the modules form a line, not a circle.
"""

from mixerlab.report.page import SweepReport
from mixerlab.report.records import ConfigGroup, RunRecord, Task, collect_runs, group_by_config, read_curves

__all__ = ["ConfigGroup", "RunRecord", "SweepReport", "Task", "collect_runs", "group_by_config",
           "read_curves"]
