"""Seeds until the answer is clear: the rule behind ``hydra/sweeper=until_separated``, apart from Hydra.

After each look (a round of seeds), the configurations are ranked by their mean, and each pair of neighbours
in the ranking is tested (``mixerlab.stats.compare``: Welch, two-sided). Seeds go only to configurations in a
pair that is still open, ``seed_step`` at a time, up to ``max_seeds`` each; the sweep stops when every
adjacent pair is separated or no open pair can get another seed.

With ``tie_within`` (a margin in the metric's units, off by default), each adjacent pair is also tested for
equivalence (``mixerlab.stats.equivalence_p``, two one-sided Welch tests): a pair whose difference is shown
to lie inside ±margin is "tied within ±margin" and gets no more seeds. Two mixers that both stay at chance
are then settled in a few seeds instead of running to the cap. Holm runs once over the look's pairs, each
represented by the smaller of its two p-values (``mixerlab.stats.settle``), so the chance of any wrong call
(equal configurations separated, or configurations a margin apart tied) stays at alpha / K per look and
alpha over the sweep; a separation found without the margin is found with it too.

Looking again and again at the same growing data and stopping at the first p < alpha inflates the false
positive rate (shared/docs/STATISTICS.md, "Adaptive seeds": about 14% for 5 looks at a nominal 5%). So:

- alpha is split over the looks that can happen at most (Bonferroni over looks): each look tests at
  ``alpha / K``, K = 1 + ceil((max_seeds - initial_seeds) / seed_step). Over the whole sweep, the chance of
  calling any pair of equal configurations separated is at most alpha, whatever the stopping rule;
- within a look, Holm-Bonferroni over its adjacent pairs keeps the look's family-wise error at ``alpha / K``;
- a configuration keeps every seed it has: each look tests all of them, never a chosen subset.

Welch's test assumes roughly normal seeds; a configuration whose seeds split between not learning the task
and learning it (bimodal: 10.4 / 69.8) breaks that. With a threshold (``learned_above``: by default the
report's, chance + 10% of the way to 100% from the task's class count), every look marks such a
configuration seed-unstable (seeds at or below the threshold and seeds clear of it by the same 10%: one mode
across the threshold's edge, such as 15.6-21.1 around 19, is not two), says so beside each verdict it takes
part in and in the reason the sweep stopped: its mean describes no run, and the report compares its learn
rate instead.

The price is power: the last looks test at a stricter level than a single fixed-n test would. It is simple to
state and holds for any test, which is why it was chosen over group-sequential boundaries, which assume normal
seeds (bimodal cells are common here).

Everything here is a pure function of the values seen so far, so re-running a sweep (whose finished jobs are
skipped) takes the same decisions and asks for the same seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mixerlab.stats import (
    compare,
    equivalence_p,
    is_margin,
    learned_band,
    learned_floor,
    seed_unstable,
    settle,
    summarize,
)

MODES = ("max", "min")
RECORD_NAME = "until_separated.json"


@dataclass(frozen=True)
class SeedRule:
    """The sweeper's settings (``conf/hydra/sweeper/until_separated.yaml``), checked when built, so that a
    bad value stops the command before any job runs, naming the key."""

    initial_seeds: int = 3
    seed_step: int = 1
    max_seeds: int = 10
    first_seed: int = 0
    alpha: float = 0.05
    metric: str = "top1"
    mode: str = "max"
    seed_key: str = "seed"
    learned_above: Any = "auto"
    tie_within: Any = None

    def __post_init__(self) -> None:
        def positive_int(key: str, minimum: int) -> None:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"hydra.sweeper.{key}={value!r}: an integer >= {minimum}")

        positive_int("initial_seeds", 1)
        positive_int("seed_step", 1)
        positive_int("max_seeds", 1)
        if isinstance(self.first_seed, bool) or not isinstance(self.first_seed, int) or self.first_seed < 0:
            raise ValueError(f"hydra.sweeper.first_seed={self.first_seed!r}: an integer >= 0")
        if self.max_seeds < self.initial_seeds:
            raise ValueError(f"hydra.sweeper.max_seeds={self.max_seeds} is below hydra.sweeper.initial_seeds="
                             f"{self.initial_seeds}: the cap must allow the initial seeds")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 1:
            raise ValueError(f"hydra.sweeper.alpha={self.alpha!r}: a family-wise error rate in (0, 1)")
        if self.mode not in MODES:
            raise ValueError(f"hydra.sweeper.mode={self.mode!r}: one of {list(MODES)}")
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"hydra.sweeper.metric={self.metric!r}: a key of the jobs' summary.json")
        auto_or_off = self.learned_above is None or self.learned_above == "auto"
        if not auto_or_off and (isinstance(self.learned_above, bool)
                                or not isinstance(self.learned_above, (int, float))):
            raise ValueError(f"hydra.sweeper.learned_above={self.learned_above!r}: auto, null (no check) or "
                             f"the {self.metric} a seed must exceed to count as having learned the task")
        if self.tie_within is not None and not is_margin(self.tie_within):
            raise ValueError(f"hydra.sweeper.tie_within={self.tie_within!r}: null (off) or a positive margin "
                             f"in units of {self.metric}: a pair whose difference is shown to lie inside it "
                             "is tied")
        if not isinstance(self.seed_key, str) or not self.seed_key:
            raise ValueError(f"hydra.sweeper.seed_key={self.seed_key!r}: the config key that holds the seed")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> SeedRule:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in settings.items() if k in known})

    def chance(self, num_classes: Any) -> float | None:
        """The task's chance top-1 (%) when the metric is top-1 (%, higher better) and the class count is
        known; else None."""
        known = isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes > 1
        return 100.0 / num_classes if self.metric == "top1" and self.mode == "max" and known else None

    def learned_threshold(self, num_classes: Any) -> float | None:
        """The value a seed must exceed to count as having learned: ``learned_above`` if a number; for
        ``auto``, chance + 10% of (100 - chance) where :meth:`chance` is known, else no check."""
        if self.learned_above is None:
            return None
        if self.learned_above != "auto":
            return float(self.learned_above)
        chance = self.chance(num_classes)
        return None if chance is None else learned_floor(chance)

    def learned_band(self, num_classes: Any) -> float:
        """How far above the threshold a seed must land to count as the second mode of a seed-unstable
        configuration (:func:`mixerlab.stats.seed_unstable`): 10% of (100 - chance) where :meth:`chance` is
        known, as in the report; else 0 (both sides of it)."""
        chance = self.chance(num_classes)
        return 0.0 if chance is None else learned_band(chance)

    @property
    def max_looks(self) -> int:
        return 1 + math.ceil((self.max_seeds - self.initial_seeds) / self.seed_step)

    @property
    def alpha_per_look(self) -> float:
        return self.alpha / self.max_looks

    def initial(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.initial_seeds))

    def more(self, tried: Sequence[int]) -> list[int]:
        """The next ``seed_step`` seeds after those tried, within the cap (failed seeds count as tried)."""
        room = self.max_seeds - len(tried)
        start = max(tried, default=self.first_seed - 1) + 1
        return list(range(start, start + min(self.seed_step, max(0, room))))

    def describe(self) -> str:
        return (f"Welch two-sided per adjacent pair of the ranking by mean {self.metric} ({self.mode}); Holm "
                f"across a look's pairs at alpha / K = {self.alpha:g} / {self.max_looks} = "
                f"{self.alpha_per_look:.4g} per look (Bonferroni over at most K looks: family-wise "
                f"{self.alpha:g} over the whole sweep); "
                + (f"a pair is tied instead when two one-sided Welch tests put its difference inside "
                   f"±{self.tie_within:g} (one Holm over each pair's smaller p); " if self.tie_within
                   else "")
                + f"seeds only to configurations in an open pair, {self.seed_step} per look, up to "
                f"{self.max_seeds}")


@dataclass
class Look:
    """One look: what each configuration has, the ranking, the verdict on every adjacent pair, what next."""

    number: int
    alpha: float
    alpha_spent: float
    configs: dict[str, dict] = field(default_factory=dict)
    ranking: list[str] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    no_result: list[str] = field(default_factory=list)
    next_seeds: dict[str, list[int]] = field(default_factory=dict)
    learned_above: float | None = None
    learned_band: float = 0.0
    unstable: dict[str, str] = field(default_factory=dict)
    stop: str | None = None
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def judge(number: int, tried: Mapping[str, Sequence[int]], values: Mapping[str, Sequence[float]],
          rule: SeedRule, learned_above: float | None = None, learned_band: float = 0.0) -> Look:
    """Rank, test adjacent pairs, and decide the next seeds (or the stop) after look ``number`` (from 1).

    ``tried``: the seeds launched per configuration (failed ones too); ``values``: the metric of those that
    finished. A configuration with no value yet is left out of the ranking and gets no more seeds: its jobs
    failed, and their errors are in sweep.json. ``learned_above``: a configuration with seeds at or below it
    and seeds above it by more than ``learned_band`` (two modes, not one across its edge) is marked
    seed-unstable (its pairs' verdicts and the stop reason say so)."""
    look = Look(number=number, alpha=rule.alpha_per_look,
                alpha_spent=min(rule.alpha, number * rule.alpha_per_look), learned_above=learned_above,
                learned_band=learned_band)
    for label in tried:
        vals = [float(v) for v in values.get(label, [])]
        entry: dict[str, Any] = {"seeds": list(tried[label]), "values": vals, "n": len(vals)}
        if vals:
            cell = summarize(vals)
            entry.update(mean=cell.mean, std=cell.std, interval=[cell.interval.low, cell.interval.high])
            if learned_above is not None:
                entry["learned"] = sum(v > learned_above for v in vals)
                if seed_unstable(vals, learned_above, learned_band):
                    look.unstable[label] = f"learned on {entry['learned']} of {len(vals)} seeds"
        else:
            look.no_result.append(label)
        look.configs[label] = entry
    sign = 1.0 if rule.mode == "max" else -1.0
    look.ranking = sorted((label for label in tried if values.get(label)),
                          key=lambda label: -sign * look.configs[label]["mean"])
    neighbours = list(zip(look.ranking, look.ranking[1:], strict=False))
    comparisons = [compare(values[a], values[b]) for a, b in neighbours]
    tie_p = [equivalence_p(values[a], values[b], rule.tie_within) if rule.tie_within else None
             for a, b in neighbours]
    states = settle([c.p_value for c in comparisons], tie_p, rule.alpha_per_look)
    separated = [state == "separated" for state in states]
    tied = [state == "tied" for state in states]
    for (a, b), c, sep, tie, p_tie in zip(neighbours, comparisons, separated, tied, tie_p, strict=True):
        verdict = (f"{a} ahead" if sep else f"tied within ±{rule.tie_within:g} at n = {c.n_a}, {c.n_b}" if tie
                   else f"not separated at n = {c.n_a}, {c.n_b}")
        unstable = [label for label in (a, b) if label in look.unstable]
        if unstable:
            verdict += " (seed-unstable: " + "; ".join(f"{u} {look.unstable[u]}" for u in unstable) + ")"
        look.pairs.append({
            "better": a, "worse": b, "n": [c.n_a, c.n_b], "diff": c.diff,
            "interval": [c.interval.low, c.interval.high], "p_value": c.p_value,
            "prob_improvement": c.prob_improvement, "seeds_needed": c.seeds_needed,
            "verdict": verdict, "separated": sep, "tied": tie, "tie_p_value": p_tie, "unstable": unstable})
    open_configs = list(dict.fromkeys(
        label for pair in look.pairs if not (pair["separated"] or pair["tied"])
        for label in (pair["better"], pair["worse"])))
    for label in open_configs:
        seeds = rule.more(tried[label])
        if seeds:
            look.next_seeds[label] = seeds
    if len(look.ranking) < 2:
        look.stop = "nothing to compare"
        look.reason = (f"{len(look.ranking)} configuration(s) with a result: a ranking needs two "
                       "(sweep a key besides the seed, or see the failed jobs in sweep.json)")
    elif not open_configs and not any(tied):
        look.stop = "separated"
        look.reason = f"every adjacent pair of the ranking is separated at look {number}"
    elif not open_configs:
        look.stop = "separated or tied"
        look.reason = (f"every adjacent pair of the ranking is separated ({sum(separated)}) or tied within "
                       f"±{rule.tie_within:g} ({sum(tied)}) at look {number}")
    elif not look.next_seeds:
        look.stop = "cap"
        still = ", ".join(f"{p['better']} vs {p['worse']}" for p in look.pairs
                          if not (p["separated"] or p["tied"]))
        look.reason = (f"open pair(s) {still}: their configurations reached max_seeds={rule.max_seeds}; "
                       "not separated at this cap")
    if look.stop and look.unstable:
        sides = (f"seeds on both sides of {learned_above:g}" if not learned_band else
                 f"seeds at or below {learned_above:g} and above {learned_above + learned_band:g}")
        look.reason += (f"; seed-unstable ({sides}): "
                        + "; ".join(f"{label} {text}" for label, text in look.unstable.items())
                        + ": a mean of such a configuration describes no run, so its verdicts rest on an "
                        "assumption its seeds break; compare how often it learns (the report's learn rates)")
    return look


def pair_state(pair: Mapping[str, Any], tie_p: bool = False) -> str:
    """An adjacent pair's state at a look, as recorded: "separated", "tied" (with its TOST p when asked) or
    "open". Read with ``get``: the report reads it from an ``until_separated.json`` that may be older."""
    if pair.get("separated"):
        return "separated"
    if pair.get("tied"):
        return f"tied (TOST p {pair['tie_p_value']:.3g})" if tie_p and pair.get("tie_p_value") is not None \
            else "tied"
    return "open"


def record(rule: SeedRule, looks: Sequence[Look], command: str) -> dict:
    """``until_separated.json``: the rule, every look, and why the sweep stopped."""
    last = looks[-1] if looks else None
    return {
        "command": command,
        "rule": {**asdict(rule), "max_looks": rule.max_looks, "alpha_per_look": rule.alpha_per_look,
                 "description": rule.describe(),
                 "note": "pairs are the adjacent ones in each look's ranking; verdicts are the last look's"},
        "looks": [look.as_dict() for look in looks],
        "alpha_spent": last.alpha_spent if last else 0.0,
        "stopped": last.stop if last else None,
        "reason": last.reason if last else "no look yet",
        "ranking": last.ranking if last else [],
        "verdicts": [p["verdict"] for p in last.pairs] if last else [],
    }
