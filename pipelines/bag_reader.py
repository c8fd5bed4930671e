"""Robot bags -> raw episodes, driven by a YAML topic map.

A robot logs time-stamped streams, not steps. This module turns a ROS 2 bag
back into episodes the same way for any robot, given a topic map (see
`topic_maps/neverstop_sim.yaml`, which maps the bags neverstop's exporter
writes):

- episodes are the spans between an `episode_start` and the next
  `episode_end` message;
- control ticks are the stamps of the gripper-state messages in the span;
- each tick takes the nearest camera frame at or before it, no older than
  `tolerances.camera_s` (a tick with no such frame is a validation error for
  that episode), the gripper position and the tool height at the tick, and
  the command published within `tolerances.action_s` after it (every tick
  but the last has one);
- the outcome message after the last tick gives the reward of the last
  command (1.0 if an object was lifted).

Bags are read with the pure-Python `rosbags` library (no ROS install). ROS 1
bags are not read yet.
"""

import dataclasses
import json
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from neverstop import rawlog
from neverstop import schema

DEFAULT_TOPIC_MAP = os.path.join(os.path.dirname(__file__), "topic_maps", "neverstop_sim.yaml")


@dataclasses.dataclass(frozen=True)
class TopicMap:
    camera: str
    action: str
    gripper: str
    gripper_joint: str
    gripper_closed_above: float
    tool_height: str
    episode_start: str
    episode_end: str
    outcome: str
    camera_tolerance_s: float = 0.15
    action_tolerance_s: float = 0.1
    defaults: Dict[str, object] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, path: str = DEFAULT_TOPIC_MAP) -> "TopicMap":
        import yaml

        try:
            with open(path) as f:
                raw = yaml.safe_load(f)
            tolerances = raw.get("tolerances", {})
            return cls(
                camera=raw["camera"]["topic"],
                action=raw["action"]["topic"],
                gripper=raw["gripper"]["topic"],
                gripper_joint=raw["gripper"]["joint"],
                gripper_closed_above=float(raw["gripper"].get("closed_above", 0.5)),
                tool_height=raw["tool_height"]["topic"],
                episode_start=raw["episode_start"]["topic"],
                episode_end=raw["episode_end"]["topic"],
                outcome=raw["outcome"]["topic"],
                camera_tolerance_s=float(tolerances.get("camera_s", 0.15)),
                action_tolerance_s=float(tolerances.get("action_s", 0.1)),
                defaults=dict(raw.get("defaults", {})),
            )
        except OSError as e:
            raise ValueError(f"topic map {path}: cannot read: {e.strerror}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"topic map {path}: not valid YAML: {e}") from None
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"topic map {path}: missing or malformed entry {e}; see "
                f"{DEFAULT_TOPIC_MAP} for the expected layout"
            ) from None

    @property
    def topics(self) -> Tuple[str, ...]:
        return (
            self.camera,
            self.action,
            self.gripper,
            self.tool_height,
            self.episode_start,
            self.episode_end,
            self.outcome,
        )


