"""`neverstop eval`: a checkpoint's greedy policy (CEM, or its actor) on held-out objects.

Episodes are split over worker processes (spawned, one TF thread each, the
network loaded once per process). Episode i uses the seed
`collect.episode_seed(seed, i)`, so the result is the same whatever the
number of workers. The result is JSON: success rate and its Wilson 95%
interval, with what was evaluated, and `outcomes`, one character per episode
in seed order ("1" a success, "0" not), so that two evaluations on the same
seeds can be compared pair by pair (`rollout.paired_difference_interval`).

`workers=0` runs the episodes in the calling process instead (a workflow step
already is a worker process; starting TensorFlow again would cost more than a
small evaluation). That process keeps its own TensorFlow threading, and a
convolution summed by two threads can differ in the last bits from one
summed by one; where CEM's choice is near a tie, that picks another grasp.
So `workers=0` repeats itself, and `workers>=1` repeats itself, but the two
can differ by a few episodes (8 of 200 on the `small` base checkpoint:
122 against 118 successes; docs/trainer.md).
"""

import multiprocessing
import os
import time
from typing import Callable, List, Optional, Tuple

from neverstop import schema

_WORKER = {}


def _init_worker(*args) -> None:
    from neverstop.trainers import policy as policy_lib

    policy_lib.set_threads(1)
    try:
        _load(*args)
    except Exception as e:  # noqa: BLE001 - a raising initializer makes Pool respawn forever
        _WORKER["error"] = f"{type(e).__name__}: {e}"


def _load(checkpoint: str, task: str, object_split: str, renderer: str, acting: str) -> None:
    from neverstop.envs import grasp_env
    from neverstop.trainers import policy as policy_lib

    _WORKER["policy"] = policy_lib.from_checkpoint(checkpoint, acting=acting)
    config = grasp_env.EnvConfig(object_split=object_split, renderer=renderer)
    _WORKER["env"] = grasp_env.GraspEnv(task, config)


def _run(job: Tuple[int, int]) -> Tuple[int, bool, int]:
    """(episode index, seed) -> (episode index, success, steps)."""
    from neverstop.envs import policies

    if "error" in _WORKER:
        raise RuntimeError(f"an evaluation worker could not start: {_WORKER['error']}")

    index, seed = job
    _, actions, _, info = policies.run_episode(_WORKER["env"], _WORKER["policy"], seed)
    return index, bool(info["success"]), len(actions)


def evaluate(
    checkpoint: str,
    task: str = "base",
    episodes: int = 100,
    workers: int = 2,
    seed: int = 1_000_000,
    object_split: str = "eval",
    renderer: str = "tiny",
    progress: Optional[Callable[[bool], None]] = None,
    acting: Optional[str] = None,
) -> dict:
    """Runs the evaluation; returns the JSON-able result. `acting` None: the
    run's config.acting."""
    from neverstop.envs import collect, rollout
    from neverstop.trainers import checkpoints
    from neverstop.trainers.config import check_acting

    schema.validate_task(task)
    if episodes < 1:
        raise ValueError(f"--episodes must be positive, got {episodes}")
    if workers < 0:
        raise ValueError(f"--workers must be >= 0 (0: in this process), got {workers}")
    ref = checkpoints.locate(checkpoint)
    config = checkpoints.read_config(ref.run_dir)  # fail here, not in every worker
    acting = acting or config.acting
    check_acting(config, acting, checkpoint)
    jobs = [(i, collect.episode_seed(seed, i)) for i in range(episodes)]
    start = time.perf_counter()
    results: List[Tuple[int, bool, int]] = []
    initargs = (ref.prefix, task, object_split, renderer, acting)
    if workers == 0:
        _load(*initargs)
        try:
            for result in map(_run, jobs):
                results.append(result)
                if progress:
                    progress(result[1])
        finally:
            _WORKER.pop("env").close()
            _WORKER.clear()
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(
            min(workers, episodes), initializer=_init_worker, initargs=initargs
        ) as pool:
            for result in pool.imap_unordered(_run, jobs):
                results.append(result)
                if progress:
                    progress(result[1])
    seconds = time.perf_counter() - start
    succeeded = {i: ok for i, ok, _ in results}
    successes = sum(succeeded.values())
    low, high = rollout.wilson_interval(successes, episodes)
    return {
        "task": task,
        "checkpoint": ref.id,
        "checkpoint_prefix": os.path.abspath(ref.prefix),
        "policy": f"qtopt:{ref.id}",
        "acting": acting,
        "object_split": object_split,
        "episodes": episodes,
        "successes": successes,
        "success_rate": successes / episodes,
        "interval_95": [low, high],
        "outcomes": "".join("1" if succeeded[i] else "0" for i in range(episodes)),
        "steps": sum(n for _, _, n in results),
        "seed": seed,
        "workers": workers,
        "renderer": renderer,
        "seconds": seconds,
    }


def write_result(result: dict, out: str) -> None:
    from neverstop import jsonfile

    jsonfile.write_atomic(out, result)
