"""Writing sim episodes as ROS 2 bags laid out like a real robot's logs.

A robot does not log "steps": it logs time-stamped streams, each at its own
rate. So the exporter turns an episode back into such streams, with the
standard message types a real grasping cell would publish, so that the
robot-bag ingestion path can be tested end to end on data whose ground
truth we know. docs/raw-logs.md documents the layout; it is the example a
user copies when mapping their own robot's topics.

| topic | type | when |
|---|---|---|
| /camera/color/image_raw/compressed | sensor_msgs/msg/CompressedImage | 10 Hz, own clock, +-5 ms jitter |
| /gripper/joint_states | sensor_msgs/msg/JointState | each control tick, 20 ms before it |
| /tool/pose | geometry_msgs/msg/PoseStamped | each control tick, 20 ms before it |
| /policy/action | std_msgs/msg/Float32MultiArray | each control tick (2 Hz, +-10 ms jitter) |
| /episode/start, /episode/end | std_msgs/msg/String (JSON) | once each |
| /grasp/outcome | std_msgs/msg/Bool | once, after the grasp attempt |

Observation t is what the camera shows between control tick t-1 and tick
t (the motion is treated as instantaneous), so the nearest camera frame at
or before tick t shows observation t: the alignment rule the ingestion
pipeline applies.
"""

import json
import os
import shutil
import tempfile
import zlib
from typing import List, Optional

import numpy as np

from neverstop import rawlog
from neverstop import schema

CAMERA_TOPIC = "/camera/color/image_raw/compressed"
GRIPPER_TOPIC = "/gripper/joint_states"
TOOL_POSE_TOPIC = "/tool/pose"
ACTION_TOPIC = "/policy/action"
EPISODE_START_TOPIC = "/episode/start"
EPISODE_END_TOPIC = "/episode/end"
OUTCOME_TOPIC = "/grasp/outcome"

TOPIC_TYPES = {
    CAMERA_TOPIC: "sensor_msgs/msg/CompressedImage",
    GRIPPER_TOPIC: "sensor_msgs/msg/JointState",
    TOOL_POSE_TOPIC: "geometry_msgs/msg/PoseStamped",
    ACTION_TOPIC: "std_msgs/msg/Float32MultiArray",
    EPISODE_START_TOPIC: "std_msgs/msg/String",
    EPISODE_END_TOPIC: "std_msgs/msg/String",
    OUTCOME_TOPIC: "std_msgs/msg/Bool",
}

GRIPPER_JOINT = "gripper_finger_joint"  # position: 0.0 open .. 1.0 closed
TRAY_FRAME = "tray"
CAMERA_FRAME = "camera_color_optical_frame"
CONTROL_PERIOD_S = 0.5
CAMERA_PERIOD_S = 0.1
STATE_LEAD_S = 0.02
CONTROL_JITTER_S = 0.01
CAMERA_JITTER_S = 0.005
EPOCH_S = 1_700_000_000  # bags carry realistic-looking absolute stamps
# metadata.yaml custom_data key holding the episode metadata as JSON, so a
# collector can count successes without decoding messages.
METADATA_KEY = "neverstop.episode_metadata"
STORAGES = ("mcap", "sqlite3")


def _ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


def timeline(episode: rawlog.Episode) -> dict:
    """The stamps (ns) of every message of `episode`; a pure function of it."""
    rng = np.random.default_rng(zlib.crc32(episode.episode_id.encode()))
    n = episode.num_steps
    start = EPOCH_S + float(zlib.crc32(episode.episode_id.encode()) % 1_000_000)
    ticks = (
        start
        + 0.5
        + CONTROL_PERIOD_S * np.arange(n)
        + rng.uniform(-CONTROL_JITTER_S, CONTROL_JITTER_S, n)
    )
    end = ticks[-1] + 0.4
    frames = np.arange(start, end, CAMERA_PERIOD_S)
    frames = frames + rng.uniform(-CAMERA_JITTER_S, CAMERA_JITTER_S, len(frames))
    # The frame at time f shows the observation of the first tick at or after f.
    shown = np.minimum(np.searchsorted(ticks, frames, side="left"), n - 1)
    return {
        "start": _ns(start),
        "ticks": [_ns(t) for t in ticks],
        "frames": [_ns(f) for f in frames],
        "shown": shown.tolist(),
        "outcome": _ns(ticks[-1] + 0.2),
        "end": _ns(end),
    }


def _stamp(typestore, ns: int):
    Time = typestore.types["builtin_interfaces/msg/Time"]
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _header(typestore, ns: int, frame: str):
    return typestore.types["std_msgs/msg/Header"](stamp=_stamp(typestore, ns), frame_id=frame)


