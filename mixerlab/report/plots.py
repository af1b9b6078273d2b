"""Every figure of the report, drawn by matplotlib and inlined as SVG (the page stays one offline file).

One colour per mixer across all plots; ``interval_plot`` is the report's main picture: each configuration's
95% interval and mean on each task, with chance drawn.
"""

from __future__ import annotations

import io
import math

from mixerlab.report.records import RunRecord
from mixerlab.report.robustness import CLEAN

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f")


def mixer_colors(runs: list[RunRecord]) -> dict[str, str]:
    """One colour per mixer, the same in every plot of a report."""
    mixers = sorted({r.mixer for r in runs})
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(mixers)}


def svg(fig) -> str:
    """The figure as an inline ``<svg>`` element (closed afterwards)."""
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inlined into HTML


def scatter_plot(runs: list[RunRecord], x_key: str, x_label: str) -> str | None:
    """Top-1 against a cost, one point per completed run, labelled by mixer (and its other choices)."""
    points = [(r.value(x_key), r.value("top1"), r) for r in runs if r.status == "completed"]
    points = [(x, y, r) for x, y, r in points if x is not None and y is not None and x > 0]
    if not points:
        return None
    import matplotlib.pyplot as plt

    colors = mixer_colors(runs)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for mixer in colors:
        mine = [(x, y) for x, y, r in points if r.mixer == mixer]
        if mine:
            ax.scatter(*zip(*mine, strict=True), s=46, color=colors[mixer], label=mixer, zorder=3)
    for x, y, r in points:
        others = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in r.choices.items() if k != "mixer")
        text = r.mixer + (f" ({others})" if others else "")
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    from matplotlib.ticker import EngFormatter

    xs = [x for x, _, _ in points]
    if max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel(x_label)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="mixer", title_fontsize=8)
    return svg(fig)


def curves_plot(runs: list[RunRecord]) -> str | None:
    """Validation top-1 and training loss per epoch, every run overlaid, coloured by mixer."""
    runs = [r for r in runs if r.curves]
    if not runs:
        return None
    import matplotlib.pyplot as plt

    colors = mixer_colors(runs)
    dashes = ["-", "--", ":", "-."]
    fig, (top1_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4.0))
    seen: dict[str, int] = {}
    for run in runs:
        nth = seen[run.mixer] = seen.get(run.mixer, -1) + 1  # runs of one mixer: one colour, other dashes
        done = run.status == "completed"
        style = dict(color=colors[run.mixer], marker="o" if done else "x", markersize=3 if done else 5,
                     linewidth=1.4, linestyle=dashes[nth % len(dashes)], alpha=1.0 if done else 0.6,
                     label=run.label + ("" if done else f" ({run.status})"))
        for ax, key in ((top1_ax, "val/top1"), (loss_ax, "train/loss")):
            rows = [(row["epoch"], row[key]) for row in run.curves if key in row and math.isfinite(row[key])]
            if rows:
                ax.plot(*zip(*rows, strict=True), **style)
    top1_ax.set(xlabel="epoch", ylabel="val top-1 (%)", title="validation top-1")
    loss_ax.set(xlabel="epoch", ylabel="train loss", title="training loss")
    for ax in (top1_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = top1_ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8,
                   bbox_to_anchor=(0.5, -0.02 - 0.05 * math.ceil(len(labels) / 4)))
    return svg(fig)


