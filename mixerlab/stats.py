"""Comparing configurations over a few seeds: intervals, pairwise tests, seed-unstable cells, an aggregate.

Every figure the report and the adaptive-seed sweeper print about "which mixer is better" comes from here, so
that both use one set of rules (shared/docs/STATISTICS.md has the facts behind each choice):

    summarize(values)          n, mean, std and a Student-t interval of the mean: honest at n = 2-10, where a
                               bootstrap of 2 values takes only 3 distinct means and under-covers
    compare(a, b)              Welch's difference of means with its interval and two-sided p, the probability
                               of improvement (Mann-Whitney U / n·m) with a bootstrap interval, and the seeds
                               per arm that would separate the pair (power of a t-test at the observed effect)
    holm(p_values)             Holm-Bonferroni over a family of pairs: which are separated
    equivalence_p(a, b, m)     two one-sided Welch tests (TOST): is the difference of means inside ±m?
    settle(p_diff, p_tie)      Holm over a family of pairs, each settled as separated or tied (within a
                               margin) by the smaller of its two p-values, or left open
    learned_mask / seed_unstable / rate_interval
                               "did the run learn the task" as its own outcome, with a Wilson interval on the
                               rate, for cells whose seeds split between chance and far above it (two modes:
                               below the threshold and clear of it by learned_band, not one across its edge)
    stratified_iqm(tasks)      the interquartile mean of chance-normalised scores across tasks, with a
                               stratified bootstrap interval (runs resampled within each task, as rliable
                               does)

The formulas are scipy.stats'. Written here: Holm's step-down (scipy has Benjamini-Hochberg,
``false_discovery_control``, but not Holm) and the guards for the degenerate cases that few seeds produce
(one seed, zero spread), which scipy answers with NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
ALPHA = 0.05
POWER = 0.8
MAX_SEEDS_ESTIMATE = 1000  # past this, "seeds to separate" is reported as unknown (None)


@dataclass(frozen=True)
class Interval:
    """A confidence interval; ``±inf`` where the data cannot bound it (one seed)."""

    low: float
    high: float
    method: str

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)


UNBOUNDED = "one seed: no interval"


@dataclass(frozen=True)
class Cell:
    """One configuration's values (one per seed) summarised."""

    n: int
    mean: float
    std: float | None  # sample std (ddof 1); None at n = 1
    interval: Interval


@dataclass(frozen=True)
class Comparison:
    """A against B: positive ``diff`` means A's mean is higher."""

    n_a: int
    n_b: int
    diff: float
    interval: Interval  # Welch interval of the difference of means
    p_value: float  # two-sided Welch test, uncorrected; 1.0 where the test is undefined
    prob_improvement: float  # P(A > B) + ½ P(A = B) over all seed pairs
    prob_interval: Interval
    seeds_needed: int | None  # seeds per arm for 80% power at the observed effect; None when unknown


def _array(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"need one or more values, got {values!r}")
    return array


def _welch(x: np.ndarray, y: np.ndarray, alternative: str = "two-sided"):
    """``scipy.stats.ttest_ind(x, y, equal_var=False)``, without scipy's "catastrophic cancellation" warning
    for a side whose values are all alike. That side is a real result here (a model that predicts one class
    on every seed scores exactly chance each time): its variance is exactly 0 and Welch's statistic then rests
    on the other side's spread alone, which scipy computes as it should; the warning is a false alarm."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred in moment calculation",
                                category=RuntimeWarning)
        return sps.ttest_ind(x, y, equal_var=False, alternative=alternative)


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Cell:
    """Mean with a Student-t interval (``scipy.stats.t.interval``); unbounded at n = 1."""
    x = _array(values)
    n, mean = x.size, float(x.mean())
    if n == 1:
        return Cell(1, mean, None, Interval(-math.inf, math.inf, UNBOUNDED))
    std = float(x.std(ddof=1))
    if std == 0.0:
        return Cell(n, mean, 0.0, Interval(mean, mean, "t"))
    low, high = sps.t.interval(confidence, df=n - 1, loc=mean, scale=std / math.sqrt(n))
    return Cell(n, mean, std, Interval(float(low), float(high), "t"))


def _prob_improvement(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(x > y) + ½ P(x = y) over all pairs; vectorised over leading axes for ``scipy.stats.bootstrap``."""
    x = np.moveaxis(np.asarray(x), axis, -1)[..., :, None]
    y = np.moveaxis(np.asarray(y), axis, -1)[..., None, :]
    return (x > y).mean(axis=(-2, -1)) + 0.5 * (x == y).mean(axis=(-2, -1))


