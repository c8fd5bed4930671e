"""The cross-entropy method, in-graph and batched over states.

For each of B states: sample N actions from a diagonal Gaussian (clipped to
[-1, 1]), score them, refit the Gaussian to the E best, repeat; return the
best action seen in the last iteration and its score (`select="best"`, the
default), or the final elites' mean and its score (`select="mean"`, which
averages out a noisy Q's accidental maxima; docs/trainer.md). The first sample of
every iteration is the current mean, so the answer never gets worse than
the distribution's centre. All randomness is stateless from `seed` ([2]
int), so a seed gives the same actions on any run.

QT-Opt's numbers (64 samples, 6 elites, 2 iterations) are the defaults in
`CEMConfig`; the same function picks a* for the Bellman target and acts in
the environment.
"""

from typing import Callable, Optional, Tuple

import tensorflow as tf

from neverstop import schema
from neverstop.trainers.config import CEMConfig

ScoreFn = Callable[[tf.Tensor], tf.Tensor]  # actions [B, N, A] -> scores [B, N]

_MIN_STD = 1e-3


def maximize(
    score_fn: ScoreFn,
    batch_size,
    seed: tf.Tensor,
    config: CEMConfig = CEMConfig(),
    action_dim: int = schema.ACTION_DIM,
    initial_mean: Optional[tf.Tensor] = None,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Returns (best actions [B, A], their scores [B]). The search starts at
    zero with std config.initial_std, or at `initial_mean` [B, A] (a
    proposal, e.g. an actor's actions) with std config.actor_std."""
    if initial_mean is None:
        mean = tf.zeros([batch_size, action_dim])
        std = tf.fill([batch_size, action_dim], config.initial_std)
    else:
        mean = tf.cast(initial_mean, tf.float32)
        std = tf.fill(tf.shape(mean), config.actor_std)
    seed = tf.cast(seed, tf.int64)
    best = best_score = None
    for iteration in range(config.iterations):
        noise = tf.random.stateless_normal(
            [batch_size, config.samples - 1, action_dim], seed + iteration
        )
        samples = mean[:, None, :] + std[:, None, :] * noise
        samples = tf.concat([mean[:, None, :], samples], axis=1)
        samples = tf.clip_by_value(samples, schema.ACTION_MIN, schema.ACTION_MAX)
        scores = score_fn(samples)
        top = tf.math.top_k(scores, k=config.elites)
        elites = tf.gather(samples, top.indices, batch_dims=1)
        mean, variance = tf.nn.moments(elites, axes=[1])
        std = tf.maximum(tf.sqrt(variance), _MIN_STD)
        best = elites[:, 0, :]
        best_score = top.values[:, 0]
    if config.select == "mean":
        best = tf.clip_by_value(mean, schema.ACTION_MIN, schema.ACTION_MAX)
        best_score = score_fn(best[:, None, :])[:, 0]
    return best, best_score


def network_score_fn(network, features: tf.Tensor, state: tf.Tensor) -> ScoreFn:
    """Scores actions with a QNetwork's head (sigmoid Q), reusing `features`
    (computed once per state) for every sample."""

    def score(actions: tf.Tensor) -> tf.Tensor:
        batch = tf.shape(actions)[0]
        samples = tf.shape(actions)[1]
        tiled_features = tf.repeat(features, samples, axis=0)
        tiled_state = tf.repeat(state, samples, axis=0)
        flat = tf.reshape(actions, [-1, actions.shape[-1]])
        logits = network.logits(tiled_features, tiled_state, flat)
        return tf.reshape(tf.sigmoid(logits), [batch, samples])

    return score
