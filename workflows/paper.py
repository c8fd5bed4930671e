"""The study's protocol in simulation, as a resumable chain of named steps.

`neverstop experiment paper --scale {smoke,small,full} --run-dir DIR` runs

    base data      scripted + random collection -> grasps/base:1.0.0
                   -> pre-training (checkpoints/base-r0); then R rounds of
                   collection with the current policy (epsilon-greedy)
                   -> grasps/base:1.r.0 (everything so far) -> more
                   pre-training from the previous round (checkpoints/base-rR)
    base policy    the last round's checkpoint: checkpoints/base
    robustness     the base policy on all six tasks (held-out objects)
    per challenge  target data: the base policy with exploration noise
                   -> grasps/<task>:1.0.0; fine-tuning 50/50 base/target at
                   each target size (finetune-<task>-<n>); `scratch` and
                   `imagenet` baselines at the largest size
    continual      one chain of fine-tunes through the challenges, each link
                   from the previous link's checkpoint, evaluated on its
                   task and on `base` (forgetting)
    report         tables (Markdown + CSV) and plots (PNG) in report/

under DIR (DESIGN.md's layout):

    DIR/experiment.json             the scale (a re-run must use the same one)
    DIR/raw/<task>/<collection>/    raw episode files
    DIR/data/                       TFDS data_dir (grasps/<task>:<version>)
    DIR/checkpoints/<name>/         trainer run dirs; vision/tower.npz
    DIR/eval/<name>/<task>.json     success rate, episodes, Wilson 95% interval
    DIR/report/                     README.md, *.csv, *.md, *.png
    DIR/.done/<step>.json           done-markers (workflows/dag.py)
    DIR/logs/<step>.log             each step's output
    DIR/steps.jsonl                 start/done/skip/failed events

A target size counts episodes, and an episode is one grasp attempt, so
"800 target grasps" is the split `train[:800]` of the target dataset.
"""

import contextlib
import dataclasses
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from neverstop import jsonfile, schema
from neverstop.workflows import dag

DATASET = "grasps"
EVAL_SEED = 1_000_000  # every checkpoint meets the same evaluation episodes
EXPERIMENT_FILE = "experiment.json"
MAX_ROUNDS = 9  # base versions are 1.<round>.0 and raw dirs r<round>-*


# Every scale trains the Q-function and, beside it, an actor that clones the
# successful episodes' actions (docs/trainer.md, "The actor"); the policy is
# CEM over Q started at the actor's action, with Q trained conservatively so
# that search does not walk to where Q is wrong (docs/trainer.md, "Conservative
# Q and CEM from the actor"): on base data CEM from zero over plain Q makes
# 4%, the actor 57%, this 59% (400 held-out episodes).
ACTOR = (("actor", True), ("acting", "actor_cem"), ("conservative_weight", 0.3))


