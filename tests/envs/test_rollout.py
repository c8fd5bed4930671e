"""Tests for neverstop/envs/rollout.py: the Wilson interval and seeded rollouts."""

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
