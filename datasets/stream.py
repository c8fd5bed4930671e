"""The trainer's input: a mixture -> a deterministic stream of transition batches.

    once:        each source's split slice (TFRecord shards) -> parsed in
                 batches into an in-memory Table (images encoded; see below)
    per source:  episode indices -> shuffle -> repeat -> their transition
                 indices -> shuffle (step level)
    mixed:       sample_from_datasets(weights) -> batch -> gather the batch's
                 transitions -> decode images -> augment (optional) -> prefetch

When the decoded images fit in `decoded_cache_mb` (4 GiB by default: a
9,000-episode base dataset takes 750 MB), every image is decoded once when
the stream is made, and gather returns decoded images; otherwise only the
sampled transitions' images are decoded, a batch at a time.

Only transition indices (one int64 each) travel through the shuffles and the
weighted interleave: tf.data's per-element cost, not the work, limits a
stream of whole transitions here (measured in docs/mixing.md). Every random
choice (shuffles, the weighted draw, augmentation) is seeded, so the same
seed and mixture give the same stream; parallel maps are autotuned and keep
order.
"""

import dataclasses
from typing import List, Optional

import tensorflow as tf

from neverstop.datasets import mixture as mixture_lib
from neverstop.datasets import transitions as tr


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    batch_size: int = 64
    seed: int = 0
    episode_shuffle: int = 10_000  # episodes in the per-source shuffle buffer
    step_shuffle: int = 4_096  # transitions in the per-source shuffle buffer
    augment: bool = True
    crop_padding: int = 4
    brightness: float = 0.1
    contrast: float = 0.2
    decode: bool = True  # False: images stay encoded bytes (inspection, tests)
    # Decode every image once, up front, when the decoded images fit in this
    # many MiB; otherwise (or with 0) decode the sampled ones, batch by batch.
    decoded_cache_mb: int = 4096

    def __post_init__(self):
        for name in ("batch_size", "episode_shuffle", "step_shuffle"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.decoded_cache_mb < 0:
            raise ValueError(f"decoded_cache_mb must be >= 0, got {self.decoded_cache_mb}")
        if self.augment and not self.decode:
            raise ValueError("augment needs decoded images (decode=True)")


def _seed(config: StreamConfig, index: int, salt: int) -> int:
    return (config.seed * 1_000_003 + index * 7_919 + salt) % (2**31 - 1)


def source_episodes(source: mixture_lib.ResolvedSource) -> tf.data.Dataset:
    """The serialized episodes of a source's split slice, in TFDS order."""
    files, skips, takes = zip(*source.file_instructions)
    instructions = tf.data.Dataset.from_tensor_slices(
        (list(files), tf.constant(skips, tf.int64), tf.constant(takes, tf.int64))
    )
    return instructions.flat_map(
        lambda f, skip, take: tf.data.TFRecordDataset(f).skip(skip).take(take)
    )


def source_indices(table: tr.Table, index: int, config: StreamConfig) -> tf.data.Dataset:
    """One source's endless stream of transition indices, shuffled by episode
    (a new order every pass) and then by step."""
    num_episodes = len(table.episode_starts[index]) - 1
    return (
        tf.data.Dataset.range(num_episodes)
        .shuffle(
            min(config.episode_shuffle, num_episodes),
            seed=_seed(config, index, 1),
            reshuffle_each_iteration=True,
        )
        .repeat()
        .map(tr.episode_transitions(table, index))
        .unbatch()
        .shuffle(config.step_shuffle, seed=_seed(config, index, 2), reshuffle_each_iteration=True)
    )


def load_table(resolved: List[mixture_lib.ResolvedSource]) -> tr.Table:
    """Reads and parses every source once (the stream's start-up cost)."""
    return tr.build_table([source_episodes(s) for s in resolved])


def make_stream(
    mixture: mixture_lib.Mixture,
    data_dir: str,
    config: Optional[StreamConfig] = None,
    resolved: Optional[List[mixture_lib.ResolvedSource]] = None,
    table: Optional[tr.Table] = None,
) -> tf.data.Dataset:
    """Batches of transitions for the trainer, checked against data_dir first
    (pass `resolved` and `table` already built to skip re-reading them).

    Raises:
        MixtureError: before anything is read, if the mixture cannot be used.
    """
    config = config or StreamConfig()
    resolved = resolved if resolved is not None else mixture.resolve(data_dir)
    table = table if table is not None else load_table(resolved)
    if config.decode and tr.decoded_bytes(table) <= config.decoded_cache_mb * 2**20:
        table = tr.decode_table(table)
    streams = [source_indices(table, i, config) for i in range(len(resolved))]
    if len(streams) == 1:
        mixed = streams[0]
    else:
        mixed = tf.data.Dataset.sample_from_datasets(
            streams, weights=list(mixture.weights), seed=_seed(config, 0, 3)
        )
    batches = mixed.batch(config.batch_size, drop_remainder=True).map(
        tr.gather(table), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    if config.decode and not tr.is_decoded(table):
        batches = batches.map(
            tr.decode_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
    if config.augment:
        augment = tr.augment_batch(config.crop_padding, config.brightness, config.contrast)
        batches = batches.enumerate().map(
            lambda i, batch: augment(tf.stack([tf.constant(config.seed, tf.int64), i]), batch),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = True
    return batches.prefetch(tf.data.AUTOTUNE).with_options(options)


def inspect(
    mixture: mixture_lib.Mixture,
    data_dir: str,
    png_path: str,
    config: Optional[StreamConfig] = None,
    transitions: int = 2048,
    per_source: int = 8,
) -> dict:
    """What the trainer will see: sources, sizes, weights, a batch's shapes,
    the sampled share of each source, and a PNG grid with a row of sampled
    s images per source (as augmented for training).
    """
    import numpy as np
    from PIL import Image

    # A few batches are looked at: decode only their images, not the whole table
    # (the two modes give identical batches).
    config = dataclasses.replace(config or StreamConfig(), decoded_cache_mb=0)
    resolved = mixture.resolve(data_dir)
    table = load_table(resolved)
    batches = make_stream(mixture, data_dir, config, resolved, table)
    counts = np.zeros(len(resolved), np.int64)
    rows = [[] for _ in resolved]
    shapes = None
    for batch in batches.take(max(1, transitions // config.batch_size)):
        if shapes is None:
            shapes = tf.nest.map_structure(lambda x: (tuple(x.shape), x.dtype.name), batch)
        sources = batch[tr.SOURCE].numpy()
        counts += np.bincount(sources, minlength=len(resolved))
        images = batch[tr.OBSERVATION]["image"].numpy()
        for i, source in enumerate(sources):
            if len(rows[source]) < per_source and images.dtype == np.uint8:
                rows[source].append(images[i])
    height, width = images.shape[1:3] if images.ndim == 4 else (0, 0)
    if height:
        grid = np.full((len(rows) * (height + 2), per_source * (width + 2), 3), 255, np.uint8)
        for r, row in enumerate(rows):
            for c, image in enumerate(row):
                y, x = r * (height + 2) + 1, c * (width + 2) + 1
                grid[y : y + height, x : x + width] = image
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(
            png_path
        )
    sampled = int(counts.sum())
    return {
        "sources": [
            {
                "name": r.name,
                "path": r.path,
                "episodes": r.episodes,
                "transitions": int(table.episode_starts[i][-1] - table.episode_starts[i][0]),
                "weight": r.source.weight,
                "share": mixture.weights[i],
                "sampled_share": counts[i] / sampled if sampled else 0.0,
            }
            for i, r in enumerate(resolved)
        ],
        "sampled": sampled,
        "batch_shapes": shapes,
        "png": png_path if height else None,
    }
