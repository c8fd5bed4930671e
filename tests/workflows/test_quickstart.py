"""Tests for neverstop/workflows/quickstart.py: the README's first command, the
paper's chain in miniature (run here with a tiny network and a few episodes)."""

import csv
import dataclasses
import os

import pytest
from PIL import Image

from neverstop.workflows import dag, paper, quickstart

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dataclasses.replace(
    paper.QUICKSTART,
    scripted_episodes=6,
    random_episodes=2,
    pretrain_steps=10,
    finetune_steps=10,
    sizes=(3,),
    eval_episodes=2,
    train=paper.TINY_NETWORK,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("data"))
    events = []
    readme = quickstart.run(
        quickstart.QuickstartConfig(data_dir=data_dir, scale=TINY), progress=events.append
    )
    return data_dir, readme, events


def test_the_quickstart_scale_is_the_tiny_chain_the_readme_promises():
    scale = paper.QUICKSTART
    assert 200 <= scale.scripted_episodes + scale.random_episodes <= 500
    assert (scale.rounds, scale.challenges, len(scale.sizes)) == (0, ("checkerboard",), 1)
    assert (scale.baselines, scale.continual, scale.tables) == (False, False, ("finetune",))
    names = [s.name for s in paper.build_steps(scale)]
    assert [n for n in names if n.startswith("train-")] == [
        "train-base",
        "train-finetune-checkerboard-100",
    ]
    assert [n for n in names if n.startswith("eval-")] == ["eval-base-checkerboard"]


def test_the_report_is_written_under_the_data_dir(run):
    data_dir, readme, events = run
    assert readme == os.path.join(data_dir, "quickstart", "report", "README.md")
    assert sorted(os.listdir(os.path.dirname(readme))) == [
        "README.md",
        "finetune.csv",
        "finetune.md",
        "finetune.png",
    ]
    started = [e["step"] for e in events if e["event"] == "start"]
    assert sorted(started) == sorted(s.name for s in paper.build_steps(TINY))
    assert started[-1] == "report"


def test_one_table_with_the_fine_tune_and_the_base_policy(run):
    data_dir, readme, _ = run
    with open(os.path.join(os.path.dirname(readme), "finetune.csv")) as f:
        (row,) = list(csv.DictReader(f))
    assert (row["task"], row["target_grasps"]) == ("checkerboard", "3")
    for prefix in ("", "base_"):
        assert 0 <= float(row[f"{prefix}success"]) <= 1
        assert row[f"{prefix}episodes"] == "2"
    text = open(readme).read()
    assert "| checkerboard | 3 |" in text
    assert "`grasps/checkerboard:1.0.0`" in text and "`grasps/base:1.0.0`" in text


def test_one_plot(run):
    _, readme, _ = run
    path = os.path.join(os.path.dirname(readme), "finetune.png")
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 300


def test_a_second_run_returns_at_once(run):
    data_dir, readme, _ = run
    events = []
    again = quickstart.run(
        quickstart.QuickstartConfig(data_dir=data_dir, scale=TINY), progress=events.append
    )
    assert again == readme
    assert {e["event"] for e in events} == {"skip"}
    assert dag.read_step_log(os.path.join(data_dir, "quickstart"))[-1]["event"] == "skip"


def test_a_quickstart_made_with_other_settings_is_refused_and_kept(run):
    """An older neverstop's quickstart dir (other step counts): a clear error
    naming the file, what differs and what to do; nothing there is touched."""
    data_dir, readme, _ = run
    path = os.path.join(data_dir, "quickstart", paper.EXPERIMENT_FILE)
    before = {p: os.path.getmtime(p) for p in (path, readme)}
    changed = dataclasses.replace(TINY, finetune_steps=11)
    with pytest.raises(ValueError) as raised:
        quickstart.run(quickstart.QuickstartConfig(data_dir=data_dir, scale=changed))
    message = str(raised.value)
    assert message.startswith(f"{path}: this quickstart was run with other settings")
    assert "finetune_steps: 10 there, 11 now" in message
    assert "use another --data-dir, or delete" in message and "--run-dir" not in message
    assert {p: os.path.getmtime(p) for p in before} == before
    assert paper.saved_scale(os.path.join(data_dir, "quickstart"))["finetune_steps"] == 10


def test_readme_first_lines_are_the_quickstart_and_the_tests():
    with open(os.path.join(REPO, "README.md")) as f:
        lines = f.read().splitlines()
    assert lines[1].startswith("make quickstart")
    assert lines[2].startswith("make test")
    with open(os.path.join(REPO, "Makefile")) as f:
        assert "$(VENV)/bin/neverstop quickstart" in f.read()
