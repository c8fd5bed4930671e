"""Mixed-stream speed: our transition stream against a naive tf.data one.

The peer is what one writes first with TFDS: `tfds.load` each source (every
image of an episode decoded as the episode is read), the episode's steps
batched and sliced into transitions, shuffled, repeated,
`sample_from_datasets` with the same weights, batched, prefetched. Ours is
`neverstop.datasets.stream` with augmentation off (the peer does none; the
same work on both sides) and its default image handling (every image
decoded once, up front, as the data fits the decoded-image budget); printed
beside: with augmentation on, and decoding only the sampled transitions'
images (the stream's mode for data beyond the budget). All run
in this process, one after the other, on the same mixture; each is warmed up
(its first batches, which fill tables and shuffle buffers, are not timed;
our start-up, parsing the table and decoding its images, is reported on its
own).
"""

import os
import shutil
import tempfile
import time
from typing import Dict, List

from neverstop import schema
from neverstop.datasets import mixture as mixture_lib
from neverstop.datasets import transitions as tr


def naive_stream(resolved: List[mixture_lib.ResolvedSource], weights, batch_size: int, seed: int):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def to_transitions(episode):
        steps = episode[schema.STEPS].batch(schema.MAX_EPISODE_STEPS + 1).get_single_element()
        obs = steps[schema.OBSERVATION]
        return {
            tr.OBSERVATION: tf.nest.map_structure(lambda x: x[:-1], obs),
            schema.ACTION: steps[schema.ACTION][:-1],
            schema.REWARD: steps[schema.REWARD][:-1],
            tr.NEXT_OBSERVATION: tf.nest.map_structure(lambda x: x[1:], obs),
            tr.TERMINAL: tf.logical_and(steps[schema.IS_LAST][1:], steps[schema.IS_TERMINAL][1:]),
        }

    streams = []
    for index, source in enumerate(resolved):
        ds = tfds.load(
            f"{source.dataset_id}",
            split=source.source.split,
            data_dir=source.path.rsplit("/", 3)[0],
        )
        streams.append(ds.map(to_transitions).unbatch().shuffle(4096, seed=seed + index).repeat())
    mixed = tf.data.Dataset.sample_from_datasets(streams, weights=list(weights), seed=seed)
    return mixed.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _rate(dataset, batches: int, warmup: int, batch_size: int) -> Dict[str, float]:
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "transitions_per_s": batches * batch_size / seconds}


def make_datasets(directory: str, base_episodes: int, target_episodes: int) -> str:
    """A data dir with `bench_base/base` and `bench_target/base`: copies of
    collected scripted episodes with unique ids, ingested by our pipeline."""
    from neverstop.benchmarks import ingest_bench
    from neverstop.pipelines import ingest

    data_dir = os.path.join(directory, "data")
    for name, count in (("bench_base", base_episodes), ("bench_target", target_episodes)):
        root = os.path.join(directory, name)
        os.makedirs(root)
        ingest_bench.make_corpus(root, count)
        ingest.ingest(
            ingest.IngestConfig(
                input=os.path.join(root, "raw", "*.nsep"),
                dataset=name,
                config="base",
                data_dir=data_dir,
                workers=1,
            ),
            running_mode="in_memory",
        )
    return data_dir


def run(
    mixture: mixture_lib.Mixture,
    data_dir: str,
    batches: int = 300,
    warmup: int = 30,
    batch_size: int = 64,
    seed: int = 0,
) -> dict:
    from neverstop.datasets import stream

    resolved = mixture.resolve(data_dir)
    start = time.perf_counter()
    encoded = stream.load_table(resolved)
    table_seconds = time.perf_counter() - start
    start = time.perf_counter()
    decoded = tr.decode_table(encoded)
    decode_seconds = time.perf_counter() - start
    results = {}
    for name, augment, table in (
        ("ours", False, decoded),
        ("ours_augmented", True, decoded),
        ("ours_decode_sampled", False, encoded),
    ):
        config = stream.StreamConfig(
            batch_size=batch_size,
            seed=seed,
            augment=augment,
            decoded_cache_mb=0 if table is encoded else 4096,
        )
        results[name] = _rate(
            stream.make_stream(mixture, data_dir, config, resolved, table),
            batches,
            warmup,
            batch_size,
        )
    results["peer"] = _rate(
        naive_stream(resolved, mixture.weights, batch_size, seed), batches, warmup, batch_size
    )
    return dict(
        results,
        batches=batches,
        batch_size=batch_size,
        table_seconds=table_seconds,
        decode_seconds=decode_seconds,
        decoded_mb=tr.decoded_bytes(encoded) / 2**20,
        sources=[(s.name, s.episodes) for s in resolved],
        ratio=results["ours"]["transitions_per_s"] / results["peer"]["transitions_per_s"],
    )


def run_generated(base_episodes: int = 2000, target_episodes: int = 200, **kwargs) -> dict:
    """`run` on generated datasets mixed 50/50, as fine-tuning mixes them."""
    root = tempfile.mkdtemp(prefix="neverstop-bench-mix-")
    try:
        data_dir = make_datasets(root, base_episodes, target_episodes)
        mixture = mixture_lib.Mixture.parse("bench_base/base:train:0.5,bench_target/base:train:0.5")
        return run(mixture, data_dir, **kwargs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
