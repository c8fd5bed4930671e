"""Tests for neverstop/workflows/quickstart.py: the README's first command, tiny."""

import json
import os

import pytest
from PIL import Image

from neverstop import rawlog
from neverstop import schema
from neverstop.workflows import quickstart


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    messages = []
    path = quickstart.run(
        quickstart.QuickstartConfig(data_dir=str(data_dir), episodes=3, collect_episodes=4),
        progress=messages.append,
    )
    return path, messages


def test_report_is_written_under_the_data_dir(report):
    path, messages = report
    assert os.path.basename(path) == "report.md"
    assert os.path.basename(os.path.dirname(path)) == "quickstart"
    assert os.path.isfile(path)
    raw_dir = os.path.join(os.path.dirname(path), "raw", "base")
    assert messages == [f"rendered {task}" for task in schema.TASKS] + [
        "evaluated scripted",
        "evaluated random",
        f"collected 4 new episodes into {raw_dir}",
    ]


def test_report_table_has_one_row_per_policy(report):
    path, _ = report
    with open(path) as f:
        lines = f.read().splitlines()
    header = lines.index("| policy | success | 95% interval | episodes/s |")
    assert lines[header + 1] == "|---|---|---|---|"
    rows = []
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    assert [row.split("|")[1].strip() for row in rows] == ["scripted", "random"]
    for row in rows:
        assert "/3)" in row


def test_renders_one_png_per_task(report):
    path, _ = report
    render_dir = os.path.join(os.path.dirname(path), "render")
    assert sorted(os.listdir(render_dir)) == sorted(f"{task}.png" for task in schema.TASKS)
    for task in schema.TASKS:
        with Image.open(os.path.join(render_dir, f"{task}.png")) as image:
            # 64x64 at scale 4.
            assert (image.size, image.mode) == ((256, 256), "RGB")
    with open(path) as f:
        text = f.read()
    for task in schema.TASKS:
        assert f"](render/{task}.png)" in text


def test_results_json_has_both_policies(report):
    path, _ = report
    with open(os.path.join(os.path.dirname(path), "results.json")) as f:
        results = json.load(f)
    assert [r["policy"] for r in results] == ["scripted", "random"]
    for r in results:
        assert r["episodes"] == 3
        assert r["task"] == "base"
        assert r["object_split"] == "eval"
        assert 0 <= r["successes"] <= 3


def test_quickstart_collects_raw_episodes_with_the_beam_collector(report):
    path, _ = report
    raw_dir = os.path.join(os.path.dirname(path), "raw", "base")
    files = rawlog.list_episode_files(raw_dir)
    assert len(files) == 4
    episodes = [rawlog.read_episode(f) for f in files]
    assert {e.metadata[schema.POLICY] for e in episodes} == {"scripted"}
    assert {e.metadata[schema.TASK] for e in episodes} == {"base"}
    with open(path) as f:
        text = f.read()
    assert f"`{raw_dir}`: 4 scripted `base` episodes" in text
    steps = sum(e.num_steps for e in episodes)
    assert f", {steps} steps, " in text
