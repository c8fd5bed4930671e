"""Run a policy for many seeded episodes and summarise the outcome."""

import dataclasses
import math
import time
from typing import Callable, Optional, Tuple

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
    correlated, so for them it is wider than it needs to be, not narrower."""
    low_a, high_a = wilson_interval(successes_a, trials_a, z)  # checks the counts
    low_b, high_b = wilson_interval(successes_b, trials_b, z)
    p_a, p_b = successes_a / trials_a, successes_b / trials_b
    delta = p_a - p_b
    return (
        delta - math.sqrt((p_a - low_a) ** 2 + (high_b - p_b) ** 2),
        delta + math.sqrt((high_a - p_a) ** 2 + (p_b - low_b) ** 2),
    )


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
