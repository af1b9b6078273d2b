"""The sweep dashboard: which configuration wins, at what cost, on one offline page.

    sweep dirs (sweep.json + run dirs: summary.json, metrics.csv, config.yaml)
        -> RunRecord per job (each job once: keyed by its run directory)
        -> seeds of one configuration aggregated (mean ± std)
        -> report.html (self-contained: inline CSS/JS, plots as inline SVG) and report.md (model-zoo table)

``python scripts/report.py SWEEP_DIR [SWEEP_DIR ...]``; a multirun writes it by itself when it ends.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from omegaconf import OmegaConf

from mixerlab.report_robustness import erf_markdown, robustness_markdown
from mixerlab.sweep import SEED_KEY, SweepIndex, job_label, read_summary

# (summary key, column title, decimals) of the numbers every run reports
METRICS = (
    ("top1", "top-1 %", 2),
    ("top5", "top-5 %", 2),
    ("best_top1", "best top-1 %", 2),
    ("params", "params", None),
    ("flops", "FLOPs/img", None),
    ("train_images_per_s", "train img/s", 1),
    ("step_memory_mb", "step mem MB", 1),
    ("wall_s", "wall s", 1),
)
# top-level config keys that say where a run logs and which sweep it is in, not what it computes
BOOKKEEPING_KEYS = ("logger", "sweep")
AGGREGATED = ("top1", "top5", "best_top1", "train_images_per_s", "step_memory_mb", "wall_s")


# ---------------------------------------------------------------------------------------------- records
@dataclass
class RunRecord:
    sweep: str
    job: str
    choices: dict[str, str]
    status: str
    run_dir: Path
    summary: dict = field(default_factory=dict)
    error: str | None = None
    attempts: int = 1
    previous_errors: list[str] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)

    @property
    def mixer(self) -> str:
        return str(self.summary.get("mixer") or self.choices.get("mixer") or "?")

    @property
    def config_label(self) -> str:
        """What the run varies apart from its seed; the mixer when it varies nothing else."""
        return job_label(self.choices) or self.mixer

    @property
    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.choices.items()) or self.job

    @property
    def config_path(self) -> Path | None:
        for candidate in (self.run_dir / "config.yaml", self.run_dir / ".hydra" / "config.yaml"):
            if candidate.is_file():
                return candidate
        return None

    @cached_property
    def config_key(self) -> str | None:
        """What the run computes, apart from its seed and its bookkeeping: its resolved config without every
        key named ``seed`` that holds the run's seed, without ``logger`` and ``sweep`` (where it logs, which
        sweep it belongs to: a wandb group names the sweep) and with its own directory blanked from paths,
        so that the seeds of one configuration pool across sweeps (one sweep per seed). None without a
        readable config."""
        path = self.config_path
        try:
            config = OmegaConf.to_container(OmegaConf.load(path)) if path else None
        except Exception:  # noqa: BLE001 - an unreadable config only means the run is grouped by its sweep
            return None
        if not isinstance(config, dict):
            return None
        seed, run_dir = config.get(SEED_KEY), str(self.run_dir)

        def strip(node):
            if isinstance(node, dict):
                return {k: strip(v) for k, v in node.items() if not (k == SEED_KEY and v == seed)}
            if isinstance(node, list):
                return [strip(v) for v in node]
            return node.replace(run_dir, "<run>") if isinstance(node, str) else node

        kept = {k: v for k, v in config.items() if k not in BOOKKEEPING_KEYS}
        return json.dumps(strip(kept), sort_keys=True, default=str)

    def value(self, key: str) -> float | None:
        value = self.summary.get(key)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


@dataclass
class ConfigGroup:
    """Runs of one configuration that differ only in their seed."""

    sweep: str
    label: str
    runs: list[RunRecord]

    def stat(self, key: str) -> tuple[float | None, float | None]:
        values = [v for r in self.runs if (v := r.value(key)) is not None]
        if not values:
            return None, None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)

    @property
    def mixer(self) -> str:
        return self.runs[0].mixer


def read_curves(metrics_csv: Path) -> list[dict]:
    """Per-epoch rows of metrics.csv; an epoch logged twice (a resumed run) keeps its last row."""
    try:
        with metrics_csv.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    by_epoch: dict[int, dict] = {}
    for row in rows:
        try:
            epoch = int(float(row.get("epoch") or ""))
        except ValueError:
            continue
        values = {}
        for key, text in row.items():
            try:
                values[key] = float(text)
            except (TypeError, ValueError):
                pass
        by_epoch[epoch] = {**by_epoch.get(epoch, {}), **values}
    return [by_epoch[e] for e in sorted(by_epoch)]


def collect_runs(sweep_dirs: list[Path]) -> list[RunRecord]:
    """One record per job across the sweep directories: the index names the jobs; each job's own files
    give its status and numbers (the same run directory listed twice appears once)."""
    records: dict[Path, RunRecord] = {}
    for sweep_dir in sweep_dirs:
        sweep_dir = Path(sweep_dir).resolve()
        if (sweep_dir / "summary.json").is_file():  # a single run directory
            summary = read_summary(sweep_dir) or {}
            jobs = [{"job": sweep_dir.name, "run_dir": ".", "choices": {}, "status": summary.get("status")}]
            name = sweep_dir.parent.name
        else:
            index = SweepIndex(sweep_dir).scan()
            jobs, name = index["jobs"], index.get("name") or sweep_dir.name
        for job in jobs:
            run_dir = (sweep_dir / job["run_dir"]).resolve()
            summary = read_summary(run_dir) or {}
            records[run_dir] = RunRecord(
                sweep=name, job=job["job"], choices=dict(job.get("choices") or {}),
                status=str(job.get("status") or summary.get("status") or "pending"), run_dir=run_dir,
                summary=summary, error=job.get("error") or summary.get("error"),
                attempts=int(job.get("attempts") or 1),
                previous_errors=list(job.get("previous_errors") or []),
                curves=read_curves(run_dir / "metrics.csv"))
    return list(records.values())


def group_by_config(runs: list[RunRecord]) -> list[ConfigGroup]:
    """Completed runs of one configuration (``RunRecord.config_key``; without a config, of one sweep and
    label) that differ only in their seed, best mean top-1 first. Runs of several sweeps pool when their
    seeds differ; where a seed ran twice, each job keeps its own group (by sweep and label), so a
    rerun never counts as another seed."""
    configs: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        if run.status == "completed":
            key = ("config", run.config_key) if run.config_key else ("sweep", run.sweep, run.config_label)
            configs.setdefault(key, []).append(run)
    out = []
    for members in configs.values():
        seeds = [run.summary.get(SEED_KEY) for run in members]
        if len(set(seeds)) < len(seeds):
            by_job: dict[tuple[str, str], list[RunRecord]] = {}
            for run in members:
                by_job.setdefault((run.sweep, run.config_label), []).append(run)
            out += [ConfigGroup(sweep, label, part) for (sweep, label), part in by_job.items()]
        else:
            sweeps = " + ".join(dict.fromkeys(run.sweep for run in members))
            out.append(ConfigGroup(sweeps, members[0].config_label, members))
    return sorted(out, key=lambda g: -(g.stat("top1")[0] or -1.0))


# ---------------------------------------------------------------------------------------------- formatting
def si(value: float | None, digits: int = 3) -> str:
    """7014656 -> 7.01M; 202954 -> 203K."""
    if value is None:
        return "—"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g}{unit}"
    return f"{value:.{digits}g}"


def fmt(value: float | None, decimals: int | None) -> str:
    if value is None:
        return "—"
    return si(value) if decimals is None else f"{value:,.{decimals}f}"


def fmt_stat(mean: float | None, std: float | None, decimals: int | None, n: int, unit: str = "") -> str:
    """``97.10 ± 0.42% (n=3)``; a single run's value alone."""
    if mean is None:
        return "—"
    if std is None:
        return fmt(mean, decimals) + unit
    return f"{fmt(mean, decimals)} ± {fmt(std, decimals)}{unit} (n={n})"


