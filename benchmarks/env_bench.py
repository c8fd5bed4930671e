"""Grasp episodes per second: our GraspEnv against pybullet's KukaDiverseObjectEnv.

Both run the same number of grasp episodes with a uniform random policy, at
the same image size, on held-out objects, in this one process. The peer
rebuilds its whole scene on every reset; ours keeps the robot and tray.
"""

import importlib.util
import os
import sys
import time
import types
from typing import Callable, Optional

import numpy as np

from neverstop import schema
from neverstop.envs import grasp_env as grasp_env_lib
from neverstop.envs import rollout


def load_peer_env_class():
    """Imports KukaDiverseObjectEnv without running pybullet_envs/__init__.py.

    That __init__ registers dozens of gym environments through an API that
    gym 0.26 removed, so it fails; the env module itself only needs `gym`
    (the `bench` extra) and `pkg_resources.parse_version`, which newer
    setuptools no longer ship, so we provide it from `packaging`.
    """
    spec = importlib.util.find_spec("pybullet_envs")
    if spec is None or spec.origin is None:
        raise ImportError("pybullet_envs is not installed (it ships with pybullet)")
    package_dir = os.path.dirname(spec.origin)
    for name, path in (
        ("pybullet_envs", package_dir),
        ("pybullet_envs.bullet", os.path.join(package_dir, "bullet")),
    ):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [path]
            sys.modules[name] = module
    if importlib.util.find_spec("pkg_resources") is None:
        from packaging.version import parse as parse_version

        shim = types.ModuleType("pkg_resources")
        shim.parse_version = parse_version
        sys.modules["pkg_resources"] = shim
    try:
        from pybullet_envs.bullet.kuka_diverse_object_gym_env import KukaDiverseObjectEnv
    except ImportError as e:
        raise ImportError(f"{e}; install the bench extra: pip install -e '.[bench]'") from e
    return KukaDiverseObjectEnv


def run_ours(
    episodes: int, seed: int, renderer: str = "tiny", progress: Optional[Callable[[], None]] = None
) -> dict:
    config = grasp_env_lib.EnvConfig(renderer=renderer)
    result = rollout.rollout(
        "base",
        "random",
        episodes,
        seed=seed,
        object_split="eval",
        config=config,
        progress=progress and (lambda _: progress()),
    )
    return {
        "name": f"neverstop GraspEnv ({result.renderer})",
        "episodes": episodes,
        "seconds": result.seconds,
        "grasps_per_s": result.episodes_per_s,
        "success_rate": result.success_rate,
    }


def run_peer(episodes: int, seed: int, progress: Optional[Callable[[], None]] = None) -> dict:
    env_class = load_peer_env_class()
    # The peer draws objects and placements from numpy's and random's global
    # state; seed them so its runs are repeatable too.
    import random

    random.seed(seed)
    np.random.seed(seed)
    env = env_class(
        renders=False,
        isDiscrete=False,
        removeHeightHack=True,
        width=schema.IMAGE_SIZE,
        height=schema.IMAGE_SIZE,
        isTest=True,
        maxSteps=schema.MAX_EPISODE_STEPS,
    )
    rng = np.random.default_rng(seed)
    successes = 0
    start = time.perf_counter()
    for _ in range(episodes):
        env.reset()
        done, reward = False, 0
        while not done:
            _, reward, done, _ = env.step(rng.uniform(-1.0, 1.0, 4))
        successes += int(reward > 0)
        if progress:
            progress()
    elapsed = time.perf_counter() - start
    del env  # its __del__ disconnects; disconnecting here too makes it raise at exit
    return {
        "name": "pybullet_envs KukaDiverseObjectEnv",
        "episodes": episodes,
        "seconds": elapsed,
        "grasps_per_s": episodes / elapsed,
        "success_rate": successes / episodes,
    }


def run(
    episodes: int = 30,
    seed: int = 0,
    renderer: str = "tiny",
    progress: Optional[Callable[[], None]] = None,
) -> dict:
    """Runs both environments; returns both results and ours/theirs."""
    if episodes < 1:
        raise ValueError(f"episodes must be positive, got {episodes}")
    ours = run_ours(episodes, seed, renderer, progress)
    peer = run_peer(episodes, seed, progress)
    return {"ours": ours, "peer": peer, "ratio": ours["grasps_per_s"] / peer["grasps_per_s"]}
