"""Finding and loading trained networks: a run dir or a checkpoint prefix.

A run directory (see run.py) holds config.json, lineage.json and TF
checkpoints `ckpt-<step>`. Anything that uses a trained network (fine-tuning
`--init`, `neverstop eval`, `neverstop export`) names either the run dir
(its newest checkpoint) or one checkpoint prefix (`RUN/ckpt-3000`).
"""

import dataclasses
import os
from typing import Optional

import tensorflow as tf

from neverstop import jsonfile
from neverstop.trainers.config import ConfigError, TrainConfig, check_compatible
from neverstop.trainers.networks import QNetwork

CONFIG_FILE = "config.json"
LINEAGE_FILE = "lineage.json"
METRICS_FILE = "metrics.jsonl"


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
    run_dir: str
    prefix: str  # e.g. RUN/ckpt-3000
    step: int

    @property
    def id(self) -> str:
        """Short, stable label `<run name>.ckpt-<step>`; policy names carry it
        (`qtopt:<id>`), so it keeps to the characters collection labels allow."""
        return f"{os.path.basename(os.path.normpath(self.run_dir))}.ckpt-{self.step}"


def locate(path: str) -> CheckpointRef:
    """A run dir (-> newest checkpoint) or a checkpoint prefix -> CheckpointRef.

    Raises ConfigError naming the path when there is nothing to load.
    """
    if os.path.isdir(path):
        prefix = tf.train.latest_checkpoint(path)
        if prefix is None:
            prefixes = [f[: -len(".index")] for f in os.listdir(path) if f.endswith(".index")]
            if prefixes:  # files, but no `checkpoint` state file naming the newest
                newest = max(prefixes, key=lambda p: (p.rsplit("-", 1)[-1].isdigit(), len(p), p))
                raise ConfigError(
                    f"{path}: no `checkpoint` file names its newest checkpoint; give one "
                    f"prefix instead, e.g. {os.path.join(path, newest)}"
                )
            raise ConfigError(f"{path}: no checkpoint in this run directory (no ckpt-* files)")
        run_dir = path
    else:
        prefix = path
        run_dir = os.path.dirname(path) or "."
        if not tf.io.gfile.exists(prefix + ".index"):
            raise ConfigError(
                f"{path}: not a run directory and not a checkpoint prefix "
                f"({prefix}.index does not exist)"
            )
    try:
        step = int(os.path.basename(prefix).rsplit("-", 1)[1])
    except (IndexError, ValueError):
        raise ConfigError(f"{prefix}: checkpoint names look like ckpt-<step>") from None
    return CheckpointRef(run_dir, prefix, step)


def read_config(run_dir: str) -> TrainConfig:
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        raise ConfigError(f"{run_dir}: no {CONFIG_FILE}; is this a neverstop run directory?")
    return TrainConfig.load(path)  # its errors name the file


def restore_online(
    ref: CheckpointRef, network: QNetwork, config: Optional[TrainConfig] = None
) -> None:
    """Loads the online network's weights from `ref` into `network`, after
    checking that the checkpoint's architecture matches `network`'s."""
    saved = read_config(ref.run_dir)
    check_compatible(saved.as_dict(), config or network.config, ref.prefix)
    parts = network.checkpoint_parts("online")
    checkpoint = tf.train.Checkpoint(**parts)
    try:
        checkpoint.restore(ref.prefix).expect_partial().assert_existing_objects_matched()
    except (IndexError, tf.errors.OpError) as e:
        # A cut or overwritten .data/.index file: TensorFlow's reader fails
        # somewhere inside, with nothing that names the checkpoint.
        raise ConfigError(
            f"{ref.prefix}: cannot read this checkpoint's files (truncated or corrupted?): "
            f"{type(e).__name__}: {e}"
        ) from None
    except AssertionError as e:
        raise ConfigError(
            f"{ref.prefix}: lacks variables of the network its run's config describes "
            f"({', '.join(parts)}); was it written by another version of neverstop?"
        ) from e


def load_network(path: str):
    """(QNetwork with the checkpoint's online weights, its config, its ref)."""
    ref = locate(path)
    config = read_config(ref.run_dir)
    network = QNetwork(config, "online")
    restore_online(ref, network, config)
    return network, config, ref


def read_json(path: str) -> dict:
    return jsonfile.read(path)
