"""Run by test_distribute.py in a fresh process, which it needs: the CPU can be
split into logical devices only before TensorFlow first touches one.

    python -m tests.trainers._distribute_child DATA_DIR RUN_DIR

Splits the CPU in two, mirrors a tiny learner over both halves and prints
one JSON line of what the test checks:
- `grad_error`: the largest difference, relative to the largest gradient,
  between the replicas' averaged gradients and one device's gradients of
  the whole batch (gamma ~0, so CEM's draws do not enter the targets);
- `naive_bc_error`: how far averaging each half's own behaviour-cloning mean
  would be from the whole batch's (what the all-reduced denominator avoids);
- `replicas_in_sync`: after 3 distributed steps every variable's copies are equal;
- `late_split_error`: splitting again once TensorFlow is up is refused;
- `odd_batch_error`, `odd_batch_wrote`: a batch of 7 over 2 replicas is
  refused before the run dir is made (DATA_DIR: a data dir with grasps/base).
"""

import json
import os
import sys

import numpy as np
import tensorflow as tf

from neverstop import schema
from neverstop.benchmarks.train_bench import synthetic_batch
from neverstop.datasets import transitions as tr
from neverstop.trainers import distribute, qtopt, run
from neverstop.trainers.config import ConfigError
from tests.trainers.helpers import BASE, tiny_config


def main():
    strategy = distribute.make_strategy("mirrored", cpu_devices=2)
    config = tiny_config(actor=True, gamma=1e-6, conservative_weight=0.0)
    batch = synthetic_batch(config, seed=3)
    # Six of eight successes in the first half, one in the second: the halves'
    # own weighted means would weigh their examples unequally.
    batch[tr.SUCCESS] = tf.constant([True, True, True, False, False, False, True, False])
    tf.keras.utils.set_random_seed(0)
    one = qtopt.QTOpt(config)
    with strategy.scope():
        mirrored = qtopt.QTOpt(config)
        for target, source in zip(mirrored.online.weights, one.online.weights, strict=True):
            target.assign(source)
        mirrored.sync_targets()
    one.sync_targets()
    seed = tf.constant([5, 6], tf.int64)
    whole, _ = tf.function(one.gradients)(batch, seed)
    per_replica = distribute.split_batch(strategy, batch)
    averaged, _ = tf.function(lambda b: mirrored.mean_gradients(strategy, b, seed))(per_replica)
    scale = max(float(tf.reduce_max(tf.abs(g))) for g in whole)
    grad_error = max(float(tf.reduce_max(tf.abs(a - w))) for a, w in zip(averaged, whole)) / scale

    predicted = one.online.act(batch[tr.OBSERVATION], average=False)
    action, success = batch[schema.ACTION], batch[tr.SUCCESS]
    halves = [slice(0, 4), slice(4, 8)]
    naive = np.mean(
        [float(qtopt.behaviour_cloning_loss(predicted[h], action[h], success[h])) for h in halves]
    )
    exact = float(qtopt.behaviour_cloning_loss(predicted, action, success))

    step = mirrored.distributed_step(strategy)
    for k in range(3):
        out = step(distribute.split_batch(strategy, synthetic_batch(config, seed=10 + k)))
    in_sync = all(
        all(np.array_equal(v.values[0].numpy(), c.numpy()) for c in v.values[1:])
        for v in mirrored.online.weights + mirrored.target1.weights
    )
    try:
        distribute.make_strategy("mirrored", cpu_devices=3)
        late = ""
    except ConfigError as e:
        late = str(e)
    data_dir, run_dir = sys.argv[1], sys.argv[2]
    try:
        run.train(tiny_config(batch_size=7), BASE, data_dir, run_dir, strategy=strategy)
        odd = ""
    except ConfigError as e:
        odd = str(e)
    print(
        json.dumps(
            {
                "replicas": strategy.num_replicas_in_sync,
                "grad_error": grad_error,
                "naive_bc_error": abs(naive - exact) / exact,
                "replicas_in_sync": in_sync,
                "step": int(mirrored.step.numpy()),
                "finite": bool(out["finite"]),
                "late_split_error": late,
                "odd_batch_error": odd,
                "odd_batch_wrote": os.path.exists(run_dir),
            }
        )
    )


if __name__ == "__main__":
    main()
