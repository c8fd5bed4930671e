"""The greedy policy: what a trained network does in the world.

`greedy_actions` is the one graph both the in-process policy (evaluation,
collection with exploration) and the exported SavedModel run: with `acting`
"cem" (QT-Opt's policy) the image tower once per state, CEM over the head,
the best action found; with "actor" the actor's action (a network trained
with `actor`; docs/trainer.md); with "actor_cem" the same CEM started at
the actor's action (std `actor_std`) instead of at zero (AW-Opt's policy).
`CEMPolicy` wraps it in the envs.policies interface (`action =
policy(observation, rng)`, a `name`), so `envs.policies.EpsilonGreedy` and
the collector take it as they take the scripted policy; envs/ never imports
this module.
"""

from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from neverstop import schema
from neverstop.trainers import cem
from neverstop.trainers.config import CEMConfig, check_acting
from neverstop.trainers.networks import QNetwork, state_vector


def greedy_actions(
    network: QNetwork,
    cem_config: CEMConfig,
    observation: Dict[str, tf.Tensor],
    seed,
    acting: str = "cem",
) -> tf.Tensor:
    """[B, 5] actions: maximising the network's Q by CEM (from zero, or from
    the actor's actions), or the actor's."""
    if acting == "actor":
        return network.act(observation)
    proposal = network.act(observation) if acting == "actor_cem" else None
    features = network.features(observation[schema.IMAGE])
    state = state_vector(observation)
    action, _ = cem.maximize(
        cem.network_score_fn(network, features, state),
        tf.shape(state)[0],
        seed,
        cem_config,
        initial_mean=proposal,
    )
    return action


def input_signature(image_size: int = schema.IMAGE_SIZE):
    return [
        tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name=schema.IMAGE),
        tf.TensorSpec([None], tf.float32, name=schema.GRIPPER_CLOSED),
        tf.TensorSpec([None], tf.float32, name=schema.HEIGHT_TO_BOTTOM),
    ]


class CEMPolicy:
    """Greedy CEM over a QNetwork (or its actor, with acting "actor"); the CEM
    seed comes from the caller's rng."""

    def __init__(
        self, network: QNetwork, cem_config: CEMConfig, name: str = "qtopt", acting: str = "cem"
    ):
        check_acting(network.config, acting, name)
        self.network = network
        self.cem_config = cem_config
        self.acting = acting
        self.name = name
        signature = input_signature(network.config.image_size) + [
            tf.TensorSpec([2], tf.int64, name="seed")
        ]
        self._act = tf.function(self._act_fn, input_signature=signature)

    def _act_fn(self, image, gripper_closed, height_to_bottom, seed):
        observation = {
            schema.IMAGE: image,
            schema.GRIPPER_CLOSED: gripper_closed,
            schema.HEIGHT_TO_BOTTOM: height_to_bottom,
        }
        return greedy_actions(self.network, self.cem_config, observation, seed, self.acting)

    def __call__(self, observation, rng: np.random.Generator) -> np.ndarray:
        seed = rng.integers(0, 2**31 - 1, size=2, dtype=np.int64)
        action = self._act(
            np.asarray(observation[schema.IMAGE], np.uint8)[None],
            np.asarray([observation[schema.GRIPPER_CLOSED]], np.float32),
            np.asarray([observation[schema.HEIGHT_TO_BOTTOM]], np.float32),
            seed,
        )
        return action.numpy()[0].astype(np.float32)


def set_threads(threads: int) -> None:
    """TensorFlow's op threads in this process (before it runs anything).

    One thread sums a convolution in one order, so a policy acts the same in
    every worker process whatever their number; two threads can differ in
    the last bits, which picks another grasp where CEM's choice is near a
    tie (docs/trainer.md). A no-op where they already are `threads` (a
    second policy in the same worker); otherwise RuntimeError once
    TensorFlow has run.
    """
    threading = tf.config.threading
    if (
        threading.get_intra_op_parallelism_threads()
        == threading.get_inter_op_parallelism_threads()
        == threads
    ):
        return
    threading.set_intra_op_parallelism_threads(threads)
    threading.set_inter_op_parallelism_threads(threads)


class CheckpointPolicyFactory:
    """A collector's policy factory (envs.collect.PolicyFactory): a checkpoint's
    acting policy, epsilon-greedy with `explore`, named `qtopt:<id>` (plus
    the epsilon). `path` is a run dir (its newest checkpoint, fixed here, so
    every worker loads the same one) or a checkpoint prefix. Picklable: Beam
    ships it to its workers, and each loads the network once. `threads` (1 in
    `neverstop collect`'s worker processes) sets TensorFlow's threads in the
    worker; None keeps the process's (a workflow step collecting in its own
    process)."""

    def __init__(
        self,
        path: str,
        epsilon: float = 0.0,
        explore: str = "random",
        threads: Optional[int] = None,
    ):
        from neverstop.trainers import checkpoints

        ref = checkpoints.locate(path)
        self.prefix = ref.prefix
        self.label = f"qtopt:{ref.id}"
        self.epsilon = epsilon
        self.explore = explore
        self.threads = threads

    def __call__(self, env, config):
        if self.threads:
            set_threads(self.threads)
        return from_checkpoint(self.prefix, epsilon=self.epsilon, explore=self.explore, env=env)


def from_checkpoint(
    path: str,
    epsilon: float = 0.0,
    explore: str = "random",
    acting: Optional[str] = None,
    env=None,
):
    """A CEMPolicy named `qtopt:<run>/ckpt-<step>` (epsilon-greedy with the
    `explore` action, envs.policies.EXPLORERS, made from `env`, when
    epsilon > 0). `acting` None: the run's config.acting."""
    from neverstop.envs import policies
    from neverstop.trainers import checkpoints

    network, config, ref = checkpoints.load_network(path)
    policy = CEMPolicy(network, config.cem, name=f"qtopt:{ref.id}", acting=acting or config.acting)
    return policies.EpsilonGreedy(policy, epsilon, explore, env) if epsilon > 0 else policy
