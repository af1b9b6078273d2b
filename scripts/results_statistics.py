"""RESULTS.md's whole-zoo table through the report's statistics: intervals, seed-unstable cells, verdicts.

    python scripts/results_statistics.py            # Markdown to stdout (RESULTS.md, "with intervals")
    python scripts/results_statistics.py --json     # the same figures as JSON

The summary table ("Every mixer on every task") holds mean ± std over two seeds per cell; each cell's two
seeds are recovered from them exactly, up to the table's rounding (scripts/results_figure.py). They are then
grouped as the sweep report groups runs (one configuration per mixer and task) and judged by the report's
own code (mixerlab/report/verdicts.py, mixerlab.stats): a 95% t interval per cell, the seed-unstable flag
(seeds on both sides of the identity mixer's upper t bound, at least chance + 10% of (100 − chance)),
Holm-Bonferroni over every pair of mixers of a task, and the cross-task IQM with its stratified bootstrap
interval. Nothing here is a new run: it says what the recorded seeds can and cannot back.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mixerlab.report.formatting import fmt_interval  # noqa: E402
from mixerlab.report.records import ConfigGroup, RunRecord, Task  # noqa: E402
from mixerlab.report.verdicts import ReportStatistics, report_statistics  # noqa: E402
from scripts.results_figure import TASKS, read_summary  # noqa: E402


def groups_from_results(results: Path) -> list[ConfigGroup]:
    """One ConfigGroup per (mixer, task) of the summary table, its runs the two recovered seeds."""
    groups = []
    for column, (title, chance) in TASKS.items():
        task = Task(("RESULTS.md", column), f"{title} (chance {chance:g}%)", chance)
        for mixer, cells in read_summary(results).items():
            runs = []
            for seed, top1 in enumerate(cells[column]):
                run = RunRecord(sweep="RESULTS.md", job=f"mixer={mixer},seed={seed}",
                                choices={"mixer": mixer, "seed": str(seed)}, status="completed",
                                run_dir=results.parent / "<RESULTS.md>" / column / mixer / str(seed),
                                summary={"mixer": mixer, "seed": seed, "top1": top1})
                run.__dict__["task"] = task  # the table's column, not a config on disk
                runs.append(run)
            groups.append(ConfigGroup("RESULTS.md", f"mixer={mixer}", runs))
    return groups


def cell_text(cell) -> str:
    if cell.unstable:
        return f"**unstable** {cell.learned_count}/{cell.n} ({' / '.join(f'{v:.1f}' for v in cell.values)})"
    interval = cell.summary.interval
    return f"{cell.summary.mean:.1f} {fmt_interval(interval.low, interval.high, 1)}"


def markdown(result: ReportStatistics) -> str:
    mixers = sorted({c.group.mixer for t in result.tasks for c in t.cells})
    by = {(t.task.label, c.group.mixer): c for t in result.tasks for c in t.cells}
    lines = ["| mixer | " + " | ".join(t.task.label for t in result.tasks) + " |",
             "|---" * (len(result.tasks) + 1) + "|"]
    for mixer in mixers:
        lines.append(f"| `{mixer}` | " + " | ".join(cell_text(by[(t.task.label, mixer)])
                                                    for t in result.tasks) + " |")
    lines += ["", "| task | learned threshold | seed-unstable | adjacent pairs separated "
              "| all pairs separated |", "|---|---|---|---|---|"]
    for t in result.tasks:
        adjacent = [t.pair(a, b) for a, b in zip(t.cells, t.cells[1:], strict=False)]
        unstable = ", ".join(f"`{c.group.mixer}`" for c in t.cells if c.unstable) or "none"
        separated = [p for p in t.pairs if p.separated]
        lines.append(f"| {t.task.label} | {t.threshold:.1f} ({t.threshold_source}) | {unstable} | "
                     f"{sum(p is not None and p.separated for p in adjacent)} of {len(adjacent)} | "
                     f"{len(separated)} of {len(t.pairs)} |")
    if result.aggregate:
        lines += ["", "| mixer | IQM of chance-normalised top-1 (all tasks) | 95% stratified bootstrap |",
                  "|---|---|---|"]
        for row in result.aggregate:
            lines.append(f"| `{row.row.removeprefix('mixer=')}` | {row.iqm:.3f} | "
                         f"{fmt_interval(row.interval.low, row.interval.high, 3)} |")
    return "\n".join(lines)


def as_json(result: ReportStatistics) -> dict:
    from mixerlab.report.verdicts import statistics_json

    return statistics_json(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "RESULTS.md")
    parser.add_argument("--json", action="store_true", help="the statistics as JSON instead of Markdown")
    args = parser.parse_args(argv)
    result = report_statistics(groups_from_results(args.results))
    print(json.dumps(as_json(result), indent=1) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