def rel_link(target: Path | None, out_dir: Path) -> str | None:
    return None if target is None else Path(os.path.relpath(target, out_dir)).as_posix()


# ---------------------------------------------------------------------------------------------- plots
def _mixer_colors(runs: list[RunRecord]) -> dict[str, str]:
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
               "#bcbd22", "#7f7f7f"]
    mixers = sorted({r.mixer for r in runs})
    return {m: palette[i % len(palette)] for i, m in enumerate(mixers)}


def _svg(fig) -> str:
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

    colors = _mixer_colors(runs)
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
    return _svg(fig)


def curves_plot(runs: list[RunRecord]) -> str | None:
    """Validation top-1 and training loss per epoch, every run overlaid, coloured by mixer."""
    runs = [r for r in runs if r.curves]
    if not runs:
        return None
    import matplotlib.pyplot as plt

    colors = _mixer_colors(runs)
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
    return _svg(fig)


# ---------------------------------------------------------------------------------------------- robustness
def robustness_plots(runs: list[RunRecord]) -> dict[str, tuple[str, str | None]]:
    from mixerlab.report_robustness import clean_vs_shifted_plot

    return {"clean_vs_shifted": ("Clean against shifted top-1 (eval.json; one point per run and set).",
                                 clean_vs_shifted_plot(runs, _mixer_colors(runs)))}


