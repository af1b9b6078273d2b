"""mixerlab.stats against known distributions: intervals cover at their nominal rate, tests separate truly
different configurations at the rate their power predicts and identical ones at about alpha, Holm holds the
family-wise error, and the degenerate cases of few seeds give honest (unbounded or undefined) answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from mixerlab import stats

RNG_SEED = 20261206


def _binomial_band(p: float, trials: int, z: float = 4.0) -> tuple[float, float]:
    """A band that a rate of true value p over ``trials`` leaves with probability < 1e-4."""
    half = z * math.sqrt(p * (1 - p) / trials)
    return p - half, p + half


def test_t_interval_matches_scipy_and_covers_at_its_nominal_rate():
    rng = np.random.default_rng(RNG_SEED)
    cell = stats.summarize([1.0, 2.0, 4.0])
    low, high = sps.t.interval(0.95, 2, loc=7 / 3, scale=np.std([1, 2, 4], ddof=1) / math.sqrt(3))
    assert (cell.n, cell.interval.low, cell.interval.high) == (3, pytest.approx(low), pytest.approx(high))
    trials = 2000
    for n in (2, 3, 5):
        covered = sum(stats.summarize(rng.normal(50.0, 4.0, n)).interval.contains(50.0)
                      for _ in range(trials))
        lo, hi = _binomial_band(0.95, trials)
        assert lo <= covered / trials <= hi, (n, covered / trials)


def test_one_seed_has_no_interval():
    cell = stats.summarize([71.5])
    assert (cell.n, cell.mean, cell.std) == (1, 71.5, None)
    assert not cell.interval.bounded
    pair = stats.compare([71.5], [60.0, 61.0])
    assert pair.p_value == 1.0 and not pair.interval.bounded
    assert (pair.prob_interval.low, pair.prob_interval.high) == (0.0, 1.0)


def test_identical_configurations_are_separated_at_about_alpha():
    rng = np.random.default_rng(RNG_SEED + 1)
    trials = 800
    rejections = sum(stats.compare(rng.normal(60, 3, 5), rng.normal(60, 3, 5), n_resamples=50).p_value < 0.05
                     for _ in range(trials))
    lo, hi = _binomial_band(0.05, trials)
    assert lo <= rejections / trials <= hi


def test_different_configurations_are_separated_at_the_rate_their_power_predicts():
    rng = np.random.default_rng(RNG_SEED + 2)
    n, effect, trials = 5, 2.0, 800  # true difference of 2 standard deviations
    expected = stats.t_test_power(n, effect)
    rejections = sum(
        stats.compare(rng.normal(60 + 2 * effect, 2, n), rng.normal(60, 2, n), n_resamples=50).p_value < 0.05
        for _ in range(trials))
    # Welch loses a little power against the pooled t-test that t_test_power describes
    lo, hi = _binomial_band(expected, trials)
    assert lo - 0.03 <= rejections / trials <= hi, (rejections / trials, expected)
    assert expected > 0.7


def test_welch_interval_and_p_are_scipys():
    a, b = [90.0, 91.0, 92.5], [80.0, 81.0, 79.0, 82.0]
    pair = stats.compare(a, b)
    result = sps.ttest_ind(a, b, equal_var=False)
    ci = result.confidence_interval(0.95)
    assert pair.p_value == pytest.approx(result.pvalue)
    assert (pair.interval.low, pair.interval.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert pair.diff == pytest.approx(np.mean(a) - np.mean(b))


def test_probability_of_improvement_is_mann_whitney_u_over_pairs():
    a, b = [3.0, 5.0, 5.0, 9.0], [1.0, 5.0, 7.0]
    pair = stats.compare(a, b)
    u = sps.mannwhitneyu(a, b).statistic
    assert pair.prob_improvement == pytest.approx(u / (len(a) * len(b)))
    # by hand: 3 > 1; 5 > 1, 5 = 5 (twice); 9 > all three
    assert pair.prob_improvement == pytest.approx((1 + 2 * 1.5 + 3) / 12)
    assert pair.prob_interval.low <= pair.prob_improvement <= pair.prob_interval.high


def test_zero_spread_on_both_sides():
    apart = stats.compare([70.0, 70.0], [10.0, 10.0])
    assert apart.p_value == 0.0 and apart.prob_improvement == 1.0 and apart.seeds_needed == 2
    equal = stats.compare([10.0, 10.0], [10.0, 10.0, 10.0])
    assert equal.p_value == 1.0 and equal.prob_improvement == 0.5 and equal.seeds_needed is None


def test_zero_spread_on_one_side_is_a_one_sample_test_of_the_other_and_warns_nothing():
    """A mixer that predicts one class on every seed scores exactly chance each time (attention on
    Pathfinder: 50.00 three times). Welch's test then reduces to the other side's one-sample t-test against
    that value, and scipy's precision-loss warning about the constant side is not passed on."""
    learned, constant = [54.92, 55.27, 55.50], [50.0, 50.0, 50.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = stats.compare(learned, constant)
        tie = stats.equivalence_p(learned, constant, 6.0)
    assert c.p_value == pytest.approx(sps.ttest_1samp(learned, 50.0).pvalue, rel=1e-9)
    one_sample = sps.ttest_1samp(learned, 50.0).confidence_interval(0.95)
    assert (c.interval.low, c.interval.high) == pytest.approx((one_sample.low - 50.0, one_sample.high - 50.0))
    # inside ±6: the larger of the one-sided tests, against 56 (the binding side)
    assert tie == pytest.approx(sps.ttest_1samp(learned, 56.0, alternative="less").pvalue, rel=1e-9)


def test_equivalence_is_the_interval_inside_the_margin_and_holds_its_level_at_the_boundary():
    rng = np.random.default_rng(RNG_SEED + 7)
    for _ in range(50):  # p <= alpha exactly when the (1 - 2 alpha) Welch interval lies inside ±margin
        a, b, margin = rng.normal(60, 2, 6), rng.normal(60.5, 1, 4), 3.0
        ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.90)
        assert (stats.equivalence_p(a, b, margin) <= 0.05) == (-margin < ci.low and ci.high < margin)
    trials = 800  # true difference on the margin's edge: called tied at most alpha of the time
    tied = sum(stats.equivalence_p(rng.normal(61, 1, 5), rng.normal(60, 1, 5), 1.0) <= 0.05
               for _ in range(trials))
    assert tied / trials <= _binomial_band(0.05, trials)[1]
    # identical configurations, margin of two standard deviations, ten seeds each: nearly always tied
    tied = sum(stats.equivalence_p(rng.normal(60, 1, 10), rng.normal(60, 1, 10), 2.0) <= 0.05
               for _ in range(200))
    assert tied / 200 > 0.9


