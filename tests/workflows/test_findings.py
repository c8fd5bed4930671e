"""Tests for report.findings_table (the study's findings as differences with
Newcombe intervals) and the report's reading of damaged results and run files,
on run directories of hand-written files."""

import csv
import os
import re

import pytest

from neverstop import schema
from neverstop.envs import rollout
from neverstop.workflows import paper, report
from tests.workflows import eval_results

SCALE = dict(paper.SCALES["small"].as_dict(), sizes=[100, 400, 800])
EPISODES = 200


def _write_eval(run_dir, name, task, successes, episodes=EPISODES, outcomes=None):
    path = paper.eval_path(run_dir, name, task)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    eval_results.write(
        path, eval_results.eval_result(task, successes, episodes, outcomes, paper.EVAL_SEED)
    )


# Per challenge (successes of 200): the base policy on the task, fine-tuned at
# 100 / 400 / 800, scratch and imagenet at 800, and the chain's link on the task.
BASE_ON_BASE = 124  # 62%
RESULTS = {
    # costs 22 points, lifted 16 at 400; beats scratch and imagenet by 12
    "checkerboard": dict(base=80, ft=(90, 112, 104), scratch=80, imagenet=80, chain=100),
    # costs 20, lifted 10 exactly at 800; ties scratch
    "harsh_lighting": dict(base=84, ft=(86, 90, 104), scratch=104, imagenet=90, chain=104),
    # costs 14: under the threshold, though its interval is above 0; no lift
    "extended_gripper": dict(base=96, ft=(96, 96, 90), scratch=100, imagenet=100, chain=60),
    # costs 50; lifted 40 at 100
    "offset_gripper": dict(base=24, ft=(104, 90, 90), scratch=30, imagenet=40, chain=92),
    # costs 2
    "transparent_bottles": dict(base=120, ft=(120, 118, 122), scratch=124, imagenet=110, chain=122),
}


@pytest.fixture()
def written(tmp_path):
    run_dir = str(tmp_path)
    _write_eval(run_dir, "base", "base", BASE_ON_BASE)
    for k, (task, r) in enumerate(RESULTS.items(), start=1):
        _write_eval(run_dir, "base", task, r["base"])
        for size, successes in zip(SCALE["sizes"], r["ft"]):
            _write_eval(run_dir, f"finetune-{task}-{size}", task, successes)
        _write_eval(run_dir, f"scratch-{task}-800", task, r["scratch"])
        _write_eval(run_dir, f"imagenet-{task}-800", task, r["imagenet"])
        _write_eval(run_dir, f"continual-{k}-{task}", task, r["chain"])
    out_dir = os.path.join(run_dir, "report")
    os.makedirs(out_dir)
    text = report.findings_table(run_dir, SCALE, out_dir)
    with open(os.path.join(out_dir, "findings.csv")) as f:
        rows = {r["task"]: r for r in csv.DictReader(f)}
    return text, rows


def test_each_finding_is_the_difference_of_two_rates_with_newcombes_interval(written):
    _, rows = written
    assert list(rows) == list(schema.CHALLENGE_TASKS)
    cb = rows["checkerboard"]
    assert float(cb["cost_points"]) == pytest.approx(22.0)
    low, high = rollout.difference_interval(BASE_ON_BASE, EPISODES, 80, EPISODES)
    assert float(cb["cost_ci_low"]) == pytest.approx(100 * low, abs=0.06)
    assert float(cb["cost_ci_high"]) == pytest.approx(100 * high, abs=0.06)
    # The lift is read at the best size (400 here), the baselines at the largest.
    assert int(cb["lift_target_grasps"]) == 400
    assert float(cb["lift_points"]) == pytest.approx(16.0)
    assert float(cb["vs_scratch_points"]) == pytest.approx(12.0)
    assert float(cb["chain_vs_single_points"]) == pytest.approx(-2.0)
    assert int(rows["offset_gripper"]["lift_target_grasps"]) == 100
    assert float(rows["offset_gripper"]["lift_points"]) == pytest.approx(40.0)
    assert float(rows["extended_gripper"]["chain_vs_single_points"]) == pytest.approx(-15.0)
    for row in rows.values():
        for key in report.FINDINGS:
            point, low, high = (float(row[f"{key}_{s}"]) for s in ("points", "ci_low", "ci_high"))
            assert low < point < high


def test_summary_counts_the_challenges_that_show_each_finding(written):
    text, _ = written
    lines = text.splitlines()
    assert any(
        "cost the base policy >= 15 points: **3 of 5** "
        "(checkerboard, harsh_lighting, offset_gripper); with the interval above 0: 4 of 5" in x
        for x in lines
    ), text
    # harsh_lighting's lift is exactly the threshold: it counts.
    assert any(
        "lifts >= 10 points: **3 of 5** (checkerboard, harsh_lighting, offset_gripper)" in x
        for x in lines
    ), text
    assert any(
        "beats `scratch` (800 grasps): **2 of 5** (checkerboard, offset_gripper)" in x
        for x in lines
    ), text
    # The extended gripper's link is 15 points below its single-step fine-tune.
    assert any("no worse than the single-step fine-tune" in x and "**4 of 5**" in x for x in lines)
    assert "| checkerboard | **+22.0 [" in text  # bold: over the drop threshold
    assert "| transparent_bottles | +2.0 [" in text


