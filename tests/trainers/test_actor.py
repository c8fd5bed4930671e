"""Tests for the trainer's optional actor: positive-filtered behaviour cloning
beside QT-Opt, acting with it, and refusing to act with an actor a run lacks."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from neverstop import schema
from neverstop.benchmarks.train_bench import synthetic_batch
from neverstop.datasets import stream as stream_lib
from neverstop.datasets import transitions as tr
from neverstop.envs import collect, grasp_env, policies
from neverstop.trainers import checkpoints, evaluate, export, qtopt, run, vision
from neverstop.trainers import policy as policy_lib
from neverstop.trainers.config import ConfigError, TrainConfig
from tests.trainers.helpers import BASE, make_data_dir, q_of, tiny_config
from tests.trainers.test_policy import act_in_fresh_process, fresh_first_observation


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny data dir, a 20-step run with an actor (acting with it) and one without."""
    root = tmp_path_factory.mktemp("actor")
    data_dir = make_data_dir(root)
    with_actor = str(root / "with_actor")
    run.train(tiny_config(actor=True, acting="actor"), BASE, data_dir, with_actor, progress=False)
    q_only = str(root / "q_only")
    run.train(tiny_config(), BASE, data_dir, q_only, progress=False)
    return data_dir, with_actor, q_only


def _observation(obs) -> dict:
    return {
        schema.IMAGE: tf.constant(obs[schema.IMAGE][None]),
        schema.GRIPPER_CLOSED: tf.constant([obs[schema.GRIPPER_CLOSED]], tf.float32),
        schema.HEIGHT_TO_BOTTOM: tf.constant([obs[schema.HEIGHT_TO_BOTTOM]], tf.float32),
    }


def test_behaviour_cloning_loss_counts_only_transitions_of_successful_episodes():
    predicted = tf.constant([[0.5, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, -1.0]])
    action = tf.constant([[0.0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1.0]])
    success = tf.constant([True, False, True])
    # (0.25 / 5 + 4 / 5) / 2: the failed episode's large error does not count.
    got = float(qtopt.behaviour_cloning_loss(predicted, action, success))
    np.testing.assert_allclose(got, (0.25 / 5 + 4.0 / 5) / 2, rtol=1e-6)
    none = float(qtopt.behaviour_cloning_loss(predicted, action, tf.zeros([3], tf.bool)))
    assert none == 0.0


def test_advantage_weights_grow_with_q_s_preference_for_the_data_and_stop_at_the_cap():
    q_data = tf.constant([0.8, 0.5, 0.2, 0.9])
    q_actor = tf.constant([0.6, 0.5, 0.4, 0.1])
    got = qtopt.advantage_weights(q_data, q_actor, temperature=0.1, max_weight=20.0).numpy()
    # exp(0.2 / 0.1), exp(0), exp(-0.2 / 0.1), and exp(8) capped at 20.
    np.testing.assert_allclose(got, [np.exp(2.0), 1.0, np.exp(-2.0), 20.0], rtol=1e-5)


def test_weighted_behaviour_cloning_is_the_weighted_mean_over_successes():
    predicted = tf.constant([[1.0, 0], [2.0, 0], [3.0, 0]])
    action = tf.zeros([3, 2])
    success = tf.constant([True, True, False])
    weights = tf.constant([3.0, 1.0, 100.0])
    got = float(qtopt.behaviour_cloning_loss(predicted, action, success, weights))
    # errors 0.5, 2.0 (4.5 does not count: its episode failed), weighted 3:1.
    np.testing.assert_allclose(got, (3 * 0.5 + 1 * 2.0) / 4, rtol=1e-6)
    ones = float(qtopt.behaviour_cloning_loss(predicted, action, success, tf.ones([3])))
    np.testing.assert_allclose(
        ones, float(qtopt.behaviour_cloning_loss(predicted, action, success))
    )