@dataclasses.dataclass(frozen=True)
class Scale:
    """Every number of one size of the experiment.

    Episode counts are grasps (one grasp attempt per episode); steps are
    trainer steps (batches); `train` overrides TrainConfig fields for every
    run of the experiment (the network must be the same everywhere, since
    fine-tuning restores the base checkpoint).
    """

    name: str
    # Base data.
    scripted_episodes: int
    random_episodes: int
    rounds: int  # rounds of on-policy collection + more pre-training
    round_episodes: int
    round_epsilon: float = 0.3
    collect_shards: int = 2  # parallel collection steps per base collection
    # Training.
    pretrain_steps: int = 10_000
    round_steps: int = 3_000
    finetune_steps: int = 2_000
    baseline_steps: int = 4_000  # scratch and imagenet, at the largest size
    continual_steps: int = 2_000
    train: Tuple[Tuple[str, object], ...] = ACTOR
    # The acting actor is a Polyak average (docs/trainer.md, "The actor"):
    # after a fine-tune of 1,500 steps at the default 0.9995 it still holds
    # 47% of its parent's average. None keeps `train`'s (docs/experiments.md,
    # "`small` with the actor").
    finetune_actor_polyak: Optional[float] = None
    vision_images: int = 2_000
    vision_epochs: int = 10
    # Targets.
    challenges: Tuple[str, ...] = schema.CHALLENGE_TASKS
    sizes: Tuple[int, ...] = (100, 400, 800)
    target_epsilon: float = 0.2
    # The exploration action of every epsilon-greedy collection (rounds and
    # targets): "moves" never closes, so the greedy policy decides when to
    # grasp (with "random", round 1 of `small` succeeded 15% of the time).
    explore: str = "moves"
    # Evaluation and what the report holds.
    eval_episodes: int = 100
    robustness_tasks: Tuple[str, ...] = schema.TASKS
    baselines: bool = True
    continual: bool = True
    tables: Tuple[str, ...] = ("robustness", "finetune", "baselines", "continual")
    seed: int = 0

    def __post_init__(self):
        for name in (
            "scripted_episodes",
            "random_episodes",
            "pretrain_steps",
            "finetune_steps",
            "eval_episodes",
            "collect_shards",
        ):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"scale {self.name}: {name} must be >= 1, got {getattr(self, name)}"
                )
        if not 0 <= self.rounds <= MAX_ROUNDS:
            raise ValueError(f"scale {self.name}: rounds must be in [0, {MAX_ROUNDS}]")
        if self.finetune_actor_polyak is not None and not 0 <= self.finetune_actor_polyak < 1:
            raise ValueError(
                f"scale {self.name}: finetune_actor_polyak must be in [0, 1), "
                f"got {self.finetune_actor_polyak}"
            )
        if not self.sizes or any(n < 1 for n in self.sizes):
            raise ValueError(f"scale {self.name}: sizes must be positive, got {self.sizes}")
        if not self.challenges:
            raise ValueError(f"scale {self.name}: needs at least one challenge task")
        for task in self.challenges + self.robustness_tasks:
            schema.validate_task(task)
        if "base" in self.challenges:
            raise ValueError(f"scale {self.name}: 'base' is not a challenge task")
        unknown = set(self.tables) - {"robustness", "finetune", "baselines", "continual"}
        if unknown:
            raise ValueError(f"scale {self.name}: unknown tables {sorted(unknown)}")

    @property
    def target_episodes(self) -> int:
        return max(self.sizes)

    @property
    def finetune_changes(self) -> dict:
        """TrainConfig fields a fine-tune or chain link sets beyond `train`."""
        if self.finetune_actor_polyak is None:
            return {}
        return {"actor_polyak": self.finetune_actor_polyak}

    def train_config(self, **changes):
        from neverstop.trainers.config import TrainConfig

        return TrainConfig(**dict(self.train)).replace(seed=self.seed, **changes)

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["train"] = {k: _jsonable(v) for k, v in self.train}
        return _jsonable(data)


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


# A network small enough that a smoke run trains in seconds (same as the
# trainer tests' tiny config).
TINY_NETWORK = ACTOR + (
    ("tower_filters", ((8, 8, 4), (16, 4, 2))),
    ("head_units", (32, 16)),
    ("cem", {"samples": 8, "elites": 2}),
    ("batch_size", 8),
    ("checkpoint_every", 10),
    ("log_every", 5),
    ("lag_steps", 7),
)

SCALES: Dict[str, Scale] = {
    # CI: every step and every table on a handful of episodes; numbers are noise.
    "smoke": Scale(
        name="smoke",
        scripted_episodes=12,
        random_episodes=4,
        rounds=1,
        round_episodes=4,
        collect_shards=1,
        pretrain_steps=20,
        round_steps=10,
        finetune_steps=10,
        baseline_steps=10,
        continual_steps=10,
        train=TINY_NETWORK,
        vision_images=24,
        vision_epochs=1,
        sizes=(4,),
        eval_episodes=2,
    ),
    # 2 cores, shared: 66-97 minutes (97 with 200-episode points; docs/experiments.md).
    "small": Scale(
        name="small",
        scripted_episodes=5_000,
        random_episodes=1_500,
        rounds=2,
        round_episodes=1_000,
        pretrain_steps=8_000,
        round_steps=3_000,
        finetune_steps=1_500,
        baseline_steps=3_000,
        continual_steps=1_500,
        sizes=(100, 400, 800),
        eval_episodes=200,  # 100 showed an 18-point drop as 6 (docs/experiments.md)
        finetune_actor_polyak=0.998,
    ),
    # The study's sweep: several sessions here, or a cluster (docs/experiments.md).
    "full": Scale(
        name="full",
        scripted_episodes=7_000,
        random_episodes=2_000,
        rounds=3,
        round_episodes=2_000,
        pretrain_steps=15_000,
        round_steps=5_000,
        finetune_steps=3_000,
        baseline_steps=10_000,
        continual_steps=3_000,
        sizes=(25, 50, 100, 200, 400, 800),
        eval_episodes=200,
    ),
}


