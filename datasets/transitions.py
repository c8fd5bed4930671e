"""RLDS episodes -> transitions, the rlds way: small tf.data functions, one idea each.

An episode of T + 1 steps (T actions; the last step holds the final
observation and a padding action) gives T transitions

    t -> (s_t, a_t, r_t, s_{t+1}, terminal = is_terminal_{t+1} and is_last_{t+1})

so s' is always the next step of the same episode, the last step is never a
transition's s (its action is padding), and terminal is set exactly on the
transition into a terminal last step.

The sources' episodes are parsed once, in batches, into a `Table`: every
step's fields in flat arrays (images still encoded) and every transition as
the index of its s (s' is the next index). The stream then moves only
transition indices through its shuffles and its weighted interleave, and
`gather` fetches the sampled transitions a batch at a time; images are
decoded after that (`decode_batch`), so only what is sampled is decoded.
Episodes are read straight from the TFRecord shards of a dataset neverstop
wrote (the flat keys of `schema.episode_features`), not through TFDS's
nested step datasets.
"""

import dataclasses
from typing import List, Sequence

import numpy as np
import tensorflow as tf

from neverstop import schema

OBSERVATION = schema.OBSERVATION
NEXT_OBSERVATION = "next_observation"
TERMINAL = "terminal"
EPISODE_ID = "episode_id"
STEP = "step"
SOURCE = "source"
SUCCESS = "episode_success"  # the transition's episode ended in a successful grasp

_S = schema.STEPS
_O = f"{_S}/{schema.OBSERVATION}"
_STEP_FIELDS = {
    schema.IMAGE: (f"{_O}/{schema.IMAGE}", tf.string),
    schema.GRIPPER_CLOSED: (f"{_O}/{schema.GRIPPER_CLOSED}", tf.float32),
    schema.HEIGHT_TO_BOTTOM: (f"{_O}/{schema.HEIGHT_TO_BOTTOM}", tf.float32),
    schema.ACTION: (f"{_S}/{schema.ACTION}", tf.float32),
    schema.REWARD: (f"{_S}/{schema.REWARD}", tf.float32),
    schema.IS_LAST: (f"{_S}/{schema.IS_LAST}", tf.int64),
    schema.IS_TERMINAL: (f"{_S}/{schema.IS_TERMINAL}", tf.int64),
}
_EPISODE_ID_KEY = f"{schema.EPISODE_METADATA}/{schema.EPISODE_ID}"

# The serialized layout of an episode (datasets/tfrecord.py, ingest.serialize_episode).
EPISODE_FEATURES = {
    **{key: tf.io.RaggedFeature(dtype) for key, dtype in _STEP_FIELDS.values()},
    _EPISODE_ID_KEY: tf.io.FixedLenFeature([], tf.string),
}


def parse_episodes(records: tf.Tensor) -> dict:
    """A batch of serialized episodes -> {field: RaggedTensor [episodes, steps]}."""
    flat = tf.io.parse_example(records, EPISODE_FEATURES)
    parsed = {name: flat[key] for name, (key, _) in _STEP_FIELDS.items()}
    actions = parsed[schema.ACTION]  # [E, 5 T] -> [E, T, 5]
    parsed[schema.ACTION] = tf.RaggedTensor.from_row_lengths(
        tf.reshape(actions.flat_values, [-1, schema.ACTION_DIM]),
        actions.row_lengths() // schema.ACTION_DIM,
    )
    parsed[EPISODE_ID] = flat[_EPISODE_ID_KEY]
    return parsed


@dataclasses.dataclass
class Table:
    """Every step and transition of a mixture's sources, in memory.

    Steps: `images` (encoded, or decoded by `decode_table`), `gripper_closed`, `height_to_bottom`,
    `action` [N, 5], `reward`, `terminal_step` (is_last and is_terminal).
    Transitions: `state` (index of s; s' is state + 1), `step` (t within
    the episode), `episode` (index into `episode_ids` and `episode_success`,
    True where the episode's best reward is a success's 1.0), `source`.
    `episode_starts[k]` holds the first transition of each episode of source
    k and one past its last, for episode-level shuffling.
    """

    steps: dict
    state: tf.Tensor
    step: tf.Tensor
    episode: tf.Tensor
    source: tf.Tensor
    episode_ids: tf.Tensor
    episode_success: tf.Tensor
    episode_starts: List[np.ndarray]