def test_the_advantage_weighted_actor_weighs_by_q_and_never_moves_q():
    config = tiny_config(actor=True, l2=0.0, actor_advantage_temperature=0.05)
    batch = synthetic_batch(config)
    tf.keras.utils.set_random_seed(0)
    weighted = qtopt.QTOpt(config)
    tf.keras.utils.set_random_seed(0)
    plain = qtopt.QTOpt(config.replace(actor_advantage_temperature=0.0))
    observation, action = batch[tr.OBSERVATION], batch[schema.ACTION]
    q = q_of(weighted.online, observation)
    predicted = weighted.online.act(observation, average=False)
    weights = qtopt.advantage_weights(q(action), q(predicted), 0.05, 20.0)
    assert float(tf.math.reduce_std(weights)) > 0.01  # the weighting is not flat here
    expected = float(qtopt.behaviour_cloning_loss(predicted, action, batch[tr.SUCCESS], weights))
    unweighted = float(qtopt.behaviour_cloning_loss(predicted, action, batch[tr.SUCCESS]))
    first = float(weighted.train_step(batch)["actor_loss"])
    np.testing.assert_allclose(first, expected, rtol=1e-4)
    assert float(plain.train_step(batch)["actor_loss"]) == pytest.approx(unweighted, rel=1e-4)
    assert abs(expected - unweighted) > 1e-3 * unweighted
    for _ in range(2):
        weighted.train_step(batch)
        plain.train_step(batch)
    for a, b in zip(weighted.online.q_weights, plain.online.q_weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ConfigError, match="actor_advantage_temperature must be a number >= 0"):
        tiny_config(actor=True, actor_advantage_temperature=-0.1)
    with pytest.raises(ConfigError, match="actor_max_weight must be a positive number"):
        tiny_config(actor=True, actor_max_weight=0.0)


def test_the_stream_says_which_transitions_come_from_successful_episodes(runs):
    data_dir, _, _ = runs
    batches = stream_lib.make_stream(BASE, data_dir, stream_lib.StreamConfig(batch_size=16))
    seen = set()
    for batch in batches.take(8):
        for episode_id, success in zip(batch[tr.EPISODE_ID].numpy(), batch[tr.SUCCESS].numpy()):
            index = int(episode_id.decode().rsplit("-", 1)[1])
            assert bool(success) == (index % 3 == 0), episode_id  # how the test data was made
            seen.add(bool(success))
    assert seen == {True, False}


def test_the_actor_learns_from_successes_only_and_never_moves_q():
    config = tiny_config(actor=True, l2=0.0, learning_rate=3e-3)
    batch = synthetic_batch(config)
    tf.keras.utils.set_random_seed(0)
    with_actor = qtopt.QTOpt(config)
    tf.keras.utils.set_random_seed(0)
    q_only = qtopt.QTOpt(config.replace(actor=False))
    actor_before = [w.numpy() for w in with_actor.actor_variables]
    failures = dict(batch, **{tr.SUCCESS: tf.zeros_like(batch[tr.SUCCESS])})
    for _ in range(3):
        out = with_actor.train_step(failures)
        q_only.train_step(failures)
        assert float(out["actor_loss"]) == 0.0
    # No successful transition: nothing for the actor to imitate, nothing moves it.
    assert all(
        np.array_equal(a, w.numpy()) for a, w in zip(actor_before, with_actor.actor_variables)
    )
    losses = [float(with_actor.train_step(batch)["actor_loss"]) for _ in range(30)]
    for _ in range(30):
        q_only.train_step(batch)
    assert losses[-1] < 0.5 * losses[0]
    # Q (and its targets) trained exactly as without an actor: separate weights and optimizers.
    for a, b in ((with_actor.online, q_only.online), (with_actor.target1, q_only.target1)):
        assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.q_weights, b.q_weights))
    assert "actor_loss" not in q_only.train_step(batch)


