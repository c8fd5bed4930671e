"""Parallel data collection as a Beam job: seeds in, raw episode files out.

One element is a shard of episode indices. Episode i of a collection run
with base seed S gets the seed `episode_seed(S, i)` and the id
`sim-<task>-<policy>-s<S>-<i>`; because an episode is a pure function of
(task, policy, seed), the same command writes the same files (same names,
same bytes) whatever the number of workers, and a re-run into the same
directory only collects the indices whose file is missing (resume after a
crash). Files are written atomically, so a killed worker leaves no
half-written episode; a seed that raises is reported, not fatal.

    Shards -> Reshuffle -> CollectShard --written--> (files in DIR)
                                        \\--failed--> RecordFailure (DIR/_failures/)
"""

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import traceback
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from neverstop import rawlog
from neverstop import schema
from neverstop.version import __version__

FORMATS = ("nsep", "rosbag")
FAILURES_DIR = "_failures"
CORRUPT_DIR = "_corrupt"


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """What to collect. Defaults: training objects, PNG images, one file per episode."""

    task: str = "base"
    policy: str = "scripted"
    episodes: int = 100
    seed: int = 0
    out: str = "raw"
    workers: int = 2
    epsilon: float = 0.0
    explore: str = "random"  # the exploration action when epsilon > 0 (policies.EXPLORERS)
    object_split: str = "train"
    renderer: str = "tiny"
    image_encoding: str = "png"
    format: str = "nsep"
    shard_size: int = 5