def build_table(sources: Sequence[tf.data.Dataset], batch: int = 1024) -> Table:
    """Parses each source's serialized episodes (a dataset of records) once."""
    parts, episode_starts = [], []
    step_offset = transition_offset = episode_offset = 0
    for index, records in enumerate(sources):
        chunks = list(records.batch(batch).map(parse_episodes, num_parallel_calls=tf.data.AUTOTUNE))
        if not chunks:
            raise ValueError(f"source {index} has no episodes")
        episodes = {k: tf.concat([c[k] for c in chunks], axis=0) for k in chunks[0]}
        lengths = episodes[schema.REWARD].row_lengths()
        if int(tf.reduce_min(lengths)) < 2:
            raise ValueError(f"source {index}: an episode has fewer than 2 steps")
        counts = lengths - 1  # transitions per episode
        first_step = tf.cumsum(lengths, exclusive=True) + step_offset
        t = tf.ragged.range(counts)
        state = (t + tf.expand_dims(first_step, 1)).flat_values
        num_episodes = int(lengths.shape[0])
        starts = np.concatenate([[0], np.cumsum(counts.numpy())]) + transition_offset
        episode_starts.append(starts)
        parts.append(
            {
                "steps": {k: episodes[k].flat_values for k in _STEP_FIELDS},
                "state": state,
                "step": tf.cast(t.flat_values, tf.int32),
                "episode": tf.repeat(tf.range(num_episodes, dtype=tf.int64), counts)
                + episode_offset,
                "source": tf.fill([int(starts[-1] - starts[0])], tf.constant(index, tf.int32)),
                "episode_ids": episodes[EPISODE_ID],
                # 1.0 on the final step for a held object; per-step penalties are < 0.
                "episode_success": tf.reduce_max(episodes[schema.REWARD], axis=1) > 0.5,
            }
        )
        step_offset += int(tf.reduce_sum(lengths))
        transition_offset = int(starts[-1])
        episode_offset += num_episodes
    steps = {k: tf.concat([p["steps"][k] for p in parts], 0) for k in _STEP_FIELDS}
    terminal = tf.logical_and(
        tf.cast(steps.pop(schema.IS_LAST), tf.bool), tf.cast(steps.pop(schema.IS_TERMINAL), tf.bool)
    )
    steps["terminal_step"] = terminal
    return Table(
        steps=steps,
        state=tf.concat([p["state"] for p in parts], 0),
        step=tf.concat([p["step"] for p in parts], 0),
        episode=tf.concat([p["episode"] for p in parts], 0),
        source=tf.concat([p["source"] for p in parts], 0),
        episode_ids=tf.concat([p["episode_ids"] for p in parts], 0),
        episode_success=tf.concat([p["episode_success"] for p in parts], 0),
        episode_starts=episode_starts,
    )


def is_decoded(table: Table) -> bool:
    return table.steps[schema.IMAGE].dtype == tf.uint8


def decoded_bytes(table: Table) -> int:
    """Memory the table's images take once decoded."""
    return int(table.steps[schema.IMAGE].shape[0]) * int(np.prod(schema.IMAGE_SHAPE))