def test_what_acts_is_the_polyak_average_of_the_trained_actor():
    config = tiny_config(actor=True, actor_polyak=0.5, learning_rate=1e-2)
    learner = qtopt.QTOpt(config)
    online = learner.online
    start = [w.numpy() for w in online.actor_weights]
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(start, online.average_actor_weights))
    batch = synthetic_batch(config)
    learner.train_step(batch)
    one = [w.numpy() for w in online.actor_weights]
    learner.train_step(batch)
    two = [w.numpy() for w in online.actor_weights]
    # average_2 = 0.5 * (0.5 * start + 0.5 * one) + 0.5 * two
    for s, a, b, avg in zip(start, one, two, online.average_actor_weights):
        np.testing.assert_allclose(avg.numpy(), 0.25 * s + 0.25 * a + 0.5 * b, rtol=1e-5, atol=1e-7)
    observation = batch[tr.OBSERVATION]
    acted = online.act(observation).numpy()
    assert not np.allclose(acted, online.act(observation, average=False).numpy())
    trainable = {id(w) for w in online.trainable_weights}  # so the l2 penalty leaves it alone
    assert not any(id(w) in trainable for w in online.average_actor_weights)
    with pytest.raises(ConfigError, match="actor_polyak must be in \\[0, 1\\), got 1.0"):
        tiny_config(actor=True, actor_polyak=1.0)


def test_a_fine_tune_starts_its_actor_from_the_parents_average(runs):
    _, run_dir, _ = runs
    parent, _, _ = checkpoints.load_network(run_dir)
    # The parent's trained actor and its average differ after 20 steps.
    assert not all(
        np.array_equal(a.numpy(), w.numpy())
        for a, w in zip(parent.actor_weights, parent.average_actor_weights)
    )
    config = tiny_config(mode="finetune", actor=True, acting="actor")
    learner = qtopt.QTOpt(config)
    run.initialise(learner, config, run_dir, None)
    for mine, average in zip(learner.online.actor_weights, parent.average_actor_weights):
        np.testing.assert_array_equal(mine.numpy(), average.numpy())
    for mine, average in zip(learner.online.average_actor_weights, parent.average_actor_weights):
        np.testing.assert_array_equal(mine.numpy(), average.numpy())
    for mine, q in zip(learner.online.q_weights, parent.q_weights):  # Q as the parent's online
        np.testing.assert_array_equal(mine.numpy(), q.numpy())


def test_an_actor_run_logs_its_loss_and_acts_with_its_actor_in_eval(runs):
    _, run_dir, _ = runs
    metrics = run.read_metrics(run_dir)
    assert all(np.isfinite(m["actor_loss"]) and m["actor_loss"] >= 0 for m in metrics)
    network, config, _ = checkpoints.load_network(run_dir)
    assert network.has_actor and config.acting == "actor"
    result = evaluate.evaluate(run_dir, "base", episodes=3, workers=0, seed=5)
    assert result["acting"] == "actor"
    # The actor's actions, acted here step by step, give the same episodes.
    successes = steps = 0
    with grasp_env.GraspEnv("base", grasp_env.EnvConfig(object_split="eval")) as env:
        for i in range(3):
            obs = env.reset(collect.episode_seed(5, i))
            done = False
            while not done:
                action = network.act(_observation(obs)).numpy()[0]
                obs, _, done, info = env.step(action)
                steps += 1
            successes += int(info["success"])
    assert (result["successes"], result["steps"]) == (successes, steps)
    # --acting cem overrides the run's default and acts by CEM over Q instead.
    policy = policy_lib.from_checkpoint(run_dir, acting="cem")
    assert policy.acting == "cem"
    _, actions, _, _ = policies.run_episode(
        grasp_env.GraspEnv("base", grasp_env.EnvConfig(object_split="eval")), policy, 11
    )
    assert len(actions) >= 1


def test_the_exported_actor_acts_in_a_fresh_process(runs, tmp_path):
    _, run_dir, _ = runs
    out = str(tmp_path / "exported")
    info = export.export(run_dir, out)
    assert info["acting"] == "actor"
    result = act_in_fresh_process(out)
    network, _, _ = checkpoints.load_network(run_dir)
    expected = network.act(_observation(fresh_first_observation())).numpy()[0]
    np.testing.assert_allclose(result["actions"][0], expected, atol=1e-5)