def compare(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE,
            n_resamples: int = 2000, seed: int = 0) -> Comparison:
    """Welch's test and interval for mean(a) − mean(b), and the probability of improvement of a over b.

    With one seed on either side (no variance to estimate) the test is undefined: p = 1 and the interval is
    unbounded. With zero spread on both sides, two different means are separated (p = 0) and equal ones are
    not (p = 1). The probability of improvement's interval is a percentile bootstrap over both samples; it
    under-covers below about 8 seeds a side, as every bootstrap does, and is [0, 1] with one seed."""
    x, y = _array(a), _array(b)
    diff = float(x.mean() - y.mean())
    poi = float(_prob_improvement(x, y))
    if x.size < 2 or y.size < 2:  # no spread to estimate on one side
        p_value, interval = 1.0, Interval(-math.inf, math.inf, UNBOUNDED)
        prob_interval = Interval(0.0, 1.0, UNBOUNDED)
    elif x.std() == 0.0 and y.std() == 0.0:  # every seed alike on both sides
        p_value = 0.0 if diff != 0.0 else 1.0
        interval, prob_interval = Interval(diff, diff, "welch"), Interval(poi, poi, "exact")
    else:
        result = _welch(x, y)
        ci = result.confidence_interval(confidence)
        p_value = float(result.pvalue)
        interval = Interval(float(ci.low), float(ci.high), "welch")
        boot = sps.bootstrap((x, y), _prob_improvement, n_resamples=n_resamples, confidence_level=confidence,
                             method="percentile", vectorized=True, paired=False,
                             random_state=np.random.default_rng(seed))
        prob_interval = Interval(float(boot.confidence_interval.low), float(boot.confidence_interval.high),
                                 "bootstrap percentile")
    return Comparison(n_a=int(x.size), n_b=int(y.size), diff=diff, interval=interval, p_value=p_value,
                      prob_improvement=poi, prob_interval=prob_interval,
                      seeds_needed=seeds_to_separate(x, y))


def holm(p_values: Sequence[float], alpha: float = ALPHA) -> list[bool]:
    """Holm-Bonferroni step-down: which hypotheses of the family are rejected (the pair is separated), with
    the family-wise error held at ``alpha``. The i-th smallest p (from 0) is compared with alpha / (m − i);
    the first that fails stops the procedure."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    m = len(p_values)
    for rank, i in enumerate(order):
        if not p_values[i] <= alpha / (m - rank):
            break
        rejected[i] = True
    return rejected


def is_margin(value: object) -> bool:
    """A usable equivalence margin: a finite number above 0 (not a bool). The sweeper's ``tie_within``, the
    report's ``--tie-within`` and :func:`equivalence_p` accept the same values."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0 < value < math.inf)


def equivalence_p(a: Sequence[float], b: Sequence[float], margin: float) -> float:
    """p-value of "the true difference of means lies inside ±``margin``", by two one-sided Welch tests
    (TOST: ``scipy.stats.ttest_ind`` against −margin and against +margin; the larger p). p ≤ alpha means the
    pair is tied within the margin at level alpha: its (1 − 2·alpha) Welch interval lies inside ±margin.

    With one seed on either side nothing bounds the difference: p = 1. With zero spread on both sides the
    difference is exact: p = 0 strictly inside the margin, else 1."""
    x, y = _array(a), _array(b)
    if not is_margin(margin):
        raise ValueError(f"equivalence margin {margin!r}: a positive number (units of the metric)")
    if x.size < 2 or y.size < 2:
        return 1.0
    diff = float(x.mean() - y.mean())
    if x.std() == 0.0 and y.std() == 0.0:
        return 0.0 if abs(diff) < margin else 1.0
    above_low = _welch(x + margin, y, alternative="greater").pvalue
    below_high = _welch(x - margin, y, alternative="less").pvalue
    return float(max(above_low, below_high))


def settle(p_diff: Sequence[float], p_tie: Sequence[float | None] | None = None,
           alpha: float = ALPHA) -> list[str]:
    """Each pair of a family ``"separated"``, ``"tied"`` or ``"open"``: Holm-Bonferroni over the pairs, each
    represented by the smaller of its difference p (Welch) and its equivalence p (:func:`equivalence_p`;
    None or no list: not tested). A settled pair is separated or tied by which of the two is smaller.

    A pair can be wrong in one way only, by its truth: equal means called separated, or means a margin apart
    called tied (in between, both calls are right). Holm's argument then holds as for one test per pair:
    the chance of any wrong call in the family is at most ``alpha``, under any dependence. Without
    equivalence p-values this is :func:`holm` on the difference p-values."""
    ties = list(p_tie) if p_tie is not None else [None] * len(p_diff)
    best = [p if t is None else min(p, t) for p, t in zip(p_diff, ties, strict=True)]
    return [("separated" if t is None or p <= t else "tied") if settled else "open"
            for p, t, settled in zip(p_diff, ties, holm(best, alpha), strict=True)]


def t_test_power(n: int | np.ndarray, effect: float, alpha: float = ALPHA) -> float | np.ndarray:
    """Power of a two-sided two-sample t-test with n seeds per arm at standardised effect |Δ| / σ
    (noncentral t, ``scipy.stats.nct``); n may be an array of seed counts."""
    ns = np.asarray(n, dtype=float)
    df = 2 * ns - 2
    noncentrality = abs(effect) * np.sqrt(ns / 2)
    critical = sps.t.ppf(1 - alpha / 2, df)
    power = sps.nct.sf(critical, df, noncentrality) + sps.nct.cdf(-critical, df, noncentrality)
    return float(power) if np.ndim(n) == 0 else power


