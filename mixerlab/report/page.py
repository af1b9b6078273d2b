"""The sweep dashboard: which configuration wins, at what cost, and which differences the seeds back.

    RunRecords and ConfigGroups (records.py)
        -> per task: intervals, pairwise verdicts, seed-unstable flags; the cross-task aggregate (verdicts.py)
        -> report.html (self-contained: inline CSS/JS, plots as inline SVG), report.md (model-zoo table) and
           report.json (the statistics, machine-readable)
"""

from __future__ import annotations

import html
import json
import math
import os
import shlex
import time
from functools import cached_property
from pathlib import Path

from mixerlab import stats
from mixerlab.adaptive_seeds import RECORD_NAME, pair_state
from mixerlab.report.formatting import fmt, fmt_interval, fmt_stat, rel_link, si
from mixerlab.report.plots import (
    clean_vs_shifted_plot,
    curves_plot,
    interval_plot,
    mixer_colors,
    scatter_plot,
)
from mixerlab.report.records import ConfigGroup, added_keys, collect_runs, group_by_config
from mixerlab.report.robustness import erf_gallery_html, erf_markdown, robustness_html, robustness_markdown
from mixerlab.report.verdicts import (
    METHODS,
    SEEDS_SHOWN,
    ConfigCell,
    ReportStatistics,
    TaskStatistics,
    report_statistics,
    statistics_json,
)
from mixerlab.sweep import SEED_KEY

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
INTERVALS_CAPTION = ("Top-1 per configuration and task: 95% t interval (bar), mean (diamond), seeds "
                     "(circles); chance dashed, the learned threshold dotted. A faint bar: one seed, "
                     "no interval.")
AGGREGATED = ("top1", "top5", "best_top1", "train_images_per_s", "step_memory_mb", "wall_s")


def robustness_sections(groups: list[ConfigGroup]) -> list[str]:
    """The robustness table and the receptive-field gallery, when runs were evaluated (``eval.py``)."""
    parts = []
    table = robustness_html(groups)
    if table:
        parts += ["<h2>Robustness (top-1 %, mean ± std over seeds)</h2>", table]
    gallery = erf_gallery_html(groups)
    if gallery:
        parts += ["<h2>Effective receptive fields</h2>", '<p class="meta">|d centre token / d input|, '
                  "averaged over images (mixerlab/erf.py).</p>", gallery]
    return parts


def _numeric_columns(rows: list[list[str]]) -> list[bool]:
    """Columns whose every cell is a figure (or an interval): right-aligned; the first column never is."""
    def figure(cell: str) -> bool:
        return cell[:1].isdigit() or cell[:1] in "+−-[" or cell in ("—", "")

    return [i > 0 and all(figure(row[i]) for row in rows) for i in range(len(rows[0]) if rows else 0)]


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
table.stats{width:auto} td.text{white-space:normal;max-width:380px;font-size:12px}
#unstable li{color:#a33}
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



def _swept(runs: list) -> list[str]:
    """``key=a,b,...`` for every override of these runs but the seed, values in first-seen order."""
    values: dict[str, list[str]] = {}
    for run in runs:
        for override in run.overrides or [f"{k}={v}" for k, v in run.choices.items()]:
            key, _, value = override.partition("=")
            if key.lstrip("+~") != SEED_KEY and value not in values.setdefault(key, []):
                values[key].append(value)
    return [f"{key}={','.join(vals)}" for key, vals in values.items() if vals != [""]]


def _sweep_command(swept: list[str], seeds, *extra: str) -> str:
    """``python train.py -m <swept> seed=<seeds> <extra>``, quoted for a shell."""
    return shlex.join(["python", "train.py", "-m", *swept, f"seed={','.join(map(str, seeds))}", *extra])


def sweeper_records(sweep_dirs: list[Path]) -> list[tuple[Path, dict]]:
    """The ``until_separated.json`` of each sweep directory that has one (an adaptive sweep's looks and why it
    stopped). A damaged one is left out of the report with one warning line naming it (the sweeper rewrites
    it whole at its next look, or the same sweep command rewrites it)."""
    from mixerlab.storage import read_derived_json

    found = []
    for sweep_dir in sweep_dirs:
        path = sweep_dir / RECORD_NAME
        record = read_derived_json(path, "adaptive sweep record", "the report leaves its looks out; run the "
                                   "same sweep command again to rewrite it")
        if record is not None:
            found.append((sweep_dir, record))
    return found


