"""The RLDS episode schema: the one contract every neverstop stage shares.

This module is the lowest import floor. It defines the six task names, the
observation and action specs (QT-Opt conventions scaled to a CPU), the field
names of an RLDS episode, validators with errors that say what was expected,
and `episode_features()`, the TFDS `FeaturesDict` of one episode:

    steps: Dataset of
      observation:
        image:            Image(64, 64, 3) uint8, PNG or JPEG
        gripper_closed:   float32
        height_to_bottom: float32
      action:             Tensor(5,) float32   [dx, dy, dz, dyaw, close]
      reward, discount:   float32
      is_first, is_last, is_terminal: bool
    episode_metadata:
      episode_id, task, source, robot, policy, file_path: string
      success: bool
      seed: int64

Stages refer to fields through the constants below (`schema.OBSERVATION`,
`schema.IMAGE`, ...), never through string literals, so a renamed field is a
one-line change here.

Only numpy is imported at module level: `import neverstop.schema` must stay
cheap for the simulator, the raw-log writer and Beam workers, so
tensorflow_datasets (and with it TensorFlow) is imported only inside
`episode_features()`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np

# Written into every raw-log file so a reader can refuse files from a schema
# it does not understand instead of misreading them.
SCHEMA_VERSION = 1

# --- Tasks and robots ------------------------------------------------------

TASKS = (
    "base",
    "checkerboard",
    "harsh_lighting",
    "extended_gripper",
    "offset_gripper",
    "transparent_bottles",
)
CHALLENGE_TASKS = TASKS[1:]
VISUAL_TASKS = ("checkerboard", "harsh_lighting", "transparent_bottles")
MORPHOLOGY_TASKS = ("extended_gripper", "offset_gripper")

ROBOT_STANDARD = "kuka_iiwa/standard"
ROBOT_EXTENDED_FINGERS = "kuka_iiwa/extended_fingers"
ROBOT_OFFSET_GRIPPER = "kuka_iiwa/offset_10cm"
ROBOTS = (ROBOT_STANDARD, ROBOT_EXTENDED_FINGERS, ROBOT_OFFSET_GRIPPER)

_ROBOT_BY_TASK = types.MappingProxyType({
    "extended_gripper": ROBOT_EXTENDED_FINGERS,
    "offset_gripper": ROBOT_OFFSET_GRIPPER,
})

SOURCE_SIM = "sim"
SOURCE_ROBOT = "robot"
SOURCES = (SOURCE_SIM, SOURCE_ROBOT)

# Robot episodes have no simulator seed.
NO_SEED = -1

# --- Observation and action ------------------------------------------------

IMAGE_SIZE = 64
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
IMAGE_ENCODINGS = ("png", "jpeg")

ACTION_NAMES = ("dx", "dy", "dz", "dyaw", "close")
ACTION_DIM = len(ACTION_NAMES)
ACTION_MIN = -1.0
ACTION_MAX = 1.0

# The last step forces the grasp attempt, so no episode is longer.
MAX_EPISODE_STEPS = 10

# --- Field names -------------------------------------------------------------

STEPS = "steps"
OBSERVATION = "observation"
IMAGE = "image"
GRIPPER_CLOSED = "gripper_closed"
HEIGHT_TO_BOTTOM = "height_to_bottom"
ACTION = "action"
REWARD = "reward"
DISCOUNT = "discount"
IS_FIRST = "is_first"
IS_LAST = "is_last"
IS_TERMINAL = "is_terminal"

EPISODE_METADATA = "episode_metadata"
EPISODE_ID = "episode_id"
TASK = "task"
SOURCE = "source"
ROBOT = "robot"
POLICY = "policy"
SUCCESS = "success"
SEED = "seed"
FILE_PATH = "file_path"

OBSERVATION_KEYS = (IMAGE, GRIPPER_CLOSED, HEIGHT_TO_BOTTOM)
STEP_KEYS = (OBSERVATION, ACTION, REWARD, DISCOUNT, IS_FIRST, IS_LAST, IS_TERMINAL)
METADATA_KEYS = (EPISODE_ID, TASK, SOURCE, ROBOT, POLICY, SUCCESS, SEED, FILE_PATH)

# --- Specs ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """Shape, numpy dtype, bounds and documentation of one array field.

    Attributes:
        name: the field name (one of the constants above).
        shape: the array shape; `()` for a scalar.
        dtype: the numpy dtype.
        doc: what the field means; becomes the TFDS feature's `doc=`.
        minimum: inclusive lower bound, or None when unbounded.
        maximum: inclusive upper bound, or None when unbounded.
    """

    name: str
    shape: Tuple[int, ...]
    dtype: np.dtype
    doc: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None

    def value_range(self) -> Optional[str]:
        """The bounds as text for the dataset card, e.g. '[-1, 1]', or None."""
        if self.minimum is None and self.maximum is None:
            return None
        low = "-inf" if self.minimum is None else f"{self.minimum:g}"
        high = "inf" if self.maximum is None else f"{self.maximum:g}"
        return f"[{low}, {high}]"


@dataclasses.dataclass(frozen=True)
class ObservationSpec:
    """The observation: one camera image and two proprioceptive scalars."""

    image: ArraySpec
    gripper_closed: ArraySpec
    height_to_bottom: ArraySpec

    def fields(self) -> Tuple[ArraySpec, ...]:
        """The field specs in `OBSERVATION_KEYS` order."""
        return (self.image, self.gripper_closed, self.height_to_bottom)


@dataclasses.dataclass(frozen=True)
class ActionSpec(ArraySpec):
    """The action vector; `names` labels its components in order."""

    names: Tuple[str, ...] = ACTION_NAMES


OBSERVATION_SPEC = ObservationSpec(
    image=ArraySpec(
        IMAGE,
        IMAGE_SHAPE,
        np.dtype(np.uint8),
        "RGB image from the fixed over-the-shoulder camera.",
        minimum=0,
        maximum=255,
    ),
    gripper_closed=ArraySpec(
        GRIPPER_CLOSED,
        (),
        np.dtype(np.float32),
        "1.0 if the gripper is closed, 0.0 if open.",
        minimum=0.0,
        maximum=1.0,
    ),
    height_to_bottom=ArraySpec(
        HEIGHT_TO_BOTTOM,
        (),
        np.dtype(np.float32),
        "Height of the gripper above the tray floor, in metres.",
    ),
)

ACTION_SPEC = ActionSpec(
    ACTION,
    (ACTION_DIM,),
    np.dtype(np.float32),
    "Commanded action [dx, dy, dz, dyaw, close]: dx, dy, dz move the gripper "
    "(scaled to a few cm per step), dyaw rotates it (scaled), close > 0 closes "
    "the gripper, lifts and ends the episode with a grasp attempt.",
    minimum=ACTION_MIN,
    maximum=ACTION_MAX,
)

REWARD_SPEC = ArraySpec(
    REWARD,
    (),
    np.dtype(np.float32),
    "1.0 on the final step if an object is held above the lift threshold, "
    "else 0.0 (plus the per-step penalty if the dataset enables one).",
)
DISCOUNT_SPEC = ArraySpec(
    DISCOUNT,
    (),
    np.dtype(np.float32),
    "RLDS per-step discount.",
    minimum=0.0,
    maximum=1.0,
)

_STEP_FLAG_DOCS = types.MappingProxyType({
    IS_FIRST: "True on the first step of the episode.",
    IS_LAST: "True on the last step of the episode.",
    IS_TERMINAL: (
        "True if the last step ended the task (a grasp attempt), so its "
        "successor has no value; False if the episode was cut short."
    ),
})

_METADATA_DOCS = types.MappingProxyType({
    EPISODE_ID: "Stable id derived from the source: the same input gives the same id.",
    TASK: "One of the six simulator tasks, or the robot log's own task name.",
    SOURCE: "Where the episode came from: 'sim' or 'robot'.",
    ROBOT: "Morphology id, e.g. 'kuka_iiwa/standard' or 'kuka_iiwa/offset_10cm'.",
    POLICY: "Policy that acted, e.g. 'scripted', 'random', 'qtopt:<checkpoint id>@eps=0.2'.",
    SUCCESS: "Whether the episode ended with a successful grasp.",
    SEED: "Simulator episode seed; -1 for robot data.",
    FILE_PATH: "Provenance: the raw file the episode was converted from.",
})

# --- Validation --------------------------------------------------------------


def _prefix(where: str) -> str:
    # Lets callers name the file and record ("episode 12 of logs/a.bag: ...").
    return f"{where}: " if where else ""


def _unknown(kind: str, value: Any, choices: Sequence[str], where: str) -> ValueError:
    """A ValueError listing the choices, with a 'did you mean' hint if one is close."""
    message = (
        f"{_prefix(where)}unknown {kind} {value!r}; "
        f"expected one of {', '.join(choices)}"
    )
    close = difflib.get_close_matches(str(value), choices, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return ValueError(message)


def validate_task(task: Any, *, where: str = "") -> str:
    """Returns `task` if it is one of the six simulator `TASKS`.

    Robot logs may carry their own task names in the episode metadata; this
    check is for everything that selects a simulator world.

    Args:
        task: the task name.
        where: optional context for the error, e.g. "episode 12 of logs/a.bag".

    Raises:
        ValueError: naming the task and listing the known ones.
    """
    if not isinstance(task, str):
        raise ValueError(
            f"{_prefix(where)}task must be a string, got {type(task).__name__} "
            f"{task!r}; expected one of {', '.join(TASKS)}"
        )
    if task not in TASKS:
        raise _unknown("task", task, TASKS, where)
    return task


def validate_image_encoding(image_encoding: Any, *, where: str = "") -> str:
    """Returns `image_encoding` if it is one of `IMAGE_ENCODINGS` ('png', 'jpeg')."""
    if image_encoding not in IMAGE_ENCODINGS:
        raise _unknown("image_encoding", image_encoding, IMAGE_ENCODINGS, where)
    return image_encoding


def robot_id(task: str) -> str:
    """The morphology id of the robot a simulator task runs on.

    Raises:
        ValueError: if `task` is not one of `TASKS`.
    """
    return _ROBOT_BY_TASK.get(validate_task(task), ROBOT_STANDARD)


def _expected_action() -> str:
    return f"({ACTION_DIM},) [{', '.join(ACTION_NAMES)}]"


def validate_action(action: Any, *, where: str = "") -> np.ndarray:
    """Checks an action and returns it as float32 of shape (5,), clipped to [-1, 1].

    Values outside [-1, 1] are clipped rather than rejected: exploration noise
    (epsilon-greedy perturbations, CEM samples from a Gaussian) overshoots the
    box, and the environment clips as QT-Opt's does. NaN or inf is a bug
    upstream, not noise, so it raises.

    Args:
        action: anything `np.asarray` turns into 5 numbers.
        where: optional context for the error, e.g. "step 3 of episode 12".

    Returns:
        A new float32 array of shape (5,) with values in [-1, 1].

    Raises:
        ValueError: naming the bad shape, dtype, or the index and component
            holding a NaN/inf.
    """
    prefix = _prefix(where)
    if np.iscomplexobj(action):
        raise ValueError(
            f"{prefix}action is complex; expected real float32 {_expected_action()}"
        )
    try:
        # float64 first so an out-of-range float64 is clipped before it could
        # overflow to inf in float32.
        values = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{prefix}action {action!r} is not numeric ({error}); "
            f"expected float32 {_expected_action()}"
        ) from None
    if values.shape != ACTION_SPEC.shape:
        raise ValueError(
            f"{prefix}action has shape {values.shape}, expected {_expected_action()}"
        )
    not_finite = np.flatnonzero(~np.isfinite(values))
    if not_finite.size:
        index = int(not_finite[0])
        raise ValueError(
            f"{prefix}action contains {values[index]} at index {index} "
            f"({ACTION_NAMES[index]}); expected finite values in "
            f"[{ACTION_MIN:g}, {ACTION_MAX:g}]"
        )
    return np.clip(values, ACTION_MIN, ACTION_MAX).astype(np.float32)


def _validate_scalar(spec: ArraySpec, value: Any, where: str) -> np.floating:
    """Returns `value` as a finite scalar of `spec.dtype`."""
    prefix = _prefix(where)
    expected = f"expected a finite {spec.dtype} scalar"
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{prefix}observation {spec.name} is {value!r}; {expected}"
        ) from None
    if array.shape != ():
        raise ValueError(
            f"{prefix}observation {spec.name} has shape {array.shape}; {expected}"
        )
    if not np.isfinite(array):
        raise ValueError(
            f"{prefix}observation {spec.name} is {float(array)}; {expected}"
        )
    return spec.dtype.type(array)


def validate_observation(observation: Any, *, where: str = "") -> dict:
    """Checks a decoded observation and returns it with the schema's dtypes.

    The image must already be uint8 of shape (64, 64, 3): converting another
    dtype would hide a scaling bug (a float image in [0, 1] would silently
    become black). The scalars may be any finite real number and are cast to
    float32.

    Args:
        observation: a mapping with exactly the keys `OBSERVATION_KEYS`.
        where: optional context for the error, e.g. "step 3 of episode 12".

    Returns:
        A new dict {image: uint8 array, gripper_closed: float32,
        height_to_bottom: float32}.

    Raises:
        ValueError: naming the missing or unexpected key, or the field and what
            was expected of it.
    """
    prefix = _prefix(where)
    if not isinstance(observation, Mapping):
        raise ValueError(
            f"{prefix}observation is a {type(observation).__name__}; expected a mapping "
            f"with keys {', '.join(OBSERVATION_KEYS)}"
        )
    missing = [key for key in OBSERVATION_KEYS if key not in observation]
    unexpected = sorted(str(key) for key in observation if key not in OBSERVATION_KEYS)
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected {', '.join(unexpected)}")
        raise ValueError(
            f"{prefix}observation has {'; '.join(problems)}; expected keys "
            f"{', '.join(OBSERVATION_KEYS)}"
        )

    image_spec = OBSERVATION_SPEC.image
    image = np.asarray(observation[IMAGE])
    if image.shape != image_spec.shape or image.dtype != image_spec.dtype:
        raise ValueError(
            f"{prefix}observation image has shape {image.shape} and dtype {image.dtype}, "
            f"expected {image_spec.shape} {image_spec.dtype}"
        )
    return {
        IMAGE: image,
        GRIPPER_CLOSED: _validate_scalar(
            OBSERVATION_SPEC.gripper_closed, observation[GRIPPER_CLOSED], where
        ),
        HEIGHT_TO_BOTTOM: _validate_scalar(
            OBSERVATION_SPEC.height_to_bottom, observation[HEIGHT_TO_BOTTOM], where
        ),
    }


# --- TFDS features -----------------------------------------------------------


def episode_features(image_encoding: str = "png"):
    """The TFDS `FeaturesDict` of one RLDS episode.

    The image encoding is a dataset-level choice recorded in the dataset's
    features; raw logs store images already encoded the same way so ingestion
    passes the bytes through (`Image` accepts encoded bytes as-is).

    Args:
        image_encoding: 'png' (lossless) or 'jpeg'.

    Returns:
        A `tfds.features.FeaturesDict` with keys `STEPS` and `EPISODE_METADATA`.

    Raises:
        ValueError: if `image_encoding` is not one of `IMAGE_ENCODINGS`.
    """
    validate_image_encoding(image_encoding)
    # Imported here so that `import neverstop.schema` does not load TensorFlow.
    import tensorflow_datasets as tfds

    features = tfds.features

    def doc(spec: ArraySpec):
        return features.Documentation(desc=spec.doc, value_range=spec.value_range())

    def scalar(spec: ArraySpec):
        return features.Scalar(dtype=spec.dtype, doc=doc(spec))

    image_spec = OBSERVATION_SPEC.image
    observation = features.FeaturesDict(
        {
            IMAGE: features.Image(
                shape=image_spec.shape,
                dtype=image_spec.dtype,
                encoding_format=image_encoding,
                doc=features.Documentation(
                    desc=f"{image_spec.doc} Stored {image_encoding.upper()}-encoded.",
                    value_range=image_spec.value_range(),
                ),
            ),
            GRIPPER_CLOSED: scalar(OBSERVATION_SPEC.gripper_closed),
            HEIGHT_TO_BOTTOM: scalar(OBSERVATION_SPEC.height_to_bottom),
        },
        doc="What the robot sees and senses before acting.",
    )
    step = {
        OBSERVATION: observation,
        ACTION: features.Tensor(
            shape=ACTION_SPEC.shape,
            dtype=ACTION_SPEC.dtype,
            doc=doc(ACTION_SPEC),
        ),
        REWARD: scalar(REWARD_SPEC),
        DISCOUNT: scalar(DISCOUNT_SPEC),
        **{
            flag: features.Scalar(dtype=np.bool_, doc=flag_doc)
            for flag, flag_doc in _STEP_FLAG_DOCS.items()
        },
    }
    metadata = {
        key: features.Text(doc=_METADATA_DOCS[key])
        for key in (EPISODE_ID, TASK, SOURCE, ROBOT, POLICY, FILE_PATH)
    }
    metadata[SUCCESS] = features.Scalar(dtype=np.bool_, doc=_METADATA_DOCS[SUCCESS])
    metadata[SEED] = features.Scalar(dtype=np.int64, doc=_METADATA_DOCS[SEED])
    return features.FeaturesDict({
        STEPS: features.Dataset(
            step,
            doc=f"The steps of one grasp attempt, at most {MAX_EPISODE_STEPS}.",
        ),
        EPISODE_METADATA: features.FeaturesDict(
            {key: metadata[key] for key in METADATA_KEYS},
            doc="Where the episode came from and how it ended.",
        ),
    })
