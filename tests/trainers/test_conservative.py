"""The conservative term (config.conservative_weight) and acting "actor_cem"."""

import numpy as np
import pytest
import tensorflow as tf

from neverstop import schema
from neverstop.benchmarks.train_bench import synthetic_batch
from neverstop.datasets import transitions as tr
from neverstop.trainers import cem, evaluate, qtopt, run
from neverstop.trainers import policy as policy_lib
from neverstop.trainers.config import CEMConfig, ConfigError, TrainConfig
from neverstop.trainers.networks import state_vector
from tests.trainers.helpers import BASE, make_data_dir, q_of, tiny_config

PEAK = np.array([0.6, -0.4, 0.2, 0.0, 0.9], np.float32)


class _PeakedQ:
    """A stand-in network: logit(s, a) = -4 * ||a - PEAK||^2, the same for every state."""

    def logits(self, features, state, action, training=False):
        return -4.0 * tf.reduce_sum(tf.square(action - PEAK), axis=-1)


def test_the_conservative_gap_is_q_at_cems_argmax_minus_q_at_the_data():
    data_actions = tf.constant([[0.0] * 5, [-1.0, 1.0, 0.0, 0.5, -1.0], list(PEAK)], tf.float32)
    network = _PeakedQ()
    features, state = tf.zeros([3, 2]), tf.zeros([3, 2])
    logits = network.logits(features, state, data_actions)
    config = TrainConfig(cem=CEMConfig(iterations=6))
    gap = qtopt.conservative_gap(network, features, state, logits, config, tf.constant([1, 2]))
    # CEM finds the peak, where Q = sigmoid(0) = 0.5, in every state.
    expected = 0.5 - np.mean(tf.sigmoid(logits).numpy())
    assert float(gap) == pytest.approx(expected, abs=0.01)
    assert expected > 0.2  # two of the three data actions are far from the peak


def test_the_conservative_term_lowers_q_where_cem_acts_below_q_at_the_data():
    batch = synthetic_batch(tiny_config())
    gaps = {}
    for weight in (0.0, 5.0):
        config = tiny_config(l2=0.0, learning_rate=3e-3, conservative_weight=weight)
        tf.keras.utils.set_random_seed(0)
        learner = qtopt.QTOpt(config)
        for _ in range(40):
            out = learner.train_step(batch)
        assert ("conservative_gap" in out) == (weight > 0)
        observation = batch[tr.OBSERVATION]
        features = learner.online.features(observation[schema.IMAGE])
        state = state_vector(observation)
        logits = learner.online.logits(features, state, batch[schema.ACTION])
        gaps[weight] = float(
            qtopt.conservative_gap(learner.online, features, state, logits, config, [7, 7])
        )
    # Without the term CEM's argmax scores above the data's actions (it searches
    # for the maximum); with it Q has been pushed down there and up at the data.
    assert gaps[0.0] > 0.02, gaps
    assert gaps[5.0] < 0.25 * gaps[0.0], gaps


def test_without_the_conservative_term_the_update_is_qtopts():
    """weight 0 trains as the plain update written out: the term adds nothing, not even RNG draws."""
    config = tiny_config(l2=0.0)
    batch = synthetic_batch(config)
    tf.keras.utils.set_random_seed(0)
    learner = qtopt.QTOpt(config)
    tf.keras.utils.set_random_seed(0)
    other = qtopt.QTOpt(config)
    learner.train_step(batch)
    y = qtopt.clipped_double_q_target(
        batch, other.target1, other.target2, config, other.rng.make_seeds(1)[:, 0]
    )["target"]
    with tf.GradientTape() as tape:
        logits = other.online(batch[tr.OBSERVATION], batch[schema.ACTION], training=True)
        loss = qtopt.weighted_cross_entropy(y, logits, batch[tr.TERMINAL], 1.0)
    grads = tape.gradient(loss, other.q_variables)
    other.optimizer.apply_gradients(zip(grads, other.q_variables))
    for a, b in zip(learner.online.q_weights, other.online.q_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
    assert learner.rng.state.numpy().tolist() == other.rng.state.numpy().tolist()


def test_a_negative_or_non_finite_conservative_weight_is_refused():
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="conservative_weight must be a number >= 0"):
            TrainConfig(conservative_weight=bad)
    with pytest.raises(ConfigError, match="CEM actor_std must be > 0, got 0"):
        CEMConfig(actor_std=0)
    # A run's config written before the term existed reads as without it.
    old = TrainConfig().as_dict()
    del old["conservative_weight"]
    assert TrainConfig.from_dict(old).conservative_weight == 0.0


