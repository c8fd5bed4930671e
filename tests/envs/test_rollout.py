"""Tests for neverstop/envs/rollout.py: the Wilson interval and seeded rollouts."""

import numpy as np
import pytest

from neverstop.envs import rollout


@pytest.mark.parametrize(
    "successes, trials, expected",
    [
        # By hand: centre = (p + z^2/2n) / (1 + z^2/n),
        # half = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n), z = 1.96.
        (0, 10, (0.0, 0.2775)),
        (5, 10, (0.2366, 0.7634)),
        (10, 10, (0.7225, 1.0)),
        (200, 200, (0.9812, 1.0)),
        (94, 200, (0.4020, 0.5391)),
    ],
)
def test_wilson_interval_matches_hand_computed_values(successes, trials, expected):
    low, high = rollout.wilson_interval(successes, trials)
    assert low == pytest.approx(expected[0], abs=1e-3)
    assert high == pytest.approx(expected[1], abs=1e-3)
    assert 0.0 <= low <= successes / trials <= high <= 1.0


def test_wilson_interval_is_symmetric_and_widens_with_z():
    low, high = rollout.wilson_interval(3, 20)
    mirror_low, mirror_high = rollout.wilson_interval(17, 20)
    assert low == pytest.approx(1 - mirror_high)
    assert high == pytest.approx(1 - mirror_low)
    wide_low, wide_high = rollout.wilson_interval(3, 20, z=2.576)
    assert wide_low < low and wide_high > high


@pytest.mark.parametrize(
    "successes, trials, message",
    [
        (0, 0, "trials must be positive, got 0"),
        (0, -3, "trials must be positive, got -3"),
        (-1, 10, r"successes must be in \[0, 10\], got -1"),
        (11, 10, r"successes must be in \[0, 10\], got 11"),
    ],
)
def test_wilson_interval_rejects_invalid_counts(successes, trials, message):
    with pytest.raises(ValueError, match=message):
        rollout.wilson_interval(successes, trials)


@pytest.mark.parametrize(
    "counts, expected",
    [
        # Newcombe (1998), Table II, method 10 (hybrid score), his examples (a), (b),
        # (d), (g) and (h).
        ((56, 70, 48, 80), (0.0524, 0.3339)),
        ((9, 10, 3, 10), (0.1705, 0.8090)),
        ((5, 56, 0, 29), (-0.0381, 0.1926)),
        ((0, 10, 0, 20), (-0.1611, 0.2775)),
        ((10, 10, 0, 20), (0.6791, 1.0)),
    ],
)
def test_difference_interval_matches_newcombes_published_values(counts, expected):
    low, high = rollout.difference_interval(*counts)
    assert low == pytest.approx(expected[0], abs=1e-4)
    assert high == pytest.approx(expected[1], abs=1e-4)


def test_difference_interval_is_antisymmetric_and_checks_counts():
    low, high = rollout.difference_interval(30, 100, 45, 90)
    swapped_low, swapped_high = rollout.difference_interval(45, 90, 30, 100)
    assert (low, high) == pytest.approx((-swapped_high, -swapped_low))
    assert low < 30 / 100 - 45 / 90 < high < 0
    with pytest.raises(ValueError, match="trials must be positive, got 0"):
        rollout.difference_interval(0, 0, 1, 2)


def _pairs(both, only_a, only_b, neither):
    """Outcomes of two evaluations on the same seeds with these four counts."""
    a = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
    b = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
    return a, b


def test_paired_difference_interval_matches_a_published_value():
    # Fagerland, Lydersen and Laake, Statistical Analysis of Contingency Tables
    # (2017), chapter 8: complete response before and after consolidation
    # therapy (Cavo et al., 2012), Newcombe's square-and-add: -0.0621 (-0.1186 to
    # -0.0046). As independent samples the same margins give an interval that
    # reaches +0.05.
    low, high = rollout.paired_difference_interval(*_pairs(59, 6, 16, 80))
    assert (low, high) == pytest.approx((-0.1186, -0.0046), abs=1e-4)
    unpaired = rollout.difference_interval(65, 161, 75, 161)
    assert unpaired[0] < low and unpaired[1] > 0.04