def episode_seed(seed: int, index: int) -> int:
    """The seed of episode `index` of a run with base seed `seed` (uint32)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=+-]+", "-", text).strip("-")


def episode_id(task: str, policy_name: str, seed: int, index: int) -> str:
    """Stable id from the source: the same (task, policy, seed, index), the same id."""
    return f"sim-{task}-{_slug(policy_name)}-s{seed}-{index:06d}"


def policy_label(config: CollectConfig) -> str:
    """The policy name episodes record (and their ids carry)."""
    from neverstop.envs import policies

    if config.epsilon > 0:
        return policies.epsilon_label(config.policy, config.epsilon, config.explore)
    return config.policy


def validate_config(config: CollectConfig, named_policy: bool = True) -> CollectConfig:
    """Fails fast, before any worker starts, with a message naming the problem.

    `named_policy=False` when a custom policy factory supplies the policy:
    then `config.policy` is free text (the label ids and metadata carry).
    """
    from neverstop.envs import policies

    schema.validate_task(config.task)
    if not config.policy or not re.fullmatch(r"[A-Za-z0-9._:@=+-]+", config.policy):
        raise ValueError(
            f"policy label {config.policy!r} must be non-empty letters, digits " "or ._:@=+-"
        )
    if named_policy and config.policy not in policies.POLICY_NAMES:
        raise ValueError(
            f"unknown policy {config.policy!r}; expected one of {', '.join(policies.POLICY_NAMES)}"
        )
    if (
        isinstance(config.episodes, bool)
        or not isinstance(config.episodes, int)
        or config.episodes < 1
    ):
        raise ValueError(f"--episodes must be a positive integer, got {config.episodes!r}")
    if config.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {config.seed}")
    if config.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {config.workers}")
    if config.shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {config.shard_size}")
    if not 0.0 <= config.epsilon <= 1.0:
        raise ValueError(f"--epsilon must be in [0, 1], got {config.epsilon}")
    if config.explore not in policies.EXPLORERS:
        raise ValueError(
            f"unknown --explore {config.explore!r}; expected one of {', '.join(policies.EXPLORERS)}"
        )
    if config.format not in FORMATS:
        raise ValueError(f"unknown format {config.format!r}; expected one of {FORMATS}")
    schema.validate_image_encoding(config.image_encoding)
    _check_writable(config.out)
    return config


def _check_writable(directory: str) -> None:
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"--out {directory}: is a file; give a directory for the episodes")
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=rawlog.TEMP_PREFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"output directory {directory!r} is not writable: {e.strerror}") from None


def output_name(config: CollectConfig, index: int) -> str:
    """The file (or bag directory) name episode `index` is written to."""
    eid = episode_id(config.task, policy_label(config), config.seed, index)
    return rawlog.filename(eid) if config.format == "nsep" else eid + ".bag"


def read_output_metadata(config: CollectConfig, path: str, verify: bool = False) -> dict:
    """The episode metadata of a finished output (.nsep file or bag).

    Raises ValueError (RawLogError for .nsep) if the output is unreadable.
    With `verify` an .nsep file is read whole, so a file damaged after its
    header counts as unreadable too; otherwise only its header is read.
    """
    if config.format == "rosbag":
        from neverstop.envs import rosbag_export

        return rosbag_export.read_metadata(path)
    if verify:
        return rawlog.read_episode(path).metadata
    return rawlog.read_header(path)["metadata"]


def missing_indices(config: CollectConfig) -> List[int]:
    """Indices whose output is absent or unreadable (those are collected again).

    An unreadable output is moved to DIR/_corrupt/ (kept for inspection,
    never silently deleted) so that the re-run can write a good one.
    """
    missing = []
    for index in range(config.episodes):
        name = output_name(config, index)
        path = os.path.join(config.out, name)
        if not os.path.exists(path):
            missing.append(index)
            continue
        try:
            read_output_metadata(config, path, verify=True)
        except ValueError as e:
            quarantine = os.path.join(config.out, CORRUPT_DIR)
            os.makedirs(quarantine, exist_ok=True)
            os.replace(path, os.path.join(quarantine, name))
            logging.warning(
                "moved unreadable %s to %s/ and collecting it again: %s", path, CORRUPT_DIR, e
            )
            missing.append(index)
    return missing


def shards(indices: Sequence[int], shard_size: int) -> List[Tuple[int, ...]]:
    return [tuple(indices[i : i + shard_size]) for i in range(0, len(indices), shard_size)]


def collect_episode(env, policy, config: CollectConfig, index: int) -> rawlog.Episode:
    """Runs episode `index` and returns it as a raw Episode (not yet written)."""
    import pybullet

    from neverstop.envs import policies

    seed = episode_seed(config.seed, index)
    observations, actions, rewards, info = policies.run_episode(env, policy, seed)
    metadata = {
        schema.EPISODE_ID: episode_id(config.task, policy_label(config), config.seed, index),
        schema.TASK: config.task,
        schema.SOURCE: schema.SOURCE_SIM,
        schema.ROBOT: schema.robot_id(config.task),
        schema.POLICY: policy.name,
        schema.SUCCESS: bool(info["success"]),
        schema.SEED: seed,
    }
    provenance = {
        "collection_seed": config.seed,
        "index": index,
        "object_split": config.object_split,
        "renderer": env.renderer,
        "env_config": dataclasses.asdict(env.config),
        "neverstop_version": __version__,
        "pybullet_api_version": pybullet.getAPIVersion(),
    }
    return rawlog.from_rollout(
        observations, actions, rewards, metadata, config.image_encoding, provenance
    )


PolicyFactory = Callable[[object, CollectConfig], object]


def named_policy(env, config: CollectConfig):
    """The default factory: a policy from envs.policies by name (+ epsilon)."""
    from neverstop.envs import policies

    return policies.make_policy(
        config.policy, env, epsilon=config.epsilon, explore=config.explore
    )


def write_output(config: CollectConfig, episode: rawlog.Episode) -> str:
    if config.format == "rosbag":
        from neverstop.envs import rosbag_export

        return rosbag_export.write_bag(
            os.path.join(config.out, episode.episode_id + ".bag"), episode
        )
    return rawlog.write_episode(config.out, episode)


def _collect_shard_fn():
    """The DoFn class, built lazily so importing this module never loads Beam."""
    import apache_beam as beam

    class CollectShard(beam.DoFn):
        """Collects every episode of a shard; a failing seed goes to 'failed'."""

        def __init__(self, config: CollectConfig, policy_factory: PolicyFactory):
            self.config = config
            self.policy_factory = policy_factory
            self.written = beam.metrics.Metrics.counter("collect", "episodes_written")
            self.successes = beam.metrics.Metrics.counter("collect", "successes")
            self.failures = beam.metrics.Metrics.counter("collect", "failed_seeds")

        def setup(self):
            from neverstop.envs import grasp_env

            env_config = grasp_env.EnvConfig(
                object_split=self.config.object_split, renderer=self.config.renderer
            )
            self.env = grasp_env.GraspEnv(self.config.task, env_config)
            self.policy = self.policy_factory(self.env, self.config)
            # Ids are derived from the config's label before any policy exists
            # (that is what makes resume possible), so the two must agree.
            if self.policy.name != policy_label(self.config):
                raise ValueError(
                    f"the policy factory made a policy named {self.policy.name!r}, but the "
                    f"collection is labelled {policy_label(self.config)!r}; set "
                    "CollectConfig.policy (and epsilon, explore) to match"
                )

        def process(self, shard: Tuple[int, ...]) -> Iterator:
            for index in shard:
                path = os.path.join(self.config.out, output_name(self.config, index))
                if os.path.exists(path):  # another run finished it meanwhile
                    continue
                try:
                    episode = collect_episode(self.env, self.policy, self.config, index)
                    write_output(self.config, episode)
                except Exception as e:  # one bad seed must not sink the job
                    self.failures.inc()
                    yield beam.pvalue.TaggedOutput(
                        "failed",
                        {
                            "index": index,
                            "seed": episode_seed(self.config.seed, index),
                            "error": f"{type(e).__name__}: {e}",
                            "traceback": traceback.format_exc(),
                        },
                    )
                    continue
                self.written.inc()
                self.successes.inc(int(episode.metadata[schema.SUCCESS]))
                yield index

        def teardown(self):
            env = getattr(self, "env", None)
            if env is not None:
                env.close()

    return CollectShard


def _record_failure(record: dict, out: str) -> None:
    directory = os.path.join(out, FAILURES_DIR)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{record['index']:06d}.json"), "w") as f:
        json.dump(record, f, indent=2)


def build_pipeline(
    pipeline,
    config: CollectConfig,
    indices: Sequence[int],
    policy_factory: PolicyFactory = named_policy,
):
    """Adds the collection transforms for `indices` to `pipeline`."""
    import apache_beam as beam

    results = (
        pipeline
        | "Shards" >> beam.Create(shards(list(indices), config.shard_size))
        # Spread shards over workers (Create alone keeps them in one bundle).
        | "Reshuffle" >> beam.Reshuffle()
        | "CollectShard"
        >> beam.ParDo(_collect_shard_fn()(config, policy_factory)).with_outputs(
            "failed", main="written"
        )
    )
    _ = results.failed | "RecordFailure" >> beam.Map(_record_failure, config.out)
    return results


@dataclasses.dataclass
class CollectSummary:
    requested: int
    already_present: int
    written: int
    successes: int
    failed: List[dict]
    seconds: float
    out: str

    @property
    def episodes_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


class _Watcher(threading.Thread):
    """Reports progress by watching the output directory (works for any runner
    whose workers write to a directory this process can see)."""

    def __init__(self, config: CollectConfig, known: set, callback, interval: float = 0.5):
        super().__init__(daemon=True)
        self.config, self.known, self.callback, self.interval = (
            config,
            set(known),
            callback,
            interval,
        )
        self.stop = threading.Event()

    def poll(self):
        suffix = rawlog.EXTENSION if self.config.format == "nsep" else ".bag"
        for name in sorted(os.listdir(self.config.out)):
            if (
                name.endswith(suffix)
                and not name.startswith(rawlog.TEMP_PREFIX)
                and name not in self.known
            ):
                self.known.add(name)
                try:
                    metadata = read_output_metadata(
                        self.config, os.path.join(self.config.out, name)
                    )
                    success = bool(metadata[schema.SUCCESS])
                except (ValueError, OSError, KeyError):
                    success = False  # counted, and checked properly at the end
                self.callback(1, success)

    def run(self):
        while not self.stop.wait(self.interval):
            self.poll()


def collect(
    config: CollectConfig,
    beam_args: Sequence[str] = (),
    running_mode: str = "multi_processing",
    policy_factory: PolicyFactory = named_policy,
    progress: Optional[Callable[[int, bool], None]] = None,
) -> CollectSummary:
    """Collects `config.episodes` episodes into `config.out` with a Beam job.

    Skips episodes already there; `progress(n_new, success)` is called from a
    watcher thread as files appear. Returns what happened, including the
    seeds that failed (also in DIR/_failures/, one JSON file each).
    """
    from neverstop import beam_pipeline

    validate_config(config, named_policy=policy_factory is named_policy)
    stale = rawlog.remove_stale_temporaries(config.out)
    if stale:
        logging.info("removed %d temporary files left by a killed run", stale)
    shutil.rmtree(os.path.join(config.out, FAILURES_DIR), ignore_errors=True)
    todo = missing_indices(config)
    present = config.episodes - len(todo)
    start = time.perf_counter()
    if todo:
        options = beam_pipeline.pipeline_options(beam_args, config.workers, running_mode)
        watcher = None
        if progress is not None:
            watcher = _Watcher(config, set(os.listdir(config.out)), progress)
            watcher.start()
        pipeline = beam_pipeline.make_pipeline(options)
        build_pipeline(pipeline, config, todo, policy_factory)
        pipeline.run().wait_until_finish()
        if watcher is not None:
            watcher.stop.set()
            watcher.join()
            watcher.poll()
    seconds = time.perf_counter() - start
    failed = []
    failures_dir = os.path.join(config.out, FAILURES_DIR)
    if os.path.isdir(failures_dir):
        for name in sorted(os.listdir(failures_dir)):
            with open(os.path.join(failures_dir, name)) as f:
                failed.append(json.load(f))
    written = successes = 0
    for index in todo:
        path = os.path.join(config.out, output_name(config, index))
        if os.path.exists(path):
            written += 1
            successes += int(read_output_metadata(config, path)[schema.SUCCESS])
    return CollectSummary(config.episodes, present, written, successes, failed, seconds, config.out)
