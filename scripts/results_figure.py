"""The README's picture: the five headline mixers on the five proxy tasks, as the sweep report draws them.

    python scripts/results_figure.py                    # -> docs/img/proxy_intervals.svg

Reads RESULTS.md's summary table ("Every mixer on every task"), whose cells are mean ± std over two seeds.
Two values are fixed exactly by their mean m and sample std s (m ± s/√2), so each cell's seeds are
recovered, up to the table's rounding, and drawn with the report's own interval plot
(mixerlab/report/plots.py) and statistics (mixerlab.stats: 95% Student t interval, which at n = 2 is
mean ± 12.7 s/√2). The picture therefore shows what two seeds can and cannot say.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mixerlab import stats  # noqa: E402
from mixerlab.report.plots import interval_plot, mixer_colors  # noqa: E402

HEADLINE = ("identity", "pooling", "attention", "feedforward", "spectral")
# column title in RESULTS.md -> (panel title, chance %)
TASKS = {"odd one out": ("odd one out", 10.0), "sum mod 10": ("sum mod 10", 10.0),
         "same / different": ("same / different", 50.0), "marker": ("marker", 10.0),
         "Pathfinder": ("Pathfinder", 50.0)}
CELL = re.compile(r"^\**(?P<mean>-?[\d.]+) ± (?P<std>[\d.]+)\**$")


def read_summary(results: Path) -> dict[str, dict[str, list[float]]]:
    """mixer -> task -> the two seeds' top-1, from the summary table's "m ± s" cells."""
    lines = results.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## Every mixer on every task"))
    header = next(line for line in lines[start:] if line.startswith("| family |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    seeds: dict[str, dict[str, list[float]]] = {}
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(columns, (c.strip() for c in line.strip("|").split("|")), strict=True))
        mixer = cells["mixer"].strip("`")
        for column in TASKS:
            match = CELL.match(cells[column])
            if match is None:
                raise SystemExit(f"{results}: cannot read {mixer}'s {column} cell {cells[column]!r}")
            mean, std = float(match["mean"]), float(match["std"])
            half = std / math.sqrt(2)  # two values with sample std s lie s/√2 either side of their mean
            seeds.setdefault(mixer, {})[column] = [mean - half, mean + half]
    return seeds


def figure(seeds: dict[str, dict[str, list[float]]], mixers: tuple[str, ...] = HEADLINE) -> str:
    tasks = []
    for column, (title, chance) in TASKS.items():
        cells = []
        for mixer in mixers:
            values = seeds[mixer][column]
            cells.append(SimpleNamespace(row=mixer, group=SimpleNamespace(mixer=mixer), values=values,
                                         summary=stats.summarize(values), n=len(values), unstable=False))
        task = SimpleNamespace(label=f"{title} (chance {chance:g}%)", chance=chance)
        tasks.append(SimpleNamespace(task=task, cells=cells, threshold=None))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "mixerlab"}):
        svg = interval_plot(tasks, mixer_colors([SimpleNamespace(mixer=m) for m in mixers]))
    return '<?xml version="1.0" encoding="utf-8" standalone="no"?>\n' + svg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "RESULTS.md")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "proxy_intervals.svg")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(figure(read_summary(args.results)))
    print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
