"""Collection scaling: `collect --workers 2` against `--workers 1`, same seeds.

Both runs collect the same scripted `base` episodes into fresh directories
on the local Beam runner in multi-processing mode, so both pay the same
worker start-up. Reported: wall-clock episodes/s (what a user waits for,
start-up included, which is what RESULT uses), the steady-state rate
between the first and last file written, and whether the two directories
hold byte-identical files.
"""

import filecmp
import os
import shutil
import tempfile
import time

from neverstop import rawlog
from neverstop.envs import collect


def _run(episodes: int, seed: int, workers: int, out: str) -> dict:
    config = collect.CollectConfig(
        task="base", policy="scripted", episodes=episodes, seed=seed, out=out, workers=workers
    )
    start = time.time()
    summary = collect.collect(config)
    if summary.written != episodes or summary.failed:
        raise RuntimeError(
            f"--workers {workers}: wrote {summary.written} of {episodes} episodes, "
            f"{len(summary.failed)} failed"
        )
    times = sorted(os.path.getmtime(p) for p in rawlog.list_episode_files(out))
    return {
        "workers": workers,
        "episodes": episodes,
        "seconds": summary.seconds,
        "episodes_per_s": summary.episodes_per_s,
        "steady_per_s": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0,
        "startup_s": times[0] - start,
    }


def run(episodes: int = 600, seed: int = 0) -> dict:
    if episodes < 2:
        raise ValueError(f"episodes must be >= 2, got {episodes}")
    root = tempfile.mkdtemp(prefix="neverstop-bench-collect-")
    try:
        dirs = {k: os.path.join(root, f"workers{k}") for k in (1, 2)}
        runs = [_run(episodes, seed, k, dirs[k]) for k in (1, 2)]
        names = sorted(os.listdir(dirs[1]))
        match, mismatch, errors = filecmp.cmpfiles(dirs[1], dirs[2], names, shallow=False)
        identical = not mismatch and not errors and names == sorted(os.listdir(dirs[2]))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "runs": runs,
        "identical": identical,
        "ratio": runs[1]["episodes_per_s"] / runs[0]["episodes_per_s"],
    }