# `neverstop quickstart`: the same chain, tiny: a few hundred base episodes, a
# short pre-training, one challenge, one fine-tune, its evaluation, one table
# and one plot; a few minutes on 2 cores (docs/experiments.md). 1,000 + 400
# training steps, not 1,500 + 500: on the slower (AVX2) machines here the
# longer chain came within seconds of the 10 minutes the README promises.
QUICKSTART = Scale(
    name="quickstart",
    scripted_episodes=240,
    random_episodes=60,
    rounds=0,
    round_episodes=0,
    pretrain_steps=1_000,
    finetune_steps=400,
    challenges=("checkerboard",),
    sizes=(100,),
    eval_episodes=30,
    robustness_tasks=("checkerboard",),
    baselines=False,
    continual=False,
    tables=("finetune",),
)


def get_scale(name: str) -> Scale:
    if name not in SCALES:
        raise ValueError(f"unknown scale {name!r}; expected one of {', '.join(SCALES)}")
    return SCALES[name]


# --- Names and paths ----------------------------------------------------------------------


def data_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "data")


def checkpoint_dir(run_dir: str, name: str) -> str:
    return os.path.join(run_dir, "checkpoints", name)


def eval_path(run_dir: str, name: str, task: str) -> str:
    return os.path.join(run_dir, "eval", name, f"{task}.json")


def vision_weights(run_dir: str) -> str:
    return os.path.join(checkpoint_dir(run_dir, "vision"), "tower.npz")


def base_version(round_: int) -> str:
    return f"1.{round_}.0"


def round_checkpoint(scale: Scale, round_: int) -> str:
    """The base policy is the last round's checkpoint."""
    return "base" if round_ == scale.rounds else f"base-r{round_}"


def mixture_string(scale: Scale, task: str, size: int) -> str:
    """50/50 base (its final version, pinned) and the first `size` target episodes."""
    base = f"{DATASET}/base:{base_version(scale.rounds)}"
    return f"{base}:train:0.5,{DATASET}/{task}:1.0.0:train[:{size}]:0.5"


