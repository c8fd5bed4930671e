"""A training run: mixture in, checkpoints + metrics + lineage out, resumable.

    RUN/config.json      the resolved TrainConfig
    RUN/lineage.json     mode, mixture, pinned datasets, parent checkpoint,
                         vision weights (what this network came from)
    RUN/metrics.jsonl    one line per log interval: loss, mean Q, target Q,
                         TD error (and the actor's loss, with one), steps/s
    RUN/tensorboard/     the same scalars for TensorBoard
    RUN/ckpt-<step>.*    TF checkpoints: online and both target networks,
                         optimizer, step, RNG and the tf.data iterator

Running again with the same RUN resumes from the newest checkpoint, exactly:
the iterator's shuffle buffers and position are in the checkpoint, so 100
steps + kill + 100 steps give the weights of 200 steps in one go (with op
determinism on; tested). Raising `steps` extends a finished run; any other
config change is refused. A step with a non-finite loss stops the run
without saving, naming the last good checkpoint.
"""

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from neverstop import jsonfile, schema
from neverstop.datasets import mixture as mixture_lib
from neverstop.datasets import stream as stream_lib
from neverstop.trainers import checkpoints, distribute, networks
from neverstop.trainers.config import ConfigError, TrainConfig
from neverstop.trainers.qtopt import QTOpt
from neverstop.version import __version__


class TrainingDivergedError(RuntimeError):
    """The loss or gradients stopped being finite; nothing was saved after the last good step."""


@dataclasses.dataclass
class RunSummary:
    run_dir: str
    start_step: int
    final_step: int
    seconds: float
    last_metrics: Dict[str, float]

    @property
    def steps_per_s(self) -> float:
        done = self.final_step - self.start_step
        return done / self.seconds if self.seconds > 0 else 0.0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_network_input(config: TrainConfig) -> None:
    """The datasets' images (the schema's) must be what the network eats."""
    expected = schema.IMAGE_SHAPE
    if (config.image_size, config.image_size, 3) != tuple(expected):
        raise ConfigError(
            f"the network expects {config.image_size}x{config.image_size}x3 images "
            f"(image_size={config.image_size}) but the mixture's datasets hold "
            f"{expected[0]}x{expected[1]}x{expected[2]} (the RLDS schema); set image_size="
            f"{expected[0]}"
        )


def lineage_record(
    config: TrainConfig,
    mixture: mixture_lib.Mixture,
    resolved: List[mixture_lib.ResolvedSource],
    parent: Optional[checkpoints.CheckpointRef],
    vision: Optional[dict],
    strategy: Optional[dict] = None,
) -> dict:
    return {
        "mode": config.mode,
        "mixture": mixture.as_dict(),
        "mixture_string": str(mixture),
        "datasets": [
            {
                "dataset": str(r.dataset_id),
                "split": r.source.split,
                "weight": r.source.weight,
                "episodes": r.episodes,
                "path": r.path,
            }
            for r in resolved
        ],
        "parent_checkpoint": (
            None if parent is None else {"id": parent.id, "prefix": os.path.abspath(parent.prefix)}
        ),
        "vision_weights": vision,
        "strategy": strategy or distribute.describe(None),
        "neverstop_version": __version__,
        "created": _now(),
    }


def _prepare_run_dir(run_dir: str, config: TrainConfig, mixture: mixture_lib.Mixture) -> bool:
    """True when resuming. Refuses a run dir that holds another run."""
    config_path = os.path.join(run_dir, checkpoints.CONFIG_FILE)
    if not os.path.exists(config_path):
        if os.path.isdir(run_dir) and os.listdir(run_dir):
            raise ConfigError(
                f"{run_dir}: exists and is not empty but holds no {checkpoints.CONFIG_FILE}; "
                "choose a new --run-dir (nothing was changed)"
            )
        return False
    saved = checkpoints.read_config(run_dir)
    differs = [
        k for k, v in config.as_dict().items() if k != "steps" and saved.as_dict().get(k) != v
    ]
    if differs:
        raise ConfigError(
            f"{run_dir} holds a run with a different config ({', '.join(differs)} differ); "
            "resume with the same config (only --steps may grow) or use a new --run-dir"
        )
    lineage = checkpoints.read_json(os.path.join(run_dir, checkpoints.LINEAGE_FILE))
    if lineage.get("mixture") != mixture.as_dict():
        raise ConfigError(
            f"{run_dir} was trained on mixture {lineage.get('mixture_string')!r}, not "
            f"{str(mixture)!r}; use a new --run-dir"
        )
    return True


