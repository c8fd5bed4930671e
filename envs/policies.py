"""Policies that act in a GraspEnv, all behind one interface.

A policy is a callable `action = policy(observation, rng)` returning a
float32[5] action in [-1, 1]. The rng is passed in (never global state) so a
collector can derive it from the episode seed. Policies that keep
per-episode state also implement `reset(rng)`, called after env.reset().
`name` is what the dataset records in `episode_metadata/policy`.
"""

import math
from typing import Callable, Dict, List, Optional, Protocol, Tuple, runtime_checkable

import numpy as np

from neverstop import schema
from neverstop.envs import grasp_env as grasp_env_lib

Observation = Dict[str, np.ndarray]


@runtime_checkable
class Policy(Protocol):
    name: str

    def __call__(self, observation: Observation, rng: np.random.Generator) -> np.ndarray: ...


def reset_policy(policy: Policy, rng: np.random.Generator) -> None:
    """Calls `policy.reset(rng)` if the policy keeps per-episode state."""
    reset = getattr(policy, "reset", None)
    if reset is not None:
        reset(rng)


class RandomPolicy:
    """Uniform actions; closes on any step with probability `close_prob`."""

    name = "random"

    def __init__(self, close_prob: float = 0.25):
        self.close_prob = close_prob

    def __call__(self, observation: Observation, rng: np.random.Generator) -> np.ndarray:
        action = rng.uniform(-1.0, 1.0, schema.ACTION_DIM).astype(np.float32)
        action[4] = 1.0 if rng.random() < self.close_prob else -1.0
        return action


class RandomGraspPolicy:
    """QT-Opt's bootstrap exploration: wander, descend, close near the floor.

    Random lateral moves (uniform in [-lateral, lateral]) and yaw while
    descending at a random rate, then a close once the tool is below a random
    height (1-4 cm). It knows nothing of the objects, so where it closes is
    random; that is the point: its grasps show what a closing at each place
    yields, the evidence a Q-function needs to learn where to grasp (a
    privileged grasper only ever closes where an object is).
    """

    name = "random_grasp"

    def __init__(self, lateral: float = 0.6):
        self.lateral = lateral
        self._close_below = 0.02

    def reset(self, rng: np.random.Generator) -> None:
        self._close_below = float(rng.uniform(0.01, 0.04))

    def __call__(self, observation: Observation, rng: np.random.Generator) -> np.ndarray:
        action = np.zeros(schema.ACTION_DIM, np.float32)
        action[:2] = rng.uniform(-self.lateral, self.lateral, 2)
        action[2] = rng.uniform(-1.0, -0.3)
        action[3] = rng.uniform(-0.5, 0.5)
        low = float(observation[schema.HEIGHT_TO_BOTTOM]) < self._close_below
        action[4] = 1.0 if low else -1.0
        return action


