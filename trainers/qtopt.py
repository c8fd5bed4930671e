"""QT-Opt's update, offline, in one place.

    a*  = CEM argmax_a Q'1(s', a)
    y   = r + gamma * (1 - terminal) * min(Q'1(s', a*), Q'2(s', a*))
    L   = mean_batch(w * cross_entropy(y, sigmoid(Q(s, a)))) + l2 * sum ||W||^2
          w = terminal_weight for a transition into a terminal step, else 1
    Q   <- Adam step on L (gradients clipped by global norm)
    Q'1 <- polyak * Q'1 + (1 - polyak) * Q            (every step)
    Q'2 <- Q'1                                         (every lag_steps)

With an actor (config.actor), the loss gains actor_weight times its
behaviour-cloning error on the batch's transitions from successful episodes,

    L_actor = sum_i success_i * mean_d (pi(s_i)_d - a_i,d)^2 / sum_i success_i   (0 if none)

(positive-filtered regression). With actor_advantage_temperature beta > 0,
AW-Opt's advantage weighting as well:

    w_i = min(exp((Q(s_i, a_i) - Q(s_i, pi(s_i))) / beta), actor_max_weight)
    L_actor = sum_i success_i * w_i * mean_d (...)^2 / sum_i success_i * w_i

with Q the online network's, held fixed (no gradient reaches Q through w).
The actor has its own weights and its own Adam (and gradient clipping), so
this term moves only the actor and the actor never moves Q.
What acts is the actor's Polyak average (`actor_polyak`, every step), as
Q'1 averages Q: one step's weights aim worse than their recent mean.

With conservative_weight > 0 (after CQL, Kumar et al., 2020), the loss also
gains

    L_cons = mean_batch(Q(s, a_cem) - Q(s, a)),   a_cem = CEM argmax_a Q(s, a)

with a_cem searched on the online network without gradient: Q is pushed
down where its own argmax would act and up at the action the data took, so
an argmax off the data's support (a close where no grasp was ever tried)
costs Q until it moves back to where the data has evidence.

Q values are probabilities of a successful grasp (the sigmoid of the
network's logit); y is clipped to [0, 1] so a per-step penalty cannot push
the cross-entropy's label out of range. A step whose loss or gradients are
not finite changes nothing and is reported (`finite` = False): the run
loop then stops without saving (see run.py).

Across devices (`distributed_step`, trainers/distribute.py) each replica
takes these means over its slice of the batch, except L_actor's
denominator, which is summed over every replica, so the mean of the
replicas' gradients is the gradient of the whole batch's L.
"""

from typing import Dict

import tensorflow as tf

from neverstop import schema
from neverstop.datasets import transitions as tr
from neverstop.trainers import cem, networks
from neverstop.trainers.config import TrainConfig
from neverstop.trainers.networks import QNetwork, state_vector

# Replica r draws its CEM samples from the step's seed + r * this.
REPLICA_SEED_STRIDE = 7919


def bellman_target(reward, terminal, q1_next, q2_next, gamma: float) -> tf.Tensor:
    """y = r + gamma * (1 - terminal) * min(q1, q2), clipped to [0, 1]."""
    terminal = tf.cast(terminal, tf.float32)
    bootstrap = tf.minimum(q1_next, q2_next)
    y = tf.cast(reward, tf.float32) + gamma * (1.0 - terminal) * bootstrap
    return tf.clip_by_value(y, 0.0, 1.0)


def weighted_cross_entropy(y, logits, terminal, terminal_weight: float) -> tf.Tensor:
    """The batch mean of the cross-entropy, terminal transitions weighted by terminal_weight.

    A terminal transition's label is its grasp's outcome, not a bootstrap;
    weighting them > 1 is the same as showing the grasp classifier inside Q
    its graded grasps that many times more often.
    """
    per_example = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits)
    terminal = tf.cast(terminal, tf.float32)
    weight = 1.0 + (terminal_weight - 1.0) * terminal
    return tf.reduce_mean(weight * per_example)


def behaviour_cloning_loss(predicted, action, success, weights=None, replicas: int = 1):
    """Mean squared error of `predicted` against `action` over the examples
    whose episode succeeded, weighted by `weights` if given (their weighted
    mean; 0 when none succeeded).

    With `replicas` > 1 it runs in a replica context on one replica's slice of
    the batch, and the mean over replicas of what it returns is the weighted
    mean over the whole batch: the denominator is the weights summed over
    every replica (an all-reduce), not this slice's, which holds a different
    number of successes."""
    per_example = tf.reduce_mean(tf.square(predicted - action), axis=-1)
    weight = tf.cast(success, tf.float32)
    if weights is not None:
        weight *= weights
    total, floor = tf.reduce_sum(weight), 1e-6
    if replicas > 1:
        context = tf.distribute.get_replica_context()
        total = tf.stop_gradient(context.all_reduce(tf.distribute.ReduceOp.SUM, total)) / replicas
        floor /= replicas
    return tf.reduce_sum(weight * per_example) / tf.maximum(total, floor)


