"""Small data and a tiny network for trainer tests (seconds, not minutes)."""

import os

import tensorflow as tf

from neverstop import schema
from neverstop.datasets import mixture as mixture_lib
from neverstop.pipelines import ingest
from neverstop.trainers.config import CEMConfig, TrainConfig
from neverstop.trainers.networks import state_vector
from tests.pipelines.test_ingest import _episode, _write_raw


def tiny_config(**overrides) -> TrainConfig:
    values = dict(
        steps=20,
        batch_size=8,
        tower_filters=((8, 8, 4), (16, 4, 2)),
        head_units=(32, 16),
        cem=CEMConfig(samples=8, elites=2),
        checkpoint_every=10,
        log_every=5,
        lag_steps=7,
    )
    values.update(overrides)
    return TrainConfig(**values)


def q_of(network, observation):
    """Q(s, a) on `observation`'s states as a function of actions [B, 5] -> [B]
    (the image tower runs once)."""
    features = network.features(observation[schema.IMAGE])
    state = state_vector(observation)
    return lambda actions: tf.sigmoid(network.logits(features, state, actions)).numpy()


def make_data_dir(root, tasks=("base",), episodes: int = 25) -> str:
    """grasps/<task> for each task, `episodes` random-content episodes each."""
    data = os.path.join(str(root), "data")
    for k, task in enumerate(tasks):
        raw = os.path.join(str(root), "raw", task)
        os.makedirs(raw, exist_ok=True)
        for i in range(k * 1000, k * 1000 + episodes):
            _write_raw(raw, _episode(i, task=task, steps=3 + i % 5))
        ingest.ingest(
            ingest.IngestConfig(
                input=os.path.join(raw, "*.nsep"),
                dataset="grasps",
                config=task,
                data_dir=data,
                workers=1,
                episodes_per_shard=10,
            ),
            running_mode="in_memory",
        )
    return data


BASE = mixture_lib.Mixture.parse("base:train:1")
