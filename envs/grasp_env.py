"""A PyBullet KUKA iiwa bin-grasping environment with six tasks.

`GraspEnv(task).reset(seed)` -> observation; `step(action)` ->
(observation, reward, done, info). Observation and action follow the schema
module (QT-Opt's conventions scaled to a CPU): a 64x64 over-the-shoulder
image, whether the gripper is closed and the tool's height above the tray
floor; actions [dx, dy, dz, dyaw, close] in [-1, 1].

Determinism and speed: an episode is a pure function of (task, config,
seed), whatever ran before it in the process, which is what lets a
collector shard seeds across any number of workers. A reset therefore
starts a fresh Bullet world (see `_load_world` for why nothing less
works), but all the costly parts are prepared once per environment: the
generated robot URDF and textures, the home joint configuration, the
camera. Objects settle together in 240 physics steps, not 500 each.
"""

import atexit
import contextlib
import dataclasses
import logging
import math
import os
import pkgutil
import sys
import weakref
from typing import Dict, List, Optional, Tuple

import numpy as np
import pybullet

from neverstop import schema
from neverstop.envs import assets
from neverstop.envs import tasks as tasks_lib

Observation = Dict[str, np.ndarray]

# "tiny" is the default, not EGL as DESIGN.md first planned: measured here,
# the EGL plugin ignores textures made with loadTexture (no checkerboard),
# costs ~11 ms a frame against ~2-6 ms, and two EGL clients in one process
# are not deterministic. EGL stays available for true transparency.
RENDERERS = ("tiny", "egl", "auto")

TRAY_POSITION = (0.6, 0.0, 0.0)
TRAY_SCALE = 0.5
FLOOR_Z = 0.015 * TRAY_SCALE  # top of the tray's floor box
SPAWN_HALF_EXTENT = 0.10  # objects spread over most of the workspace: see docs/envs.md
WORKSPACE_HALF_EXTENT = 0.12
OBJECT_SCALE = 0.7
START_HEIGHT = 0.25  # tcp above the floor at the start of an episode
MAX_HEIGHT = 0.32
LIFT_HEIGHT = 0.25
LIFT_THRESHOLD = 0.1  # held: this far above the floor and touching a finger
# Grip physics (see docs/envs.md, "Grip and view"): with 40 N fingers and
# friction 1.0-1.5 a privileged grasper placed exactly over an object failed
# 37% of its grasps to slip, so outcomes said little about where it closed.
FINGER_FORCE = 150.0
GRIP_FRICTION = dict(lateralFriction=2.0, spinningFriction=0.01)
# Rolling and spinning friction let dropped objects come to rest: at 0.001 /
# 0.01 (with 90 settling steps) an object still rolled more than 1 cm during the
# first three steps of 93% of episodes, so what the first frame showed was not
# where the objects were when the gripper closed (docs/envs.md, "Objects at rest").
OBJECT_FRICTION = dict(lateralFriction=2.0, spinningFriction=0.02, rollingFriction=0.02)

FLOOR_RGBA = (0.55, 0.52, 0.48, 1.0)
TRAY_RGBA = (0.45, 0.45, 0.47, 1.0)