def test_paired_difference_interval_without_correlation_is_the_unpaired_one():
    # both * neither - only_a * only_b = 25 * 25 - 25 * 25 = 0: no correlation.
    paired = rollout.paired_difference_interval(*_pairs(25, 25, 25, 25))
    assert paired == pytest.approx(rollout.difference_interval(50, 100, 50, 100))
    # Newcombe's correction: a correlation of up to n/2 in the cross product counts as none.
    # Here 25 * 26 - 24 * 25 = 50 = n / 2.
    slight = rollout.paired_difference_interval(*_pairs(25, 24, 25, 26))
    assert slight == pytest.approx(rollout.difference_interval(49, 100, 50, 100))
    stronger = rollout.paired_difference_interval(*_pairs(26, 23, 24, 27))  # 702 - 552 = 150
    assert stronger[1] - stronger[0] < slight[1] - slight[0]
    # Negatively correlated outcomes make it wider than the unpaired one.
    low, high = rollout.paired_difference_interval(*_pairs(10, 40, 40, 10))
    unpaired_low, unpaired_high = rollout.difference_interval(50, 100, 50, 100)
    assert low < unpaired_low and high > unpaired_high


def test_paired_difference_interval_is_antisymmetric_and_checks_lengths():
    a, b = _pairs(40, 15, 5, 40)
    low, high = rollout.paired_difference_interval(a, b)
    swapped = rollout.paired_difference_interval(b, a)
    assert (low, high) == pytest.approx((-swapped[1], -swapped[0]))
    assert 0 < low < 0.10 < high
    with pytest.raises(ValueError, match="same positive number of episodes, got 3 and 2"):
        rollout.paired_difference_interval([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="got 0 and 0"):
        rollout.paired_difference_interval([], [])


def test_paired_difference_interval_covers_and_is_narrower_on_correlated_pairs():
    """Simulated evaluations on shared scenes: each scene is easy (both policies
    likely succeed) or hard; the two policies' true rates differ by 5 points."""
    rng = np.random.default_rng(0)
    n, trials, covered, widths, unpaired_widths = 200, 400, 0, [], []
    truth = (0.5 * 0.85 + 0.5 * 0.15) - (0.5 * 0.80 + 0.5 * 0.10)  # 0.50 - 0.45
    for _ in range(trials):
        easy = rng.random(n) < 0.5
        a = rng.random(n) < np.where(easy, 0.85, 0.15)
        b = rng.random(n) < np.where(easy, 0.80, 0.10)
        low, high = rollout.paired_difference_interval(a.tolist(), b.tolist())
        covered += low <= truth <= high
        widths.append(high - low)
        u_low, u_high = rollout.difference_interval(int(a.sum()), n, int(b.sum()), n)
        unpaired_widths.append(u_high - u_low)
    assert covered / trials >= 0.92
    assert np.mean(widths) < 0.8 * np.mean(unpaired_widths)


def test_rollout_counts_are_consistent():
    outcomes = []
    result = rollout.rollout("base", "random", 5, seed=2, progress=outcomes.append)
    assert (result.task, result.policy, result.object_split) == ("base", "random", "eval")
    assert result.renderer == "tiny"
    assert result.episodes == 5
    assert result.first_seed == 2
    assert 0 <= result.successes <= 5
    assert 5 <= result.steps <= 50
    assert outcomes == [bool(o) for o in outcomes] and len(outcomes) == 5
    assert sum(outcomes) == result.successes
    as_dict = result.as_dict()
    assert as_dict["episodes"] == 5
    assert as_dict["success_rate"] == result.successes / 5
    assert as_dict["interval_95"] == list(rollout.wilson_interval(result.successes, 5))


def test_rollout_is_repeatable():
    first = rollout.rollout("base", "random", 3, seed=10, object_split="train")
    second = rollout.rollout("base", "random", 3, seed=10, object_split="train")
    assert first.object_split == "train"
    assert (first.successes, first.steps) == (second.successes, second.steps)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task="base", policy="random", episodes=0), "episodes must be positive, got 0"),
        (dict(task="base", policy="greedy", episodes=1), "unknown policy 'greedy'"),
        (dict(task="nope", policy="random", episodes=1), "unknown task 'nope'"),
    ],
)
def test_rollout_rejects_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rollout.rollout(**kwargs)