def test_equivalence_degenerate_cases():
    assert stats.equivalence_p([10.0, 10.0], [10.0, 10.0, 10.0], 0.5) == 0.0  # exact, inside
    assert stats.equivalence_p([10.0, 10.0], [11.0, 11.0], 0.5) == 1.0  # exact, outside
    assert stats.equivalence_p([10.0], [10.0, 10.1], 5.0) == 1.0  # one seed bounds nothing
    for bad in (-1, 0, math.inf, True):  # the margins the sweeper and the report refuse too
        with pytest.raises(ValueError, match=f"equivalence margin {bad!r}"):
            stats.equivalence_p([1.0, 2.0], [1.0, 2.0], bad)


def test_settle_calls_each_pair_by_its_smaller_p_and_holds_the_family_wise_error():
    assert stats.settle([0.01, 0.04, 0.03]) == ["separated", "open", "open"]  # no margin: Holm's calls
    assert stats.settle([0.9, 0.001], [0.001, None]) == ["tied", "separated"]
    assert stats.settle([0.004, 0.5], [0.001, 0.5]) == ["tied", "open"]  # the smaller p names the call
    # a separation found without a margin is found with one too
    assert stats.settle([0.001, 0.02], [0.002, 0.03], 0.05) == ["separated", "separated"]
    rng = np.random.default_rng(RNG_SEED + 9)
    trials, wrong = 400, 0
    for _ in range(trials):  # pair 1: equal means (separated is wrong); pair 2: a margin apart (tied is)
        a, b, c, d = rng.normal(0, 1, 5), rng.normal(0, 1, 5), rng.normal(1, 1, 5), rng.normal(0, 1, 5)
        p_diff = [sps.ttest_ind(a, b, equal_var=False).pvalue, sps.ttest_ind(c, d, equal_var=False).pvalue]
        calls = stats.settle(p_diff, [stats.equivalence_p(a, b, 1.0), stats.equivalence_p(c, d, 1.0)], 0.05)
        wrong += calls[0] == "separated" or calls[1] == "tied"
    assert wrong / trials <= _binomial_band(0.05, trials)[1]


def test_holm_step_down():
    assert stats.holm([0.01, 0.04, 0.03]) == [True, False, False]  # 0.01 <= .05/3; 0.03 > .05/2
    assert stats.holm([0.01, 0.02, 0.03]) == [True, True, True]  # .01<=.0167, .02<=.025, .03<=.05
    assert stats.holm([0.5, 0.001]) == [False, True]
    assert stats.holm([]) == []


