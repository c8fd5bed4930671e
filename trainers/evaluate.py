"""`neverstop eval`: a checkpoint's greedy policy (CEM, or its actor) on held-out objects.

Episodes are split over worker processes (spawned, one TF thread each, the
network loaded once per process). Episode i uses the seed
`collect.episode_seed(seed, i)`, so the result is the same whatever the
number of workers. The result is JSON: success rate and its Wilson 95%
interval, with what was evaluated. `workers=0` runs the episodes in the
calling process instead (a workflow step already is a worker process;
starting TensorFlow again would cost more than a small evaluation).
"""

import multiprocessing
import os
import time
from typing import Callable, List, Optional, Tuple

from neverstop import schema

_WORKER = {}


def _init_worker(*args) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
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


def _run(seed: int) -> Tuple[int, bool, int]:
    from neverstop.envs import policies

    if "error" in _WORKER:
        raise RuntimeError(f"an evaluation worker could not start: {_WORKER['error']}")

    _, actions, _, info = policies.run_episode(_WORKER["env"], _WORKER["policy"], seed)
    return seed, bool(info["success"]), len(actions)


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
    seeds = [collect.episode_seed(seed, i) for i in range(episodes)]
    start = time.perf_counter()
    results: List[Tuple[int, bool, int]] = []
    initargs = (ref.prefix, task, object_split, renderer, acting)
    if workers == 0:
        _load(*initargs)
        try:
            for result in map(_run, seeds):
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
            for result in pool.imap_unordered(_run, seeds):
                results.append(result)
                if progress:
                    progress(result[1])
    seconds = time.perf_counter() - start
    successes = sum(ok for _, ok, _ in results)
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
        "steps": sum(n for _, _, n in results),
        "seed": seed,
        "workers": workers,
        "renderer": renderer,
        "seconds": seconds,
    }


def write_result(result: dict, out: str) -> None:
    from neverstop import jsonfile

    jsonfile.write_atomic(out, result)