def test_cem_started_at_a_proposal_searches_around_it():
    def score(actions):  # [B, N, 5] -> [B, N], maximal at PEAK
        return -tf.reduce_sum(tf.square(actions - PEAK), -1)

    proposal = tf.constant([[-0.5, 0.5, -0.5, 0.5, -0.5], list(PEAK - 0.1)], tf.float32)
    near = CEMConfig(actor_std=0.01, iterations=2)
    best, value = cem.maximize(score, 2, tf.constant([3, 1]), near, initial_mean=proposal)
    # A narrow search stays at its proposal, and never scores below it (the
    # proposal is the first sample).
    assert np.abs(best.numpy() - proposal.numpy()).max() < 0.05
    assert np.all(value.numpy() >= score(proposal[:, None, :]).numpy()[:, 0])
    # A wide one from the same proposals walks (the first from 1.1 away) to the maximiser.
    wide = CEMConfig(actor_std=0.5, iterations=12)
    best, _ = cem.maximize(score, 2, tf.constant([3, 1]), wide, initial_mean=proposal)
    assert np.abs(best.numpy() - PEAK).max() < 0.15


@pytest.fixture(scope="module")
def actor_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("actor_cem")
    data_dir = make_data_dir(root)
    run_dir = str(root / "run")
    config = tiny_config(actor=True, acting="actor_cem", conservative_weight=0.5)
    run.train(config, BASE, data_dir, run_dir, progress=False)
    return run_dir


def test_actor_cem_acts_near_the_actor_and_never_below_its_q(actor_run):
    from neverstop.trainers import checkpoints

    network, config, _ = checkpoints.load_network(actor_run)
    batch = synthetic_batch(config)
    observation = batch[tr.OBSERVATION]
    actor = network.act(observation)
    narrow = CEMConfig(samples=16, elites=2, actor_std=0.02)
    acted = policy_lib.greedy_actions(network, narrow, observation, [5, 6], "actor_cem")
    assert np.abs(acted.numpy() - actor.numpy()).max() < 0.15
    q = q_of(network, observation)
    assert np.all(q(acted) >= q(actor) - 1e-6)
    # A wider search moves further from the actor, to actions Q scores higher still.
    wide = CEMConfig(samples=64, elites=6, actor_std=0.5)
    far = policy_lib.greedy_actions(network, wide, observation, [5, 6], "actor_cem")
    assert np.abs(far.numpy() - actor.numpy()).max() > 0.15
    assert q(far).mean() > q(actor).mean()
    # The run acts this way by default, in eval.
    result = evaluate.evaluate(actor_run, "base", episodes=2, workers=0)
    assert result["acting"] == "actor_cem" and result["episodes"] == 2


def test_actor_cem_needs_an_actor():
    with pytest.raises(ConfigError, match='acting "actor_cem" needs a network with an actor'):
        TrainConfig(acting="actor_cem")


def test_the_exported_actor_cem_policy_acts_in_a_fresh_process(actor_run, tmp_path):
    from neverstop.trainers import checkpoints, export
    from tests.trainers.test_actor import _observation
    from tests.trainers.test_policy import act_in_fresh_process, fresh_first_observation

    out = str(tmp_path / "exported")
    info = export.export(actor_run, out)
    assert info["acting"] == "actor_cem" and info["cem"]["actor_std"] == 0.3
    result = act_in_fresh_process(out)
    # Its first action is CEM from the actor's: never below the actor's by Q.
    network, _, _ = checkpoints.load_network(actor_run)
    obs = fresh_first_observation()
    observation = _observation(obs)
    q = q_of(network, observation)
    first = tf.constant([result["actions"][0]], tf.float32)
    q_first, q_actor = (float(q(a)[0]) for a in (first, network.act(observation)))
    assert q_first >= q_actor - 1e-5
    assert np.all(np.abs(result["actions"]) <= 1.0)