def advantage_weights(q_data, q_actor, temperature: float, max_weight: float) -> tf.Tensor:
    """AW-Opt's weights exp((Q(s, a) - Q(s, pi(s))) / temperature), at most max_weight."""
    advantage = tf.stop_gradient(q_data - q_actor)
    return tf.minimum(tf.exp(advantage / temperature), max_weight)


def clipped_double_q_target(
    batch: Dict[str, tf.Tensor],
    target1: QNetwork,
    target2: QNetwork,
    config: TrainConfig,
    seed: tf.Tensor,
) -> Dict[str, tf.Tensor]:
    """The Bellman targets of a batch of transitions, and what went into them."""
    next_obs = batch[tr.NEXT_OBSERVATION]
    state = state_vector(next_obs)
    features1 = target1.features(next_obs[schema.IMAGE])
    size = tf.shape(state)[0]
    a_star, q1 = cem.maximize(
        cem.network_score_fn(target1, features1, state), size, seed, config.cem
    )
    q2 = tf.sigmoid(target2.logits(target2.features(next_obs[schema.IMAGE]), state, a_star))
    y = bellman_target(batch[schema.REWARD], batch[tr.TERMINAL], q1, q2, config.gamma)
    return {"target": y, "a_star": a_star, "q1_next": q1, "q2_next": q2}


def conservative_gap(
    network: QNetwork, features, state, logits, config: TrainConfig, seed: tf.Tensor
) -> tf.Tensor:
    """mean(Q(s, a_cem) - Q(s, a)): CEM's argmax of the network on the
    batch's states (searched without gradient) against the data's actions,
    whose logits are given."""
    size = tf.shape(state)[0]
    a_cem, _ = cem.maximize(
        cem.network_score_fn(network, tf.stop_gradient(features), state), size, seed, config.cem
    )
    q_cem = tf.sigmoid(network.logits(features, state, tf.stop_gradient(a_cem), training=True))
    return tf.reduce_mean(q_cem - tf.sigmoid(logits))


def make_optimizer(config: TrainConfig) -> tf.keras.optimizers.Optimizer:
    return tf.keras.optimizers.Adam(
        config.effective_learning_rate, global_clipnorm=config.grad_clip_norm
    )


