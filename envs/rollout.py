"""Run a policy for many seeded episodes and summarise the outcome."""

import dataclasses
import math
import time
from typing import Callable, Optional, Sequence, Tuple

from neverstop.envs import grasp_env as grasp_env_lib
from neverstop.envs import policies


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> Tuple[float, float]:
    """The Wilson score interval for a binomial proportion (95% by default)."""
    if trials <= 0:
        raise ValueError(f"trials must be positive, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, {trials}], got {successes}")
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int, z: float = 1.96
) -> Tuple[float, float]:
    """An interval for rate_a - rate_b: Newcombe's hybrid score interval (his
    method 10, 1998), built from the two Wilson intervals. It treats the two
    samples as independent; two evaluations on the same seeds are positively
    correlated, so for them it is wider than it needs to be, not narrower
    (`paired_difference_interval` uses the pairing)."""
    return _square_and_add(successes_a, trials_a, successes_b, trials_b, 0.0, z)


def paired_difference_interval(
    outcomes_a: Sequence[bool], outcomes_b: Sequence[bool], z: float = 1.96
) -> Tuple[float, float]:
    """An interval for rate_a - rate_b from two evaluations on the same seeds:
    outcome i of each is episode i, so the two are matched pairs. Newcombe's
    square-and-add for paired data (1998, Statistics in Medicine 17:2635): the
    two Wilson intervals combined with the estimated correlation between the
    outcomes (with his correction toward 0), so easy and hard scenes shared by
    both evaluations no longer count as noise. With no correlation it is
    `difference_interval`."""
    if len(outcomes_a) != len(outcomes_b) or not outcomes_a:
        raise ValueError(
            "paired outcomes need the same positive number of episodes, "
            f"got {len(outcomes_a)} and {len(outcomes_b)}"
        )
    pairs = list(zip(map(bool, outcomes_a), map(bool, outcomes_b)))
    both = pairs.count((True, True))
    only_a = pairs.count((True, False))
    only_b = pairs.count((False, True))
    n = len(pairs)
    neither = n - both - only_a - only_b
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = both * neither - only_a * only_b
    if cross > n / 2:
        cross -= n / 2
    elif cross > 0:
        cross = 0
    phi = cross / math.sqrt(margins) if margins else 0.0
    return _square_and_add(both + only_a, n, both + only_b, n, phi, z)


def _square_and_add(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int, phi: float, z: float
) -> Tuple[float, float]:
    low_a, high_a = wilson_interval(successes_a, trials_a, z)  # checks the counts
    low_b, high_b = wilson_interval(successes_b, trials_b, z)
    p_a, p_b = successes_a / trials_a, successes_b / trials_b
    delta = p_a - p_b

    def half(x: float, y: float) -> float:
        return math.sqrt(max(0.0, x * x + y * y - 2 * phi * x * y))

    return delta - half(p_a - low_a, high_b - p_b), delta + half(high_a - p_a, p_b - low_b)


@dataclasses.dataclass(frozen=True)
class RolloutResult:
    task: str
    policy: str
    object_split: str
    renderer: str
    episodes: int
    successes: int
    steps: int
    seconds: float
    first_seed: int

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes

    @property
    def interval(self) -> Tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)

    @property
    def episodes_per_s(self) -> float:
        return self.episodes / self.seconds

    def as_dict(self) -> dict:
        low, high = self.interval
        return dict(
            dataclasses.asdict(self),
            success_rate=self.success_rate,
            interval_95=[low, high],
            episodes_per_s=self.episodes_per_s,
        )


def rollout(
    task: str,
    policy: str,
    episodes: int,
    seed: int = 0,
    object_split: str = "eval",
    config: Optional[grasp_env_lib.EnvConfig] = None,
    progress: Optional[Callable[[bool], None]] = None,
) -> RolloutResult:
    """Runs `policy` on `task` for seeds seed, seed+1, ...; held-out objects by default.

    `progress(success)` is called after every episode (the CLI's progress bar).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be positive, got {episodes}")
    config = dataclasses.replace(config or grasp_env_lib.EnvConfig(), object_split=object_split)
    successes = steps = 0
    with grasp_env_lib.GraspEnv(task, config) as env:
        actor = policies.make_policy(policy, env)
        start = time.perf_counter()
        for i in range(episodes):
            _, actions, _, info = policies.run_episode(env, actor, seed + i)
            successes += int(info["success"])
            steps += len(actions)
            if progress:
                progress(bool(info["success"]))
        seconds = time.perf_counter() - start
        renderer = env.renderer
    return RolloutResult(
        task, policy, object_split, renderer, episodes, successes, steps, seconds, seed
    )