def initialise(
    learner: QTOpt,
    config: TrainConfig,
    init: Optional[str],
    vision_weights: Optional[str],
):
    """Applies the mode's initialisation; returns (parent ref, vision record)."""
    from neverstop.trainers import vision

    parent = None
    vision_record = None
    if config.mode == "finetune":
        if not init:
            raise ConfigError("--mode finetune needs --init CHECKPOINT (a run dir or ckpt prefix)")
        parent = checkpoints.locate(init)
        checkpoints.restore_online(parent, learner.online, config)
        if learner.online.has_actor:
            # Fine-tune the policy that acted, not the noisier last actor.
            learner.online.actor_from_average()
    elif init:
        raise ConfigError(
            f"--init is for --mode finetune; --mode {config.mode} starts from "
            + ("vision weights" if config.mode == "imagenet" else "random weights")
        )
    if config.mode == "imagenet":
        if not vision_weights:
            raise ConfigError(
                "--mode imagenet needs --vision-weights FILE: a supervised tower from "
                "`neverstop pretrain-vision` (the offline stand-in for ImageNet features; "
                "see docs/trainer.md)"
            )
        online = learner.online
        vision_record = vision.load_tower(vision_weights, online.tower, config)
        if online.has_actor:
            # The actor sees through a tower of its own: it starts from the
            # same features, and so does the average that acts.
            networks.assign(online.actor_tower.weights, online.tower.weights)
            online.reset_average_actor()
    elif vision_weights:
        raise ConfigError("--vision-weights is only for --mode imagenet")
    learner.sync_targets()
    return parent, vision_record