def seeds_to_separate(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA,
                      power: float = POWER) -> int | None:
    """Seeds per arm at which a t-test at ``alpha`` separates the pair with ``power``, if the observed
    difference and pooled spread are the truth. The noncentral t replaces the normal approximation
    n ≈ 2 (z₁₋α/₂ + z₁₋β)² σ² / Δ², which is too optimistic at the small n this is used for.

    None when it cannot be estimated (no spread known, no difference observed) or exceeds
    ``MAX_SEEDS_ESTIMATE``; 2 when both sides have zero spread and differ. The power of every candidate n
    is computed in one vectorised call (a report judges hundreds of pairs), small counts first."""
    x, y = _array(a), _array(b)
    delta = abs(float(x.mean() - y.mean()))
    variances = [float(v.var(ddof=1)) for v in (x, y) if v.size > 1]
    if delta == 0.0 or not variances:
        return None
    sigma = math.sqrt(sum(variances) / len(variances))
    if sigma == 0.0:
        return 2
    for low, high in ((2, 64), (65, MAX_SEEDS_ESTIMATE)):
        ns = np.arange(low, high + 1)
        enough = np.flatnonzero(t_test_power(ns, delta / sigma, alpha) >= power)
        if enough.size:
            return int(ns[enough[0]])
    return None


LEARNED_MARGIN = 0.10  # without a control run: learned = above chance + 10% of the way to 100%


def learned_floor(chance: float) -> float:
    """The lowest top-1 (%) that counts as having learned a task whose chance is ``chance`` (%): chance +
    10% of (100 − chance), whatever a control's bound says (the report and the adaptive sweeper)."""
    return chance + learned_band(chance)


def learned_band(chance: float) -> float:
    """How far (top-1 points) a seed must clear the learned threshold to count as a second mode in
    :func:`seed_unstable`: the same 10% of (100 − chance) as the floor's margin over chance."""
    return LEARNED_MARGIN * (100.0 - chance)


def learned_mask(values: Sequence[float], threshold: float) -> list[bool]:
    """Which seeds learned the task: strictly above ``threshold`` (a control's upper bound, or chance plus a
    margin)."""
    return [float(v) > threshold for v in values]


def seed_unstable(values: Sequence[float], threshold: float, band: float = 0.0) -> bool:
    """Seeds in two modes, one that did not learn the task and one that did: some seeds at or below
    ``threshold`` and some above ``threshold + band``. A mean of such a cell describes no run.

    ``band`` keeps one mode that sits across the threshold's edge from being called two: pooling's five
    odd-one-out seeds (15.6-21.1 around a threshold of 19, every one above identity's 8.2-12.8) learned a
    little on every seed, and their mean describes them; Nyström's 10.4 / 69.8 on sum mod 10 are two modes.
    The report and the sweeper pass :func:`learned_band`; 0 is "both sides of the threshold"."""
    values = [float(v) for v in values]
    return any(v <= threshold for v in values) and any(v > threshold + band for v in values)


def rate_interval(k: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson interval of a rate of k in n (``scipy.stats.binomtest``)."""
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(float(ci.low), float(ci.high), "wilson")


def chance_normalised(top1: float, chance: float) -> float:
    """0 at chance, 1 at 100% (top-1 in percent)."""
    return (top1 - chance) / (100.0 - chance)


def _iqm(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    pooled = np.concatenate([np.asarray(s) for s in samples], axis=axis)
    return sps.trim_mean(pooled, 0.25, axis=axis)


def stratified_iqm(scores_by_task: Sequence[Sequence[float]], confidence: float = CONFIDENCE,
                   n_resamples: int = 2000, seed: int = 0) -> tuple[float, Interval]:
    """Interquartile mean (25% trimmed from each end) of the scores of every run on every task, with a
    stratified bootstrap interval: each resample redraws the runs of each task from that task's own runs
    (``scipy.stats.bootstrap`` with independent samples), so a task never borrows runs from another.

    Unbounded when every task has a single run (there is nothing to resample)."""
    samples = [_array(task) for task in scores_by_task]
    point = float(_iqm(*samples))
    varied = [s for s in samples if s.size > 1]
    if not varied:
        return point, Interval(-math.inf, math.inf, UNBOUNDED)
    # a task with one run resamples to itself: held fixed (scipy's bootstrap wants two or more per sample)
    fixed = [s for s in samples if s.size == 1]

    def statistic(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
        shape = resampled[0].shape[:-1]
        return _iqm(*resampled, *(np.broadcast_to(s, (*shape, 1)) for s in fixed), axis=axis)

    boot = sps.bootstrap(varied, statistic, n_resamples=n_resamples, confidence_level=confidence,
                         method="percentile", vectorized=True, paired=False,
                         random_state=np.random.default_rng(seed))
    ci = boot.confidence_interval
    return point, Interval(float(ci.low), float(ci.high), "stratified bootstrap percentile")
