"""The `neverstop` command line: a thin layer over the library.

Every subcommand parses its flags, calls one library function (which tests
call directly) and prints. Library code logs; only this module prints.
"""

import argparse
import contextlib
import json
import logging
import os
import sys
from typing import List, Optional

# TensorFlow's C++ start-up notes (CPU features, missing CUDA/TensorRT) are
# not the user's business; set before any command imports TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from neverstop import jsonfile  # noqa: E402
from neverstop import schema  # noqa: E402
from neverstop.version import __version__  # noqa: E402

# Spelled here, not imported, so that --help does not load pybullet; a test
# checks it equals neverstop.envs.policies.POLICY_NAMES.
POLICY_NAMES = (
    "scripted",
    "random",
    "random_grasp",
    "scripted_wide",
    "scripted_reach",
    "scripted_high",
    "scripted_correct",
)
EXPLORER_NAMES = ("random", "moves", "scripted")  # == tuple(neverstop.envs.policies.EXPLORERS)
RENDERERS = ("tiny", "egl", "auto")
ACTING = ("cem", "actor", "actor_cem")  # trainers.config.ACTING, without importing TensorFlow
STRATEGIES = ("default", "mirrored", "multiworker")  # trainers.distribute.STRATEGIES, likewise

EPILOG = """examples:
  neverstop quickstart
  neverstop experiment paper --scale smoke --run-dir runs/paper-smoke
  neverstop render --task checkerboard --seed 3 --out checkerboard.png --scale 4
  neverstop rollout --task base --policy scripted --episodes 200
  neverstop collect --task base --policy scripted --episodes 100 --out raw/base --workers 2
  neverstop train --mode pretrain --mixture base:train:1 --data-dir data/tfds --run-dir runs/base
  neverstop eval --checkpoint runs/base --task base --episodes 200
  neverstop bench env
"""


def _progress_bar(total: int, desc: str, stream=None):
    from tqdm import tqdm

    stream = stream or sys.stderr
    return tqdm(
        total=total,
        desc=desc,
        unit="ep",
        file=stream,
        disable=not stream.isatty() and total < 50,
    )


@contextlib.contextmanager
def _success_bar(total: int, desc: str, stream=None):
    """A progress bar over episodes showing the running success rate; yields
    `tick(success, n=1)`, to call as episodes finish."""
    counts = {"episodes": 0, "successes": 0}
    with _progress_bar(total, desc, stream) as bar:

        def tick(success: bool, n: int = 1):
            # Count here: a disabled tqdm (no terminal) does not advance bar.n.
            counts["episodes"] += n
            counts["successes"] += int(success)
            bar.update(n)
            bar.set_postfix(success=f"{counts['successes'] / counts['episodes']:.0%}")

        yield tick


@contextlib.contextmanager
def _worker_output_to(log_path: Optional[str]):
    """Sends file descriptor 2, which local Beam worker processes inherit and
    fill with their start-up logs, to `log_path` while a pipeline runs;
    yields a stream on the real terminal for the progress bar. With no path
    (`--verbose`) nothing is redirected."""
    if log_path is None:
        yield sys.stderr
        return
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stderr.flush()
            os.dup2(terminal.fileno(), 2)
            terminal.close()


def _cmd_render(args) -> int:
    from neverstop.envs import grasp_env, render

    config = grasp_env.EnvConfig(renderer=args.renderer, object_split=args.split)
    info = render.render_task(
        args.task, args.seed, args.out, scale=args.scale, steps=args.steps, config=config
    )
    print(
        f"wrote {info['path']} ({info['task']}, seed {info['seed']}, "
        f"{info['shape'][1]}x{info['shape'][0]}, renderer {info['renderer']})"
    )
    return 0


def _cmd_rollout(args) -> int:
    from neverstop.envs import grasp_env, rollout

    config = grasp_env.EnvConfig(renderer=args.renderer)
    if args.json:
        jsonfile.check_writable(args.json)  # before the episodes, not after
    with _success_bar(args.episodes, f"{args.policy} on {args.task}") as tick:
        result = rollout.rollout(
            args.task,
            args.policy,
            args.episodes,
            seed=args.seed,
            object_split=args.split,
            config=config,
            progress=tick,
        )
    low, high = result.interval
    print(
        f"{result.policy} on {result.task} ({result.object_split} objects, "
        f"renderer {result.renderer}): {result.successes}/{result.episodes} = "
        f"{result.success_rate:.1%}, 95% interval [{low:.1%}, {high:.1%}], "
        f"{result.episodes_per_s:.2f} episodes/s, "
        f"{result.steps / result.episodes:.1f} steps/episode"
    )
    if args.json:
        jsonfile.write_atomic(args.json, result.as_dict())
        print(f"wrote {args.json}")
    return 0


# Episodes per side when --episodes is not given: each stage's own scale.
BENCH_EPISODES = {"env": 30, "collect": 600, "ingest": 20000, "mix": 2000, "train": 40}


