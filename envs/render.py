"""What the camera sees: one task's first observation as a PNG."""

import os
from typing import Optional

import numpy as np

from neverstop import rawlog
from neverstop.envs import grasp_env as grasp_env_lib


def render_task(
    task: str,
    seed: int,
    out: str,
    scale: int = 1,
    steps: int = 0,
    config: Optional[grasp_env_lib.EnvConfig] = None,
) -> dict:
    """Writes the camera image of `task` at `seed` to `out` (PNG).

    `steps` > 0 first lowers the gripper that many steps (so the gripper is in
    view); `scale` enlarges pixels (nearest neighbour) for people to look at.
    Returns what was rendered: task, seed, renderer, path and image shape.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    with grasp_env_lib.GraspEnv(task, config) as env:
        observation = env.reset(seed)
        for _ in range(steps):
            if env.done:
                break
            observation, _, _, _ = env.step(np.array([0, 0, -0.6, 0, -1], np.float32))
        image = observation["image"]
        renderer = env.renderer
    big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    with open(out, "wb") as f:
        f.write(rawlog.encode_png(np.ascontiguousarray(big)))
    return {"task": task, "seed": seed, "renderer": renderer, "path": out, "shape": list(big.shape)}
