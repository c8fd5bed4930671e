"""Ingestion speed and memory: our Beam pipeline against a plain TFDS builder.

The peer is the pattern of the Open X-Embodiment conversion template: a
`tfds.core.GeneratorBasedBuilder` whose `_generate_examples` parses the raw
files one by one in one process. Both convert the same raw files; each run
is a separate subprocess (wall-clock from start to exit, TensorFlow import
included for both; peak RSS of the process and of its largest child, Beam
workers included). The raw files are copies of a few real collected
episodes with unique ids, so the corpus can be large without collecting it.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

_PEER = r"""
import json, resource, sys
import tensorflow_datasets as tfds
from neverstop import rawlog, schema
from neverstop.pipelines import ingest

files = json.load(open(sys.argv[1]))
data_dir = sys.argv[2]

class Plain(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    name = "plain_grasps"

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=schema.episode_features("png"))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(files)}

    def _generate_examples(self, paths):
        for path in paths:
            episode = rawlog.read_episode(path)
            yield episode.episode_id, ingest.to_rlds_example(episode)

with tfds.core.registered.skip_registration():
    Plain(data_dir=data_dir).download_and_prepare()
"""

_OURS = r"""
import sys
from neverstop.pipelines import ingest
ingest.ingest(ingest.IngestConfig(input=sys.argv[1], dataset="bench", config="base",
                                  data_dir=sys.argv[2], workers=int(sys.argv[3])))
"""

_MEASURE = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
seconds = time.perf_counter() - start
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": code, "seconds": seconds, "peak_rss_mb": children / 1024}))
"""


def _measure(argv) -> dict:
    """Runs argv in a fresh process; wall-clock and the largest RSS of its tree."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, sys.executable] + argv,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if result["code"] != 0:
        raise RuntimeError(
            f"benchmark run failed: {' '.join(argv[:3])} ... (exit {result['code']})"
        )
    return result


def make_corpus(directory: str, episodes: int, seed_episodes: int = 20) -> list:
    """`episodes` raw files: copies of `seed_episodes` collected ones, unique ids."""
    from neverstop import rawlog
    from neverstop import schema
    from neverstop.envs import collect

    seeds_dir = os.path.join(directory, "seeds")
    collect.collect(
        collect.CollectConfig(
            task="base", policy="scripted", episodes=seed_episodes, out=seeds_dir, workers=1
        ),
        running_mode="in_memory",
    )
    seeds = [rawlog.read_episode(p) for p in rawlog.list_episode_files(seeds_dir)]
    corpus = os.path.join(directory, "raw")
    os.makedirs(corpus)
    for i in range(episodes):
        episode = seeds[i % len(seeds)]
        episode.metadata[schema.EPISODE_ID] = f"sim-base-scripted-s0-{i:07d}"
        rawlog.write_episode(corpus, episode)
    return rawlog.list_episode_files(corpus)


def run(
    episodes: int = 20000,
    rss_small: int = 1000,
    rss_large: int = 4000,
    workers: int = 2,
    progress=None,
) -> dict:
    """Both sides at rss_small, rss_large and `episodes` episodes.

    The speed ratio is taken at `episodes`: both sides pay a fixed cost
    (TensorFlow's import for the peer; Beam's and its workers' start-up for
    ours, ~3.5 s here) that a corpus of a few thousand episodes does not
    amortise. Peak RSS is compared between rss_large and rss_small.
    """
    if not 0 < rss_small <= rss_large or episodes <= 0:
        raise ValueError(
            f"need 0 < rss_small ({rss_small}) <= rss_large ({rss_large}) and episodes "
            f"({episodes}) > 0"
        )
    sizes = sorted({rss_small, rss_large, episodes})
    root = tempfile.mkdtemp(prefix="neverstop-bench-ingest-")
    try:
        if progress:
            progress(f"writing {sizes[-1]} raw episode files")
        files = make_corpus(root, sizes[-1])
        results = {}
        for n in sizes:
            listing = os.path.join(root, f"files-{n}.json")
            with open(listing, "w") as f:
                json.dump(files[:n], f)
            subset = os.path.join(root, f"subset-{n}")
            os.makedirs(subset)
            for path in files[:n]:
                os.symlink(path, os.path.join(subset, os.path.basename(path)))
            if progress:
                progress(f"ours, {n} episodes")
            ours = _measure(
                [
                    "-c",
                    _OURS,
                    os.path.join(subset, "*.nsep"),
                    os.path.join(root, f"ours-{n}"),
                    str(workers),
                ]
            )
            if progress:
                progress(f"plain TFDS builder, {n} episodes")
            peer = _measure(["-c", _PEER, listing, os.path.join(root, f"peer-{n}")])
            results[n] = {
                "ours": dict(ours, episodes_per_s=n / ours["seconds"]),
                "peer": dict(peer, episodes_per_s=n / peer["seconds"]),
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    big = results[episodes]
    return {
        "results": results,
        "workers": workers,
        "episodes": episodes,
        "rss_sizes": (rss_small, rss_large),
        "ratio": big["ours"]["episodes_per_s"] / big["peer"]["episodes_per_s"],
        "rss_growth": results[rss_large]["ours"]["peak_rss_mb"]
        / results[rss_small]["ours"]["peak_rss_mb"],
    }