def _cmd_bench(args) -> int:
    episodes = BENCH_EPISODES[args.stage] if args.episodes is None else args.episodes
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if args.stage == "env":
        from neverstop.benchmarks import env_bench

        with _progress_bar(2 * episodes, "bench env") as bar:
            result = env_bench.run(
                episodes,
                seed=args.seed,
                renderer=args.renderer,
                progress=lambda: bar.update(1),
            )
        for side in ("ours", "peer"):
            r = result[side]
            print(
                f"{r['name']}: {r['episodes']} grasp episodes in {r['seconds']:.2f} s = "
                f"{r['grasps_per_s']:.2f} grasps/s (success {r['success_rate']:.0%})"
            )
        print(f"RESULT env_grasps_per_s_ratio {result['ratio']:.2f}")
        return 0
    if args.stage == "collect":
        from neverstop.benchmarks import collect_bench

        result = collect_bench.run(episodes=episodes, seed=args.seed)
        for r in result["runs"]:
            print(
                f"--workers {r['workers']}: {r['episodes']} episodes in {r['seconds']:.1f} s = "
                f"{r['episodes_per_s']:.2f} episodes/s (steady state {r['steady_per_s']:.2f}/s, "
                f"first episode after {r['startup_s']:.1f} s)"
            )
        print(f"identical files across worker counts: {result['identical']}")
        print(f"RESULT collect_scaling {result['ratio']:.2f}")
        return 0
    if args.stage == "ingest":
        from neverstop.benchmarks import ingest_bench

        result = ingest_bench.run(
            episodes=episodes,
            progress=lambda msg: print(f"  running {msg}", flush=True),
        )
        for n, sides in sorted(result["results"].items()):
            for side, label in (
                ("ours", f"neverstop ingest (Beam, {result['workers']} workers)"),
                ("peer", "plain TFDS GeneratorBasedBuilder"),
            ):
                r = sides[side]
                print(
                    f"{n} episodes, {label}: {r['seconds']:.1f} s = {r['episodes_per_s']:.0f} "
                    f"episodes/s, peak RSS {r['peak_rss_mb']:.0f} MB"
                )
        small, large = result["rss_sizes"]
        print(f"peak RSS of ours, {large} over {small} episodes: {result['rss_growth']:.2f}")
        print(f"speed ratio taken at {result['episodes']} episodes")
        print(f"RESULT ingest_speed_ratio {result['ratio']:.2f}")
        return 0
    if args.stage == "mix":
        from neverstop.benchmarks import mix_bench

        target = max(25, episodes // 10)
        print(f"  building datasets: {episodes} base and {target} target episodes", flush=True)
        result = mix_bench.run_generated(episodes, target)
        print(f"mixture: {', '.join(f'{n} ({e} episodes)' for n, e in result['sources'])}, 50/50")
        print(
            f"our start-up: table of both sources parsed in {result['table_seconds']:.2f} s, "
            f"its images decoded once in {result['decode_seconds']:.2f} s "
            f"({result['decoded_mb']:.0f} MiB)"
        )
        for side, label in (
            ("ours", "neverstop stream, no augmentation"),
            ("ours_augmented", "neverstop stream, augmented (shift + jitter)"),
            ("ours_decode_sampled", "neverstop stream, decoding sampled images only (no cache)"),
            ("peer", "naive: tfds.load, decode whole episodes, sample_from_datasets"),
        ):
            r = result[side]
            print(
                f"{label}: {r['transitions_per_s']:.0f} transitions/s "
                f"({result['batches']} batches of {result['batch_size']} in {r['seconds']:.2f} s)"
            )
        from neverstop.benchmarks import train_bench
        from neverstop.trainers.config import TrainConfig

        config = TrainConfig()
        steps_per_s = train_bench.trainer_steps_per_s(config)
        need = steps_per_s * config.batch_size
        print(
            f"trainer consumption (default config, late merge, batch {config.batch_size}): "
            f"{steps_per_s:.1f} steps/s = {need:.0f} transitions/s; our augmented stream "
            f"delivers {result['ours_augmented']['transitions_per_s'] / need:.1f}x that"
        )
        print(f"RESULT mix_speed_ratio {result['ratio']:.2f}")
        return 0
    if args.stage == "train":
        from neverstop.benchmarks import train_bench

        result = train_bench.run(steps=episodes)
        print(f"RESULT train_flops_fraction {result['late']:.2f}")
        return 0
    raise ValueError(f"unknown bench stage {args.stage!r}")


def _train_config(args):
    from neverstop.trainers.config import TrainConfig

    config = TrainConfig.load(args.config) if args.config else TrainConfig()
    if args.merge:
        config = config.with_merge(args.merge)
    changes = {"mode": args.mode}
    for flag, field in (
        ("steps", "steps"),
        ("batch_size", "batch_size"),
        ("learning_rate", "learning_rate"),
        ("seed", "seed"),
        ("checkpoint_every", "checkpoint_every"),
    ):
        value = getattr(args, flag)
        if value is not None:
            changes[field] = value
    if args.no_augment:
        changes["augment"] = False
    if args.actor:
        changes.update(actor=True, acting="actor")
    return config.replace(**changes)


def _cmd_train(args) -> int:
    from neverstop.datasets import mixture as mixture_lib
    from neverstop.trainers import distribute, run

    # First: splitting the CPU must come before TensorFlow touches a device.
    strategy = distribute.make_strategy(args.strategy, args.cpu_devices)
    config = _train_config(args)
    mixture = mixture_lib.Mixture.load(args.mixture)
    summary = run.train(
        config,
        mixture,
        args.data_dir,
        args.run_dir,
        init=args.init,
        vision_weights=args.vision_weights,
        deterministic=args.deterministic,
        strategy=strategy,
    )
    m = summary.last_metrics
    print(
        f"{args.run_dir}: steps {summary.start_step} -> {summary.final_step} in "
        f"{summary.seconds:.0f} s ({summary.steps_per_s:.1f} steps/s)"
        + (
            f"; loss {m['loss']:.4f}, mean Q {m['mean_q']:.3f}, target Q {m['target_q']:.3f}"
            + (f", actor loss {m['actor_loss']:.4f}" if "actor_loss" in m else "")
            if m
            else ""
        )
    )
    return 0


def _cmd_eval(args) -> int:
    from neverstop.trainers import evaluate

    if args.out:
        jsonfile.check_writable(args.out)  # before the episodes, not after
    with _success_bar(args.episodes, f"eval {args.task}") as tick:
        result = evaluate.evaluate(
            args.checkpoint,
            args.task,
            args.episodes,
            workers=args.workers,
            seed=args.seed,
            object_split=args.split,
            renderer=args.renderer,
            progress=tick,
            acting=args.acting,
        )
    low, high = result["interval_95"]
    print(
        f"{result['policy']} ({result['acting']}) on {args.task} ({args.split} objects): {result['successes']}/"
        f"{result['episodes']} = {result['success_rate']:.1%}, 95% interval "
        f"[{low:.1%}, {high:.1%}], {result['seconds']:.0f} s"
    )
    if args.out:
        evaluate.write_result(result, args.out)
        print(f"wrote {args.out}")
    else:
        print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _cmd_compare(args) -> int:
    from neverstop.workflows import report

    a, b = report.read_eval(args.a), report.read_eval(args.b)
    for label, path, r in (("A", args.a, a), ("B", args.b, b)):
        low, high = r["interval_95"]
        print(
            f"{label}: {r.get('policy', '?')} on {r.get('task', '?')}: {r['successes']}/"
            f"{r['episodes']} = {r['success_rate']:.1%} [{low:.1%}, {high:.1%}]  ({path})"
        )
    diff = report.difference(a, b)
    how = (
        f"paired over the same {a['episodes']} episodes (seed {a['seed']})"
        if diff.paired
        else f"as independent samples: {diff.unpaired}"
    )
    print(
        f"A - B: {diff.points:+.1f} points, 95% interval [{diff.low:+.1f}, {diff.high:+.1f}], "
        f"{how}"
    )
    return 0


def _cmd_export(args) -> int:
    from neverstop.trainers import export

    info = export.export(args.checkpoint, args.out, seed=args.seed, acting=args.acting)
    print(f"wrote a SavedModel policy of {info['checkpoint']} to {args.out}")
    print("serving_default: (image, gripper_closed, height_to_bottom) -> action")
    return 0


def _cmd_pretrain_vision(args) -> int:
    from neverstop.trainers import vision
    from neverstop.trainers.config import TrainConfig

    config = TrainConfig.load(args.config) if args.config else TrainConfig()
    if args.merge:
        config = config.with_merge(args.merge)
    meta = vision.pretrain(config, args.out, images=args.images, epochs=args.epochs, seed=args.seed)
    print(
        f"wrote {args.out}: {meta['description']}; validation loss "
        f"{meta['validation_loss']:.4f} (predicting the prior: {meta['baseline_loss']:.4f})"
    )
    return 0


def _beam_args(args) -> List[str]:
    """--runner plus every flag the parser did not know: Beam's pipeline
    options, checked before any work starts (a typo is an error, not a
    default)."""
    from neverstop import beam_pipeline

    flags = (["--runner", args.runner] if args.runner else []) + list(args.beam_args)
    beam_pipeline.check_known(flags)
    return flags


def _cmd_collect(args) -> int:
    from neverstop.envs import collect

    beam_args = _beam_args(args)  # first: a mistyped flag must not create --out
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0 (0: in this process), got {args.workers}")
    factory = collect.named_policy
    policy = args.policy or "scripted"
    # --workers 0: Beam's in-memory runner in this process, as the workflows
    # collect (their step's process and TensorFlow threads).
    in_process = args.workers == 0
    if args.checkpoint:
        if args.policy:
            raise ValueError("give --policy or --checkpoint, not both")
        from neverstop.trainers import policy as policy_lib

        # One TensorFlow thread per worker: the same files whatever --workers.
        factory = policy_lib.CheckpointPolicyFactory(
            args.checkpoint, args.epsilon, args.explore, threads=None if in_process else 1
        )
        policy = factory.label
    config = collect.CollectConfig(
        task=args.task,
        policy=policy,
        episodes=args.episodes,
        seed=args.seed,
        out=args.out,
        workers=1 if in_process else args.workers,
        epsilon=args.epsilon,
        explore=args.explore,
        object_split=args.split,
        renderer=args.renderer,
        image_encoding=args.image_encoding,
        format=args.format,
    )
    # Fail fast, before the bar and the workers.
    collect.validate_config(config, named_policy=factory is collect.named_policy)
    log_path = None if args.verbose else os.path.join(args.out, "_logs", "collect.log")
    with _worker_output_to(log_path) as terminal:
        desc = f"collect {args.task}/{policy}"
        with _success_bar(args.episodes, desc, terminal) as tick:
            summary = collect.collect(
                config,
                beam_args,
                running_mode="in_memory" if in_process else "multi_processing",
                policy_factory=factory,
                progress=lambda n, success: tick(success, n),
            )
    print(
        f"{summary.out}: {summary.written} episodes written, {summary.already_present} already "
        f"there, {summary.successes} successes among the new ones; "
        f"{summary.seconds:.1f} s ({summary.episodes_per_s:.2f} episodes/s)"
    )
    for failure in summary.failed:
        print(
            f"  FAILED episode {failure['index']} (seed {failure['seed']}): {failure['error']}",
            file=sys.stderr,
        )
    if summary.failed:
        print(
            f"{len(summary.failed)} episodes failed (details in "
            f"{summary.out}/{collect.FAILURES_DIR}/); re-run the same command to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_export_bag(args) -> int:
    from neverstop import rawlog
    from neverstop.envs import rosbag_export

    files = rawlog.list_episode_files(args.input)
    if not files:
        raise ValueError(f"no {rawlog.EXTENSION} episode files in {args.input!r}")
    skipped = []
    written = rosbag_export.export_directory(
        args.input, args.out, storage=args.storage, skipped=skipped
    )
    print(f"wrote {len(written)} bags ({args.storage}) to {args.out}")
    if skipped:
        print(f"skipped {len(skipped)} files that are not valid episodes:", file=sys.stderr)
        for _, reason in skipped:
            print(f"  {reason}", file=sys.stderr)  # each reason starts with its file
        return 1
    return 0


def _cmd_ingest(args) -> int:
    from neverstop.pipelines import ingest

    config = ingest.IngestConfig(
        input=args.input,
        dataset=args.dataset,
        config=args.config,
        data_dir=args.data_dir,
        version=args.version,
        source=args.source,
        workers=args.workers,
        episodes_per_shard=args.episodes_per_shard,
        topic_map=args.topic_map,
    )
    config.dataset_id  # validates name/config/version before any work
    beam_args = _beam_args(args)
    log_path = None if args.verbose else os.path.join(args.data_dir, "_logs", "ingest.log")
    print(f"ingesting {args.input} into {config.dataset_id} ...", flush=True)
    with _worker_output_to(log_path):
        summary = ingest.ingest(config, beam_args)
    stats = summary.statistics
    print(
        f"published {summary.dataset} at {summary.path}: {stats.episodes} episodes, "
        f"{stats.steps} steps, success {stats.success_rate:.1%}, {summary.num_shards} shards, "
        f"{summary.seconds:.1f} s"
    )
    if summary.replaced:
        print(
            f"this replaced the {summary.dataset} published there before (to keep both, "
            "give --version another number)"
        )
    if summary.dead_letters:
        reasons = ", ".join(f"{kind}: {n}" for kind, n in sorted(summary.reasons.items()))
        print(
            f"{len(summary.dead_letters)} dead letters ({reasons}); see "
            f"{summary.path}/dead_letter.jsonl"
        )
    return 0


def _stream_config(args):
    from neverstop.datasets import stream

    return stream.StreamConfig(
        batch_size=args.batch_size, seed=args.seed, augment=not args.no_augment
    )


def _cmd_mix(args) -> int:
    from neverstop.datasets import mixture as mixture_lib
    from neverstop.datasets import stream

    mixture = mixture_lib.Mixture.load(args.mixture)
    if not args.png.lower().endswith(".png"):
        raise ValueError(f"--png {args.png!r}: the image grid is written as a .png file")
    jsonfile.check_writable(args.png)
    report = stream.inspect(mixture, args.data_dir, args.png, _stream_config(args))
    print(f"mixture: {mixture}")
    for s in report["sources"]:
        print(
            f"  {s['name']}: {s['episodes']} episodes, {s['transitions']} transitions, "
            f"weight {s['weight']:g} -> share {s['share']:.1%} "
            f"(sampled {s['sampled_share']:.1%} of {report['sampled']})  [{s['path']}]"
        )
    print("a batch:")
    flat = []

    def walk(prefix, value):
        if isinstance(value, dict):
            for key in value:
                walk(f"{prefix}/{key}" if prefix else key, value[key])
        else:
            flat.append((prefix, value))

    walk("", report["batch_shapes"])
    for key, (shape, dtype) in flat:
        print(f"  {key}: {dtype}{list(shape)}")
    if report["png"]:
        print(f"wrote {report['png']} (a row of sampled images per source, as trained on)")
    return 0


def _cmd_datasets(args) -> int:
    from neverstop.datasets import catalog

    broken = []
    cards = (
        [catalog.show(args.data_dir, args.name)]
        if args.action == "show"
        else catalog.list_datasets(args.data_dir, broken)
    )
    if not cards and not broken:
        print(f"no datasets in {args.data_dir}")
    for card in cards:
        stats = card["statistics"]
        splits = ", ".join(
            f"{name}: {s['episodes']} episodes in {s['shards']} shards "
            f"({s['bytes'] / 1e6:.1f} MB)"
            for name, s in card["splits"].items()
        )
        numbers = (
            f"success {stats.get('success_rate', 0):.1%}  steps {stats.get('steps', 0)}"
            if stats
            else "no statistics (metadata.json missing)"
        )
        print(f"{card['id']}  [{splits}]  {numbers}  dead letters {card['dead_letters']}")
        if args.action == "show":
            print(f"  path: {card['path']}")
            print(
                f"  source: {card['source']}; policies: {stats.get('policies', {})}; "
                f"tasks: {stats.get('tasks', {})}"
            )
            print(f"  release notes: {card['release_notes']}")
            print("  " + card["description"].strip().replace("\n", "\n  "))
    for dataset_id, reason in broken:
        print(f"{dataset_id}: cannot read its card: {reason}", file=sys.stderr)
    return 1 if broken else 0


class _StepPrinter:
    """Prints one line per workflow step start and finish, with the time since
    the command started; finished steps of an earlier run are summed up in
    one line."""

    def __init__(self, stream=None):
        import time

        self._time = time.perf_counter
        self.start = self._time()
        self.stream = stream or sys.stdout
        self.skipped = 0
        self.reported_skips = False

    def __call__(self, event: dict) -> None:
        kind, step = event["event"], event["step"]
        if kind == "skip":
            self.skipped += 1
            return
        if self.skipped and not self.reported_skips:
            print(f"  resuming: {self.skipped} steps already done, skipped", file=self.stream)
        self.reported_skips = True
        elapsed = self._time() - self.start
        stamp = f"[{int(elapsed) // 60:3d}:{int(elapsed) % 60:02d}]"
        if kind == "start":
            line = f"{stamp} start  {step}"
        elif kind == "done":
            line = f"{stamp} done   {step} ({event['seconds']:.1f} s)"
        else:
            line = f"{stamp} FAILED {step} ({event.get('reason', '')})"
        print(line, file=self.stream, flush=True)

    def finish(self) -> None:
        if self.skipped and not self.reported_skips:
            print(f"  all {self.skipped} steps were already done", file=self.stream)


def _run_workflow(run, run_dir: str, what: str) -> int:
    from neverstop.workflows import dag

    printer = _StepPrinter()
    print(f"{what} in {run_dir} (step logs in {os.path.join(run_dir, dag.LOG_DIR)}/)", flush=True)
    try:
        report = run(printer)
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130
    printer.finish()
    elapsed = printer._time() - printer.start
    print(f"done in {int(elapsed) // 60} min {int(elapsed) % 60} s; report: {report}")
    return 0


def _cmd_quickstart(args) -> int:
    from neverstop.workflows import quickstart

    config = quickstart.QuickstartConfig(data_dir=args.data_dir, workers=args.workers)
    return _run_workflow(
        lambda progress: quickstart.run(config, progress=progress),
        quickstart.run_dir(config),
        "quickstart: the paper's chain, tiny",
    )


def _cmd_experiment(args) -> int:
    from neverstop.workflows import paper

    scale = paper.get_scale(args.scale) if args.scale else None
    if args.report_only:
        print(f"report: {paper.rebuild_report(args.run_dir, scale)}")
        return 0
    if scale is None:
        raise ValueError("--scale is required (smoke, small or full) unless --report-only")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    return _run_workflow(
        lambda progress: paper.run(scale, args.run_dir, workers=args.workers, progress=progress),
        args.run_dir,
        f"experiment paper, scale {scale.name}: {len(paper.build_steps(scale))} steps, "
        f"{args.workers} at a time,",
    )


def _cmd_tasks(args) -> int:
    from neverstop.envs import tasks

    for name, task in tasks.TASK_CONFIGS.items():
        changes = {
            f.name: getattr(task, f.name)
            for f in task.__dataclass_fields__.values()
            if f.name != "name"
            and getattr(task, f.name) != getattr(tasks.TASK_CONFIGS["base"], f.name)
        }
        described = ", ".join(f"{k}={v}" for k, v in changes.items()) or "the reference world"
        print(f"{name:20s} robot {task.robot:28s} {described}")
    return 0


def _seed(text: str) -> int:
    """argparse type of every --seed: episode seeds are derived from it as uint32s."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed is a non-negative integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neverstop",
        description="Offline RL for vision-based grasping: simulate, ingest, mix, "
        "train and reproduce 'Never Stop Learning' (Julian et al., 2020).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"neverstop {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def acting_flag(p):
        p.add_argument(
            "--acting",
            choices=ACTING,
            help="how the policy acts: cem (argmax of Q), actor (the actor's action) or "
            "actor_cem (CEM over Q started at the actor's action); the last two need a run "
            "trained with actor: true; default: the run's config.acting",
        )

    def env_flags(p, split_default="eval"):
        p.add_argument(
            "--task", default="base", choices=schema.TASKS, help="which world (default: base)"
        )
        p.add_argument(
            "--split",
            default=split_default,
            choices=("train", "eval"),
            help="object set: 900 training shapes or the 100 held-out ones "
            f"(default: {split_default})",
        )
        p.add_argument(
            "--renderer",
            default="tiny",
            choices=RENDERERS,
            help="tiny (default, deterministic, all tasks), egl (true "
            "transparency; no checkerboard texture), auto (egl if it loads)",
        )

    p = sub.add_parser(
        "quickstart",
        help="the paper's chain, tiny: collect, pre-train, fine-tune, evaluate "
        "(2-6 min on 2 quiet cores)",
        description="A tiny instance of `neverstop experiment paper`: 300 base episodes "
        "(scripted and random, Beam collector), ingested as an RLDS dataset; a short QT-Opt "
        "pre-training; 100 checkerboard grasps collected by the base policy with exploration "
        "noise; one fine-tune on 50/50 base/checkerboard data; the base and fine-tuned "
        "policies evaluated on checkerboard (held-out objects); a table and a plot in "
        "DATA_DIR/quickstart/report/. Re-running resumes; a finished run returns at once.",
    )
    p.add_argument(
        "--data-dir", default="neverstop_data", help="where to write (default: %(default)s)"
    )
    p.add_argument(
        "--workers", type=int, default=2, help="steps run in parallel (default: %(default)s)"
    )
    p.set_defaults(fn=_cmd_quickstart)

    p = sub.add_parser(
        "experiment",
        help="run the study's protocol end to end (resumable): tables and plots",
        description="paper: the protocol of 'Never Stop Learning' in simulation, as named "
        "steps under --run-dir: base data (scripted + random, then rounds of epsilon-greedy "
        "collection with the current policy, each round a new dataset version) and "
        "pre-training; the base policy on all six tasks (robustness); per challenge task, "
        "target data from the base policy with exploration noise and fine-tuning on 50/50 "
        "base/target data at each target size, plus scratch and imagenet baselines at the "
        "largest; a continual chain of fine-tunes through the five challenges; a report "
        "(Markdown + CSV tables, PNG plots) in RUN_DIR/report/. Independent steps run in "
        "parallel (--workers). Each finished step leaves RUN_DIR/.done/STEP.json: running "
        "the same command again skips those and finishes the rest, however the last run "
        "ended. Scales: smoke (every step on a handful of episodes, minutes; numbers are "
        "noise), small (66-97 minutes on 2 AVX-512 cores, about 2.5-4 hours projected on 2 AVX2 cores), full (the study's sizes; many hours, see "
        "docs/experiments.md).",
        epilog="example: neverstop experiment paper --scale small --run-dir runs/paper-small; "
        "while it runs (or after it stopped), the tables so far: neverstop experiment paper "
        "--run-dir runs/paper-small --report-only",
    )
    p.add_argument("experiment", choices=("paper",), help="which experiment")
    p.add_argument(
        "--scale",
        choices=("smoke", "small", "full"),
        help="how big a run (required unless --report-only, which reads it from the run dir)",
    )
    p.add_argument(
        "--run-dir", required=True, help="where everything goes; the same dir resumes a run"
    )
    p.add_argument(
        "--workers", type=int, default=2, help="steps run in parallel (default: %(default)s)"
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run no step: rewrite RUN_DIR/report/ from the steps finished so far (missing "
        "results show as n/a), e.g. to look at a run still going, or one stopped early",
    )
    p.set_defaults(fn=_cmd_experiment)

    p = sub.add_parser(
        "render",
        help="write what the camera sees as a PNG",
        description="Resets TASK with SEED and writes the 64x64 camera image.",
    )
    env_flags(p)
    p.add_argument("--seed", type=_seed, default=0, help="episode seed (default: 0)")
    p.add_argument("--out", required=True, help="output PNG path")
    p.add_argument("--scale", type=int, default=1, help="enlarge pixels N times for viewing")
    p.add_argument(
        "--steps",
        type=int,
        default=0,
        help="lower the gripper this many steps first, to bring it into view",
    )
    p.set_defaults(fn=_cmd_render)

    p = sub.add_parser(
        "rollout",
        help="run a policy for N seeded episodes; print success",
        description="Success rate with a Wilson 95% interval over seeds "
        "SEED..SEED+N-1, on held-out objects by default.",
    )
    env_flags(p)
    p.add_argument(
        "--policy",
        default="scripted",
        choices=POLICY_NAMES,
        help="which named policy acts (default: %(default)s; docs/envs.md describes each)",
    )
    p.add_argument(
        "--episodes", type=int, default=200, help="how many episodes (default: %(default)s)"
    )
    p.add_argument("--seed", type=_seed, default=0, help="first episode seed (default: 0)")
    p.add_argument("--json", help="also write the result as JSON here")
    p.set_defaults(fn=_cmd_rollout)

    p = sub.add_parser(
        "collect",
        help="collect raw grasp episodes with a Beam job (resumable)",
        description="Runs POLICY on TASK for N episodes as an Apache Beam job (one element = "
        "a shard of seeds) and writes one raw episode file (or ROS 2 bag) per episode into "
        "--out. Episode i gets a seed derived from (--seed, i), so the same command writes "
        "the same files whatever --workers is; re-running into the same directory only "
        "collects what is missing. Locally it runs on Beam's FnApiRunner with --workers "
        "processes; --runner and any further Beam pipeline options (e.g. --project, "
        "--region, --temp_location for Dataflow) pass through unchanged.",
        epilog="examples: neverstop collect --task base --policy scripted --episodes 1000 "
        "--seed 0 --out data/raw/base --workers 2; target grasps by a trained policy with "
        "exploration noise, as the study collected them: neverstop collect --task "
        "checkerboard --checkpoint runs/base --epsilon 0.2 --explore moves --episodes 800 "
        "--seed 7000 --out data/raw/checkerboard",
    )
    env_flags(p, split_default="train")
    p.add_argument(
        "--policy",
        choices=POLICY_NAMES,
        help="a scripted or random policy by name (default: scripted)",
    )
    p.add_argument(
        "--checkpoint",
        help="instead of --policy: a trained run dir (its newest checkpoint) or checkpoint "
        "prefix, acting as its run acts (its config's `acting`); episodes record it as "
        "qtopt:<run>.ckpt-<step>. Each worker loads it once and runs TensorFlow on one "
        "thread, so the files are the same whatever --workers",
    )
    p.add_argument("--episodes", type=int, required=True, help="how many episodes in total")
    p.add_argument("--seed", type=_seed, default=0, help="base seed (default: 0)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="local worker processes (default: 2); 0 collects in this process, as the "
        "workflows do (with --checkpoint: their TensorFlow threads, so their files)",
    )
    p.add_argument(
        "--epsilon",
        type=float,
        default=0.0,
        help="take an exploration action with this probability (epsilon-greedy; default 0)",
    )
    p.add_argument(
        "--explore",
        default="random",
        choices=EXPLORER_NAMES,
        help="the exploration action with --epsilon: random (uniform, closes a quarter of the "
        "time; default), moves (uniform moves that never close, so the policy alone "
        "decides when to grasp) or scripted (the scripted grasper's step toward the object "
        "nearest the tool; reads the simulator's state, so simulated collection only)",
    )
    p.add_argument(
        "--format",
        default="nsep",
        choices=("nsep", "rosbag"),
        help="nsep: neverstop episode files (default); rosbag: one ROS 2 bag each",
    )
    p.add_argument(
        "--image-encoding",
        default="png",
        choices=schema.IMAGE_ENCODINGS,
        help="how camera frames are stored in the raw files: png (lossless; default) or "
        "jpeg (smaller, lossy)",
    )
    p.add_argument("--runner", help="Beam runner (default: local FnApiRunner)")
    p.set_defaults(fn=_cmd_collect, beam_args=[])

    p = sub.add_parser(
        "ingest",
        help="raw episode files -> a validated, published RLDS TFDS dataset",
        description="Matches --input, validates every episode, converts the good ones to RLDS "
        "and publishes name/config:version under --data-dir (atomically: a failed run leaves "
        "the published version untouched). Bad files and episodes go to dead_letter.jsonl with "
        "a reason. Runs on Beam's local FnApiRunner with --workers processes; --runner and any "
        "further Beam options pass through. --source rosbag reads ROS 2 bags through a YAML "
        "topic map (docs/pipelines.md).",
        epilog="example: neverstop ingest --input 'data/raw/base/*.nsep' --dataset grasps "
        "--config base --data-dir data/tfds",
    )
    p.add_argument(
        "--source",
        default="sim",
        choices=("sim", "rosbag"),
        help="sim: .nsep episode files; rosbag: ROS 2 bag directories",
    )
    p.add_argument(
        "--topic-map",
        help="rosbag source: YAML topic map (default: the map of "
        "neverstop's own exported bags, pipelines/topic_maps/neverstop_sim.yaml)",
    )
    p.add_argument("--input", required=True, help="glob of raw episode files (quote it)")
    p.add_argument("--dataset", required=True, help="dataset name, e.g. grasps")
    p.add_argument("--config", required=True, help="config (the task), e.g. base")
    p.add_argument("--data-dir", required=True, help="TFDS data dir to publish into")
    p.add_argument("--version", default="1.0.0", help="X.Y.Z (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="local worker processes (default: 2)")
    p.add_argument(
        "--episodes-per-shard",
        type=int,
        default=500,
        help="episodes per TFRecord shard of the published dataset (default: %(default)s)",
    )
    p.add_argument("--runner", help="Beam runner (default: local FnApiRunner)")
    p.set_defaults(fn=_cmd_ingest, beam_args=[])

    p = sub.add_parser(
        "datasets",
        help="list the datasets in a data dir, or show one's card",
        description="list: every published name/config:version with sizes and success rates; "
        "show NAME/CONFIG[:VERSION]: the card (statistics, policies, release notes).",
    )
    p.add_argument("action", choices=("list", "show"))
    p.add_argument("name", nargs="?", help="for show: name/config or name/config:version")
    p.add_argument("--data-dir", required=True, help="the TFDS data dir to read")
    p.set_defaults(fn=_cmd_datasets)

    p = sub.add_parser(
        "mix",
        help="inspect a mixture: sources, sizes, weights, a batch, sampled images",
        description="inspect MIXTURE: checks the mixture against --data-dir (datasets exist, "
        "slices fit, specs match), prints each source's episodes and transitions, its weight "
        "and sampled share, a batch's shapes, and writes a PNG grid of sampled images per "
        "source. MIXTURE is a YAML file or 'dataset:split:weight,...', e.g. "
        "'base:train:0.5,checkerboard:train[:800]:0.5' (a bare name is grasps/<name> at its "
        "newest version).",
    )
    p.add_argument("action", choices=("inspect",))
    p.add_argument("mixture", help="YAML file or dataset:split:weight[,...]")
    p.add_argument("--data-dir", required=True, help="the TFDS data dir holding the datasets")
    p.add_argument(
        "--png", default="mix_inspect.png", help="where to write the image grid (default: %(default)s)"
    )
    p.add_argument(
        "--batch-size", type=int, default=64, help="the batch to draw (default: %(default)s)"
    )
    p.add_argument(
        "--seed", type=_seed, default=0, help="the stream's sampling seed (default: %(default)s)"
    )
    p.add_argument("--no-augment", action="store_true", help="show images without augmentation")
    p.set_defaults(fn=_cmd_mix)

    p = sub.add_parser(
        "export-bag",
        help="write existing raw episode files as ROS 2 bags",
        description="Converts every .nsep file in --input into a ROS 2 bag under --out "
        "(topics in docs/raw-logs.md).",
    )
    p.add_argument("--input", required=True, help="directory of .nsep episode files")
    p.add_argument("--out", required=True, help="directory for the bags")
    p.add_argument(
        "--storage",
        default="mcap",
        choices=("mcap", "sqlite3"),
        help="the bags' storage plugin (default: %(default)s)",
    )
    p.set_defaults(fn=_cmd_export_bag)

    p = sub.add_parser(
        "bench",
        help="measure a stage against its peer (last line: RESULT)",
        description="env: grasp episodes/s of GraspEnv vs pybullet's KukaDiverseObjectEnv, "
        "random policy, 64x64, held-out objects (default 30 episodes each). "
        "collect: episodes/s of `collect --workers 2` over `--workers 1`, scripted policy "
        "on base, same seeds (default 600 episodes each: Beam start-up, about 2-4 s, is fixed). "
        "ingest: our pipeline vs a plain TFDS GeneratorBasedBuilder on the same raw files, "
        "episodes/s and peak RSS at 1000, 4000 and --episodes (default 20000; the ratio is "
        "taken there: both sides pay a fixed start-up of a few seconds). "
        "mix: transitions/s of our stream (no augmentation, like the peer; augmented printed "
        "beside) vs tfds.load + whole-episode decoding + sample_from_datasets, 50/50 of "
        "--episodes base (default 2000) and a tenth as many target episodes. "
        "train: this machine's float32 matmul FLOP/s and the trainer's achieved FLOP/s "
        "(counted from the network's layers: forward, backward, CEM) at batch 64, for the "
        "late and qtopt merges; the RESULT is the late merge's fraction of peak.",
    )
    p.add_argument("stage", choices=("env", "collect", "ingest", "mix", "train"))
    p.add_argument(
        "--episodes", type=int, help="episodes per side (train: timed steps per merge, default 40)"
    )
    p.add_argument(
        "--seed", type=_seed, default=0, help="env, collect: the episodes' base seed (default: %(default)s)"
    )
    p.add_argument(
        "--renderer",
        default="tiny",
        choices=RENDERERS,
        help="env: our env's renderer (default: %(default)s)",
    )
    p.set_defaults(fn=_cmd_bench)

    p = sub.add_parser(
        "train",
        help="train a QT-Opt Q-function offline on a mixture (resumable)",
        description="Offline QT-Opt (clipped double Q-learning, CEM) on a mixture of RLDS "
        "datasets. Writes checkpoints, config.json, lineage.json, metrics.jsonl and TensorBoard "
        "summaries to --run-dir; running the same command again resumes exactly where it "
        "stopped (raise --steps to extend). Modes: pretrain (random init), finetune (--init "
        "CKPT, learning rate x0.25), scratch (random init; the baseline on target-sized data), "
        "imagenet (conv tower from --vision-weights, see pretrain-vision).",
        epilog="example: neverstop train --mode finetune --init runs/base "
        "--mixture base:train:0.5,checkerboard:train[:800]:0.5 --data-dir data/tfds "
        "--run-dir runs/checkerboard",
    )
    p.add_argument(
        "--mode",
        default="pretrain",
        choices=("pretrain", "finetune", "scratch", "imagenet"),
        help="how the network starts and at what rate it learns (default: %(default)s)",
    )
    p.add_argument(
        "--mixture",
        required=True,
        help="short string (base:train:0.5,checkerboard:train[:800]:0.5) or a YAML file",
    )
    p.add_argument("--data-dir", required=True, help="TFDS data dir holding the datasets")
    p.add_argument("--run-dir", required=True, help="where checkpoints and logs go")
    p.add_argument("--init", help="finetune: the checkpoint to start from (run dir or prefix)")
    p.add_argument("--vision-weights", help="imagenet: a tower weights file (.npz)")
    p.add_argument(
        "--config",
        help="JSON TrainConfig to start from: a run's config.json, or only the fields to "
        "override (the rest take today's defaults)",
    )
    p.add_argument(
        "--merge", choices=("late", "qtopt"), help="where state+action join (default late)"
    )
    p.add_argument("--steps", type=int, help="train up to this step (default 20000)")
    p.add_argument("--batch-size", type=int, help="transitions per step (default 64)")
    p.add_argument("--learning-rate", type=float, help="pre-training rate (finetune x0.25)")
    p.add_argument(
        "--seed", type=_seed, help="seed of the initial weights, the stream and CEM (default 0)"
    )
    p.add_argument(
        "--checkpoint-every", type=int, help="steps between checkpoints (default 1000)"
    )
    p.add_argument("--no-augment", action="store_true", help="train on unaugmented images")
    p.add_argument(
        "--actor",
        action="store_true",
        help="also train an actor on the successful episodes' actions and act with it "
        "(config actor: true, acting: actor; docs/trainer.md)",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="TF op determinism: bit-exact reruns and resumes (slower)",
    )
    p.add_argument(
        "--strategy",
        default="default",
        choices=STRATEGIES,
        help="default: one device; mirrored: tf.distribute.MirroredStrategy over every GPU "
        "here, each step's batch split evenly over them and the gradients averaged; "
        "multiworker: MultiWorkerMirroredStrategy over the machines TF_CONFIG names, the "
        "same command on each, worker 0 writing --run-dir (a path all of them read). "
        "Checkpoints are the same files either way (docs/trainer.md)",
    )
    p.add_argument(
        "--cpu-devices",
        type=int,
        default=0,
        help="with --strategy mirrored: mirror over this many logical devices split from the "
        "CPU instead (to try distribution on a machine without GPUs)",
    )
    p.set_defaults(fn=_cmd_train)

    p = sub.add_parser(
        "eval",
        help="success rate of a checkpoint's greedy policy, with a 95%% interval",
        description="Runs the checkpoint's greedy policy (CEM over Q, or the actor of a run "
        "trained with one: --acting) for --episodes seeded episodes "
        "(held-out objects by default) in --workers processes and reports the success rate "
        "with its Wilson 95% interval as JSON (to --out, or stdout).",
        epilog="example: neverstop eval --checkpoint runs/base --task base --episodes 200 "
        "--out runs/eval/base.json",
    )
    p.add_argument("--checkpoint", required=True, help="a run dir (newest checkpoint) or prefix")
    env_flags(p)
    p.add_argument(
        "--episodes", type=int, default=100, help="how many episodes (default: %(default)s)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes (default 2; 0 runs the episodes in this process)",
    )
    p.add_argument(
        "--seed",
        type=_seed,
        default=1_000_000,
        help="the first episode's seed (default: %(default)s, the workflows' too)",
    )
    p.add_argument("--out", help="write the JSON result here")
    acting_flag(p)
    p.set_defaults(fn=_cmd_eval)

    p = sub.add_parser(
        "compare",
        help="the difference of two evaluations' success rates, with a 95%% interval",
        description="Reads two results of neverstop eval and prints A's success rate minus "
        "B's in points with a 95% interval. Evaluations on the same seeds meet the same "
        "scenes, so where both recorded their per-episode outcomes the interval is paired "
        "(Newcombe's square-and-add for matched pairs), which is narrower when the two "
        "agree on which scenes are easy; otherwise the two are treated as independent "
        "samples, and the line says why.",
        epilog="example: neverstop compare runs/eval/finetuned.json runs/eval/base.json",
    )
    p.add_argument("a", help="an evaluation's JSON (neverstop eval --out)")
    p.add_argument("b", help="the evaluation to subtract")
    p.set_defaults(fn=_cmd_compare)

    p = sub.add_parser(
        "export",
        help="write a checkpoint's policy as a SavedModel",
        description="Writes a SavedModel whose serving_default signature maps (image uint8 "
        "[B,64,64,3], gripper_closed [B], height_to_bottom [B]) to action [B,5] by greedy "
        "CEM (or the run's actor: --acting). Loading it needs TensorFlow only.",
        epilog="example: neverstop export --checkpoint runs/base --out exported/base",
    )
    p.add_argument("--checkpoint", required=True, help="a run dir (newest checkpoint) or prefix")
    p.add_argument("--out", required=True, help="new directory for the SavedModel")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the model's CEM generator")
    acting_flag(p)
    p.set_defaults(fn=_cmd_export)

    p = sub.add_parser(
        "pretrain-vision",
        help="train a supervised conv tower (the offline stand-in for ImageNet features)",
        description="Renders --images simulator frames (training objects), trains the "
        "Q-network's conv tower to say where the objects are (8x8 occupancy grid) and writes "
        "its weights (.npz) for `train --mode imagenet --vision-weights`. The file says it is "
        "this stand-in, and so does the lineage of runs that use it.",
    )
    p.add_argument("--out", required=True, help="weights file to write (.npz)")
    p.add_argument(
        "--images", type=int, default=2000, help="frames to render (default: %(default)s)"
    )
    p.add_argument(
        "--epochs", type=int, default=10, help="passes over them (default: %(default)s)"
    )
    p.add_argument(
        "--seed", type=_seed, default=0, help="seed of the scenes and weights (default: %(default)s)"
    )
    p.add_argument("--config", help="JSON TrainConfig (the tower must match the runs using it)")
    p.add_argument(
        "--merge",
        choices=("late", "qtopt"),
        help="the network whose tower to train; must match the runs using it (default late)",
    )
    p.set_defaults(fn=_cmd_pretrain_vision)

    p = sub.add_parser("tasks", help="list the six tasks and what each changes")
    p.set_defaults(fn=_cmd_tasks)
    for p in sub.choices.values():
        # main()'s own checks report through the command's parser, so every
        # error reads `neverstop COMMAND: error: ...` with that command's usage.
        p.set_defaults(command_parser=p)
    return parser


# Commands that hand unknown flags to Beam as pipeline options.
BEAM_COMMANDS = ("collect", "ingest")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command not in BEAM_COMMANDS:
            args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.beam_args = extra
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # Beam relays its local workers' log lines as warnings; errors still show.
        logging.getLogger("apache_beam").setLevel(logging.ERROR)
    if getattr(args, "action", None) == "show" and not args.name:
        args.command_parser.error(
            "datasets show needs a NAME (name/config or name/config:version)"
        )
    try:
        return args.fn(args)
    except (ValueError, RuntimeError, OSError, ImportError) as e:
        # OSError: a path that is a directory, a file, unwritable or missing;
        # its message names the path.
        print(f"neverstop {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
