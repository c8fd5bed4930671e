"""The README's first command: a few-minute tour on local defaults.

Today it covers the stages that exist: it renders what the camera sees in
each of the six tasks, measures the scripted and random data-collection
policies on held-out objects, and collects a small base dataset of raw
episode files with the Beam collector (local runner, two workers), writing
a Markdown report. As collection,
ingestion, mixing and training land, this grows into the tiny instance of
the paper's chain that the workflows issue describes.
"""

import dataclasses
import json
import logging
import os
from typing import Callable, Optional

from neverstop import rawlog
from neverstop import schema
from neverstop.envs import collect as collect_lib
from neverstop.envs import render as render_lib
from neverstop.envs import rollout as rollout_lib

DEFAULT_DATA_DIR = "neverstop_data"


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
    data_dir: str = DEFAULT_DATA_DIR
    episodes: int = 30
    seed: int = 0
    collect_episodes: int = 40
    workers: int = 2


def run(
    config: QuickstartConfig = QuickstartConfig(), progress: Optional[Callable[[str], None]] = None
) -> str:
    """Runs the quickstart; returns the path of its report (Markdown)."""
    out = os.path.join(config.data_dir, "quickstart")
    os.makedirs(out, exist_ok=True)
    renders = []
    for task in schema.TASKS:
        path = os.path.join(out, "render", f"{task}.png")
        renders.append(render_lib.render_task(task, config.seed, path, scale=4, steps=3))
        if progress:
            progress(f"rendered {task}")
    results = []
    for policy in ("scripted", "random"):
        result = rollout_lib.rollout("base", policy, config.episodes, seed=config.seed)
        results.append(result)
        logging.info("%s on base: %d/%d", policy, result.successes, result.episodes)
        if progress:
            progress(f"evaluated {policy}")
    raw_dir = os.path.join(out, "raw", "base")
    collected = collect_lib.collect(
        collect_lib.CollectConfig(
            task="base",
            policy="scripted",
            episodes=config.collect_episodes,
            seed=config.seed,
            out=raw_dir,
            workers=config.workers,
        )
    )
    files = rawlog.list_episode_files(raw_dir)
    steps = sum(rawlog.read_header(path)["num_steps"] for path in files)
    size = sum(os.path.getsize(path) for path in files)
    if progress:
        progress(f"collected {collected.written} new episodes into {raw_dir}")
    lines = [
        "# neverstop quickstart",
        "",
        f"Policies on `base`, {config.episodes} episodes each, held-out objects "
        "(random_urdfs ids ending in 0).",
        "",
        "| policy | success | 95% interval | episodes/s |",
        "|---|---|---|---|",
    ]
    for r in results:
        low, high = r.interval
        lines.append(
            f"| {r.policy} | {r.success_rate:.1%} ({r.successes}/{r.episodes}) "
            f"| [{low:.1%}, {high:.1%}] | {r.episodes_per_s:.1f} |"
        )
    lines += [
        "",
        "## Collected data",
        "",
        f"`{raw_dir}`: {len(files)} scripted `base` episodes (training objects) from the Beam "
        f"collector with {config.workers} local workers, {steps} steps, "
        f"{size / max(steps, 1):.0f} bytes per step; "
        f"{collected.successes} successes among the {collected.written} collected in this run, "
        f"{collected.already_present} already there from an earlier run.",
    ]
    lines += ["", "## What the camera sees (after lowering the gripper 3 steps)", ""]
    lines += [f"- `{r['task']}`: ![{r['task']}](render/{r['task']}.png)" for r in renders]
    report = os.path.join(out, "report.md")
    with open(report, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump([r.as_dict() for r in results], f, indent=2)
    return report