def _split(total: int, parts: int) -> List[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


# --- Step functions (module level: each runs in a spawned process) -------------------------


def collect_step(
    run_dir: str,
    task: str,
    out: str,
    episodes: int,
    seed: int,
    policy: str,
    epsilon: float = 0.0,
    explore: str = "random",
    checkpoint: Optional[str] = None,
    object_split: str = "train",
) -> dict:
    """Collects into DIR/<out> with a named policy, or a checkpoint's acting
    policy (`policy="checkpoint"`, the prefix from the dependency's marker)."""
    from neverstop.envs import collect

    factory = collect.named_policy
    label = policy
    if policy == "checkpoint":
        from neverstop.trainers import policy as policy_lib

        # The factory fixes the run dir's newest checkpoint itself.
        factory = policy_lib.CheckpointPolicyFactory(
            checkpoint_dir(run_dir, checkpoint), epsilon, explore
        )
        label = factory.label
    config = collect.CollectConfig(
        task=task,
        policy=label,
        episodes=episodes,
        seed=seed,
        out=os.path.join(run_dir, out),
        workers=1,
        epsilon=epsilon,
        explore=explore,
        object_split=object_split,
    )
    summary = collect.collect(config, running_mode="in_memory", policy_factory=factory)
    if summary.failed:
        raise RuntimeError(
            f"{len(summary.failed)} episodes failed in {config.out} (see its "
            f"{collect.FAILURES_DIR}/); re-running retries them"
        )
    present = collect.missing_indices(config)
    if present:
        raise RuntimeError(f"{config.out}: episodes {present[:5]} are still missing")
    successes = sum(
        int(
            collect.read_output_metadata(
                config, os.path.join(config.out, collect.output_name(config, i))
            )[schema.SUCCESS]
        )
        for i in range(episodes)
    )
    return {
        "out": out,
        "task": task,
        "policy": collect.policy_label(config),
        "episodes": episodes,
        "successes": successes,
        "seed": seed,
    }


def ingest_step(run_dir: str, task: str, version: str, inputs: str) -> dict:
    """Publishes grasps/<task>:<version> from the raw files matching DIR/<inputs>."""
    from neverstop.pipelines import ingest

    config = ingest.IngestConfig(
        input=os.path.join(run_dir, inputs),
        dataset=DATASET,
        config=task,
        data_dir=data_dir(run_dir),
        version=version,
        workers=1,
    )
    summary = ingest.ingest(config, running_mode="in_memory")
    stats = summary.statistics
    return {
        "dataset": summary.dataset,
        "episodes": stats.episodes,
        "steps": stats.steps,
        "success_rate": stats.success_rate,
        "dead_letters": len(summary.dead_letters),
    }


def _resolve_checkpoint(run_dir: str, name: str) -> str:
    """The newest checkpoint prefix of checkpoints/<name>."""
    from neverstop.trainers import checkpoints

    return checkpoints.locate(checkpoint_dir(run_dir, name)).prefix


def _evaluate(run_dir: str, name: str, prefix: str, task: str, episodes: int) -> dict:
    from neverstop.trainers import evaluate

    # In this process (workers=0): a step already is a worker, and a fresh
    # TensorFlow per evaluation would cost more than a small evaluation.
    result = evaluate.evaluate(prefix, task, episodes, workers=0, seed=EVAL_SEED)
    result["checkpoint_name"] = name
    jsonfile.write_atomic(eval_path(run_dir, name, task), result)
    return {k: result[k] for k in ("success_rate", "successes", "episodes")}


def train_step(
    run_dir: str,
    name: str,
    config: dict,
    mixture: str,
    init: Optional[str] = None,
    vision: bool = False,
    eval_tasks: Sequence[str] = (),
    eval_episodes: int = 0,
) -> dict:
    """Trains (or resumes) checkpoints/<name>, then evaluates it on `eval_tasks`."""
    from neverstop.datasets import mixture as mixture_lib
    from neverstop.trainers import run
    from neverstop.trainers.config import TrainConfig

    train_config = TrainConfig.from_dict(config)
    summary = run.train(
        train_config,
        mixture_lib.Mixture.parse(mixture),
        data_dir(run_dir),
        checkpoint_dir(run_dir, name),
        init=_resolve_checkpoint(run_dir, init) if init else None,
        vision_weights=vision_weights(run_dir) if vision else None,
        progress=True,
    )
    prefix = _resolve_checkpoint(run_dir, name)
    evals = {task: _evaluate(run_dir, name, prefix, task, eval_episodes) for task in eval_tasks}
    return {
        "checkpoint": prefix,
        "mode": train_config.mode,
        "mixture": mixture,
        "steps": summary.final_step,
        "last_metrics": summary.last_metrics,
        "eval": evals,
    }


def eval_step(run_dir: str, name: str, task: str, episodes: int) -> dict:
    prefix = _resolve_checkpoint(run_dir, name)
    return {"checkpoint": prefix, "task": task, **_evaluate(run_dir, name, prefix, task, episodes)}


def vision_step(run_dir: str, config: dict, images: int, epochs: int, seed: int) -> dict:
    from neverstop.trainers import vision
    from neverstop.trainers.config import TrainConfig

    meta = vision.pretrain(
        TrainConfig.from_dict(config), vision_weights(run_dir), images, epochs, seed, progress=False
    )
    return {
        "weights": vision_weights(run_dir),
        **{k: meta[k] for k in ("kind", "validation_loss", "baseline_loss")},
    }


def report_step(run_dir: str, scale: dict) -> dict:
    from neverstop.workflows import report

    return report.write_report(run_dir, scale)


# --- The graph ----------------------------------------------------------------------------


def build_steps(scale: Scale) -> List[dag.Step]:
    """The experiment's steps, in a sensible start order."""
    steps: List[dag.Step] = []

    def add(step_name, fn, /, deps=(), **params):
        steps.append(dag.Step(step_name, fn, params, tuple(deps)))

    def train_params(mode: str, train_steps: int, **changes) -> dict:
        return scale.train_config(mode=mode, steps=train_steps, **changes).as_dict()

    # Base data, round 0: scripted and random episodes, in parallel shards.
    collections = []
    for policy, total, seed in (
        ("scripted", scale.scripted_episodes, 10),
        ("random", scale.random_episodes, 20),
    ):
        for k, n in enumerate(_split(total, scale.collect_shards)):
            name = f"collect-base-r0-{policy}-{k}"
            add(
                name,
                collect_step,
                task="base",
                out=f"raw/base/r0-{policy}-{k}",
                episodes=n,
                seed=seed + k,
                policy=policy,
            )
            collections.append(name)
    previous = None
    for r in range(scale.rounds + 1):
        if r > 0:
            collections = []
            for k, n in enumerate(_split(scale.round_episodes, scale.collect_shards)):
                name = f"collect-base-r{r}-{k}"
                add(
                    name,
                    collect_step,
                    deps=[f"train-{previous}"],
                    task="base",
                    out=f"raw/base/r{r}-qtopt-{k}",
                    episodes=n,
                    seed=100 * r + k,
                    policy="checkpoint",
                    epsilon=scale.round_epsilon,
                    explore=scale.explore,
                    checkpoint=previous,
                )
                collections.append(name)
        add(
            f"ingest-base-r{r}",
            ingest_step,
            deps=collections,
            task="base",
            version=base_version(r),
            # Every base collection up to this round (rounds <= 9).
            inputs=f"raw/base/r[0-{r}]-*/*.nsep",
        )
        name = round_checkpoint(scale, r)
        mixture = f"{DATASET}/base:{base_version(r)}:train:1"
        if r == 0:
            config = train_params("pretrain", scale.pretrain_steps)
            add(
                f"train-{name}",
                train_step,
                deps=[f"ingest-base-r{r}"],
                name=name,
                config=config,
                mixture=mixture,
            )
        else:
            # More pre-training: start from the previous round's network at
            # the pre-training learning rate, on all base data so far.
            config = train_params("finetune", scale.round_steps, finetune_lr_scale=1.0)
            add(
                f"train-{name}",
                train_step,
                deps=[f"ingest-base-r{r}", f"train-{previous}"],
                name=name,
                config=config,
                mixture=mixture,
                init=previous,
            )
        previous = name

    evaluation = dict(eval_episodes=scale.eval_episodes)
    for task in scale.robustness_tasks:
        add(
            f"eval-base-{task}",
            eval_step,
            deps=["train-base"],
            name="base",
            task=task,
            episodes=scale.eval_episodes,
        )
    if scale.baselines:
        add(
            "vision",
            vision_step,
            config=train_params("imagenet", 1),
            images=scale.vision_images,
            epochs=scale.vision_epochs,
            seed=scale.seed,
        )
    largest = scale.target_episodes
    for i, task in enumerate(scale.challenges):
        add(
            f"collect-{task}",
            collect_step,
            deps=["train-base"],
            task=task,
            out=f"raw/{task}/target",
            episodes=largest,
            seed=1000 + schema.TASKS.index(task),
            policy="checkpoint",
            epsilon=scale.target_epsilon,
            explore=scale.explore,
            checkpoint="base",
        )
        add(
            f"ingest-{task}",
            ingest_step,
            deps=[f"collect-{task}"],
            task=task,
            version="1.0.0",
            inputs=f"raw/{task}/target/*.nsep",
        )
    for task in scale.challenges:
        for size in scale.sizes:
            name = f"finetune-{task}-{size}"
            add(
                f"train-{name}",
                train_step,
                deps=["train-base", f"ingest-{task}"],
                name=name,
                config=train_params("finetune", scale.finetune_steps, **scale.finetune_changes),
                mixture=mixture_string(scale, task, size),
                init="base",
                eval_tasks=[task],
                **evaluation,
            )
        if scale.baselines:
            for mode in ("scratch", "imagenet"):
                name = f"{mode}-{task}-{largest}"
                add(
                    f"train-{name}",
                    train_step,
                    deps=[f"ingest-{task}", "ingest-base-r%d" % scale.rounds]
                    + (["vision"] if mode == "imagenet" else []),
                    name=name,
                    config=train_params(mode, scale.baseline_steps),
                    mixture=mixture_string(scale, task, largest),
                    vision=mode == "imagenet",
                    eval_tasks=[task],
                    **evaluation,
                )
    if scale.continual:
        previous = "base"
        for k, task in enumerate(scale.challenges, start=1):
            name = f"continual-{k}-{task}"
            add(
                f"train-{name}",
                train_step,
                deps=[f"train-{previous}", f"ingest-{task}"],
                name=name,
                config=train_params("finetune", scale.continual_steps, **scale.finetune_changes),
                mixture=mixture_string(scale, task, largest),
                init=previous,
                eval_tasks=[task, "base"],
                **evaluation,
            )
            previous = name
    add("report", report_step, deps=[s.name for s in steps], scale=scale.as_dict())
    return steps


# --- Running ------------------------------------------------------------------------------


def saved_scale(run_dir: str) -> Optional[dict]:
    """The scale DIR/experiment.json records, or None if there is no such file."""
    path = os.path.join(run_dir, EXPERIMENT_FILE)
    if not os.path.exists(path):
        return None
    record = jsonfile.read(path)
    saved = record.get("scale") if isinstance(record, dict) else None
    if not isinstance(saved, dict) or "name" not in saved:
        raise ValueError(f"{path}: expected {{'scale': {{'name': ..., ...}}}}, found no scale")
    return saved


class ScaleMismatchError(ValueError):
    """A run dir made with other scale settings: `path` (its experiment.json)
    and `differences` ("key: X there, Y now", the first four)."""

    def __init__(self, message: str, path: str, differences: str):
        super().__init__(message)
        self.path = path
        self.differences = differences


def check_run_dir(run_dir: str, scale: Scale) -> None:
    """Writes DIR/experiment.json, or refuses a run dir made with another scale."""
    path = os.path.join(run_dir, EXPERIMENT_FILE)
    wanted = scale.as_dict()
    saved = saved_scale(run_dir)
    if saved is not None:
        differs = sorted(
            (k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k)),
            key=lambda k: (k != "name", k),  # the scale's name first
        )
        if differs:
            shown = "; ".join(
                f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in differs[:4]
            )
            raise ScaleMismatchError(
                f"{path}: this run dir was made with scale {saved.get('name')!r} and differs "
                f"from scale {scale.name!r} ({shown}); use a new --run-dir, or the same scale "
                "to resume",
                path,
                shown,
            )
        return
    os.makedirs(run_dir, exist_ok=True)
    jsonfile.write_atomic(path, {"experiment": "paper", "scale": wanted})


