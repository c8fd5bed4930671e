"""Tests for neverstop/envs/policies.py: the random and scripted policies."""

import numpy as np
import pytest

from neverstop import schema
from neverstop.envs import grasp_env
from neverstop.envs import policies


@pytest.fixture(scope="module")
def env():
    with grasp_env.GraspEnv("base") as built:
        yield built


def _observation():
    return {
        schema.IMAGE: np.zeros(schema.IMAGE_SHAPE, np.uint8),
        schema.GRIPPER_CLOSED: np.float32(0.0),
        schema.HEIGHT_TO_BOTTOM: np.float32(0.25),
    }


def _random_actions(seed: int, count: int = 50) -> np.ndarray:
    policy = policies.RandomPolicy()
    rng = np.random.default_rng(seed)
    return np.stack([policy(_observation(), rng) for _ in range(count)])


def test_random_policy_actions_are_float32_in_the_action_box():
    actions = _random_actions(0)
    assert actions.dtype == np.float32
    assert actions.shape == (50, schema.ACTION_DIM)
    assert actions.min() >= schema.ACTION_MIN
    assert actions.max() <= schema.ACTION_MAX
    assert set(np.unique(actions[:, 4])) <= {-1.0, 1.0}


def test_random_policy_is_a_function_of_its_rng():
    np.testing.assert_array_equal(_random_actions(3), _random_actions(3))
    assert not np.array_equal(_random_actions(3), _random_actions(4))


def test_make_policy_builds_named_policies(env):
    assert isinstance(policies.make_policy("random", env), policies.RandomPolicy)
    scripted = policies.make_policy("scripted", env)
    assert isinstance(scripted, policies.ScriptedGrasper)
    assert scripted.env is env
    assert scripted.name == "scripted"


def test_make_policy_rejects_unknown_names(env):
    with pytest.raises(ValueError, match="unknown policy 'nope'; expected one of random, scripted"):
        policies.make_policy("nope", env)


def test_scripted_grasper_closes_before_the_forced_last_step(env):
    early = 0
    for seed in range(10):
        _, actions, _, _ = policies.run_episode(env, policies.ScriptedGrasper(env), seed)
        closes = [step for step, action in enumerate(actions, 1) if action[4] > 0]
        if closes and closes[0] < schema.MAX_EPISODE_STEPS:
            early += 1
    # Measured: all 10 episodes close on their 5th to 7th step.
    assert early >= 8


def test_run_episode_returns_one_more_observation_than_actions(env):
    observations, actions, rewards, info = policies.run_episode(env, policies.RandomPolicy(), 4)
    assert len(observations) == len(actions) + 1
    assert len(rewards) == len(actions)
    assert 1 <= len(actions) <= schema.MAX_EPISODE_STEPS
    assert info["step"] == len(actions)
    assert all(action.dtype == np.float32 and action.shape == (5,) for action in actions)
    assert observations[-1][schema.GRIPPER_CLOSED] == 1.0


def test_run_episode_is_a_function_of_the_seed(env):
    first = policies.run_episode(env, policies.RandomPolicy(), 11)[1]
    second = policies.run_episode(env, policies.RandomPolicy(), 11)[1]
    np.testing.assert_array_equal(np.stack(first), np.stack(second))