def write_bag(path: str, episode: rawlog.Episode, storage: str = "mcap") -> str:
    """Writes `episode` as a ROS 2 bag directory at `path` (atomically)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    if storage not in STORAGES:
        raise ValueError(f"unknown bag storage {storage!r}; expected one of {STORAGES}")
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; bags are never overwritten")
    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types
    times = timeline(episode)
    steps = episode.steps
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(dir=parent, prefix=rawlog.TEMP_PREFIX)
    tmp = os.path.join(scratch, "bag")
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    messages = []  # (ns, topic, message)
    info = {
        k: episode.metadata[k]
        for k in (schema.EPISODE_ID, schema.TASK, schema.ROBOT, schema.POLICY, schema.SEED)
    }
    messages.append(
        (
            times["start"],
            EPISODE_START_TOPIC,
            T["std_msgs/msg/String"](data=json.dumps(info, sort_keys=True)),
        )
    )
    for ns, t in zip(times["frames"], times["shown"]):
        messages.append(
            (
                ns,
                CAMERA_TOPIC,
                T["sensor_msgs/msg/CompressedImage"](
                    header=_header(ts, ns, CAMERA_FRAME),
                    format=episode.image_encoding,
                    data=np.frombuffer(episode.images[t], np.uint8),
                ),
            )
        )
    Point, Quaternion = T["geometry_msgs/msg/Point"], T["geometry_msgs/msg/Quaternion"]
    for t, tick in enumerate(times["ticks"]):
        state_ns = tick - _ns(STATE_LEAD_S)
        messages.append(
            (
                state_ns,
                GRIPPER_TOPIC,
                T["sensor_msgs/msg/JointState"](
                    header=_header(ts, state_ns, ""),
                    name=[GRIPPER_JOINT],
                    position=np.array([steps[schema.GRIPPER_CLOSED][t]], np.float64),
                    velocity=np.zeros(0, np.float64),
                    effort=np.zeros(0, np.float64),
                ),
            )
        )
        pose = T["geometry_msgs/msg/Pose"](
            position=Point(x=0.0, y=0.0, z=float(steps[schema.HEIGHT_TO_BOTTOM][t])),
            orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0),
        )
        messages.append(
            (
                state_ns,
                TOOL_POSE_TOPIC,
                T["geometry_msgs/msg/PoseStamped"](
                    header=_header(ts, state_ns, TRAY_FRAME), pose=pose
                ),
            )
        )
        if t < episode.num_steps - 1:  # the final observation has no command
            layout = T["std_msgs/msg/MultiArrayLayout"](
                dim=[
                    T["std_msgs/msg/MultiArrayDimension"](
                        label=",".join(schema.ACTION_NAMES),
                        size=schema.ACTION_DIM,
                        stride=schema.ACTION_DIM,
                    )
                ],
                data_offset=0,
            )
            messages.append(
                (
                    tick,
                    ACTION_TOPIC,
                    T["std_msgs/msg/Float32MultiArray"](
                        layout=layout, data=np.asarray(steps[schema.ACTION][t], np.float32)
                    ),
                )
            )
    messages.append(
        (
            times["outcome"],
            OUTCOME_TOPIC,
            T["std_msgs/msg/Bool"](data=bool(episode.metadata[schema.SUCCESS])),
        )
    )
    messages.append(
        (
            times["end"],
            EPISODE_END_TOPIC,
            T["std_msgs/msg/String"](data=json.dumps({schema.EPISODE_ID: episode.episode_id})),
        )
    )
    messages.sort(key=lambda m: (m[0], m[1]))
    try:
        with Writer(tmp, version=9, storage_plugin=plugin) as writer:
            writer.set_custom_data(
                METADATA_KEY,
                json.dumps(
                    {k: v for k, v in episode.metadata.items() if k != schema.FILE_PATH},
                    sort_keys=True,
                ),
            )
            connections = {
                topic: writer.add_connection(topic, msgtype, typestore=ts)
                for topic, msgtype in TOPIC_TYPES.items()
            }
            for ns, topic, message in messages:
                writer.write(connections[topic], ns, ts.serialize_cdr(message, TOPIC_TYPES[topic]))
        os.replace(tmp, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def read_metadata(path: str) -> dict:
    """The episode metadata a bag written here carries (from metadata.yaml)."""
    import yaml

    try:
        with open(os.path.join(path, "metadata.yaml")) as f:
            info = yaml.safe_load(f)["rosbag2_bagfile_information"]
        return json.loads(info["custom_data"][METADATA_KEY])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: not a bag written by neverstop ({e})") from None


def export_directory(
    input_dir: str,
    out_dir: str,
    storage: str = "mcap",
    progress: Optional[callable] = None,
    skipped: Optional[list] = None,
) -> List[str]:
    """Writes every episode file in `input_dir` as a bag in `out_dir`.

    Bags already present are kept (so an interrupted export resumes). A file
    that is not a valid episode is left out, the rest still exported: its
    (path, reason) goes to `skipped` if given.
    """
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for path in rawlog.list_episode_files(input_dir):
        try:
            episode = rawlog.read_episode(path)
        except rawlog.RawLogError as e:
            if skipped is not None:
                skipped.append((path, str(e)))
            if progress:
                progress()
            continue
        target = os.path.join(out_dir, episode.episode_id + ".bag")
        if not os.path.exists(target):
            write_bag(target, episode, storage)
        written.append(target)
        if progress:
            progress()
    return written