def adaptive_rule(records: list[tuple[Path, dict]]) -> tuple[float, float | None]:
    """(alpha, tie margin) for a report that holds adaptive sweeps: the sweepers' per-look alpha and margin.

    An adaptive sweep's seeds were added by looking at them, so testing its final seeds once at alpha would
    ignore every earlier look (the optional-stopping trap): the report judges them as one more look of the
    sweep, at the per-look alpha the sweeper spent (alpha / its planned looks), and with its tie margin.
    Several sweeps: the smallest of each. No adaptive sweep: ``stats.ALPHA`` and no margin."""
    rules = [record.get("rule") if isinstance(record.get("rule"), dict) else {} for _, record in records]
    alphas = [a for rule in rules if isinstance(a := rule.get("alpha_per_look"), float) and 0 < a < 1]
    margins = [m for rule in rules if stats.is_margin(m := rule.get("tie_within"))]
    return min([stats.ALPHA, *alphas]), min(margins, default=None)


def looks_rows(record: dict) -> list[list[str]]:
    """One row per look of an adaptive sweep: its alpha, each configuration's seed count, each adjacent pair
    of the ranking with its Welch p and whether it is separated, tied or open, and the seeds it asked for."""
    rows = []
    for look in record.get("looks") or []:
        configs = look.get("configs") or {}
        counts = sorted({entry.get("n", 0) for entry in configs.values()})
        pairs = "; ".join(f"{p.get('better')} vs {p.get('worse')}: p {p.get('p_value', float('nan')):.2g} "
                          f"{pair_state(p)}" for p in look.get("pairs") or [])
        following = ", ".join(f"{label} +{len(seeds)}"
                              for label, seeds in (look.get("next_seeds") or {}).items())
        alpha = f"{look.get('alpha', 0):.4g} ({look.get('alpha_spent', 0):.4g})"
        seeds = "-".join(map(str, (counts[0], counts[-1]) if len(counts) > 1 else counts)) or "0"
        rows.append([str(look.get("number")), alpha, seeds, pairs or "—",
                     "— (stopped)" if look.get("stop") else following or "—"])
    return rows