def train(
    config: TrainConfig,
    mixture: mixture_lib.Mixture,
    data_dir: str,
    run_dir: str,
    init: Optional[str] = None,
    vision_weights: Optional[str] = None,
    progress: bool = True,
    deterministic: bool = False,
    callbacks: Optional[List[Callable[[str, int], None]]] = None,
    batch_hook: Optional[Callable[[dict], dict]] = None,
    strategy: Optional[tf.distribute.Strategy] = None,
) -> RunSummary:
    """Trains (or resumes) the run in `run_dir` up to `config.steps` steps.

    `deterministic` turns on TF op determinism (bit-exact resume; slower on
    some ops). `callbacks(event, step)` hear "checkpoint" after each save.
    `batch_hook` rewrites each batch before the step (fault injection).
    `strategy` (distribute.make_strategy) spreads each step over its replicas;
    None trains on one device.

    Raises:
        MixtureError, ConfigError: before anything is written.
        TrainingDivergedError: a non-finite step; checkpoints stay as they were.
    """
    check_network_input(config)
    distribute.check_batch(strategy, config.batch_size)
    resolved = mixture.resolve(data_dir)
    # On a multi-worker cluster only the chief writes RUN; the others read it
    # to resume and save their share of each checkpoint to a scratch dir.
    chief = distribute.is_chief(strategy)
    if chief:
        resuming = _prepare_run_dir(run_dir, config, mixture)
    else:
        resuming = tf.train.latest_checkpoint(run_dir) is not None
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.keras.utils.set_random_seed(config.seed)

    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        learner = QTOpt(config)
        parent = vision_record = None
        restoring = resuming and tf.train.latest_checkpoint(run_dir) is not None
        if not restoring:
            # A fresh run, or one killed before its first checkpoint: start as asked.
            parent, vision_record = initialise(learner, config, init, vision_weights)
    if strategy is None:
        train_step = learner.train_step
    else:
        distributed_step = learner.distributed_step(strategy)

        def train_step(batch):
            return distributed_step(distribute.split_batch(strategy, batch))

    stream_config = stream_lib.StreamConfig(
        batch_size=config.batch_size, seed=config.seed, augment=config.augment
    )
    dataset = stream_lib.make_stream(mixture, data_dir, stream_config, resolved=resolved)
    iterator = iter(dataset)
    checkpoint = tf.train.Checkpoint(iterator=iterator, **learner.checkpoint_items())
    save_dir = run_dir if chief else tempfile.mkdtemp(prefix="neverstop-worker-")
    manager = tf.train.CheckpointManager(
        checkpoint,
        save_dir,
        max_to_keep=config.keep_checkpoints,
        checkpoint_name="ckpt",
        step_counter=learner.step,
    )
    if restoring:
        checkpoint.restore(tf.train.latest_checkpoint(run_dir)).assert_consumed()
        logging.info("resumed %s at step %d", run_dir, int(learner.step.numpy()))
    elif resuming:
        logging.info("%s: config present but no checkpoint yet; starting at step 0", run_dir)
    if chief and not resuming:
        os.makedirs(run_dir, exist_ok=True)
        jsonfile.write_atomic(
            os.path.join(run_dir, checkpoints.LINEAGE_FILE),
            lineage_record(
                config, mixture, resolved, parent, vision_record, distribute.describe(strategy)
            ),
        )
        jsonfile.write_atomic(os.path.join(run_dir, checkpoints.CONFIG_FILE), config.as_dict())
    elif chief and config.steps != checkpoints.read_config(run_dir).steps:
        jsonfile.write_atomic(os.path.join(run_dir, checkpoints.CONFIG_FILE), config.as_dict())

    start_step = int(learner.step.numpy())
    metrics_path = os.path.join(run_dir, checkpoints.METRICS_FILE)
    if chief:
        _truncate_metrics(metrics_path, start_step)
        writer = tf.summary.create_file_writer(os.path.join(run_dir, "tensorboard"))
    else:
        writer = tf.summary.create_noop_writer()
    last_saved = start_step if restoring else None
    bar = None
    if progress and chief:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=start_step, desc=f"train {config.mode}", unit="step")
    metric_keys = learner.metric_keys
    sums = {k: 0.0 for k in metric_keys}
    count = 0
    last = {}
    window_start = time.perf_counter()
    run_start = window_start
    try:
        while int(learner.step.numpy()) < config.steps:
            batch = next(iterator)
            if batch_hook is not None:
                batch = batch_hook(batch)
            out = train_step(batch)
            step = int(learner.step.numpy())
            if not bool(out["finite"]):
                where = (
                    f"the last good checkpoint is step {last_saved} ({manager.latest_checkpoint})"
                    if last_saved is not None
                    else "no checkpoint was saved yet"
                )
                raise TrainingDivergedError(
                    f"{run_dir}: the loss or its gradients became non-finite at step {step + 1} "
                    f"(loss={float(out['loss'])}); the step was not applied and nothing was "
                    f"saved after it; {where}. Lower the learning rate or check the data."
                )
            for k in metric_keys:
                sums[k] += float(out[k])
            count += 1
            if step % config.log_every == 0 or step == config.steps:
                elapsed = time.perf_counter() - window_start
                last = {k: sums[k] / count for k in metric_keys}
                last["steps_per_s"] = count / elapsed if elapsed > 0 else 0.0
                if chief:
                    _log_metrics(metrics_path, writer, step, last)
                sums = {k: 0.0 for k in metric_keys}
                count = 0
                window_start = time.perf_counter()
                if bar is not None:
                    bar.set_postfix(loss=f"{last['loss']:.4f}", q=f"{last['mean_q']:.3f}")
            if step % config.checkpoint_every == 0 or step == config.steps:
                manager.save(checkpoint_number=step)
                last_saved = step
                for callback in callbacks or ():
                    callback("checkpoint", step)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        writer.close()
        if not chief:
            shutil.rmtree(save_dir, ignore_errors=True)
    return RunSummary(
        run_dir, start_step, int(learner.step.numpy()), time.perf_counter() - run_start, last
    )


def _log_metrics(path: str, writer, step: int, values: Dict[str, float]) -> None:
    record = {"step": step, "time": _now(), **{k: float(v) for k, v in values.items()}}
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    with writer.as_default(step=step):
        for k, v in values.items():
            tf.summary.scalar(k, v)


def _truncate_metrics(path: str, step: int) -> None:
    """On resume, drops metric lines past the restored step (they will be redone)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(lines)


def read_metrics(run_dir: str) -> List[dict]:
    path = os.path.join(run_dir, checkpoints.METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def checkpoint_digest(prefix: str) -> str:
    """A hash of every variable in a checkpoint (networks, targets, optimizer,
    step, RNG), to compare runs bit for bit. The iterator's state is left out:
    its serialized form is not a plain tensor."""
    import hashlib

    reader = tf.train.load_checkpoint(prefix)
    h = hashlib.sha256()
    for name in sorted(reader.get_variable_to_shape_map()):
        if name.startswith("iterator") or name.startswith("save_counter"):
            continue
        value = reader.get_tensor(name)
        h.update(name.encode())
        h.update(
            np.ascontiguousarray(value).tobytes() if hasattr(value, "tobytes") else bytes(value)
        )
    return h.hexdigest()