def test_holm_holds_the_family_wise_error_over_many_identical_pairs():
    rng = np.random.default_rng(RNG_SEED + 3)
    trials, k, n = 1000, 6, 4
    runs = rng.normal(50, 5, (trials, k, n))
    p = np.stack([sps.ttest_ind(runs[:, i], runs[:, j], axis=-1, equal_var=False).pvalue
                  for i in range(k) for j in range(i + 1, k)], axis=1)  # (trials, 15 pairs)
    any_false = sum(any(stats.holm(list(family))) for family in p)
    any_uncorrected = int((p < 0.05).any(axis=1).sum())
    assert any_false / trials <= 0.05 + 4 * math.sqrt(0.05 * 0.95 / trials)
    assert any_uncorrected / trials > 0.2  # 15 uncorrected claims: some false one in most families


def test_seeds_to_separate_gives_the_power_it_promises():
    rng = np.random.default_rng(RNG_SEED + 4)
    # observed difference and spread taken as the truth: a 1.5-sigma effect
    observed_a, observed_b = [61.5, 63.0, 64.5], [60.0, 61.5, 63.0]
    n = stats.seeds_to_separate(observed_a, observed_b)
    assert n is not None and n > 3
    assert stats.t_test_power(n, 1.5 / 1.5) >= 0.8 > stats.t_test_power(n - 1, 1.0)
    trials = 1000
    hits = int((sps.ttest_ind(rng.normal(1.5, 1.5, (trials, n)), rng.normal(0, 1.5, (trials, n)),
                              axis=-1).pvalue < 0.05).sum())
    lo, _ = _binomial_band(0.8, trials)
    assert hits / trials >= lo
    assert stats.seeds_to_separate([60.0, 60.1], [60.0, 60.1]) is None  # no difference observed
    assert stats.seeds_to_separate([60.0], [61.0]) is None  # no spread known


def test_seed_unstable_cells_and_their_rate():
    # Nystrom on sum mod 10: 10.4 and 69.8 with chance 10 (identity's upper bound ~ 11)
    assert stats.learned_mask([10.4, 69.8], 11.0) == [False, True]
    assert stats.seed_unstable([10.4, 69.8], 11.0)
    assert not stats.seed_unstable([10.4, 10.9], 11.0)
    assert not stats.seed_unstable([60.0, 69.8], 11.0)
    # one mode across the threshold's edge is not two: pooling on odd one out, threshold 19, band 9
    pooling = [16.4, 15.6, 21.1, 18.0, 17.6]
    assert stats.learned_floor(10.0) == pytest.approx(19.0) and stats.learned_band(10.0) == pytest.approx(9.0)
    assert stats.seed_unstable(pooling, 19.0) and not stats.seed_unstable(pooling, 19.0, band=9.0)
    assert stats.seed_unstable([10.4, 69.8], 19.0, band=9.0)  # Nystrom: two modes at any band up to 50
    assert stats.seed_unstable([18.0, 28.1], 19.0, 9.0) and not stats.seed_unstable([18.0, 28.0], 19.0, 9.0)
    ci = stats.rate_interval(1, 2)
    expected = sps.binomtest(1, 2).proportion_ci(0.95, method="wilson")
    assert (ci.low, ci.high) == (pytest.approx(expected.low), pytest.approx(expected.high))
    assert ci.low < 0.5 < ci.high


def test_stratified_iqm_resamples_within_tasks():
    task_a, task_b = [0.1, 0.2, 0.3, 0.4], [0.8, 0.9, 0.85]
    point, ci = stats.stratified_iqm([task_a, task_b], n_resamples=500)
    assert point == pytest.approx(sps.trim_mean(task_a + task_b, 0.25))
    assert ci.low <= point <= ci.high and ci.bounded
    # stratified: every resample keeps 4 runs of task a and 3 of task b, so the IQM never falls to the
    # mean of task a's runs alone (which an unstratified resample of all 7 runs can reach)
    assert ci.low > 0.3
    fixed_point, fixed = stats.stratified_iqm([[0.5], [0.7]])
    assert fixed_point == pytest.approx(0.6) and not fixed.bounded
    _, partly = stats.stratified_iqm([task_a, [0.9]], n_resamples=500)
    assert partly.bounded


def test_chance_normalised():
    assert stats.chance_normalised(10.0, 10.0) == 0.0
    assert stats.chance_normalised(100.0, 50.0) == 1.0
    assert stats.chance_normalised(55.0, 10.0) == pytest.approx(0.5)
