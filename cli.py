"""The `neverstop` command line: a thin layer over the library.

Every subcommand parses its flags, calls one library function (which tests
call directly) and prints. Library code logs; only this module prints.
"""

import argparse
import json
import logging
import sys
from typing import List, Optional

from neverstop import schema
from neverstop.version import __version__

EPILOG = """examples:
  neverstop quickstart
  neverstop render --task checkerboard --seed 3 --out checkerboard.png --scale 4
  neverstop rollout --task base --policy scripted --episodes 200
  neverstop bench env
"""


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="ep",
        file=sys.stderr,
        disable=not sys.stderr.isatty() and total < 50,
    )


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
    with _progress_bar(args.episodes, f"{args.policy} on {args.task}") as bar:
        counts = {"episodes": 0, "successes": 0}

        def tick(success: bool):
            # Count here: a disabled tqdm (no terminal) does not advance bar.n.
            counts["episodes"] += 1
            counts["successes"] += int(success)
            bar.update(1)
            bar.set_postfix(success=f"{counts['successes'] / counts['episodes']:.0%}")

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
        with open(args.json, "w") as f:
            json.dump(result.as_dict(), f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _cmd_bench(args) -> int:
    if args.stage == "env":
        from neverstop.benchmarks import env_bench

        with _progress_bar(2 * args.episodes, "bench env") as bar:
            result = env_bench.run(
                args.episodes,
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
    raise ValueError(f"unknown bench stage {args.stage!r}")


def _cmd_quickstart(args) -> int:
    from neverstop.workflows import quickstart

    config = quickstart.QuickstartConfig(data_dir=args.data_dir, episodes=args.episodes)
    report = quickstart.run(config, progress=lambda msg: print(f"  {msg}", flush=True))
    print(f"quickstart done; report: {report}")
    return 0


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
            choices=("tiny", "egl", "auto"),
            help="tiny (default, deterministic, all tasks), egl (true "
            "transparency; no checkerboard texture), auto (egl if it loads)",
        )

    p = sub.add_parser(
        "quickstart",
        help="a few-minute tour on local defaults",
        description="Renders the six tasks and measures the data-collection "
        "policies; writes a Markdown report under --data-dir.",
    )
    p.add_argument(
        "--data-dir", default="neverstop_data", help="where to write (default: %(default)s)"
    )
    p.add_argument(
        "--episodes", type=int, default=30, help="episodes per policy (default: %(default)s)"
    )
    p.set_defaults(fn=_cmd_quickstart)

    p = sub.add_parser(
        "render",
        help="write what the camera sees as a PNG",
        description="Resets TASK with SEED and writes the 64x64 camera image.",
    )
    env_flags(p)
    p.add_argument("--seed", type=int, default=0, help="episode seed (default: 0)")
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
        description="Success rate with a Wilson 95%% interval over seeds "
        "SEED..SEED+N-1, on held-out objects by default.",
    )
    env_flags(p)
    p.add_argument("--policy", default="scripted", choices=("scripted", "random"))
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="first episode seed (default: 0)")
    p.add_argument("--json", help="also write the result as JSON here")
    p.set_defaults(fn=_cmd_rollout)

    p = sub.add_parser(
        "bench",
        help="measure a stage against its peer (last line: RESULT)",
        description="env: grasp episodes/s of GraspEnv vs pybullet's "
        "KukaDiverseObjectEnv, random policy, 64x64, held-out objects.",
    )
    p.add_argument("stage", choices=("env",))
    p.add_argument(
        "--episodes", type=int, default=30, help="episodes per side (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--renderer", default="tiny", choices=("tiny", "egl", "auto"))
    p.set_defaults(fn=_cmd_bench)

    p = sub.add_parser("tasks", help="list the six tasks and what each changes")
    p.set_defaults(fn=_cmd_tasks)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.fn(args)
    except (ValueError, RuntimeError, FileNotFoundError, ImportError) as e:
        print(f"neverstop {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