def decode_table(table: Table, batch: int = 512) -> Table:
    """The table with every step image decoded once (uint8 [N, 64, 64, 3]).

    Offline training samples each step many times (20,000 steps at batch 64
    draw 1.3M transitions from a 62k-step dataset: each image about 40 times
    as s and as s'); decoding once is then the least work.
    """
    if is_decoded(table):
        return table
    images = (
        tf.data.Dataset.from_tensor_slices(table.steps[schema.IMAGE])
        .batch(batch)
        .map(
            lambda x: tf.map_fn(_decode, x, fn_output_signature=tf.uint8),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    )
    decoded = tf.concat(list(images), axis=0)
    return dataclasses.replace(table, steps=dict(table.steps, **{schema.IMAGE: decoded}))


def episode_transitions(table: Table, source: int):
    """Episode index -> the (global) indices of its transitions."""
    starts = tf.constant(table.episode_starts[source], tf.int64)

    def fn(episode: tf.Tensor) -> tf.Tensor:
        return tf.range(starts[episode], starts[episode + 1])

    return fn


def gather(table: Table):
    """A batch of transition indices -> the transitions (images encoded)."""

    def observation(index: tf.Tensor) -> dict:
        return {
            key: tf.gather(table.steps[key], index)
            for key in (schema.IMAGE, schema.GRIPPER_CLOSED, schema.HEIGHT_TO_BOTTOM)
        }

    def fn(indices: tf.Tensor) -> dict:
        state = tf.gather(table.state, indices)
        episode = tf.gather(table.episode, indices)
        return {
            OBSERVATION: observation(state),
            schema.ACTION: tf.gather(table.steps[schema.ACTION], state),
            schema.REWARD: tf.gather(table.steps[schema.REWARD], state),
            NEXT_OBSERVATION: observation(state + 1),
            TERMINAL: tf.gather(table.steps["terminal_step"], state + 1),
            EPISODE_ID: tf.gather(table.episode_ids, episode),
            SUCCESS: tf.gather(table.episode_success, episode),
            STEP: tf.gather(table.step, indices),
            SOURCE: tf.gather(table.source, indices),
        }

    return fn


def _decode(image: tf.Tensor) -> tf.Tensor:
    decoded = tf.io.decode_image(image, channels=3, expand_animations=False)
    return tf.ensure_shape(decoded, schema.IMAGE_SHAPE)


def decode_batch(batch: dict) -> dict:
    """Decodes the images of s and s' in a batch of sampled transitions (one
    op over all 2B images: per-element tf.data overhead is what costs)."""
    current = batch[OBSERVATION][schema.IMAGE]
    images = tf.concat([current, batch[NEXT_OBSERVATION][schema.IMAGE]], axis=0)
    decoded = tf.map_fn(_decode, images, fn_output_signature=tf.uint8)
    return _split_images(batch, decoded, tf.shape(current)[0])


def augment_batch(padding: int = 4, brightness: float = 0.1, contrast: float = 0.2):
    """Random shift by up to `padding` pixels each way (edge pixels repeat,
    as a replicate-padded random crop) and photometric jitter (brightness
    +-`brightness` of full scale, contrast x[1 -+ contrast] about mid-grey)
    of a batch of decoded transitions.

    Every draw is a stateless function of `seed` (shape [2]), so the same
    seed gives the same stream. s and s' of a transition get the same shift
    and jitter, as one camera would see them.
    """
    height, width, channels = schema.IMAGE_SHAPE

    def fn(seed: tf.Tensor, batch: dict) -> dict:
        current = batch[OBSERVATION][schema.IMAGE]
        size = tf.shape(current)[0]
        images = tf.concat([current, batch[NEXT_OBSERVATION][schema.IMAGE]], 0)
        if padding:
            shift = tf.random.stateless_uniform([size, 2], seed, -padding, padding + 1, tf.int32)
            shift = tf.concat([shift, shift], 0)
            rows = tf.clip_by_value(shift[:, :1] + tf.range(height)[None, :], 0, height - 1)
            cols = tf.clip_by_value(shift[:, 1:] + tf.range(width)[None, :], 0, width - 1)
            # Two row gathers (fast) instead of one per-pixel gather (slow).
            images = tf.gather(images, rows, batch_dims=1)
            images = tf.transpose(images, [0, 2, 1, 3])
            images = tf.transpose(tf.gather(images, cols, batch_dims=1), [0, 2, 1, 3])
        if not (brightness or contrast):
            return _split_images(batch, images, size)
        scale = tf.random.stateless_uniform([size], seed + 1, 1 - contrast, 1 + contrast)
        delta = tf.random.stateless_uniform([size], seed + 2, -brightness, brightness) * 255.0
        offset = delta + 127.5 * (1.0 - scale)
        scale = tf.reshape(tf.concat([scale, scale], 0), [-1, 1, 1, 1])
        offset = tf.reshape(tf.concat([offset, offset], 0), [-1, 1, 1, 1])
        jittered = tf.cast(images, tf.float32) * scale + offset
        images = tf.cast(tf.round(tf.clip_by_value(jittered, 0.0, 255.0)), tf.uint8)
        return _split_images(batch, images, size)

    return fn


def _split_images(batch: dict, images: tf.Tensor, size) -> dict:
    """Puts [s images; s' images] (2B) back into a batch's observations."""
    out = dict(batch)
    for key, part in ((OBSERVATION, images[:size]), (NEXT_OBSERVATION, images[size:])):
        out[key] = dict(batch[key], **{schema.IMAGE: part})
    return out