class SweepReport:
    """report.html, report.md and report.json for one or more sweep directories."""

    def __init__(self, sweep_dirs: list[str | Path], tie_within: float | None = None) -> None:
        if tie_within is not None and not stats.is_margin(tie_within):
            raise ValueError(f"tie_within={tie_within!r}: a positive margin in top-1 points, or None (off)")
        self.tie_within = tie_within  # pairs shown to differ by less than it are "tied" (TOST)
        self.sweep_dirs = [Path(d).resolve() for d in sweep_dirs]
        missing = [str(d) for d in self.sweep_dirs if not d.is_dir()]
        if missing:
            raise FileNotFoundError(f"no such sweep directory: {', '.join(missing)}")
        self.runs = collect_runs(self.sweep_dirs)
        self.added = added_keys(self.runs)  # config keys a newer mixerlab added: not a difference
        self.groups = group_by_config(self.runs, self.added)
        self.sweeps = list(dict.fromkeys(r.sweep for r in self.runs)) or [d.name for d in self.sweep_dirs]
        self.varied = list(dict.fromkeys(k for r in self.runs for k in r.choices if k != "mixer"))
        self.json_path: Path | None = None  # report.json, once written
        self.adaptive = sweeper_records(self.sweep_dirs)  # until_separated.json of adaptive sweeps
        self.alpha, rule_margin = adaptive_rule(self.adaptive)
        if self.tie_within is None:
            self.tie_within = rule_margin

    @cached_property
    def statistics(self) -> ReportStatistics:
        return report_statistics(self.groups, alpha=self.alpha, tie_within=self.tie_within)

    # ------------------------------------------------------------------ the answer
    def answer_lines(self) -> list[str]:
        """Per task: "X ahead of Y" only when Holm separates the top two configurations; otherwise no
        verdict, and the command that adds seeds. Then the cheapest and the fastest configurations that the
        top one is not separated from."""
        if not self.groups:
            return ["No completed run yet."]
        multi = len(self.statistics.tasks) > 1
        lines = []
        for task in self.statistics.tasks:
            prefix = f"{task.task.label}: " if multi else ""
            lines += [prefix + line for line in self._task_answer(task)]
        return lines

    @staticmethod
    def _describe(cell: ConfigCell) -> str:
        first = cell.group.runs[0]
        return (f"{cell.row}: top-1 {cell.describe()}, {si(first.value('params'))} params, "
                f"{si(first.value('flops'))} FLOPs/img, "
                f"{fmt(cell.group.stat('train_images_per_s')[0], 1)} train img/s")

    def _task_answer(self, task: TaskStatistics) -> list[str]:
        if not task.cells:
            return []
        top = task.cells[0]
        if len(task.cells) == 1:
            return [f"One configuration, nothing to compare — {self._describe(top)}"]
        second = task.cells[1]
        pair = task.pair(top, second)
        if pair is not None and pair.separated:
            c = pair.comparison
            lines = [f"{top.row} ahead of {second.row} (Holm-Bonferroni over {len(task.pairs)} pair"
                     f"{'' if len(task.pairs) == 1 else 's'}, alpha {self.statistics.alpha:g}): difference "
                     f"{c.diff:+.2f} {fmt_interval(c.interval.low, c.interval.high)} points, P(improvement) "
                     f"{c.prob_improvement:.2f} — {self._describe(top)}"]
        elif pair is not None and pair.tied:
            c = pair.comparison
            lines = [f"No winner: the top two ({top.row} {top.summary.mean:.2f}, {second.row} "
                     f"{second.summary.mean:.2f}) are tied within ±{pair.tie_within:g} points (two one-sided "
                     f"Welch tests, p {pair.tie_p_value:.3g}; Holm, alpha {self.statistics.alpha:g}): "
                     f"difference {c.diff:+.2f} {fmt_interval(c.interval.low, c.interval.high)} at "
                     f"{pair.seeds} seeds — {self._describe(top)}"]
        else:
            why = ("differ in more than one config key (not compared)" if pair is None
                   else f"not separated at {pair.seeds} seed{'' if pair.seeds == 'n=1' else 's'}")
            estimate = (f" (seeds to separate: {pair.seeds_to_separate})"
                        if pair is not None and pair.estimated else "")
            verdict = (f"No verdict: top two ({top.row} {top.summary.mean:.2f}, {second.row} "
                       f"{second.summary.mean:.2f}) {why}{estimate}")
            seeds_needed = pair.seeds_needed if pair else None
            stopped = [(sweep_dir, record) for sweep_dir, record in self.adaptive
                       if any(run.sweep == sweep_dir.name for cell in task.cells for run in cell.group.runs)]
            if stopped:
                sweep_dir, record = stopped[0]
                beyond = pair is not None and pair.beyond_shown
                lines = [verdict + "."]
                called = self._sweeper_call(record, top, second)
                if called:
                    lines.append(f"The sweeper {called} this pair at its last look, by Holm over the "
                                 "adjacent pairs of its ranking; this report takes all "
                                 f"{len(task.pairs)} pairs of the task as one family, which is stricter.")
                lines += [f"The adaptive sweep stopped ({record.get('stopped')}): {record.get('reason')}",
                         "Its seeds were added by looking at them, so a seed added to it now would be one "
                         "more look that its alpha did not plan for. To settle the pair, run fresh seeds as "
                         "a sweep of their own and report that sweep alone: "
                         + self.fresh_command([top, second], SEEDS_SHOWN if beyond else seeds_needed,
                                              f"{sweep_dir.name}-fresh")
                         + (f" (the estimate is over {SEEDS_SHOWN} seeds each; {SEEDS_SHOWN} shown)" if beyond
                            else "")]
            else:
                lines = [verdict + "; run more seeds: " + self.next_command([top, second], seeds_needed)]
                lines.append("Or let the sweeper add seeds only where the ranking is still open (a new "
                             "sweep, seeds from 0, up to 10 each): " + self.adaptive_command(task.cells))
        others = [c for c in task.cells[1:] if (p := task.pair(top, c)) is not None and not p.separated]
        if others:
            close = [top, *others]
            cheapest = min(close, key=lambda c: c.group.runs[0].value("flops") or math.inf)
            fastest = max(close, key=lambda c: c.group.stat("train_images_per_s")[0] or 0.0)
            if cheapest is not top:
                lines.append(f"Fewest FLOPs among those not separated from {top.row} — "
                             f"{self._describe(cheapest)}")
            if fastest is not top and fastest is not cheapest:
                lines.append(f"Fastest training among those not separated from {top.row} — "
                             f"{self._describe(fastest)}")
        return lines

    @staticmethod
    def _sweeper_call(record: dict, a: ConfigCell, b: ConfigCell) -> str | None:
        """How the adaptive sweep's last look settled the pair of ``a`` and ``b`` (an adjacent pair of its
        ranking): "separated" or "tied"; None where it left the pair open or did not pair them."""
        looks = record.get("looks") or [{}]
        pair = next((p for p in looks[-1].get("pairs") or []
                     if {p.get("better"), p.get("worse")} == {a.row, b.row}), None)
        if pair is None:
            return None
        return "separated" if pair.get("separated") else "tied" if pair.get("tied") else None

    @staticmethod
    def next_command(cells: list[ConfigCell], seeds_needed: int | None) -> str:
        """The sweep of these configurations again on new seeds (their runs' overrides, seed replaced): as
        many as the estimate says separate them, up to 10 in all; 5 in all when there is no estimate. The
        report pools the new sweep's seeds with these when given both sweep directories."""
        runs = [run for cell in cells for run in cell.group.runs]
        have = min(cell.n for cell in cells)
        total = min(SEEDS_SHOWN, max(have + 1, seeds_needed if seeds_needed else 5))
        used = {run.summary.get(SEED_KEY) for run in runs}
        new = [s for s in range(len(used) + total) if s not in used][:max(1, total - have)]
        return _sweep_command(_swept(runs), new)

    @staticmethod
    def fresh_command(cells: list[ConfigCell], seeds_needed: int | None, name: str) -> str:
        """The configurations again as a fixed sweep named ``name``, on seeds none of their runs used: as many
        as the estimate says separate them, from 5 up to 10."""
        runs = [run for cell in cells for run in cell.group.runs]
        start = 1 + max((s for run in runs if isinstance(s := run.summary.get(SEED_KEY), int)), default=-1)
        count = min(SEEDS_SHOWN, max(5, seeds_needed or 5))
        swept = [o for o in _swept(runs) if o.partition("=")[0] != "sweep.name"]
        return _sweep_command(swept, range(start, start + count), f"sweep.name={name}")

    @staticmethod
    def adaptive_command(cells: list[ConfigCell]) -> str:
        """The task's configurations under ``hydra/sweeper=until_separated`` on the parallel launcher: seeds
        from 0 up, more only for configurations in an open adjacent pair, up to 10 each (docs/sweeps.md)."""
        runs = [run for cell in cells for run in cell.group.runs]
        return shlex.join(["python", "train.py", "-m", *_swept(runs), "hydra/sweeper=until_separated",
                           "hydra/launcher=local_parallel"])

    # ------------------------------------------------------------------ the statistics section
    def statistics_tables(self) -> list[tuple[str, str, list[str], list[list[str]]]]:
        """(id, title, heads, rows) of the statistics section, the same figures in HTML and Markdown."""
        tables = []
        for number, task in enumerate(self.statistics.tasks):
            chance = "" if task.task.chance is None else f", chance {task.task.chance:.1f}%"
            rows = []
            for cell in task.cells:
                interval = cell.summary.interval
                stable = not cell.unstable
                rows.append([cell.row, str(cell.n), f"{cell.summary.mean:.2f}" if stable else "—",
                             (fmt_interval(interval.low, interval.high) if interval.bounded else "n=1: none")
                             if stable else "—",
                             ", ".join(f"{v:.2f}" for v in cell.values),
                             "" if stable else "seed-unstable: " + cell.describe()])
            tables.append((f"cells-{number}", f"Configurations on {task.task.label}{chance}",
                           ["configuration", "n", "mean top-1 %", "95% t interval", "seeds", "note"], rows))
            if task.pairs:
                rows = [[p.contrast, f"{p.comparison.diff:+.2f}",
                         fmt_interval(p.comparison.interval.low, p.comparison.interval.high),
                         f"{p.comparison.prob_improvement:.2f} "
                         + fmt_interval(p.comparison.prob_interval.low, p.comparison.prob_interval.high),
                         f"{p.comparison.p_value:.3g}", p.verdict, p.seeds_to_separate] for p in task.pairs]
                tables.append((f"pairs-{number}", f"Pairs on {task.task.label} (one config key apart; "
                               f"Holm-Bonferroni over its {len(task.pairs)} pair"
                               f"{'' if len(task.pairs) == 1 else 's'}, alpha {self.statistics.alpha:g})",
                               ["pair (A vs B)", "A − B top-1", "95% Welch interval", "P(A > B) [95%]",
                                "p (Welch, uncorrected)", "verdict", "seeds to separate"], rows))
        for number, (sweep_dir, record) in enumerate(self.adaptive):
            tables.append((f"looks-{number}", f"Seeds until separated: {sweep_dir.name}, every look of the "
                           f"sweeper (stopped: {record.get('stopped')}; {record.get('reason')})",
                           ["look", "alpha (spent)", "seeds", "adjacent pairs of the ranking: Welch p, state",
                            "next seeds"], looks_rows(record)))
        if self.statistics.aggregate:
            rows = [[r.row, ", ".join(r.tasks), str(r.runs), f"{r.iqm:.3f}",
                     fmt_interval(r.interval.low, r.interval.high, 3)] for r in self.statistics.aggregate]
            tables.append(("aggregate", "Across tasks: IQM of chance-normalised top-1",
                           ["configuration", "tasks", "runs", "IQM", "95% stratified bootstrap"], rows))
        return tables

    def unstable_notes(self) -> list[str]:
        return [f"{cell.row} on {task.task.label} is seed-unstable: {cell.describe()}; a seed counts as "
                f"learned above {task.threshold:.2f}% ({task.threshold_source})"
                for task in self.statistics.tasks for cell in task.cells if cell.unstable]

    def method_lines(self) -> list[str]:
        lines = [f"{name.replace('_', ' ')}: {text}" for name, text in METHODS.items()]
        return lines + ([f"alpha {self.alpha:g}: {self.alpha_source()}"] if self.adaptive else [])

    def statistics_json(self) -> dict:
        """report.json: the statistics section's figures, the headline and the methods."""
        adaptive = [{"sweep": d.name, "record": str(d / RECORD_NAME),
                     **{k: r.get(k) for k in ("stopped", "reason", "ranking", "verdicts", "alpha_spent")},
                     "looks": len(r.get("looks") or [])} for d, r in self.adaptive]
        return {"sweeps": self.sweeps, "status": self.status_line(), "headline": self.answer_lines(),
                "unstable": self.unstable_notes(), **statistics_json(self.statistics),
                "alpha_source": self.alpha_source(), "until_separated": adaptive}

    def alpha_source(self) -> str:
        if not self.adaptive:
            return "the report's alpha"
        return ("the adaptive sweep's per-look alpha (alpha / its planned looks): its seeds were added by "
                "looking, so the report judges them as one more look, not as a fixed-size sample")

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
        added = "".join(f"; configurations not told apart by {key} ({why})"
                        for key, why in self.added.items())
        return f"{runs}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + added

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
                "intervals": (INTERVALS_CAPTION,
                              interval_plot(self.statistics.tasks, mixer_colors(self.runs))),
                "top1_vs_flops": ("Top-1 against forward FLOPs per image (one point per run).",
                                  scatter_plot(self.runs, "flops", "forward FLOPs per image")),
                "top1_vs_throughput": ("Top-1 against training throughput (one point per run).",
                                       scatter_plot(self.runs, "train_images_per_s", "train images / s")),
                "training_curves": ("Validation top-1 and training loss per epoch (crosses: not completed).",
                                    curves_plot(self.runs)),
                "clean_vs_shifted": ("Clean against shifted top-1 (eval.json; one point per run and set).",
                                     clean_vs_shifted_plot(self.runs, mixer_colors(self.runs))),
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
            '<div class="answer" id="answer">'
            + "<br>".join(html.escape(line) for line in self.answer_lines()) + "</div>",
            *self._statistics_html(plots),
            "<h2>Runs</h2><p class=\"meta\">Click a column header to sort.</p>", self._runs_table(out_dir),
        ]
        if self.memory_note():
            parts.append(f'<p class="meta" id="memory-method">{html.escape(self.memory_note())}</p>')
        if aggregated:
            parts += ["<h2>Configurations (mean ± std over seeds)</h2>", self._groups_table(out_dir)]
        parts += robustness_sections(self.groups)
        parts.append('<h2>Plots</h2><div class="plots">')
        for name, (caption, svg) in plots.items():
            if name == "intervals":  # the main picture: at the top, with the verdicts
                continue
            parts.append(f'<figure id="{name}">{svg}<figcaption>{html.escape(caption)}</figcaption></figure>')
        parts.append("</div>")
        if not set(plots) - {"intervals"}:
            parts.append("<p>No completed run to plot yet.</p>")
        parts.append(f"<script>{SORT_JS}</script></body></html>")
        return "\n".join(parts)

    @staticmethod
    def _unstable_html(notes: list[str]) -> str:
        return ('<h3>Seed-unstable configurations</h3><ul id="unstable">'
                + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")

    def _statistics_html(self, plots: dict[str, tuple[str, str]]) -> list[str]:
        if not self.statistics.tasks:
            return []
        parts = ["<h2>Intervals and verdicts (top-1 %)</h2>"]
        if "intervals" in plots:
            caption, svg = plots["intervals"]
            parts.append(f'<figure id="intervals">{svg}<figcaption>{html.escape(caption)}</figcaption>'
                         "</figure>")
        notes = self.unstable_notes()
        for table_id, title, heads, rows in self.statistics_tables():
            if table_id == "aggregate" and notes:  # pairs, then the unstable cells, then the aggregate
                parts.append(self._unstable_html(notes))
                notes = []
            parts.append(f"<h3>{html.escape(title)}</h3>")
            parts.append(f'<table id="{table_id}" class="stats"><thead><tr>'
                         + "".join(f'<th scope="col">{html.escape(h)}</th>' for h in heads)
                         + "</tr></thead><tbody>")
            numeric = _numeric_columns(rows)
            for row in rows:
                cells = [f"<td>{html.escape(row[0])}</td>"]
                cells += [f'<td class="{"num" if numeric[i] else "text"}">{html.escape(c)}</td>'
                          for i, c in enumerate(row[1:], 1)]
                parts.append("<tr>" + "".join(cells) + "</tr>")
            parts.append("</tbody></table>")
        if notes:
            parts.append(self._unstable_html(notes))
        parts.append('<details class="meta" id="methods"><summary>Methods</summary><ul>'
                     + "".join(f"<li>{html.escape(line)}</li>" for line in self.method_lines())
                     + "</ul></details>")
        return parts

    # ------------------------------------------------------------------ markdown
    def markdown(self, out_dir: Path, plot_files: dict[str, Path]) -> str:
        lines = [f"# Sweep report: {', '.join(self.sweeps)}", "", self.status_line(), ""]
        lines += [f"- {line}" for line in self.answer_lines()] + [""]
        lines += self._statistics_markdown(out_dir, plot_files)
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
            lines += [f"![{name}]({rel_link(path, out_dir)})" for name, path in plot_files.items()
                      if name != "intervals"]
        return "\n".join(lines) + "\n"

    def _statistics_markdown(self, out_dir: Path, plot_files: dict[str, Path]) -> list[str]:
        if not self.statistics.tasks:
            return []
        lines = ["## Intervals and verdicts (top-1 %)", ""]
        if "intervals" in plot_files:
            lines += [f"![intervals]({rel_link(plot_files['intervals'], out_dir)})", ""]
        notes = self.unstable_notes()
        for table_id, title, heads, rows in self.statistics_tables():
            if table_id == "aggregate" and notes:  # pairs, then the unstable cells, then the aggregate
                lines += ["### Seed-unstable configurations", "", *[f"- {n}" for n in notes], ""]
                notes = []
            lines += [f"### {title}", "", "| " + " | ".join(heads) + " |",
                      "|" + "".join("---:|" if n else "---|" for n in _numeric_columns(rows)) + ""]
            lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows] + [""]
        if notes:
            lines += ["### Seed-unstable configurations", "", *[f"- {n}" for n in notes], ""]
        lines += ["### Methods", "", *[f"- {line}" for line in self.method_lines()], ""]
        return lines

    # ------------------------------------------------------------------ files
    def write(self, out_dir: str | Path | None = None) -> tuple[Path, Path]:
        """Write report.html, report.md, report.json and report_files/*.svg (for the Markdown); returns the
        HTML and Markdown paths; ``json_path`` holds the third."""
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
        self.json_path = out_dir / "report.json"
        atomic_write_text(self.json_path, json.dumps(self.statistics_json(), indent=1, allow_nan=False)
                          + "\n")
        return html_path, md_path
