"""The report's statistics: which differences between configurations the seeds back (mixerlab.stats computes).

    ConfigGroups -> per task (what the config trains on):
        a cell per configuration: n, mean, 95% t interval, or "learned on k of n seeds" when seed-unstable
        a pair per two configurations that differ in one config key: Welch difference, probability of
        improvement, a verdict with Holm-Bonferroni over the task's pairs, seeds that would separate it;
        with a margin (``tie_within``), "tied within ±margin" for a pair shown to differ by less (TOST)
    -> across tasks: the IQM of chance-normalised top-1 with a stratified bootstrap interval

A pair is only ever judged within one task: accuracies of different tasks are different quantities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from omegaconf import OmegaConf

from mixerlab import stats
from mixerlab.config import flatten
from mixerlab.report.formatting import fmt_interval
from mixerlab.report.records import ConfigGroup, Task
from mixerlab.sweep import SEED_KEY

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
IDENTITY = "identity"  # the mixer that mixes no tokens: the control a learned seed must beat
SEEDS_SHOWN = 10  # "seeds to separate" above this prints as ">10" (the adaptive sweep's usual cap)
METHODS = {
    "interval": "Student t interval of the mean over seeds (honest at n = 2-10; a bootstrap of so few "
                "seeds under-covers below about n = 8); n = 1 has no interval",
    "difference": "Welch t interval of the difference of means and two-sided Welch p",
    "probability_of_improvement": "P(A > B) + ½ P(A = B) over seed pairs, percentile bootstrap interval "
                                  "(under-covers below about 8 seeds a side)",
    "multiple_comparisons": "Holm-Bonferroni over all one-key pairs of a task (family-wise error ≤ alpha)",
    "seeds_to_separate": "seeds per configuration for 80% power of a t-test at alpha / pairs of the task "
                         "(Holm's strictest step), if the observed difference and spread are the truth",
    "seed_unstable": "two modes: some seeds at or below the threshold and some above it by 10% of "
                     "(100 − chance) or more (one mode across the threshold's edge is not flagged); "
                     "threshold: the identity mixer's upper t bound on the task, and at least chance + 10% "
                     "of (100 − chance) (a bound of a mean is no range for single seeds); learned: above "
                     "the threshold; learn rate: Wilson interval",
    "tied": "with a margin (scripts/report.py --tie-within M): a pair whose difference two one-sided Welch "
            "tests (TOST) put inside ±M; one Holm-Bonferroni over the task's pairs, each represented by the "
            "smaller of its Welch and TOST p (the chance of any wrong call, separated or tied, ≤ alpha)",
    "aggregate": "IQM of chance-normalised top-1 ((top-1 − chance) / (100 − chance)) over every run on every "
                 "task, stratified bootstrap interval (runs resampled within their task)",
}


@dataclass
class ConfigCell:
    """One configuration on one task: its top-1 per seed, summarised."""

    group: ConfigGroup
    row: str  # its label among the task's configurations (what varies there: "mixer=attention")
    values: list[float]
    summary: stats.Cell
    learned: list[bool] | None = None  # per seed, where the task has a learned threshold
    unstable: bool = False

    @property
    def n(self) -> int:
        return self.summary.n

    @property
    def learned_count(self) -> int | None:
        return None if self.learned is None else sum(self.learned)

    @property
    def learn_rate(self) -> stats.Interval | None:
        return None if self.learned is None else stats.rate_interval(sum(self.learned), len(self.learned))

    @property
    def learned_mean(self) -> float | None:
        kept = [v for v, ok in zip(self.values, self.learned or [], strict=False) if ok]
        return sum(kept) / len(kept) if kept else None

    def describe(self) -> str:
        """``93.00 [88.03, 97.97] (n=3)``, or the learn rate of a seed-unstable cell instead of its mean."""
        if self.unstable:
            rate = self.learn_rate
            return (f"learned on {self.learned_count} of {self.n} seeds (Wilson 95% "
                    f"[{100 * rate.low:.0f}%, {100 * rate.high:.0f}%]), mean of learned seeds "
                    f"{self.learned_mean:.2f}")
        interval = self.summary.interval
        if not interval.bounded:
            return f"{self.summary.mean:.2f} (n=1: no interval)"
        return f"{self.summary.mean:.2f} {fmt_interval(interval.low, interval.high)} (n={self.n})"


@dataclass
class PairVerdict:
    """Two configurations of one task that differ in one config key; ``a`` has the higher mean."""

    a: ConfigCell
    b: ConfigCell
    key: str
    contrast: str  # "mixer=attention vs mixer=pooling"
    comparison: stats.Comparison
    separated: bool = False  # by Holm over the task's pairs (stats.settle)
    seeds_needed: int | None = None
    tie_within: float | None = None  # the margin it was tested against, where one was given
    tie_p_value: float | None = None  # TOST p, where a margin was given
    tied: bool = False  # settled as tied by the same Holm (stats.settle)

    @property
    def seeds(self) -> str:
        """``n=3``, or ``n=3 vs 1`` where the two have different numbers of seeds."""
        return f"n={self.a.n}" if self.a.n == self.b.n else f"n={self.a.n} vs {self.b.n}"

    @property
    def verdict(self) -> str:
        if self.separated:
            text = f"{self.a.row} ahead"
        elif self.tied:
            text = f"tied within ±{self.tie_within:g} at {self.seeds} seeds"
        else:
            text = f"not separated at {self.seeds} seed" + ("" if self.seeds == "n=1" else "s")
        unstable = [c.row for c in (self.a, self.b) if c.unstable]
        if unstable:
            text += f"; {' and '.join(unstable)} seed-unstable: compare learn rates, not means"
        return text

    @property
    def beyond_shown(self) -> bool:
        """An open pair that would take more than ``SEEDS_SHOWN`` seeds each to separate (the estimate says
        so, or is past its search: ``seeds_needed`` None with a spread and a difference known)."""
        if self.separated or self.tied:
            return False
        if self.seeds_needed is None:  # stats: no spread known, no difference, or past its search
            return min(self.a.n, self.b.n) >= 2 and self.comparison.diff != 0
        return self.seeds_needed > SEEDS_SHOWN

    @property
    def estimated(self) -> bool:
        """An open pair whose seeds to separate are known: a count, or more than ``SEEDS_SHOWN``."""
        return not (self.separated or self.tied) and (self.seeds_needed is not None or self.beyond_shown)

    @property
    def seeds_to_separate(self) -> str:
        if self.separated:
            return "—"
        if self.tied:
            return "— (tied)"
        if self.beyond_shown:
            return f">{SEEDS_SHOWN}"
        if self.seeds_needed is None:
            if min(self.a.n, self.b.n) < 2:
                return "unknown (needs 2+ seeds each)"
            return "unknown (no difference)"
        return str(self.seeds_needed)


@dataclass
class TaskStatistics:
    task: Task
    cells: list[ConfigCell]  # best mean first
    pairs: list[PairVerdict]
    threshold: float | None  # top-1 above which a seed counts as having learned the task
    threshold_source: str | None

    def pair(self, x: ConfigCell, y: ConfigCell) -> PairVerdict | None:
        return next((p for p in self.pairs if {id(p.a), id(p.b)} == {id(x), id(y)}), None)


@dataclass
class AggregateRow:
    row: str
    tasks: list[str]
    runs: int
    iqm: float
    interval: stats.Interval


@dataclass
class ReportStatistics:
    tasks: list[TaskStatistics]
    aggregate: list[AggregateRow] = field(default_factory=list)
    alpha: float = stats.ALPHA
    confidence: float = stats.CONFIDENCE
    tie_within: float | None = None


# ---------------------------------------------------------------------------------------------- one key apart
@cache
def _choice_file_keys(group_name: str, choice: str) -> frozenset[str]:
    """The flattened keys ``conf/<group>/<choice>.yaml`` sets. A ``# @package _global_`` file (every mixer)
    may set keys outside its group, such as the identity mixer's ``backbone.head: gap``: a difference there
    comes with the choice, not on top of it."""
    path = CONF_DIR / group_name / f"{choice}.yaml"
    try:
        text = path.read_text()
        node = OmegaConf.to_container(OmegaConf.create(text))
    except Exception:  # noqa: BLE001 - no file (or none readable): nothing is attributed to the choice
        return frozenset()
    if not isinstance(node, dict):
        return frozenset()
    node.pop("defaults", None)
    if "@package _global_" not in text:
        node = {group_name: node}
    return frozenset(flatten(node))


def _choice(group: ConfigGroup, name: str) -> str | None:
    run = group.runs[0]
    value = run.choices.get(name)
    if value is None and name == "mixer":
        value = run.summary.get("mixer")
    return None if value is None else str(value)


def one_key_difference(a: ConfigGroup, b: ConfigGroup) -> tuple[str, str] | None:
    """(key, "key=x vs key=y") when the two configurations differ in one config key (a config group such as
    ``mixer``, with whatever its file sets, or one leaf such as ``recipe.lr``); None otherwise."""
    fa, fb = a.flat_config, b.flat_config
    if not fa or not fb:  # no config on disk: the sweep's choices are all there is to compare
        ca = {k: v for k, v in a.runs[0].choices.items() if k != SEED_KEY}
        cb = {k: v for k, v in b.runs[0].choices.items() if k != SEED_KEY}
        keys = sorted(k for k in ca.keys() | cb.keys() if ca.get(k) != cb.get(k))
        if len(keys) != 1:
            return None
        return keys[0], f"{keys[0]}={ca.get(keys[0], '—')} vs {keys[0]}={cb.get(keys[0], '—')}"
    missing = object()
    diff = sorted(k for k in fa.keys() | fb.keys() if fa.get(k, missing) != fb.get(k, missing))
    if not diff:
        return None
    owners = set()
    for key in diff:
        section = key.split(".", 1)[0]
        owner = section
        for name in {k.split(".", 1)[0] for k in diff}:
            choices = [_choice(a, name), _choice(b, name)]
            if None not in choices and choices[0] != choices[1] and any(
                    key in _choice_file_keys(name, c) for c in choices):
                owner = name
                break
        owners.add(owner)
    if len(owners) != 1:
        return None
    (owner,) = owners
    choices = [_choice(a, owner), _choice(b, owner)]
    if None not in choices and choices[0] != choices[1]:
        return owner, f"{owner}={choices[0]} vs {owner}={choices[1]}"
    if len(diff) == 1:
        return diff[0], f"{diff[0]}={fa.get(diff[0], '—')} vs {diff[0]}={fb.get(diff[0], '—')}"
    return owner, f"{owner}: {a.label} vs {b.label}"


def row_label(group: ConfigGroup, task_groups: list[ConfigGroup]) -> str:
    """What tells this configuration apart on its task: its choices less the seed and those every
    configuration of the task shares (``experiment=proxy_marker,mixer=attention`` -> ``mixer=attention``)."""
    choices = {k: v for k, v in group.runs[0].choices.items() if k != SEED_KEY}
    shared = {k for k in choices if len(task_groups) > 1
              and all(g.runs[0].choices.get(k) == choices[k] for g in task_groups)}
    label = ",".join(f"{k}={v}" for k, v in choices.items() if k not in shared)
    return label or group.label


def _identity_across_tasks(group: ConfigGroup, task_groups: list[ConfigGroup]) -> str:
    """A configuration's name across tasks: its config less the data section and whatever every
    configuration of its task shares (the task preset's epochs, schedule, name); its row label without a
    config."""
    flat = group.flat_config
    if not flat:
        return "label:" + row_label(group, task_groups)
    others = [g.flat_config for g in task_groups if g is not group]
    kept = {k: v for k, v in flat.items() if not k.startswith("data.") and k != "data"
            and not (others and all(o.get(k, object()) == v for o in others))}
    return repr(sorted(kept.items(), key=lambda kv: kv[0]))


# ---------------------------------------------------------------------------------------------- per task
def _threshold(task: Task, cells: list[ConfigCell]) -> tuple[float | None, str | None]:
    """The top-1 a seed must beat to count as having learned the task: the identity mixer's upper 95% t
    bound on the task, and at least chance + 10% of the way to 100%. The identity bound bounds a mean:
    with a few tightly spread identity seeds it sits a fraction of a point above chance, where single seeds
    of a mixer that learned nothing still land, so the margin over chance stays a floor."""
    floor = None if task.chance is None else stats.learned_floor(task.chance)
    floor_text = None if task.chance is None else f"chance {task.chance:.1f}% + 10% of (100 − chance)"
    controls = [c for c in cells if c.group.mixer == IDENTITY and c.summary.interval.bounded]
    if controls:
        control = max(controls, key=lambda c: c.summary.interval.high)
        bound = control.summary.interval.high
        if floor is None or bound >= floor:
            return bound, f"upper 95% t bound of {control.row}"
        return floor, f"{floor_text}, above the upper 95% t bound of {control.row} ({bound:.2f}%)"
    return floor, floor_text


def task_statistics(task: Task, groups: list[ConfigGroup], alpha: float = stats.ALPHA,
                    tie_within: float | None = None) -> TaskStatistics:
    """Cells, seed-unstable flags and Holm-corrected pair verdicts of one task's configurations; with
    ``tie_within``, every pair is also tested for a difference inside ±tie_within (TOST), and one Holm over
    the pairs settles each as separated or tied (``stats.settle``)."""
    cells = []
    for group in groups:
        values = group.values("top1")
        if values:
            cells.append(ConfigCell(group, row_label(group, groups), values, stats.summarize(values)))
    cells.sort(key=lambda c: -c.summary.mean)
    threshold, source = _threshold(task, cells)
    band = 0.0 if task.chance is None else stats.learned_band(task.chance)
    if threshold is not None:
        for cell in cells:
            cell.learned = stats.learned_mask(cell.values, threshold)
            cell.unstable = stats.seed_unstable(cell.values, threshold, band)
    pairs = []
    for i, a in enumerate(cells):
        for b in cells[i + 1:]:
            difference = one_key_difference(a.group, b.group)
            if difference:
                pairs.append(PairVerdict(a, b, *difference, stats.compare(a.values, b.values)))
    for pair in pairs:
        if tie_within is not None:
            pair.tie_within = tie_within
            pair.tie_p_value = stats.equivalence_p(pair.a.values, pair.b.values, tie_within)
    states = stats.settle([p.comparison.p_value for p in pairs], [p.tie_p_value for p in pairs], alpha)
    for pair, state in zip(pairs, states, strict=True):
        pair.separated, pair.tied = state == "separated", state == "tied"
        if state == "open":
            pair.seeds_needed = stats.seeds_to_separate(pair.a.values, pair.b.values, alpha / len(pairs))
    return TaskStatistics(task, cells, pairs, threshold, source)


def report_statistics(groups: list[ConfigGroup], alpha: float = stats.ALPHA,
                      tie_within: float | None = None) -> ReportStatistics:
    """Every task's statistics, and the cross-task aggregate of configurations found on two or more tasks."""
    by_task: dict[tuple, list[ConfigGroup]] = {}
    for group in groups:
        by_task.setdefault(group.task.key, []).append(group)
    tasks = [task_statistics(members[0].task, members, alpha, tie_within) for members in by_task.values()]
    result = ReportStatistics(tasks, alpha=alpha, tie_within=tie_within)
    if len(tasks) < 2:
        return result
    across: dict[str, list[tuple[TaskStatistics, ConfigCell]]] = {}
    for task in tasks:
        if task.task.chance is None:
            continue
        members = [c.group for c in task.cells]
        for cell in task.cells:
            across.setdefault(_identity_across_tasks(cell.group, members), []).append((task, cell))
    for found in across.values():
        if len({id(t) for t, _ in found}) < 2:
            continue
        scores = [[stats.chance_normalised(v, t.task.chance) for v in c.values] for t, c in found]
        iqm, interval = stats.stratified_iqm(scores)
        result.aggregate.append(AggregateRow(found[0][1].row, [t.task.label for t, _ in found],
                                             sum(len(s) for s in scores), iqm, interval))
    result.aggregate.sort(key=lambda r: -r.iqm)
    return result


# ---------------------------------------------------------------------------------------------- report.json
def _number(value: float | None) -> float | None:
    """JSON has no infinity: an unbounded side is null."""
    return None if value is None or not math.isfinite(value) else value


def _interval(interval: stats.Interval | None) -> dict | None:
    if interval is None:
        return None
    return {"low": _number(interval.low), "high": _number(interval.high), "method": interval.method}


def statistics_json(result: ReportStatistics) -> dict:
    """The figures of the report's statistics section, machine-readable (report.json)."""
    tasks = []
    for task in result.tasks:
        cells = [{
            "configuration": c.row, "label": c.group.label, "mixer": c.group.mixer, "n": c.n,
            "values": c.values, "mean": c.summary.mean, "std": c.summary.std,
            "interval": _interval(c.summary.interval), "seed_unstable": c.unstable,
            "learned": c.learned_count, "learn_rate": _interval(c.learn_rate),
            "learned_mean": c.learned_mean, "text": c.describe(),
        } for c in task.cells]
        pairs = [{
            "a": p.a.row, "b": p.b.row, "key": p.key, "contrast": p.contrast, "n_a": p.comparison.n_a,
            "n_b": p.comparison.n_b, "diff": p.comparison.diff, "interval": _interval(p.comparison.interval),
            "p_value": p.comparison.p_value, "prob_improvement": p.comparison.prob_improvement,
            "prob_interval": _interval(p.comparison.prob_interval), "separated": p.separated,
            "verdict": p.verdict, "seeds_to_separate": p.seeds_to_separate, "seeds_needed": p.seeds_needed,
            "tied": p.tied, "tie_p_value": p.tie_p_value,
        } for p in task.pairs]
        tasks.append({"task": task.task.label, "chance": task.task.chance,
                      "learned_threshold": task.threshold, "learned_threshold_source": task.threshold_source,
                      "cells": cells, "pairs": pairs})
    aggregate = [{"configuration": r.row, "tasks": r.tasks, "runs": r.runs, "iqm": r.iqm,
                  "interval": _interval(r.interval)} for r in result.aggregate]
    return {"metric": "top1", "confidence": result.confidence, "alpha": result.alpha,
            "tie_within": result.tie_within, "methods": METHODS,
            "tasks": tasks, "aggregate": aggregate}