def robustness_sections(groups: list[ConfigGroup]) -> list[str]:
    """The robustness table and the receptive-field gallery, when runs were evaluated (``eval.py``)."""
    from mixerlab.report_robustness import erf_gallery_html, robustness_html

    parts = []
    table = robustness_html(groups)
    if table:
        parts += ["<h2>Robustness (top-1 %, mean ± std over seeds)</h2>", table]
    gallery = erf_gallery_html(groups)
    if gallery:
        parts += ["<h2>Effective receptive fields</h2>", '<p class="meta">|d centre token / d input|, '
                  "averaged over images (mixerlab/erf.py).</p>", gallery]
    return parts


# ---------------------------------------------------------------------------------------------- the report
PAGE_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1280px;
 padding:0 16px;color:#1d1d1f}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px}
.meta{color:#666;font-size:12px} .answer{background:#f3f7ff;border-left:4px solid #1f77b4;padding:10px 14px}
table{border-collapse:collapse;width:100%;font-size:13px;margin:8px 0}
th,td{border-bottom:1px solid #e3e3e3;padding:5px 8px;text-align:left;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums}
th button{all:unset;cursor:pointer;font-weight:600} th button:hover{text-decoration:underline}
th[aria-sort=ascending] button::after{content:" ▲"} th[aria-sort=descending] button::after{content:" ▼"}
tr.failed td{background:#fff3f3} tr.pending td,tr.incomplete td,tr.interrupted td{color:#777}
.status-completed{color:#1a7f37} .status-failed{color:#c62828;font-weight:600}
td.note{white-space:normal;max-width:360px;color:#a33;font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:12px} figure{margin:8px 0} figure svg{max-width:100%;height:auto}
figcaption{color:#555;font-size:12px}
"""

# Click a header: sort by that column (numbers by value, empty cells last), click again to reverse.
SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.querySelector("button").addEventListener("click", function () {
      var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col];
        var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
        var num = Number(raw);
        return {empty: raw === "" || raw === "—", num: raw !== "" && isFinite(num) ? num : null, raw: raw};
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x.empty || y.empty) { return x.empty - y.empty; }
        if (x.num !== null && y.num !== null) { return dir * (x.num - y.num); }
        return dir * x.raw.localeCompare(y.raw, undefined, {numeric: true});
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


class SweepReport:
    """report.html + report.md for one or more sweep directories."""

    def __init__(self, sweep_dirs: list[str | Path]) -> None:
        self.sweep_dirs = [Path(d).resolve() for d in sweep_dirs]
        missing = [str(d) for d in self.sweep_dirs if not d.is_dir()]
        if missing:
            raise FileNotFoundError(f"no such sweep directory: {', '.join(missing)}")
        self.runs = collect_runs(self.sweep_dirs)
        self.groups = group_by_config(self.runs)
        self.sweeps = list(dict.fromkeys(r.sweep for r in self.runs)) or [d.name for d in self.sweep_dirs]
        self.varied = list(dict.fromkeys(k for r in self.runs for k in r.choices if k != "mixer"))

    # ------------------------------------------------------------------ the answer
    def answer_lines(self) -> list[str]:
        """Which configuration wins, and the cheapest and fastest ones within a point of it."""
        if not self.groups:
            return ["No completed run yet."]
        best = self.groups[0]
        best_top1 = best.stat("top1")[0] or 0.0

        def describe(group: ConfigGroup) -> str:
            mean, std = group.stat("top1")
            first = group.runs[0]
            return (f"{group.label}: top-1 {fmt_stat(mean, std, 2, len(group.runs), '%')}, "
                    f"{si(first.value('params'))} params, {si(first.value('flops'))} FLOPs/img, "
                    f"{fmt(group.stat('train_images_per_s')[0], 1)} train img/s")

        lines = [f"Best top-1 — {describe(best)}"]
        close = [g for g in self.groups if (g.stat("top1")[0] or 0.0) >= best_top1 - 1.0]
        cheapest = min(close, key=lambda g: g.runs[0].value("flops") or math.inf)
        fastest = max(close, key=lambda g: g.stat("train_images_per_s")[0] or 0.0)
        if cheapest is not best:
            lines.append(f"Fewest FLOPs within 1 point of the best — {describe(cheapest)}")
        if fastest is not best and fastest is not cheapest:
            lines.append(f"Fastest training within 1 point of the best — {describe(fastest)}")
        return lines

    def memory_note(self) -> str | None:
        """How the runs' step memory was measured (summary.json ``step_memory_method`` and batch)."""
        methods = sorted({f"{r.summary['step_memory_method']} at batch {r.summary.get('step_memory_batch')}"
                          for r in self.runs if r.summary.get("step_memory_method")})
        if not methods:
            return None
        return "step mem MB: peak tensor memory of one training step per run — " + "; ".join(methods)

    def status_line(self) -> str:
        counts: dict[str, int] = {}
        for run in self.runs:
            counts[run.status] = counts.get(run.status, 0) + 1
        runs = f"{len(self.runs)} run" + ("" if len(self.runs) == 1 else "s")
        return f"{runs}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))

    # ------------------------------------------------------------------ html
    def _runs_table(self, out_dir: Path) -> str:
        multi = len(self.sweeps) > 1
        heads = [*(["sweep"] if multi else []), "mixer", *self.varied, "status",
                 *(title for _, title, _ in METRICS), "config", "note"]
        out = ['<table id="runs" class="sortable"><thead><tr>']
        out += [f'<th scope="col"><button type="button">{html.escape(h)}</button></th>' for h in heads]
        out.append("</tr></thead><tbody>")
        for run in self.runs:
            cells = ([html.escape(run.sweep)] if multi else []) + [html.escape(run.mixer)]
            cells = [f"<td>{c}</td>" for c in cells]
            cells += [f"<td>{html.escape(run.choices.get(k, '—'))}</td>" for k in self.varied]
            cells.append(f'<td class="status-{html.escape(run.status)}">{html.escape(run.status)}</td>')
            for key, _, decimals in METRICS:
                value = run.value(key)
                sort = "" if value is None else repr(value)
                cells.append(f'<td class="num" data-sort="{sort}">{fmt(value, decimals)}</td>')
            link = rel_link(run.config_path, out_dir)
            cells.append(f'<td><a href="{html.escape(link)}">config</a></td>' if link else "<td>—</td>")
            note = run.error or ""
            if run.previous_errors:
                earlier = "; ".join(e or "?" for e in run.previous_errors)
                note = f"attempt {run.attempts} (before: {earlier})" + (f"; {note}" if note else "")
            cells.append(f'<td class="note" title="{html.escape(note)}">{html.escape(note[:200])}</td>')
            out.append(f'<tr class="{html.escape(run.status)}" data-run="{html.escape(run.job)}">'
                       + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
        return "\n".join(out)

    def _groups_table(self, out_dir: Path) -> str:
        heads = ["configuration", "runs", "params", "FLOPs/img",
                 *(title for key, title, _ in METRICS if key in AGGREGATED), "config"]
        out = ['<table id="configs" class="sortable"><thead><tr>']
        out += [f'<th scope="col"><button type="button">{html.escape(h)}</button></th>' for h in heads]
        out.append("</tr></thead><tbody>")
        for group in self.groups:
            first = group.runs[0]
            cells = [f"<td>{html.escape(group.label)}</td>", f'<td class="num">{len(group.runs)}</td>']
            for key in ("params", "flops"):
                value = first.value(key)
                sort = "" if value is None else repr(value)
                cells.append(f'<td class="num" data-sort="{sort}">{si(value)}</td>')
            for key, _, decimals in METRICS:
                if key in AGGREGATED:
                    mean, std = group.stat(key)
                    cells.append(f'<td class="num" data-sort="{"" if mean is None else repr(mean)}">'
                                 f"{fmt_stat(mean, std, decimals, len(group.runs))}</td>")
            link = rel_link(first.config_path, out_dir)
            cells.append(f'<td><a href="{html.escape(link)}">config</a></td>' if link else "<td>—</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
        return "\n".join(out)

    def plots(self) -> dict[str, tuple[str, str]]:
        """name -> (caption, svg), for the plots that have data."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "mixerlab"}):
            made = {
                "top1_vs_flops": ("Top-1 against forward FLOPs per image (one point per run).",
                                  scatter_plot(self.runs, "flops", "forward FLOPs per image")),
                "top1_vs_throughput": ("Top-1 against training throughput (one point per run).",
                                       scatter_plot(self.runs, "train_images_per_s", "train images / s")),
                "training_curves": ("Validation top-1 and training loss per epoch (crosses: not completed).",
                                    curves_plot(self.runs)),
                **robustness_plots(self.runs),
            }
        return {name: (caption, svg) for name, (caption, svg) in made.items() if svg}

    def html(self, out_dir: Path, plots: dict[str, tuple[str, str]]) -> str:
        title = "Sweep report: " + ", ".join(self.sweeps)
        aggregated = any(len(g.runs) > 1 for g in self.groups)
        parts = [
            "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f'<p class="meta">{html.escape(self.status_line())} · generated '
            f'{time.strftime("%Y-%m-%d %H:%M")} · ' + " · ".join(html.escape(str(d)) for d in self.sweep_dirs)
            + "</p>",
            '<div class="answer">' + "<br>".join(html.escape(line) for line in self.answer_lines())
            + "</div>",
            "<h2>Runs</h2><p class=\"meta\">Click a column header to sort.</p>", self._runs_table(out_dir),
        ]
        if self.memory_note():
            parts.append(f'<p class="meta" id="memory-method">{html.escape(self.memory_note())}</p>')
        if aggregated:
            parts += ["<h2>Configurations (mean ± std over seeds)</h2>", self._groups_table(out_dir)]
        parts += robustness_sections(self.groups)
        parts.append('<h2>Plots</h2><div class="plots">')
        for name, (caption, svg) in plots.items():
            parts.append(f'<figure id="{name}">{svg}<figcaption>{html.escape(caption)}</figcaption></figure>')
        parts.append("</div>")
        if not plots:
            parts.append("<p>No completed run to plot yet.</p>")
        parts.append(f"<script>{SORT_JS}</script></body></html>")
        return "\n".join(parts)

    # ------------------------------------------------------------------ markdown
    def markdown(self, out_dir: Path, plot_files: dict[str, Path]) -> str:
        lines = [f"# Sweep report: {', '.join(self.sweeps)}", "", self.status_line(), ""]
        lines += [f"- {line}" for line in self.answer_lines()] + [""]
        lines += ["## Results", "", "| model | params | FLOPs | top-1 | step mem MB | wall s | config |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for group in self.groups:
            first = group.runs[0]
            mean, std = group.stat("top1")
            wall, wall_std = group.stat("wall_s")
            memory, memory_std = group.stat("step_memory_mb")
            link = rel_link(first.config_path, out_dir)
            label = group.label if len(self.sweeps) == 1 else f"{group.sweep}: {group.label}"
            lines.append(f"| {label} | {si(first.value('params'))} | {si(first.value('flops'))} | "
                         f"{fmt_stat(mean, std, 2, len(group.runs))} | "
                         f"{fmt_stat(memory, memory_std, 1, len(group.runs))} | "
                         f"{fmt_stat(wall, wall_std, 1, len(group.runs))} | "
                         f"{f'[config]({link})' if link else '—'} |")
        if self.memory_note():
            lines += ["", self.memory_note()]
        lines += ["", "## All runs", ""]
        heads = ["job", "status", *[t for _, t, _ in METRICS], "config"]
        lines += ["| " + " | ".join(heads) + " |", "|---|---|" + "---:|" * len(METRICS) + "---|"]
        for run in self.runs:
            link = rel_link(run.config_path, out_dir)
            status = run.status + (f" ({run.error})" if run.error and run.status == "failed" else "")
            values = [fmt(run.value(k), d) for k, _, d in METRICS]
            lines.append(f"| {run.label} | {status.replace('|', '/')} | " + " | ".join(values)
                         + f" | {f'[config]({link})' if link else '—'} |")
        lines += [""] + robustness_markdown(self.groups) + erf_markdown(self.groups, out_dir)
        if plot_files:
            lines += ["", "## Plots", ""]
            lines += [f"![{name}]({rel_link(path, out_dir)})" for name, path in plot_files.items()]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ files
    def write(self, out_dir: str | Path | None = None) -> tuple[Path, Path]:
        """Write report.html, report.md and report_files/*.svg (for the Markdown); returns both paths."""
        from mixerlab.run import atomic_write_text

        if out_dir is None:
            out_dir = self.sweep_dirs[0] if len(self.sweep_dirs) == 1 else Path(
                os.path.commonpath([str(d) for d in self.sweep_dirs]))
        out_dir = Path(out_dir).resolve()
        plots = self.plots()
        plot_files = {}
        for name, (_, svg) in plots.items():
            plot_files[name] = out_dir / "report_files" / f"{name}.svg"
            atomic_write_text(plot_files[name], svg)
        html_path, md_path = out_dir / "report.html", out_dir / "report.md"
        atomic_write_text(html_path, self.html(out_dir, plots))
        atomic_write_text(md_path, self.markdown(out_dir, plot_files))
        return html_path, md_path
