"""Evaluation results (neverstop eval's JSON) written by hand, for the report's
and `neverstop compare`'s tests."""

import json

from neverstop.envs import rollout


def eval_result(task, successes, episodes, outcomes=None, seed=1_000_000, **extra) -> dict:
    """A result with these counts; with `outcomes` (one "0"/"1" per episode), as
    neverstop eval writes it now, on `seed`'s episodes of held-out objects."""
    low, high = rollout.wilson_interval(successes, episodes)
    result = {
        "task": task,
        "successes": successes,
        "episodes": episodes,
        "success_rate": successes / episodes,
        "interval_95": [low, high],
    }
    if outcomes is not None:
        result.update(outcomes=outcomes, seed=seed, object_split="eval")
    result.update(extra)
    return result


def write(path, result: dict) -> str:
    with open(path, "w") as f:
        json.dump(result, f)
    return str(path)
