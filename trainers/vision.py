"""Supervised vision towers: the offline stand-in for ImageNet features.

The study's `imagenet` baseline starts the Q-network's conv tower from
supervised ImageNet features. This machine cannot download ImageNet weights,
and the 64x64 tower is not a keras.applications architecture, so
`neverstop pretrain-vision` trains the same tower on a supervised task over
rendered images instead: where are the objects? (an 8x8 occupancy grid of
object centres over the tray, multi-label cross-entropy). The weights file
records that it is this stand-in, and runs that use it record the file's
description in their lineage.

File format (`.npz`): one array per tower weight (`w000`, `w001`, ...), plus
`meta`, a JSON string: the tower architecture, the supervised task, the
number of images, the final loss.
"""

import json
import os
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from neverstop.trainers.config import TOWER_FIELDS, ConfigError, TrainConfig, check_compatible
from neverstop.trainers.networks import build_tower

GRID = 8
SUPERVISED_TASK = "object-centre occupancy, 8x8 grid over the tray (rendered sim images)"


def occupancy(positions, grid: int = GRID) -> np.ndarray:
    """[grid*grid] 0/1: which cells of the tray's workspace hold an object centre."""
    from neverstop.envs import grasp_env

    label = np.zeros((grid, grid), np.float32)
    half = grasp_env.WORKSPACE_HALF_EXTENT
    for p in positions:
        u = (p[0] - grasp_env.TRAY_POSITION[0] + half) / (2 * half)
        v = (p[1] - grasp_env.TRAY_POSITION[1] + half) / (2 * half)
        if 0 <= u < 1 and 0 <= v < 1:
            label[int(u * grid), int(v * grid)] = 1.0
    return label.reshape(-1)


def render_examples(
    images: int, seed: int = 0, task: str = "base", progress: Optional[Callable] = None
):
    """(images uint8 [N,64,64,3], labels [N,64]) from seeded resets of the
    simulator (training objects), the gripper moved to a random height so
    images look like those in grasp episodes."""
    from neverstop.envs import grasp_env

    xs, ys = [], []
    with grasp_env.GraspEnv(task, grasp_env.EnvConfig(object_split="train")) as env:
        for i in range(images):
            rng = np.random.default_rng([seed, i])
            observation = env.reset(int(rng.integers(2**31)))
            action = np.zeros(5, np.float32)
            action[:3] = rng.uniform(-1, 1, 3)
            action[4] = -1.0
            observation, _, _, _ = env.step(action)
            xs.append(observation["image"])
            ys.append(occupancy([p for p, _ in env.object_poses()]))
            if progress:
                progress()
    return np.stack(xs), np.stack(ys)


def pretrain(
    config: TrainConfig,
    out: str,
    images: int = 2000,
    epochs: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Trains the tower on the supervised task and writes `out` (.npz)."""
    if not out.endswith(".npz"):
        raise ConfigError(f"--out {out!r}: vision weights are written as .npz")
    # At least two images: one for training, one to validate on.
    for name, value, least in (("images", images, 2), ("epochs", epochs, 1)):
        if value < least:
            raise ConfigError(f"{name} must be >= {least}, got {value}")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=images, desc="render", unit="img")
    start = time.perf_counter()
    x, y = render_examples(images, seed, progress=bar.update if bar else None)
    if bar:
        bar.close()
    tf.keras.utils.set_random_seed(seed)
    tower = build_tower(config, "tower")
    features = tower.output
    if len(features.shape) > 2:
        features = tf.keras.layers.Flatten()(features)
    logits = tf.keras.layers.Dense(GRID * GRID, name="occupancy")(features)
    model = tf.keras.Model(tower.input, logits)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(1e-3),
        loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
    )
    split = max(1, len(x) // 10)
    history = model.fit(
        x[split:],
        y[split:],
        validation_data=(x[:split], y[:split]),
        epochs=epochs,
        batch_size=64,
        verbose=1 if progress else 0,
    )
    meta = {
        "kind": "supervised-sim-stand-in",
        "description": "offline stand-in for ImageNet features: " + SUPERVISED_TASK,
        "architecture": config.architecture(),
        "images": int(images),
        "epochs": int(epochs),
        "seed": int(seed),
        "train_loss": float(history.history["loss"][-1]),
        "validation_loss": float(history.history["val_loss"][-1]),
        # The loss of always predicting each cell's training frequency.
        "baseline_loss": _prior_loss(y[split:], y[:split]),
        "seconds": time.perf_counter() - start,
    }
    arrays = {f"w{i:03d}": w.numpy() for i, w in enumerate(tower.weights)}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp.npz"
    np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, out)
    return meta


def _prior_loss(train: np.ndarray, validation: np.ndarray) -> float:
    p = np.clip(train.mean(0), 1e-4, 1 - 1e-4)
    return float(-np.mean(validation * np.log(p) + (1 - validation) * np.log(1 - p)))


def load_tower(path: str, tower: tf.keras.Model, config: TrainConfig) -> dict:
    """Loads a weights file into `tower`; returns what the lineage records."""
    if not os.path.exists(path):
        raise ConfigError(f"--vision-weights {path}: no such file")
    try:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            arrays = [data[f"w{i:03d}"] for i in range(len(tower.weights))]
    except (KeyError, ValueError, OSError, EOFError) as e:  # EOFError: an empty file
        raise ConfigError(
            f"--vision-weights {path}: not a neverstop vision weights file ({e})"
        ) from None
    check_compatible(meta["architecture"], config, path, TOWER_FIELDS)
    for weight, value in zip(tower.weights, arrays):
        if tuple(weight.shape) != value.shape:
            raise ConfigError(
                f"--vision-weights {path}: {weight.name} has shape {value.shape}, "
                f"the tower needs {tuple(weight.shape)}"
            )
        weight.assign(value)
    return {"path": os.path.abspath(path), **{k: meta[k] for k in ("kind", "description")}}
