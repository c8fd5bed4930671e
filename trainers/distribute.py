"""Training across several devices with tf.distribute (DESIGN.md: one device
by default, MirroredStrategy for more).

    neverstop train ... --strategy mirrored                 # every GPU of this machine
    neverstop train ... --strategy mirrored --cpu-devices 2 # the CPU split in two (tests)
    TF_CONFIG=... neverstop train ... --strategy multiworker # on every machine of a cluster

The stream still yields whole batches of `batch_size`, from the same
checkpointed iterator as one device; each batch is cut into equal slices,
one per replica. Each replica computes its slice's loss and gradients with
its own CEM draws, the gradients are averaged across replicas and applied
once (QTOpt.distributed_step), so the variables stay identical on every
device and a checkpoint is the same file a one-device run writes: evaluate,
export or fine-tune it anywhere.

With "multiworker" every worker runs the same command with its own TF_CONFIG
(tf.distribute's cluster spec: the workers' addresses and this one's index)
and reads the same stream, keeping its own replicas' slices of each batch;
worker 0 (or the "chief" task) writes the run dir, the others only read
it, to resume, and save their share of each checkpoint to a scratch dir.
The run dir must be one path that every worker can read (a shared disk or
a bucket).
"""

import json
import os
from typing import Dict, Optional

import tensorflow as tf

from neverstop.trainers.config import ConfigError

STRATEGIES = ("default", "mirrored", "multiworker")


def make_strategy(name: str = "default", cpu_devices: int = 0) -> Optional[tf.distribute.Strategy]:
    """None for "default" (one device: the trainer's own step); a
    MirroredStrategy for "mirrored", over every GPU, or, with `cpu_devices`
    >= 2, over that many logical devices carved out of the CPU (which must
    happen before TensorFlow first touches a device); for "multiworker" a
    MultiWorkerMirroredStrategy over the cluster TF_CONFIG names (also
    before any other TensorFlow work)."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    if cpu_devices and name != "mirrored":
        raise ConfigError("--cpu-devices splits the CPU for --strategy mirrored")
    if name == "default":
        return None
    if name == "multiworker":
        return _multiworker()
    if cpu_devices:
        if cpu_devices < 2:
            raise ConfigError(f"--cpu-devices must be >= 2 to mirror over, got {cpu_devices}")
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices
            )
        except RuntimeError as e:
            raise ConfigError(
                f"cannot split the CPU into {cpu_devices} devices: TensorFlow has already "
                f"initialised its devices in this process ({e}); split it before any "
                "TensorFlow work (the CLI does)"
            ) from e
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.MirroredStrategy()


def _multiworker() -> tf.distribute.Strategy:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ConfigError(
            "--strategy multiworker needs TF_CONFIG: the cluster's workers and this one's "
            'index, e.g. {"cluster": {"worker": ["host0:2222", "host1:2222"]}, '
            '"task": {"type": "worker", "index": 0}} (docs/trainer.md)'
        )
    try:
        spec = json.loads(raw)
        spec["cluster"], spec["task"]["type"], spec["task"]["index"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"TF_CONFIG is not a cluster spec with 'cluster' and 'task' (type, index): {raw!r}"
        ) from e
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy: Optional[tf.distribute.Strategy]) -> bool:
    """Whether this process writes the run dir: always, except on a
    multi-worker cluster's workers other than the chief (task "chief", or
    worker 0 when there is none)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not spec or resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in spec


def check_batch(strategy: Optional[tf.distribute.Strategy], batch_size: int) -> None:
    """Every replica gets the same share of a batch."""
    if strategy is not None and batch_size % strategy.num_replicas_in_sync:
        raise ConfigError(
            f"batch_size {batch_size} does not split evenly over "
            f"{strategy.num_replicas_in_sync} replicas; use a multiple of "
            f"{strategy.num_replicas_in_sync}"
        )


def split_batch(strategy: tf.distribute.Strategy, batch: Dict) -> Dict:
    """A whole batch (a dict of tensors, nested) -> per-replica values:
    replica r gets rows [r * n, (r + 1) * n) of every tensor."""
    replicas = strategy.num_replicas_in_sync

    def slice_for(context):
        index = context.replica_id_in_sync_group

        def cut(t):
            n = t.shape[0] // replicas
            return t[index * n : (index + 1) * n]

        return tf.nest.map_structure(cut, batch)

    return strategy.experimental_distribute_values_from_function(slice_for)


def describe(strategy: Optional[tf.distribute.Strategy]) -> dict:
    """What lineage.json records about how a run was spread."""
    if strategy is None:
        return {"name": "default", "replicas": 1}
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        spec = strategy.cluster_resolver.cluster_spec().as_dict()
        return {
            "name": "multiworker",
            "replicas": strategy.num_replicas_in_sync,
            "workers": sum(len(tasks) for tasks in spec.values()),
            "cluster": spec,
        }
    return {
        "name": "mirrored",
        "replicas": strategy.num_replicas_in_sync,
        "devices": list(strategy.extended.worker_devices),
    }