def report_path(run_dir: str) -> str:
    return os.path.join(run_dir, "report", "README.md")


def run(
    scale: Scale,
    run_dir: str,
    workers: int = 2,
    progress: Optional[Callable[[dict], None]] = None,
) -> str:
    """Runs (or resumes) the experiment; returns the path of report/README.md."""
    steps = build_steps(scale)
    dag.check_graph(steps)
    check_run_dir(run_dir, scale)
    logging.info("experiment %s in %s: %d steps", scale.name, run_dir, len(steps))
    with _exclusive(run_dir):
        dag.run_steps(steps, run_dir, workers=workers, progress=progress)
    return report_path(run_dir)


def rebuild_report(run_dir: str, scale: Optional[Scale] = None) -> str:
    """Rewrites DIR/report/ from the results of the steps finished so far (a
    missing result shows as n/a); runs no step. Returns report/README.md's path.
    With `scale`, refuses a run dir made with another one."""
    saved = saved_scale(run_dir)
    if saved is None:
        raise ValueError(
            f"{os.path.join(run_dir, EXPERIMENT_FILE)} not found: {run_dir} is not an "
            "experiment's run dir (start one with neverstop experiment paper --scale ...)"
        )
    if scale is not None:
        check_run_dir(run_dir, scale)
    from neverstop.workflows import report

    return report.write_report(run_dir, saved)["readme"]


@contextlib.contextmanager
def _exclusive(run_dir: str):
    """One experiment process per run dir (the lock dies with its holder)."""
    import fcntl

    path = os.path.join(run_dir, ".lock")
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{path}: another experiment is running in {run_dir}; wait for it or stop it"
            ) from None
        yield