def test_acting_with_an_actor_a_run_does_not_have_is_refused(runs, tmp_path):
    data_dir, _, q_only = runs
    with pytest.raises(ConfigError, match="q_only.*needs a network with an actor"):
        evaluate.evaluate(q_only, "base", episodes=1, workers=0, acting="actor")
    out = str(tmp_path / "exported")
    with pytest.raises(ConfigError, match="needs a network with an actor"):
        export.export(q_only, out, acting="actor")
    assert not os.path.exists(out) or not os.listdir(out)
    with pytest.raises(
        ConfigError, match="this config: acting .actor. needs a network with an actor"
    ):
        TrainConfig(acting="actor")
    with pytest.raises(ConfigError, match="unknown acting 'greedy'"):
        TrainConfig(actor=True, acting="greedy")
    with pytest.raises(ConfigError, match="actor_weight must be a positive number"):
        TrainConfig(actor=True, actor_weight=0.0)
    # Fine-tuning a Q-only checkpoint into a network with an actor: different variables.
    ft = str(tmp_path / "ft")
    with pytest.raises(ConfigError, match="actor: checkpoint has False, this run has True"):
        run.train(
            tiny_config(mode="finetune", actor=True),
            BASE,
            data_dir,
            ft,
            init=q_only,
            progress=False,
        )
    assert not os.path.exists(os.path.join(ft, "config.json"))


def test_imagenet_mode_starts_the_actor_from_the_vision_tower_too(tmp_path):
    path = str(tmp_path / "tower.npz")
    vision.pretrain(tiny_config(), path, images=16, epochs=1, progress=False)
    config = tiny_config(mode="imagenet", steps=2, actor=True, acting="actor")
    learner = qtopt.QTOpt(config)
    before = [w.numpy() for w in learner.online.actor_head.weights]
    run.initialise(learner, config, None, path)
    with np.load(path) as data:
        for tower in (
            learner.online.tower,
            learner.online.actor_tower,
            learner.online.average_actor_tower,
        ):
            for i, w in enumerate(tower.weights):
                np.testing.assert_array_equal(w.numpy(), data[f"w{i:03d}"])
    # The heads keep their random start: only the towers are features.
    for w, b in zip(learner.online.actor_head.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


def test_a_config_written_before_the_actor_existed_reads_as_without_one():
    saved = TrainConfig().as_dict()
    for key in ("actor", "actor_weight", "actor_polyak", "acting"):
        saved.pop(key)
    config = TrainConfig.from_dict(saved)
    assert (config.actor, config.acting, config.actor_weight) == (False, "cem", 1.0)
    # One written with an actor, before its advantage weighting existed: unweighted.
    saved = TrainConfig(actor=True, actor_advantage_temperature=0.1).as_dict()
    for key in ("actor_advantage_temperature", "actor_max_weight"):
        saved.pop(key)
    assert TrainConfig.from_dict(saved).actor_advantage_temperature == 0.0
    # A user's partial config means today's defaults.
    assert TrainConfig.from_dict({"actor": True, "acting": "actor"}).actor is True


def test_a_checkpoint_without_the_variables_its_config_names_fails_clearly_not_forever(
    runs, tmp_path
):
    _, _, q_only = runs
    broken = str(tmp_path / "broken")
    shutil.copytree(q_only, broken)
    config_path = os.path.join(broken, "config.json")
    saved = json.load(open(config_path))
    json.dump(dict(saved, actor=True), open(config_path, "w"))
    with pytest.raises(ConfigError, match="broken/ckpt-20: lacks variables.*actor_tower"):
        checkpoints.load_network(broken)
    # In worker processes too: the first episode raises (a failing Pool
    # initializer would otherwise be respawned for ever).
    with pytest.raises(RuntimeError, match="evaluation worker could not start: ConfigError"):
        evaluate.evaluate(broken, "base", episodes=2, workers=2)