class ScriptedGrasper:
    """A noisy privileged grasper, the kind QT-Opt bootstrapped its data with.

    It reads the object poses from the simulator (which a learned policy never
    sees), picks one object, moves the tool over it with position noise,
    descends and closes at a noisy height. It knows the robot's nominal
    kinematics only, so it is no oracle on the morphology tasks either.
    With `xy_noise_range` the aim's noise std is drawn per episode from that
    range instead of being `xy_noise` (the `scripted_wide` policy). With
    `reach_range` it stops short of its aim by a reach drawn per episode from
    that range, descends there, and makes the last lateral move and the close
    in one step (the `scripted_reach` policy): closings whose move spans
    centimetres, as a learned policy's often do. With `close_height_range` it
    closes over its aim at a height above the floor drawn per episode from that
    range (the `scripted_high` policy): closings in the air over an object,
    which fail, and show a Q-function that height matters where a greedy
    search over actions would otherwise extrapolate.
    """

    def __init__(
        self,
        env: "grasp_env_lib.GraspEnv",
        xy_noise: float = 0.015,
        height_noise: float = 0.01,
        action_noise: float = 0.1,
        xy_noise_range: Optional[Tuple[float, float]] = None,
        reach_range: Optional[Tuple[float, float]] = None,
        close_height_range: Optional[Tuple[float, float]] = None,
        follow_nearest: bool = False,
        approach_noise: float = 0.0,
        approach_switch_range: Tuple[float, float] = (0.06, 0.20),
        name: str = "scripted",
    ):
        self.env = env
        self.name = name
        self.follow_nearest = follow_nearest
        self.xy_noise = xy_noise
        self.xy_noise_range = xy_noise_range
        if reach_range is not None and not 0.0 < reach_range[0] <= reach_range[1]:
            raise ValueError(
                f"reach_range must be (low, high) metres with 0 < low <= high, got {reach_range}"
            )
        self.reach_range = reach_range
        if (
            close_height_range is not None
            and not 0.0 <= close_height_range[0] <= close_height_range[1]
        ):
            raise ValueError(
                "close_height_range must be (low, high) metres above the floor with"
                f" 0 <= low <= high, got {close_height_range}"
            )
        self.close_height_range = close_height_range
        if approach_noise < 0 or not 0.0 < approach_switch_range[0] <= approach_switch_range[1]:
            raise ValueError(
                "approach_noise must be >= 0 and approach_switch_range (low, high) metres above"
                f" the floor with 0 < low <= high, got {approach_noise}, {approach_switch_range}"
            )
        self.approach_noise = approach_noise
        self.approach_switch_range = approach_switch_range
        self._approach_offset = np.zeros(2)
        self._switch_height = 0.0
        self._reach: Optional[float] = None
        self.height_noise = height_noise
        self.action_noise = action_noise
        self._goal: Optional[np.ndarray] = None

    def _candidates(self) -> List[np.ndarray]:
        """The objects' positions inside the workspace (all of them if none is)."""
        poses = self.env.object_poses()
        inside = [
            p
            for p, _ in poses
            if np.all(
                np.abs(p[:2] - grasp_env_lib.TRAY_POSITION[:2])
                < grasp_env_lib.WORKSPACE_HALF_EXTENT
            )
        ]
        return inside or [p for p, _ in poses]

    def _aim(self, chosen: np.ndarray) -> np.ndarray:
        """The goal over `chosen` with this episode's aim and height noise."""
        goal = chosen.copy()
        goal[:2] += self._xy_offset
        goal[2] = max(grasp_env_lib.FLOOR_Z + 0.012, chosen[2] - 0.005 + self._z_offset)
        if self._close_height is not None:
            goal[2] = max(goal[2], grasp_env_lib.FLOOR_Z + self._close_height)
        return goal

    def reset(self, rng: np.random.Generator) -> None:
        candidates = self._candidates()
        chosen = candidates[rng.integers(len(candidates))]
        xy_noise = self.xy_noise
        if self.xy_noise_range is not None:
            xy_noise = float(rng.uniform(*self.xy_noise_range))
        self._xy_offset = rng.normal(0.0, xy_noise, 2)
        self._z_offset = rng.normal(0.0, self.height_noise)
        self._close_height = None
        if self.close_height_range is not None:
            self._close_height = rng.uniform(*self.close_height_range)
        self._goal = self._aim(chosen)
        self._goal_yaw = rng.uniform(-math.pi / 2, math.pi / 2)
        if self.reach_range is not None:
            self._reach = float(rng.uniform(*self.reach_range))
        if self.approach_noise > 0:
            self._approach_offset = rng.normal(0.0, self.approach_noise, 2)
            self._switch_height = float(rng.uniform(*self.approach_switch_range))

    def __call__(self, observation: Observation, rng: np.random.Generator) -> np.ndarray:
        if self._goal is None:
            self.reset(rng)
        if self.follow_nearest:
            tool = self.env.tcp_position()[:2]
            candidates = self._candidates()
            distances = [np.linalg.norm(p[:2] - tool) for p in candidates]
            self._goal = self._aim(candidates[int(np.argmin(distances))])
        cfg = self.env.config
        tcp = self.env.tcp_position()
        goal = self._goal
        if self.approach_noise > 0 and tcp[2] - grasp_env_lib.FLOOR_Z > self._switch_height:
            goal = goal.copy()
            goal[:2] += self._approach_offset
        error = goal - tcp
        action = np.zeros(schema.ACTION_DIM, np.float32)
        lateral = float(np.linalg.norm(error[:2]))
        low = abs(error[2]) < 0.015
        if self._reach is None:
            move, near, arrived = error[:2], 0.03, lateral < 0.02 and low
        else:
            # Approach to 0.8 x reach from the aim, hold there while descending,
            # then move onto the aim and close in the same step.
            reach = self._reach
            if lateral >= reach:
                move = error[:2] * (1.0 - 0.8 * reach / lateral)
            else:
                move = error[:2] if low else np.zeros(2)
            near, arrived = reach + 0.03, lateral < reach and low
        action[:2] = move / cfg.translation_scale
        # Descend fully once roughly above the goal, gently before that.
        descent = error[2] if lateral < near else max(error[2], -0.02)
        action[2] = descent / cfg.translation_scale
        action[3] = (self._goal_yaw - self.env.yaw) / cfg.rotation_scale
        action[:4] += rng.normal(0.0, self.action_noise, 4)
        action[4] = 1.0 if arrived else -1.0
        return np.clip(action, -1.0, 1.0).astype(np.float32)