def test_missing_results_are_named_not_invented(tmp_path):
    run_dir = str(tmp_path)
    _write_eval(run_dir, "base", "base", BASE_ON_BASE)
    _write_eval(run_dir, "base", "checkerboard", 80)
    out_dir = os.path.join(run_dir, "report")
    os.makedirs(out_dir)
    text = report.findings_table(run_dir, SCALE, out_dir)
    assert "| checkerboard | **+22.0 [" in text
    assert "| harsh_lighting | n/a | n/a | n/a | n/a | n/a |" in text
    with open(os.path.join(out_dir, "findings.csv")) as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["lift_points"] == "" and rows[1]["cost_points"] == ""
    assert "cost the base policy >= 15 points: **1 of 5** (checkerboard)" in text


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"task": "checkerboard", "succ', "not valid JSON"),
        (
            '{"task": "checkerboard", "success_rate": 0.4}',
            "missing successes, episodes, interval_95",
        ),
        ("[1, 2]", "missing success_rate, successes, episodes, interval_95"),
    ],
)
def test_a_damaged_result_is_named_and_left_alone(tmp_path, text, message):
    run_dir = str(tmp_path)
    _write_eval(run_dir, "base", "base", BASE_ON_BASE)
    path = paper.eval_path(run_dir, "base", "checkerboard")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    out_dir = os.path.join(run_dir, "report")
    os.makedirs(out_dir)
    with pytest.raises(ValueError, match=f"^{re.escape(path)}: .*{re.escape(message)}"):
        report.findings_table(run_dir, SCALE, out_dir)
    assert open(path).read() == text


def test_evaluations_with_outcomes_on_the_same_seeds_get_a_paired_interval(tmp_path):
    """The base policy and a fine-tune agree on most scenes (100 both succeed, 60
    both fail): the paired interval is narrower than the unpaired one and is the
    one reported; an evaluation without outcomes falls back to the unpaired."""
    run_dir = str(tmp_path)
    base = "1" * 100 + "0" * 100  # 100 of 200
    tuned = "1" * 100 + "0" * 20 + "1" * 40 + "0" * 40  # 140: 40 more scenes, none lost
    _write_eval(run_dir, "base", "base", 124)  # no outcomes: an older result
    _write_eval(run_dir, "base", "checkerboard", 100, outcomes=base)
    _write_eval(run_dir, "finetune-checkerboard-800", "checkerboard", 140, outcomes=tuned)
    _write_eval(run_dir, "scratch-checkerboard-800", "checkerboard", 100)
    out_dir = os.path.join(run_dir, "report")
    os.makedirs(out_dir)
    text = report.findings_table(run_dir, SCALE, out_dir)
    with open(os.path.join(out_dir, "findings.csv")) as f:
        cb = next(csv.DictReader(f))
    paired = rollout.paired_difference_interval([c == "1" for c in tuned], [c == "1" for c in base])
    unpaired = rollout.difference_interval(140, 200, 100, 200)
    assert float(cb["lift_points"]) == pytest.approx(20.0)
    assert float(cb["lift_ci_low"]) == pytest.approx(100 * paired[0], abs=0.06)
    assert float(cb["lift_ci_high"]) == pytest.approx(100 * paired[1], abs=0.06)
    assert paired[1] - paired[0] < 0.8 * (unpaired[1] - unpaired[0])
    assert cb["lift_paired"] == "1"
    # Against results without outcomes: the unpaired interval, marked so.
    assert cb["vs_scratch_paired"] == "0" and cb["cost_paired"] == "0"
    assert float(cb["vs_scratch_ci_low"]) == pytest.approx(100 * unpaired[0], abs=0.06)
    assert "1 of 3 intervals are paired" in text


@pytest.mark.parametrize(
    "outcomes, found",
    [
        ("1" * 80 + "0" * 119, "'" + "1" * 78),  # one episode short
        ("1" * 81 + "0" * 119, "'" + "1" * 78),  # 81 successes where 80 are counted
        ("1" * 80 + "x" * 120, "'" + "1" * 78),
        ([1] * 80 + [0] * 120, "[1, 1"),
    ],
)
def test_outcomes_that_disagree_with_the_counts_are_named(tmp_path, outcomes, found):
    run_dir = str(tmp_path)
    _write_eval(run_dir, "base", "base", BASE_ON_BASE)
    _write_eval(run_dir, "base", "checkerboard", 80, outcomes=outcomes)
    path = paper.eval_path(run_dir, "base", "checkerboard")
    before = open(path).read()
    out_dir = os.path.join(run_dir, "report")
    os.makedirs(out_dir)
    message = "expected 'outcomes' to be one '0' or '1' per episode (200) with 80 '1's, got "
    with pytest.raises(ValueError, match=f"^{re.escape(path)}: {re.escape(message + found)}"):
        report.findings_table(run_dir, SCALE, out_dir)
    assert open(path).read() == before


def test_training_runs_name_a_damaged_lineage(tmp_path):
    run = tmp_path / "checkpoints" / "base"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"steps": 10, "mode": "pretrain", "gamma": 0.9}')
    (run / "lineage.json").write_text(
        '{"mode": "pretrain", "mixture_string": "grasps/base:1.0.0:train:1"}'
    )
    lines = report._training_runs(str(tmp_path))
    assert "| `base` | pretrain |  | `grasps/base:1.0.0:train:1` | 10 |  |" in lines
    (run / "lineage.json").write_text('{"mode": "pre')
    with pytest.raises(
        ValueError, match=f"^{re.escape(str(run / 'lineage.json'))}: not valid JSON"
    ):
        report._training_runs(str(tmp_path))