ARM_JOINTS = tuple(range(7))
REST_POSE = (0.0, 0.45, 0.0, -1.55, 0.0, 1.15, 0.0)


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Simulation settings shared by all tasks (defaults are the study's)."""

    num_objects: int = 5
    max_steps: int = schema.MAX_EPISODE_STEPS
    object_split: str = "train"  # "eval": the held-out objects
    renderer: str = "tiny"  # "egl": EGL or fail; "auto": EGL when it loads
    # Metres per unit action for dx, dy, dz; radians per unit for dyaw.
    translation_scale: float = 0.05
    rotation_scale: float = math.pi / 4
    step_penalty: float = 0.0
    time_step: float = 1.0 / 240.0
    action_substeps: int = 20
    settle_substeps: int = 240  # 1 s of simulated time: objects come to rest
    close_substeps: int = 25
    lift_substeps: int = 50
    solver_iterations: int = 30


@dataclasses.dataclass(frozen=True)
class Camera:
    # Over the shoulder, high enough that the fingertips are in view from the
    # first frame (at the old eye height the start pose was off-screen, so the
    # policy could not see where its first lateral move had taken it).
    eye: Tuple[float, float, float] = (0.38, 0.20, 0.44)
    target: Tuple[float, float, float] = (0.61, 0.0, 0.07)
    fov: float = 52.0


@contextlib.contextmanager
def _quiet_stdout():
    """Silences C-level stdout: the EGL plugin prints its GL strings there,
    which would interleave with a CLI's output (and its RESULT line)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _load_egl(client: int) -> bool:
    loader = pkgutil.get_loader("eglRenderer")
    if loader is None:
        return False
    with _quiet_stdout():
        plugin = pybullet.loadPlugin(
            loader.get_filename(), "_eglRendererPlugin", physicsClientId=client
        )
    return plugin >= 0


# Two live EGL-rendering clients in one process share GL state and stop
# being deterministic (measured); one at a time is exact, so we allow one.
_LIVE_EGL_ENVS: "weakref.WeakSet[GraspEnv]" = weakref.WeakSet()
_LIVE_ENVS: "weakref.WeakSet[GraspEnv]" = weakref.WeakSet()


@atexit.register
def _close_all():
    for env in list(_LIVE_ENVS):
        env.close()


class EpisodeEndedError(RuntimeError):
    """step() was called after the episode ended, before reset()."""


class GraspEnv:
    """One simulated bin-grasping world; see the module docstring."""

    def __init__(self, task: str = "base", config: Optional[EnvConfig] = None):
        self.task = tasks_lib.get_task(task)
        self.config = config or EnvConfig()
        if self.config.renderer not in RENDERERS:
            raise ValueError(
                f"unknown renderer {self.config.renderer!r}; " f"expected one of {RENDERERS}"
            )
        if self.config.object_split not in assets.SPLITS:
            raise ValueError(
                f"unknown object split {self.config.object_split!r}; "
                f"expected one of {assets.SPLITS}"
            )
        self._objects: List[int] = []
        self._frames = 0
        self._done = True
        self._seed: Optional[int] = None
        self._client = pybullet.connect(pybullet.DIRECT)
        _LIVE_ENVS.add(self)
        try:
            self.renderer = self._choose_renderer()
            self._build_scene()
        except BaseException:
            self.close()  # a half-built env must not leak its physics client
            raise

    # -- construction ---------------------------------------------------------

    def _choose_renderer(self) -> str:
        wanted = self.config.renderer
        if wanted in ("auto", "egl"):
            if _LIVE_EGL_ENVS:
                if wanted == "egl":
                    raise RuntimeError(
                        "another GraspEnv in this process already renders with EGL; two "
                        "EGL clients in one process are not deterministic. Close it "
                        "first, or use renderer='tiny'"
                    )
                logging.warning(
                    "another GraspEnv in this process uses EGL; this one "
                    "renders with TinyRenderer"
                )
            elif _load_egl(self._client):
                _LIVE_EGL_ENVS.add(self)
                return "egl"
            elif wanted == "egl":
                raise RuntimeError(
                    "the EGL renderer plugin did not load (is libEGL "
                    "installed?); use renderer='tiny' or 'auto'"
                )
            else:
                logging.info("EGL renderer unavailable; using TinyRenderer")
        return "tiny"

    def _p(self, fn, *args, **kwargs):
        return fn(*args, physicsClientId=self._client, **kwargs)

    def _build_scene(self):
        """One-time work: assets, joint limits, the home pose, the camera."""
        p = pybullet
        self._robot_urdf = assets.robot_urdf(self.task.finger_extension, self.task.mount_offset)
        self._texture_path = assets.checkerboard_texture() if self.task.checkerboard else None
        self._home = None
        self._load_world()
        names = {
            self._p(p.getJointInfo, self._robot, j)[12].decode(): j
            for j in range(self._p(p.getNumJoints, self._robot))
        }
        self._fingers = (names["finger_left"], names["finger_right"])
        self._finger_length = assets.FINGER_LENGTH + self.task.finger_extension
        self._tcp = names["tcp"]
        info = [self._p(p.getJointInfo, self._robot, j) for j in ARM_JOINTS]
        self._lower = [i[8] for i in info]
        self._upper = [i[9] for i in info]
        self._ranges = [u - l for l, u in zip(self._lower, self._upper)]
        self._home = self._solve_home()
        cam = Camera()
        self._view = self._p(p.computeViewMatrix, cam.eye, cam.target, [0, 0, 1])
        self._projection = self._p(p.computeProjectionMatrixFOV, cam.fov, 1.0, 0.05, 3.0)

    def _load_world(self):
        """A fresh Bullet world: floor, tray, arm at home, no objects.

        Done at every reset. Keeping the world and only swapping the objects
        (with the arm restored from a saved state) left episodes depending on
        the episodes run before them in the process: collecting the same 150
        seeds with one and with two workers gave 12 different files
        (measured). A fresh world gives identical files. Everything costly
        is cached (the generated URDF and texture files, the home IK
        solution, pybullet's mesh cache), so this takes about 23 ms of a
        55 ms reset (most of the rest is settling), against
        KukaDiverseObjectEnv's 0.7 s.
        """
        p, cfg = pybullet, self.config
        self._p(p.resetSimulation)
        self._objects = []
        self._p(
            p.setPhysicsEngineParameter,
            numSolverIterations=cfg.solver_iterations,
            deterministicOverlappingPairs=1,
        )
        self._p(p.setTimeStep, cfg.time_step)
        self._p(p.setGravity, 0, 0, -9.81)
        floor = self._p(p.loadURDF, f"{assets.DATA_DIR}/plane.urdf", [0, 0, -0.3])
        self._tray = self._p(
            p.loadURDF,
            f"{assets.DATA_DIR}/tray/traybox.urdf",
            TRAY_POSITION,
            globalScaling=TRAY_SCALE,
            useFixedBase=True,
        )
        # Plain surfaces: the stock checkered floor and speckled tray texture
        # nearly tripled the PNG size of every frame (4.1 KB -> 1.1 KB,
        # measured) without telling the policy anything.
        self._p(p.changeVisualShape, floor, -1, textureUniqueId=-1, rgbaColor=FLOOR_RGBA)
        self._p(p.changeVisualShape, self._tray, -1, textureUniqueId=-1, rgbaColor=TRAY_RGBA)
        if self._texture_path:
            texture = self._p(p.loadTexture, self._texture_path)
            self._p(
                p.changeVisualShape, self._tray, -1, textureUniqueId=texture, rgbaColor=(1, 1, 1, 1)
            )
        self._robot = self._p(p.loadURDF, self._robot_urdf, [0, 0, 0], useFixedBase=True)
        if self._home is not None:
            for link in self._fingers:
                self._p(p.changeDynamics, self._robot, link, **GRIP_FRICTION)
            for j, q in zip(ARM_JOINTS, self._home):
                self._p(p.resetJointState, self._robot, j, q, 0.0)
            for j in self._fingers:
                self._p(p.resetJointState, self._robot, j, assets.FINGER_TRAVEL, 0.0)

    def _ik(self, position, yaw: float) -> List[float]:
        orientation = pybullet.getQuaternionFromEuler([math.pi, 0.0, yaw])
        joints = self._p(
            pybullet.calculateInverseKinematics,
            self._robot,
            self._tcp,
            position,
            orientation,
            lowerLimits=self._lower,
            upperLimits=self._upper,
            jointRanges=self._ranges,
            restPoses=list(REST_POSE),
            maxNumIterations=100,
            residualThreshold=1e-5,
        )
        return list(joints[: len(ARM_JOINTS)])

    def _solve_home(self) -> List[float]:
        for j, q in zip(ARM_JOINTS, REST_POSE):
            self._p(pybullet.resetJointState, self._robot, j, q)
        target = (TRAY_POSITION[0], TRAY_POSITION[1], FLOOR_Z + START_HEIGHT)
        for _ in range(20):  # IK from the rest pose converges in a few rounds
            q = self._ik(target, 0.0)
            for j, value in zip(ARM_JOINTS, q):
                self._p(pybullet.resetJointState, self._robot, j, value)
        return q

    # -- episode --------------------------------------------------------------

    def reset(self, seed: int) -> Observation:
        """Starts an episode whose every random draw comes from `seed`."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self._seed = int(seed)
        rng = np.random.default_rng(self._seed)
        self._load_world()
        self._target = np.array([TRAY_POSITION[0], TRAY_POSITION[1], FLOOR_Z + START_HEIGHT])
        self._yaw = 0.0
        self._command_arm()
        self._command_fingers(closed=False)
        self._spawn_objects(rng)
        for _ in range(self.config.settle_substeps):
            self._p(pybullet.stepSimulation)
        self._gripper_closed = 0.0
        self._steps = 0
        self._done = False
        self._success = False
        return self._observe()

    def _spawn_objects(self, rng: np.random.Generator):
        cfg = self.config
        if self.task.objects == "bottles":
            ids = assets.bottle_ids(cfg.object_split)
            chosen = [ids[i] for i in rng.choice(len(ids), cfg.num_objects, replace=False)]
        else:
            paths = assets.random_urdf_paths(cfg.object_split)
            chosen = [paths[i] for i in rng.choice(len(paths), cfg.num_objects, replace=False)]
        for k, item in enumerate(chosen):
            xy = np.array(TRAY_POSITION[:2]) + rng.uniform(-SPAWN_HALF_EXTENT, SPAWN_HALF_EXTENT, 2)
            # Staggered drop heights keep freshly spawned objects from overlapping.
            position = [xy[0], xy[1], FLOOR_Z + 0.05 + 0.05 * k]
            orientation = pybullet.getQuaternionFromEuler(rng.uniform(-math.pi, math.pi, 3))
            if self.task.objects == "bottles":
                body = self._make_bottle(item, position, orientation)
            else:
                body = self._p(
                    pybullet.loadURDF, item, position, orientation, globalScaling=OBJECT_SCALE
                )
            self._p(pybullet.changeDynamics, body, -1, **OBJECT_FRICTION)
            self._objects.append(body)

    def _make_bottle(self, shape_id: int, position, orientation) -> int:
        parts = assets.bottle_shape(shape_id)
        rgba = assets.bottle_rgba(shape_id)
        n = len(parts)
        collision = self._p(
            pybullet.createCollisionShapeArray,
            [pybullet.GEOM_CYLINDER] * n,
            radii=[r for r, _, _ in parts],
            lengths=[l for _, l, _ in parts],
            collisionFramePositions=[[0, 0, z] for _, _, z in parts],
        )
        visual = self._p(
            pybullet.createVisualShapeArray,
            [pybullet.GEOM_CYLINDER] * n,
            radii=[r for r, _, _ in parts],
            lengths=[l for _, l, _ in parts],
            visualFramePositions=[[0, 0, z] for _, _, z in parts],
        )
        body = self._p(
            pybullet.createMultiBody,
            baseMass=0.1,
            baseCollisionShapeIndex=collision,
            baseVisualShapeIndex=visual,
            basePosition=position,
            baseOrientation=orientation,
        )
        self._p(pybullet.changeVisualShape, body, -1, rgbaColor=rgba, specularColor=[1.0, 1.0, 1.0])
        return body

    def step(self, action) -> Tuple[Observation, float, bool, dict]:
        """Applies one action; the tenth step (or close > 0) attempts a grasp."""
        if self._done:
            if self._seed is None:
                raise EpisodeEndedError("step() called before reset(seed)")
            raise EpisodeEndedError(
                f"step() called after the episode (seed {self._seed}) ended at step "
                f"{self._steps}; call reset(seed) to start a new one"
            )
        action = schema.validate_action(action)
        cfg = self.config
        self._steps += 1
        self._target[:3] += action[:3] * cfg.translation_scale
        self._clip_target()
        self._yaw = float(np.clip(self._yaw + action[3] * cfg.rotation_scale, -math.pi, math.pi))
        self._command_arm()
        for _ in range(cfg.action_substeps):
            self._p(pybullet.stepSimulation)
        grasp = action[4] > 0 or self._steps >= cfg.max_steps
        reward = -cfg.step_penalty
        if grasp:
            self._success = self._attempt_grasp()
            reward = float(self._success)
            self._done = True
        obs = self._observe()
        info = {"success": self._success, "grasp_attempted": grasp, "step": self._steps}
        return obs, reward, self._done, info

    def _clip_target(self):
        lo = np.array(
            [
                TRAY_POSITION[0] - WORKSPACE_HALF_EXTENT,
                TRAY_POSITION[1] - WORKSPACE_HALF_EXTENT,
                FLOOR_Z,
            ]
        )
        hi = np.array(
            [
                TRAY_POSITION[0] + WORKSPACE_HALF_EXTENT,
                TRAY_POSITION[1] + WORKSPACE_HALF_EXTENT,
                FLOOR_Z + MAX_HEIGHT,
            ]
        )
        np.clip(self._target, lo, hi, out=self._target)

    def _command_arm(self):
        joints = self._ik(self._target, self._yaw)
        self._p(
            pybullet.setJointMotorControlArray,
            self._robot,
            ARM_JOINTS,
            pybullet.POSITION_CONTROL,
            targetPositions=joints,
            forces=[300.0] * len(ARM_JOINTS),
            positionGains=[0.4] * len(ARM_JOINTS),
        )

    def _command_fingers(self, closed: bool):
        target = 0.0 if closed else assets.FINGER_TRAVEL
        self._p(
            pybullet.setJointMotorControlArray,
            self._robot,
            self._fingers,
            pybullet.POSITION_CONTROL,
            targetPositions=[target, target],
            forces=[FINGER_FORCE, FINGER_FORCE],
        )

    def _attempt_grasp(self) -> bool:
        cfg = self.config
        self._command_fingers(closed=True)
        for _ in range(cfg.close_substeps):
            self._p(pybullet.stepSimulation)
        self._gripper_closed = 1.0
        # Lift through waypoints: one big jump accelerates hard enough to fling
        # the object out of the fingers.
        start, waypoints = self._target[2], 5
        for k in range(1, waypoints + 1):
            self._target[2] = start + (FLOOR_Z + LIFT_HEIGHT - start) * k / waypoints
            self._command_arm()
            for _ in range(cfg.lift_substeps // waypoints):
                self._p(pybullet.stepSimulation)
        return any(self._is_held(body) for body in self._objects)

    def _is_held(self, body: int) -> bool:
        # Height alone is not enough: an object resting on a pile can sit high.
        height = self._p(pybullet.getBasePositionAndOrientation, body)[0][2] - FLOOR_Z
        return height > LIFT_THRESHOLD and any(
            self._p(pybullet.getContactPoints, self._robot, body, link) for link in self._fingers
        )

    # -- observation ----------------------------------------------------------

    def render(self) -> np.ndarray:
        """The camera image, 64x64x3 uint8, with the task's lighting."""
        light = self.task.lighting
        size = schema.IMAGE_SIZE
        renderer = (
            pybullet.ER_BULLET_HARDWARE_OPENGL
            if self.renderer == "egl"
            else pybullet.ER_TINY_RENDERER
        )
        # The EGL plugin prints its GL vendor on the first frames it renders.
        quiet = _quiet_stdout() if self._frames < 2 else contextlib.nullcontext()
        with quiet:
            _, _, rgba, _, _ = self._p(
                pybullet.getCameraImage,
                size,
                size,
                self._view,
                self._projection,
                renderer=renderer,
                flags=pybullet.ER_NO_SEGMENTATION_MASK,
                lightDirection=light.direction,
                shadow=int(light.shadow),
                lightAmbientCoeff=light.ambient,
                lightDiffuseCoeff=light.diffuse,
                lightSpecularCoeff=light.specular,
            )
        self._frames += 1
        image = np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[..., :3]
        if light.exposure_gain != 1.0 or light.exposure_bias:
            image = np.clip(
                image.astype(np.float32) * light.exposure_gain + light.exposure_bias, 0, 255
            ).astype(np.uint8)
        return np.ascontiguousarray(image)

    def _observe(self) -> Observation:
        height = self._p(pybullet.getLinkState, self._robot, self._tcp)[4][2] - FLOOR_Z
        return {
            schema.IMAGE: self.render(),
            schema.GRIPPER_CLOSED: np.float32(self._gripper_closed),
            schema.HEIGHT_TO_BOTTOM: np.float32(height),
        }

    # -- privileged state (scripted policies, tests, diagnostics) -------------

    def object_poses(self) -> List[Tuple[np.ndarray, float]]:
        """(position, yaw) of every object, for privileged scripted policies."""
        poses = []
        for body in self._objects:
            pos, orn = self._p(pybullet.getBasePositionAndOrientation, body)
            poses.append((np.array(pos), pybullet.getEulerFromQuaternion(orn)[2]))
        return poses

    def tcp_position(self) -> np.ndarray:
        """Where the robot's nominal model believes its tool centre is."""
        return np.array(self._p(pybullet.getLinkState, self._robot, self._tcp)[4])

    def tip_position(self) -> np.ndarray:
        """The true midpoint between the two fingertips."""
        tips = []
        for link in self._fingers:
            pos, orn = self._p(pybullet.getLinkState, self._robot, link)[4:6]
            rot = np.array(pybullet.getMatrixFromQuaternion(orn)).reshape(3, 3)
            tips.append(np.array(pos) + rot @ np.array([0, 0, self._finger_length]))
        return np.mean(tips, axis=0)

    @property
    def yaw(self) -> float:
        return self._yaw

    @property
    def done(self) -> bool:
        return self._done

    @property
    def success(self) -> bool:
        return self._success

    def close(self):
        """Disconnects from the simulator; the env cannot be used afterwards."""
        if self._client is not None:
            if pybullet.isConnected(self._client):
                with _quiet_stdout():
                    pybullet.disconnect(self._client)
            self._client = None
        _LIVE_EGL_ENVS.discard(self)
        _LIVE_ENVS.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