def clean_vs_shifted_plot(runs, colors: dict[str, str]) -> str | None:
    """Clean top-1 (x) against each shifted set's top-1 (y), one marker shape per set, colour per mixer."""
    points = []
    for run in runs:
        sets = run.eval_sets
        clean = sets.get(CLEAN, {}).get("top1")
        if clean is None:
            continue
        points += [(clean, e["top1"], name, run.mixer) for name, e in sets.items()
                   if name != CLEAN and isinstance(e.get("top1"), int | float)]
    if not points:
        return None
    import matplotlib.pyplot as plt

    markers = "osD^vP*X"
    names = sorted({p[2] for p in points})
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for i, name in enumerate(names):
        for mixer in sorted({p[3] for p in points}):
            mine = [(x, y) for x, y, n, m in points if n == name and m == mixer]
            if mine:
                ax.scatter(*zip(*mine, strict=True), s=44, marker=markers[i % len(markers)],
                           color=colors.get(mixer, "#444"), label=f"{mixer} · {name}", zorder=3)
    low = min(min(p[0], p[1]) for p in points)
    high = max(max(p[0], p[1]) for p in points)
    pad = max(1.0, (high - low) * 0.05)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="#999", linewidth=1, linestyle="--",
            label="shifted = clean")
    ax.set(xlabel="clean top-1 (%)", ylabel="shifted top-1 (%)", title="clean vs shifted accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=1 + len(names) // 6, loc="upper left")
    return svg(fig)


def interval_plot(tasks, colors: dict[str, str]) -> str | None:
    """The report's main picture: per task (one panel each), one row per configuration with its 95% t
    interval (bar), mean (diamond) and seeds (open circles); chance dashed, the learned threshold dotted.
    A one-seed row has no interval: a faint bar spans the axis. ``tasks``: verdicts.TaskStatistics."""
    tasks = [t for t in tasks if t.cells]
    if not tasks:
        return None
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys(c.row for t in tasks for c in t.cells))
    height = 0.9 + 0.42 * len(rows)
    fig, axes = plt.subplots(1, len(tasks), figsize=(min(4.2 * len(tasks) + 2.2, 13.5), height),
                             sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        values = [v for c in task.cells for v in c.values]
        low = min([*values, task.task.chance if task.task.chance is not None else min(values)])
        high = max(values)
        finite = [b for c in task.cells for b in (c.summary.interval.low, c.summary.interval.high)
                  if math.isfinite(b)]
        low, high = min([low, *finite]), max([high, *finite])
        pad = max(1.0, 0.06 * (high - low))
        left, right = max(0.0, low - pad), min(100.0, high + pad)
        if right - left < 2:
            left, right = left - 1, right + 1
        for cell in task.cells:
            y = rows.index(cell.row)
            color = colors.get(cell.group.mixer, "#444")
            interval = cell.summary.interval
            if interval.bounded:
                ax.plot([max(interval.low, left), min(interval.high, right)], [y, y], color=color,
                        linewidth=3.2, solid_capstyle="butt", alpha=0.85, zorder=2)
            else:
                ax.plot([left, right], [y, y], color=color, linewidth=3.2, alpha=0.15, zorder=1)
            ax.scatter(cell.values, [y] * len(cell.values), s=22, facecolors="white", edgecolors=color,
                       linewidths=1.1, zorder=3)
            ax.scatter([cell.summary.mean], [y], marker="D", s=30, color=color, zorder=4)
            note = f"n={cell.n}" + (" · seed-unstable" if cell.unstable else "")
            ax.annotate(note, (right, y), xytext=(-2, 5), textcoords="offset points", ha="right", fontsize=7,
                        color="#a33" if cell.unstable else "#555")
        if task.task.chance is not None and left <= task.task.chance <= right:
            ax.axvline(task.task.chance, color="#777", linestyle="--", linewidth=1, label="chance")
        if task.threshold is not None and left <= task.threshold <= right:
            ax.axvline(task.threshold, color="#b58900", linestyle=":", linewidth=1.2, label="learned above")
        ax.set_xlim(left, right)
        ax.set_title(task.task.label, fontsize=10)
        ax.set_xlabel("top-1 accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(rows)), rows, fontsize=9)
    axes[0][0].set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    handles = {label: h for ax in axes[0] for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    if handles:  # above the panels: inside one it would cover a row
        fig.legend(handles.values(), handles.keys(), fontsize=7, loc="lower right", ncol=len(handles),
                   bbox_to_anchor=(1.0, 1.0), frameon=False)
    return svg(fig)