class QTOpt(tf.Module):
    """The online network, both target networks, the optimizer, the step and
    the RNG: everything a checkpoint must hold besides the data iterator."""

    def __init__(self, config: TrainConfig):
        super().__init__(name="qtopt")
        self.config = config
        self.online = QNetwork(config, "online")
        self.target1 = QNetwork(config, "target1", with_actor=False)
        self.target2 = QNetwork(config, "target2", with_actor=False)
        self.sync_targets()
        self.optimizer = make_optimizer(config)
        self.optimizer.build(self.q_variables)
        # The actor's own optimizer: gradient clipping by global norm over Q's
        # and the actor's gradients together would let one scale the other.
        self.actor_optimizer = None
        if self.online.has_actor:
            self.actor_optimizer = make_optimizer(config)
            self.actor_optimizer.build(self.actor_variables)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.rng = tf.random.Generator.from_seed(config.seed)

    @property
    def q_variables(self) -> list:
        return list(self.online.tower.trainable_weights) + list(self.online.head.trainable_weights)

    @property
    def actor_variables(self) -> list:
        if not self.online.has_actor:
            return []
        return list(self.online.actor_tower.trainable_weights) + list(
            self.online.actor_head.trainable_weights
        )

    def sync_targets(self) -> None:
        """Q'1 = Q'2 = Q (at start, and after loading initial weights)."""
        self.target1.copy_from(self.online)
        self.target2.copy_from(self.online)

    def checkpoint_items(self) -> dict:
        items = {}
        for network in (self.online, self.target1, self.target2):
            items.update(network.checkpoint_parts())
        if self.actor_optimizer is not None:
            items["actor_optimizer"] = self.actor_optimizer
        return dict(items, optimizer=self.optimizer, step=self.step, rng=self.rng)

    @property
    def metric_keys(self) -> tuple:
        keys = ("loss", "cross_entropy", "mean_q", "target_q", "td_error")
        keys += ("conservative_gap",) if self.config.conservative_weight > 0 else ()
        return keys + (("actor_loss",) if self.online.has_actor else ())

    def l2_penalty(self) -> tf.Tensor:
        kernels = [w for w in self.online.trainable_weights if "kernel" in w.name]
        return self.config.l2 * tf.add_n([tf.reduce_sum(tf.square(k)) for k in kernels])

    @tf.function(jit_compile=False)
    def train_step(self, batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """One update on one device: a batch in, the step's metrics out."""
        grads, out = self.gradients(batch, self.rng.make_seeds(1)[:, 0])
        return self.apply_if_finite(grads, out)

    def distributed_step(self, strategy: tf.distribute.Strategy):
        """The same update across `strategy`'s replicas, as a function of a
        per-replica batch (`distribute.split_batch`): `mean_gradients`, then
        one update in cross-replica context, so the variables stay in sync.
        Build the learner in `strategy.scope()`."""

        @tf.function(jit_compile=False)
        def step(batch):
            grads, out = self.mean_gradients(strategy, batch, self.rng.make_seeds(1)[:, 0])
            return self.apply_if_finite(grads, out)

        return step

    def mean_gradients(self, strategy: tf.distribute.Strategy, batch, seed: tf.Tensor):
        """Every replica's `gradients` of its slice, with its own CEM draws
        (seed + replica * REPLICA_SEED_STRIDE), averaged over replicas: the
        gradients of the whole batch's loss; the metrics averaged likewise."""
        replicas = strategy.num_replicas_in_sync
        mean = tf.distribute.ReduceOp.MEAN

        def replica(batch, seed):
            index = tf.distribute.get_replica_context().replica_id_in_sync_group
            return self.gradients(
                batch, seed + REPLICA_SEED_STRIDE * tf.cast(index, seed.dtype), replicas
            )

        grads, out = strategy.run(replica, args=(batch, seed))
        grads = [strategy.reduce(mean, g, axis=None) for g in grads]
        return grads, {k: strategy.reduce(mean, v, axis=None) for k, v in out.items()}

    def gradients(self, batch: Dict[str, tf.Tensor], seed: tf.Tensor, replicas: int = 1):
        """(gradients of the loss over q_variables + actor_variables, metrics).

        With `replicas` > 1 this is one replica's share: every term is a mean
        over its slice of the batch, so the mean over replicas of the
        gradients is the gradient of the whole batch's loss."""
        target = clipped_double_q_target(batch, self.target1, self.target2, self.config, seed)
        y = tf.stop_gradient(target["target"])
        weights = self.q_variables + self.actor_variables
        with tf.GradientTape() as tape:
            observation = batch[tr.OBSERVATION]
            state = state_vector(observation)
            features = self.online.features(observation[schema.IMAGE], training=True)
            logits = self.online.logits(features, state, batch[schema.ACTION], training=True)
            cross_entropy = weighted_cross_entropy(
                y, logits, batch[tr.TERMINAL], self.config.terminal_weight
            )
            loss = cross_entropy + self.l2_penalty()
            if self.config.conservative_weight > 0:
                # Its own CEM draws: offset from the target's (seed, seed + 1, ...).
                gap = conservative_gap(
                    self.online, features, state, logits, self.config, seed + 1000
                )
                loss += self.config.conservative_weight * gap
            if self.online.has_actor:
                predicted = self.online.act(observation, training=True, average=False)
                advantage = None
                if self.config.actor_advantage_temperature > 0:
                    own = self.online.logits(features, state, tf.stop_gradient(predicted))
                    advantage = advantage_weights(
                        tf.sigmoid(logits),
                        tf.sigmoid(own),
                        self.config.actor_advantage_temperature,
                        self.config.actor_max_weight,
                    )
                actor_loss = behaviour_cloning_loss(
                    predicted, batch[schema.ACTION], batch[tr.SUCCESS], advantage, replicas
                )
                loss += self.config.actor_weight * actor_loss
        grads = tape.gradient(loss, weights)
        q = tf.sigmoid(logits)
        out = {
            "loss": loss,
            "cross_entropy": cross_entropy,
            "mean_q": tf.reduce_mean(q),
            "target_q": tf.reduce_mean(y),
            "td_error": tf.reduce_mean(tf.abs(q - y)),
        }
        if self.config.conservative_weight > 0:
            out["conservative_gap"] = gap
        if self.online.has_actor:
            out["actor_loss"] = actor_loss
        return grads, out

    def apply_if_finite(self, grads: list, out: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """Applies `grads` (to q_variables + actor_variables), moves the
        averages and the step, unless the loss or a gradient is not finite;
        returns `out` with `finite`."""
        q_variables, actor_variables = self.q_variables, self.actor_variables
        finite = tf.math.is_finite(out["loss"])
        for g in grads:
            finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(g)))

        def apply():
            # Gradients arrive whole (one device, or already averaged over
            # replicas), so the optimizers must not all-reduce them again.
            self.optimizer.apply_gradients(
                zip(grads[: len(q_variables)], q_variables), skip_gradients_aggregation=True
            )
            if actor_variables:
                self.actor_optimizer.apply_gradients(
                    zip(grads[len(q_variables) :], actor_variables),
                    skip_gradients_aggregation=True,
                )
                networks.polyak_update(
                    self.online.average_actor_weights,
                    self.online.actor_weights,
                    self.config.actor_polyak,
                )
            networks.polyak_update(
                self.target1.q_weights, self.online.q_weights, self.config.polyak
            )
            self.step.assign_add(1)

            def lag():
                networks.assign(self.target2.q_weights, self.target1.q_weights)
                return tf.constant(True)

            tf.cond(tf.equal(self.step % self.config.lag_steps, 0), lag, lambda: tf.constant(False))
            return tf.constant(True)

        tf.cond(finite, apply, lambda: tf.constant(False))
        return dict(out, finite=finite)