class ScorerPolicy:
    """Greedy over sampled actions under a score function.

    `score_fn(observation, actions[N, 5]) -> scores[N]` stands in for a
    Q-function; the trainer's CEM policy has the same call signature as
    this, so the epsilon-greedy wrapper and the collector work with either.
    """

    def __init__(self, score_fn, num_samples: int = 64, name: str = "scorer"):
        self.score_fn = score_fn
        self.num_samples = num_samples
        self.name = name

    def __call__(self, observation: Observation, rng: np.random.Generator) -> np.ndarray:
        candidates = rng.uniform(-1.0, 1.0, (self.num_samples, schema.ACTION_DIM))
        scores = np.asarray(self.score_fn(observation, candidates.astype(np.float32)))
        if scores.shape != (self.num_samples,):
            raise ValueError(
                f"score_fn returned shape {scores.shape}, expected ({self.num_samples},)"
            )
        return candidates[int(np.argmax(scores))].astype(np.float32)


def _scripted_explorer(env: Optional["grasp_env_lib.GraspEnv"]) -> Policy:
    if env is None:
        raise ValueError("the 'scripted' explorer reads the simulator's state: it needs the env")
    return ScriptedGrasper(env, follow_nearest=True)


# Exploration actions for EpsilonGreedy, by name; each is made from the env.
#   random    uniform moves, closing a quarter of the time (QT-Opt's random policy);
#   moves     uniform moves that never close: the greedy policy alone decides
#             when to grasp, so exploration varies where the gripper goes
#             without ending most episodes early (docs/experiments.md);
#   scripted  the scripted grasper's step toward the object nearest the tool
#             (privileged, so only where the simulator runs): on the states
#             the greedy policy leads into, the step that corrects it, which
#             a cloned actor never sees in the scripted grasper's own
#             episodes (DAgger's mixing, docs/experiments.md).
EXPLORERS: Dict[str, Callable[[Optional["grasp_env_lib.GraspEnv"]], Policy]] = {
    "random": lambda env: RandomPolicy(),
    "moves": lambda env: RandomPolicy(close_prob=0.0),
    "scripted": _scripted_explorer,
}
DEFAULT_EXPLORER = "random"


def make_explorer(name: str, env: Optional["grasp_env_lib.GraspEnv"] = None) -> Policy:
    if name not in EXPLORERS:
        raise ValueError(f"unknown explorer {name!r}; expected one of {', '.join(EXPLORERS)}")
    return EXPLORERS[name](env)


def epsilon_label(name: str, epsilon: float, explore: str = DEFAULT_EXPLORER) -> str:
    """The name of `name` acting epsilon-greedily, e.g. "scripted@eps=0.2" or
    "qtopt:ckpt-7@eps=0.3+moves" (the explorer is named unless it is the default)."""
    label = f"{name}@eps={epsilon:g}"
    return label if explore == DEFAULT_EXPLORER else f"{label}+{explore}"