def _read_streams(path: str, topic_map: TopicMap) -> Dict[str, List[Tuple[int, object]]]:
    """The messages of every mapped topic, per topic, in time order."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    if not os.path.isdir(path):
        raise rawlog.RawLogError(f"{path}: not a ROS 2 bag directory (ROS 1 bags are not read yet)")
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    streams: Dict[str, List[Tuple[int, object]]] = {t: [] for t in topic_map.topics}
    try:
        with Reader(path) as reader:
            present = {c.topic for c in reader.connections}
            missing = [t for t in topic_map.topics if t not in present]
            if missing:
                raise rawlog.RawLogError(
                    f"{path}: topics {missing} of the topic map are not in "
                    f"the bag (it has {sorted(present)})"
                )
            wanted = [c for c in reader.connections if c.topic in streams]
            for connection, stamp, data in reader.messages(connections=wanted):
                streams[connection.topic].append(
                    (stamp, typestore.deserialize_cdr(data, connection.msgtype))
                )
    except rawlog.RawLogError:
        raise
    except Exception as e:  # rosbags raises many kinds for damaged bags
        raise rawlog.RawLogError(f"{path}: unreadable bag: {type(e).__name__}: {e}") from None
    for messages in streams.values():
        messages.sort(key=lambda m: m[0])
    return streams


def _spans(streams, topic_map: TopicMap) -> List[Tuple[int, Optional[int], dict]]:
    starts, ends = streams[topic_map.episode_start], streams[topic_map.episode_end]
    spans = []
    for start, message in starts:
        end = next((t for t, _ in ends if t > start), None)
        try:
            info = json.loads(message.data) if message.data else {}
        except ValueError:
            info = {}
        spans.append((start, end, info))
    return spans


def _episode(path: str, position: int, span, streams, topic_map: TopicMap) -> rawlog.Episode:
    start, end, info = span
    where = f"episode {position} of {path}"
    if end is None:
        raise rawlog.RawLogError(f"{where}: no {topic_map.episode_end} after its start marker")
    ns = lambda seconds: int(seconds * 1e9)
    within = lambda topic, lo=start, hi=end: [(t, m) for t, m in streams[topic] if lo <= t <= hi]
    states = within(topic_map.gripper)
    if len(states) < 2:
        raise rawlog.RawLogError(f"{where}: {len(states)} gripper states; need a tick per step")
    ticks = [t for t, _ in states]
    frames = within(topic_map.camera, start - ns(topic_map.camera_tolerance_s))
    frame_times = np.array([t for t, _ in frames], dtype=np.int64)
    images, encodings = [], set()
    for k, tick in enumerate(ticks):
        i = int(np.searchsorted(frame_times, tick, side="right")) - 1
        if i < 0 or tick - frame_times[i] > ns(topic_map.camera_tolerance_s):
            gap = (tick - frame_times[i]) / 1e9 if i >= 0 else float("inf")
            raise rawlog.RawLogError(
                f"{where}: step {k}: no camera frame within {topic_map.camera_tolerance_s} s "
                f"before the tick (nearest is {gap:.3f} s earlier)"
            )
        message = frames[i][1]
        images.append(bytes(message.data))
        encodings.add(str(message.format).split(";")[0].strip().lower())
    if len(encodings) != 1 or not encodings <= set(schema.IMAGE_ENCODINGS):
        raise rawlog.RawLogError(
            f"{where}: camera formats {sorted(encodings)}; expected one "
            f"of {schema.IMAGE_ENCODINGS}"
        )
    closed = []
    for k, (_, state) in enumerate(states):
        names = list(state.name)
        if topic_map.gripper_joint not in names:
            raise rawlog.RawLogError(
                f"{where}: step {k}: joint {topic_map.gripper_joint!r} not " f"in {names}"
            )
        position_value = state.position[names.index(topic_map.gripper_joint)]
        closed.append(float(position_value > topic_map.gripper_closed_above))
    poses = within(topic_map.tool_height)
    heights = []
    for k, tick in enumerate(ticks):
        earlier = [m for t, m in poses if t <= tick]
        if not earlier:
            raise rawlog.RawLogError(f"{where}: step {k}: no tool pose at or before the tick")
        heights.append(float(earlier[-1].pose.position.z))
    commands = within(topic_map.action)
    actions = []
    for k, tick in enumerate(ticks[:-1]):
        match = [m for t, m in commands if tick <= t <= tick + ns(topic_map.action_tolerance_s)]
        if len(match) != 1:
            raise rawlog.RawLogError(
                f"{where}: step {k}: {len(match)} commands within "
                f"{topic_map.action_tolerance_s} s after the tick; expected 1"
            )
        actions.append(np.asarray(match[0].data, np.float32))
    if len(commands) != len(ticks) - 1:
        raise rawlog.RawLogError(
            f"{where}: {len(commands)} commands for {len(ticks)} ticks; "
            f"expected one per tick but the last"
        )
    outcomes = within(topic_map.outcome, ticks[-1])
    if len(outcomes) != 1:
        raise rawlog.RawLogError(
            f"{where}: {len(outcomes)} outcome messages after the last " "tick; expected 1"
        )
    success = bool(outcomes[0][1].data)
    defaults = topic_map.defaults
    metadata = {
        schema.EPISODE_ID: info.get(
            schema.EPISODE_ID, f"{os.path.basename(path.rstrip('/'))}-{position}"
        ),
        schema.TASK: info.get(schema.TASK, defaults.get("task", "unknown")),
        schema.SOURCE: defaults.get("source", schema.SOURCE_ROBOT),
        schema.ROBOT: info.get(schema.ROBOT, defaults.get("robot", "unknown")),
        schema.POLICY: info.get(schema.POLICY, defaults.get("policy", "unknown")),
        schema.SUCCESS: success,
        schema.SEED: int(info.get(schema.SEED, schema.NO_SEED)),
        schema.FILE_PATH: path,
    }
    n = len(ticks)
    flags = np.zeros(n, np.bool_)
    steps = {
        schema.GRIPPER_CLOSED: np.array(closed, np.float32),
        schema.HEIGHT_TO_BOTTOM: np.array(heights, np.float32),
        schema.ACTION: np.concatenate(
            [
                np.stack(actions).reshape(-1, schema.ACTION_DIM),
                np.zeros((1, schema.ACTION_DIM), np.float32),
            ]
        ),
        schema.REWARD: np.zeros(n, np.float32),
        schema.DISCOUNT: np.append(np.ones(n - 1, np.float32), np.float32(0)),
        schema.IS_FIRST: flags.copy(),
        schema.IS_LAST: flags.copy(),
        schema.IS_TERMINAL: flags.copy(),
    }
    steps[schema.REWARD][n - 2] = float(success)
    steps[schema.IS_FIRST][0] = True
    steps[schema.IS_LAST][-1] = True
    steps[schema.IS_TERMINAL][-1] = True
    episode = rawlog.Episode(
        steps, images, metadata, encodings.pop(), {"bag": path, "position": position}
    )
    rawlog.validate(episode, where=where)
    return episode


def read_episodes(
    path: str, topic_map: TopicMap
) -> Iterator[Tuple[int, Union[rawlog.Episode, rawlog.RawLogError]]]:
    """(position, episode or the error that episode raised) for each episode of a bag.

    A bag that cannot be read at all raises RawLogError; a bad episode is
    yielded as its error so that the good ones of the same bag still land.
    """
    streams = _read_streams(path, topic_map)
    for position, span in enumerate(_spans(streams, topic_map)):
        try:
            yield position, _episode(path, position, span, streams, topic_map)
        except (rawlog.RawLogError, ValueError, IndexError) as e:
            yield position, (
                e
                if isinstance(e, rawlog.RawLogError)
                else rawlog.RawLogError(f"episode {position} of {path}: {e}")
            )
