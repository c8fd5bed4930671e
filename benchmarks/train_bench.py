"""`neverstop bench train`: the trainer's achieved FLOP/s against this
machine's matmul FLOP/s, measured in the same run.

Peak: a float32 matmul of two NxN matrices (N=2048 by default), repeated
inside one tf.function, 2N^3 FLOPs each. Achieved: QT-Opt training steps at
batch 64 on a fixed batch held in memory (so the input pipeline does not
compete for the two cores; `neverstop bench mix` measures the stream), with
FLOPs counted from the network's layers:

    per example = 3 (T + H) - F1     online forward + backward (no input
                                     gradient for the first layer)
                + 2 T                towers of Q'1 and Q'2 on s'
                + I * N * H          CEM: I iterations x N samples of Q'1's head
                + H                  Q'2's head at a*

with T and H the tower's and the head's forward FLOPs per example (convs
and dense layers only: activations, pooling and the optimizer are not
counted, so the figure is a lower bound of the work done).

Peer of the trainer's own step: the first merge's step compiled with XLA
(`jit_compile=True`), as a ratio of steps/s against the same step without.
"""

import time
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from neverstop import schema
from neverstop.datasets import transitions as tr
from neverstop.trainers import networks
from neverstop.trainers.config import TrainConfig


def matmul_flops_per_s(n: int = 2048, repeats: int = 20, trials: int = 3) -> float:
    """The best of `trials` timings of `repeats` chained NxN float32 matmuls."""
    a = tf.random.stateless_normal([n, n], [1, 2]) / np.sqrt(n)
    b = tf.random.stateless_normal([n, n], [3, 4]) / np.sqrt(n)

    @tf.function
    def run(x):
        for _ in range(repeats):
            x = tf.matmul(x, b)
        return tf.reduce_sum(x)

    run(a).numpy()  # trace and warm up
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        run(a).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 * repeats / best


def step_flops(config: TrainConfig, network: Optional[networks.QNetwork] = None) -> Dict:
    """FLOPs of one training step at config.batch_size (see module doc)."""
    network = network or networks.QNetwork(config)
    tower = sum(networks.layer_flops(network.tower).values())
    head = sum(networks.layer_flops(network.head).values())
    first = networks.first_layer_flops(network.tower)
    cem = config.cem.iterations * config.cem.samples * head
    per_example = 3 * (tower + head) - first + 2 * tower + cem + head
    return {
        "tower": tower,
        "head": head,
        "cem": cem,
        "per_example": per_example,
        "per_step": per_example * config.batch_size,
    }


def synthetic_batch(config: TrainConfig, seed: int = 0) -> Dict:
    """A batch shaped like the stream's, random content (seeded)."""
    rng = np.random.default_rng(seed)
    b, size = config.batch_size, config.image_size

    def observation():
        return {
            schema.IMAGE: tf.constant(rng.integers(0, 256, (b, size, size, 3), np.uint8)),
            schema.GRIPPER_CLOSED: tf.constant(rng.integers(0, 2, b).astype(np.float32)),
            schema.HEIGHT_TO_BOTTOM: tf.constant(rng.uniform(0, 0.3, b).astype(np.float32)),
        }

    return {
        tr.OBSERVATION: observation(),
        schema.ACTION: tf.constant(rng.uniform(-1, 1, (b, schema.ACTION_DIM)).astype(np.float32)),
        schema.REWARD: tf.constant((rng.random(b) < 0.3).astype(np.float32)),
        tr.NEXT_OBSERVATION: observation(),
        tr.TERMINAL: tf.constant(rng.random(b) < 0.3),
        tr.SUCCESS: tf.constant(rng.random(b) < 0.5),
    }


def compiled_step(learner, jit_compile: bool):
    """`learner.train_step`, traced anew with XLA on or off (the trainer's is
    off: "Speed on this machine" in docs/trainer.md). The same update, but
    under XLA the random draws (CEM's samples) come from another RNG
    algorithm, so the two agree only where no draw enters."""
    if not jit_compile:
        return learner.train_step
    step = type(learner).train_step.python_function
    return tf.function(lambda batch: step(learner, batch), jit_compile=True)


def trainer_steps_per_s(
    config: TrainConfig, steps: int = 40, warmup: int = 5, jit_compile: bool = False
) -> float:
    from neverstop.trainers.qtopt import QTOpt

    learner = QTOpt(config)
    train_step = compiled_step(learner, jit_compile)
    batch = synthetic_batch(config)
    for _ in range(warmup):
        train_step(batch)["loss"].numpy()
    start = time.perf_counter()
    for _ in range(steps):
        out = train_step(batch)
    out["loss"].numpy()
    return steps / (time.perf_counter() - start)


def run(steps: int = 40, merges=("late", "qtopt"), print_fn=print) -> Dict[str, float]:
    peak = matmul_flops_per_s()
    print_fn(f"matmul peak (2048x2048 float32): {peak / 1e9:.1f} GFLOP/s")
    results = {"peak": peak}
    for merge in merges:
        config = TrainConfig(merge=merge)
        flops = step_flops(config)
        rate = trainer_steps_per_s(config, steps)
        achieved = rate * flops["per_step"]
        results[merge] = achieved / peak
        results[f"{merge}_steps_per_s"] = rate
        print_fn(
            f"{merge:>5} merge: {rate:6.2f} steps/s at batch {config.batch_size}, "
            f"{flops['per_step'] / 1e9:.2f} GFLOP/step (tower {flops['tower'] / 1e6:.1f} "
            f"MFLOP, head {flops['head'] / 1e6:.2f} MFLOP, CEM {flops['cem'] / 1e6:.1f} MFLOP "
            f"per example), {achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.2f} of peak"
        )
    merge = merges[0]
    rate = trainer_steps_per_s(TrainConfig(merge=merge), steps, jit_compile=True)
    results["xla_ratio"] = rate / results[f"{merge}_steps_per_s"]
    print_fn(
        f"{merge:>5} merge with XLA (jit_compile=True): {rate:6.2f} steps/s = "
        f"{results['xla_ratio']:.2f}x the same step without"
    )
    return results