class EpsilonGreedy:
    """Acts with `explore` (random by default) with probability epsilon, else `greedy`.

    How the study collects target data: the pre-trained policy plus
    exploration noise. The name records both, e.g. "qtopt:ckpt-7@eps=0.2".
    `explore` is a policy or a name from EXPLORERS (made from `env`).
    """

    def __init__(
        self,
        greedy: Policy,
        epsilon: float,
        explore=DEFAULT_EXPLORER,
        env: Optional["grasp_env_lib.GraspEnv"] = None,
    ):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.greedy = greedy
        self.epsilon = float(epsilon)
        explore_name = explore if isinstance(explore, str) else DEFAULT_EXPLORER
        self.explore = make_explorer(explore, env) if isinstance(explore, str) else explore
        self.name = epsilon_label(greedy.name, self.epsilon, explore_name)

    def reset(self, rng: np.random.Generator) -> None:
        reset_policy(self.greedy, rng)
        reset_policy(self.explore, rng)

    def __call__(self, observation: Observation, rng: np.random.Generator) -> np.ndarray:
        actor = self.explore if rng.random() < self.epsilon else self.greedy
        return actor(observation, rng)


POLICY_NAMES = (
    "random",
    "scripted",
    "random_grasp",
    "scripted_wide",
    "scripted_reach",
    "scripted_high",
    "scripted_correct",
)

# scripted_wide: the scripted grasper with its aim's lateral noise (std, metres)
# drawn per episode from this range, so its closings spread from on the
# object to several centimetres off it: grasps whose outcomes show a Q-function
# how success falls with the distance at closing.
WIDE_XY_NOISE = (0.0, 0.04)
# scripted_reach: how far short of its aim (metres) the scripted grasper stops
# before its closing step, drawn per episode; that step's move is 0.8 x this.
REACH_RANGE = (0.02, 0.06)
# scripted_correct: the std (metres, per axis) of the offset of its first
# move from its aim; it corrects below a height drawn from SWITCH_RANGE.
# About the lateral error of a cloned actor's first move (docs/experiments.md).
APPROACH_NOISE = 0.025
APPROACH_SWITCH_RANGE = (0.06, 0.20)
# scripted_high: the height above the tray's floor (metres) at which the
# scripted grasper closes over its aim, drawn per episode. The tool starts
# 25 cm up (START_HEIGHT); above a few cm nearly every closing fails.
HIGH_CLOSE_RANGE = (0.0, 0.25)


def make_policy(
    name: str,
    env: "grasp_env_lib.GraspEnv",
    epsilon: float = 0.0,
    explore: str = DEFAULT_EXPLORER,
) -> Policy:
    """Builds a named policy for `env`, epsilon-greedy (with `explore`) when epsilon > 0.

    Unknown names raise ValueError listing the known ones.
    """
    factories: Dict[str, Callable[[], Policy]] = {
        "random": RandomPolicy,
        "scripted": lambda: ScriptedGrasper(env),
        "scripted_wide": lambda: ScriptedGrasper(
            env, xy_noise_range=WIDE_XY_NOISE, name="scripted_wide"
        ),
        "scripted_reach": lambda: ScriptedGrasper(
            env, reach_range=REACH_RANGE, name="scripted_reach"
        ),
        "scripted_high": lambda: ScriptedGrasper(
            env, close_height_range=HIGH_CLOSE_RANGE, name="scripted_high"
        ),
        "scripted_correct": lambda: ScriptedGrasper(
            env,
            approach_noise=APPROACH_NOISE,
            approach_switch_range=APPROACH_SWITCH_RANGE,
            name="scripted_correct",
        ),
        "random_grasp": RandomGraspPolicy,
    }
    if name not in factories:
        raise ValueError(f"unknown policy {name!r}; expected one of {', '.join(POLICY_NAMES)}")
    policy = factories[name]()
    return EpsilonGreedy(policy, epsilon, explore, env) if epsilon > 0 else policy


def run_episode(
    env: "grasp_env_lib.GraspEnv",
    policy: Policy,
    seed: int,
    policy_rng: Optional[np.random.Generator] = None,
):
    """Runs one episode; returns (observations, actions, rewards, info).

    The policy's rng derives from the episode seed unless one is given, so an
    episode is a pure function of (task, policy, seed).
    """
    rng = policy_rng or np.random.default_rng([seed, 1])
    observation = env.reset(seed)
    reset_policy(policy, rng)
    observations, actions, rewards = [observation], [], []
    done, info = False, {}
    while not done:
        action = policy(observation, rng)
        observation, reward, done, info = env.step(action)
        observations.append(observation)
        actions.append(schema.validate_action(action))
        rewards.append(reward)
    return observations, actions, rewards, info
