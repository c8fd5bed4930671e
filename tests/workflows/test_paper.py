"""Tests for neverstop/workflows/paper.py and report.py: the smoke scale end to
end, killed half-way by SIGKILL and resumed; its report's tables and plots."""

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from neverstop import schema
from neverstop.datasets import mixture as mixture_lib
from neverstop.workflows import dag, paper, report

NEVERSTOP = os.path.join(os.path.dirname(sys.executable), "neverstop")
SMOKE = paper.SCALES["smoke"]
# Kill when this step starts: base pre-training is done, the next round's
# collection (with the pre-trained policy) is running.
KILL_AFTER = "train-base-r0"
KILL_AT_START_OF = "collect-base-r1-0"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`neverstop experiment paper --scale smoke`, SIGKILLed (the command and
    its process group) as KILL_AT_START_OF starts, then resumed in-process."""
    run_dir = str(tmp_path_factory.mktemp("paper") / "run")
    output = open(os.path.join(os.path.dirname(run_dir), "first-run.out"), "w")
    process = subprocess.Popen(
        [NEVERSTOP, "experiment", "paper", "--scale", "smoke", "--run-dir", run_dir],
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while not any(
        e["event"] == "start" and e["step"] == KILL_AT_START_OF for e in dag.read_step_log(run_dir)
    ):
        assert process.poll() is None, open(output.name).read()[-3000:]
        assert time.time() < deadline, "the first run took too long to reach the kill point"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(2)  # orphaned workers notice within a second and stop
    first_events = dag.read_step_log(run_dir)
    done_before = {
        name[: -len(".json")]: os.path.getmtime(os.path.join(run_dir, dag.DONE_DIR, name))
        for name in os.listdir(os.path.join(run_dir, dag.DONE_DIR))
        if name.endswith(".json")
    }
    events = []
    readme = paper.run(SMOKE, run_dir, workers=2, progress=events.append)
    return {
        "run_dir": run_dir,
        "readme": readme,
        "first_events": first_events,
        "done_before": done_before,
        "events": events,
    }


def _csv(run_dir, name):
    with open(os.path.join(run_dir, "report", f"{name}.csv")) as f:
        return list(csv.DictReader(f))


def _check_rate(row, prefix=""):
    rate, low, high = (float(row[f"{prefix}{k}"]) for k in ("success", "ci_low", "ci_high"))
    assert 0.0 <= low <= rate <= high <= 1.0
    assert int(row[f"{prefix}episodes"]) == SMOKE.eval_episodes
    return rate


# --- The steps ----------------------------------------------------------------------------


def test_the_smoke_scale_has_every_step_of_the_protocol():
    names = [s.name for s in paper.build_steps(SMOKE)]
    assert names[-1] == "report"
    for task in schema.TASKS:
        assert f"eval-base-{task}" in names
    for task in schema.CHALLENGE_TASKS:
        assert {f"collect-{task}", f"ingest-{task}", f"train-finetune-{task}-4"} <= set(names)
        assert {f"train-scratch-{task}-4", f"train-imagenet-{task}-4"} <= set(names)
    links = [n for n in names if n.startswith("train-continual-")]
    assert links == [
        f"train-continual-{k}-{t}" for k, t in enumerate(schema.CHALLENGE_TASKS, start=1)
    ]
    assert {"ingest-base-r0", "ingest-base-r1", "train-base-r0", "train-base", "vision"} <= set(
        names
    )


def test_steps_depend_on_what_they_read():
    steps = {s.name: s for s in paper.build_steps(SMOKE)}
    assert steps["collect-base-r1-0"].deps == ("train-base-r0",)
    assert set(steps["train-base"].deps) == {"ingest-base-r1", "train-base-r0"}
    assert steps["train-base"].params["init"] == "base-r0"
    assert steps["collect-checkerboard"].params["checkpoint"] == "base"
    link2 = steps["train-continual-2-harsh_lighting"]
    assert set(link2.deps) == {"train-continual-1-checkerboard", "ingest-harsh_lighting"}
    assert link2.params["init"] == "continual-1-checkerboard"
    assert link2.params["eval_tasks"] == ["harsh_lighting", "base"]
    assert "vision" in steps["train-imagenet-checkerboard-4"].deps
    # The base round r ingests every base collection of rounds 0..r.
    assert steps["ingest-base-r1"].params["inputs"] == "raw/base/r[0-1]-*/*.nsep"


def test_fine_tuning_mixes_base_and_the_first_n_target_grasps_50_50():
    spec = paper.mixture_string(SMOKE, "checkerboard", 4)
    assert spec == "grasps/base:1.1.0:train:0.5,grasps/checkerboard:1.0.0:train[:4]:0.5"
    mixture = mixture_lib.Mixture.parse(spec)
    assert mixture.weights == (0.5, 0.5)
    assert [s.split for s in mixture.sources] == ["train", "train[:4]"]
    configs = {s.name: s.params.get("config") for s in paper.build_steps(SMOKE)}
    assert configs["train-finetune-checkerboard-4"]["mode"] == "finetune"
    assert configs["train-scratch-checkerboard-4"]["mode"] == "scratch"
    assert configs["train-base"]["finetune_lr_scale"] == 1.0  # more pre-training, full rate


@pytest.mark.parametrize("scale", ["smoke", "small", "full"])
def test_every_run_trains_an_actor_and_a_conservative_q_and_acts_by_cem_from_the_actor(scale):
    configs = {s.name: s.params.get("config") for s in paper.build_steps(paper.SCALES[scale])}
    trained = [c for name, c in configs.items() if name.startswith("train-")]
    assert trained and all(
        c["actor"] and c["acting"] == "actor_cem" and c["conservative_weight"] == 0.3
        for c in trained
    )


def test_fine_tunes_and_links_average_their_actor_at_the_scales_rate():
    # small: fine-tunes and chain links act with a faster actor average; the
    # base trainings and the baselines keep train's default.
    small = paper.SCALES["small"]
    default = small.train_config().actor_polyak
    assert small.finetune_actor_polyak is not None
    assert small.finetune_actor_polyak != default
    polyak = {
        s.name: s.params["config"]["actor_polyak"]
        for s in paper.build_steps(small)
        if s.name.startswith("train-")
    }
    faster = sorted(n for n, p in polyak.items() if p == small.finetune_actor_polyak)
    expected = [f"train-finetune-{t}-{n}" for t in small.challenges for n in small.sizes]
    expected += [f"train-continual-{k}-{t}" for k, t in enumerate(small.challenges, start=1)]
    assert faster == sorted(expected)
    assert {p for n, p in polyak.items() if n not in faster} == {default}
    assert "train-base" in polyak and "train-scratch-offset_gripper-800" in polyak
    # A scale without the field trains every run at the default.
    smoke = [s for s in paper.build_steps(SMOKE) if s.name.startswith("train-finetune")]
    assert smoke and all(
        s.params["config"]["actor_polyak"] == SMOKE.train_config().actor_polyak for s in smoke
    )


def test_scales_hold_the_issue_sizes():
    assert paper.SCALES["full"].sizes == (25, 50, 100, 200, 400, 800)
    assert set(paper.SCALES["small"].sizes) <= set(paper.SCALES["full"].sizes)
    assert paper.SCALES["small"].eval_episodes >= 100
    with pytest.raises(
        ValueError, match="unknown scale 'huge'; expected one of smoke, small, full"
    ):
        paper.get_scale("huge")
    with pytest.raises(ValueError, match="rounds must be in"):
        dataclasses.replace(SMOKE, rounds=10)
    with pytest.raises(ValueError, match=r"finetune_actor_polyak must be in \[0, 1\), got 1.0"):
        dataclasses.replace(SMOKE, finetune_actor_polyak=1.0)


def test_a_run_dir_of_another_scale_is_refused(tmp_path):
    paper.check_run_dir(str(tmp_path), SMOKE)
    other = dataclasses.replace(SMOKE, eval_episodes=3)
    path = os.path.join(str(tmp_path), paper.EXPERIMENT_FILE)
    with pytest.raises(ValueError) as error:
        paper.check_run_dir(str(tmp_path), other)
    assert path in str(error.value)
    assert "eval_episodes: 2 there, 3 now" in str(error.value)
    paper.check_run_dir(str(tmp_path), SMOKE)  # the same scale resumes


# --- Killed and resumed -------------------------------------------------------------------


def test_a_killed_run_resumes_and_skips_finished_steps(smoke):
    done_before = smoke["done_before"]
    assert KILL_AFTER in done_before
    assert len(done_before) < len(paper.build_steps(SMOKE))
    events = smoke["events"]
    skipped = {e["step"] for e in events if e["event"] == "skip"}
    started = {e["step"] for e in events if e["event"] == "start"}
    assert skipped == set(done_before)
    assert not started & set(done_before)
    # Steps the kill interrupted ran again, and now everything is done.
    interrupted = {e["step"] for e in smoke["first_events"] if e["event"] == "start"} - set(
        done_before
    )
    assert KILL_AT_START_OF in interrupted and interrupted <= started
    for step in paper.build_steps(SMOKE):
        assert dag.read_marker(smoke["run_dir"], step.name) is not None, step.name
    for name, mtime in done_before.items():
        assert os.path.getmtime(dag.marker_path(smoke["run_dir"], name)) == mtime


def test_a_finished_run_skips_everything(smoke):
    events = []
    paper.run(SMOKE, smoke["run_dir"], workers=2, progress=events.append)
    assert {e["event"] for e in events} == {"skip"}
    assert len(events) == len(paper.build_steps(SMOKE))


def test_the_run_dir_follows_the_design_layout(smoke):
    run_dir = smoke["run_dir"]
    assert sorted(os.listdir(os.path.join(run_dir, "raw"))) == sorted(schema.TASKS)
    assert os.path.isdir(os.path.join(run_dir, "data", "grasps", "base", "1.1.0"))
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "base", "lineage.json"))
    with open(
        os.path.join(run_dir, "checkpoints", "continual-2-harsh_lighting", "lineage.json")
    ) as f:
        lineage = json.load(f)
    assert "continual-1-checkerboard" in json.dumps(lineage)
    result = json.load(open(paper.eval_path(run_dir, "finetune-checkerboard-4", "checkerboard")))
    assert result["episodes"] == SMOKE.eval_episodes
    assert result["object_split"] == "eval"
    assert result["checkpoint"].startswith("finetune-checkerboard-4.ckpt-")
    # Target data came from the base policy with exploration noise.
    marker = dag.read_marker(run_dir, "collect-checkerboard")
    assert marker["outputs"]["policy"].startswith("qtopt:base.ckpt-")
    assert marker["outputs"]["policy"].endswith(f"@eps={SMOKE.target_epsilon:g}+moves")


def test_in_process_evaluation_matches_neverstop_eval(smoke):
    from neverstop.trainers import evaluate

    prefix = dag.read_marker(smoke["run_dir"], "train-base")["outputs"]["checkpoint"]
    ours = evaluate.evaluate(prefix, "checkerboard", 3, workers=0, seed=paper.EVAL_SEED)
    theirs = evaluate.evaluate(prefix, "checkerboard", 3, workers=1, seed=paper.EVAL_SEED)
    for key in (
        "successes",
        "outcomes",
        "steps",
        "episodes",
        "interval_95",
        "checkpoint",
        "policy",
    ):
        assert ours[key] == theirs[key], key


# --- The report ---------------------------------------------------------------------------


def test_robustness_table_has_every_task(smoke):
    rows = _csv(smoke["run_dir"], "robustness")
    assert list(rows[0]) == ["task", "success", "ci_low", "ci_high", "episodes"]
    assert [r["task"] for r in rows] == list(schema.TASKS)
    for row in rows:
        _check_rate(row)


def test_finetune_table_has_every_task_and_size_with_the_base_policy(smoke):
    rows = _csv(smoke["run_dir"], "finetune")
    assert list(rows[0]) == [
        "task",
        "target_grasps",
        "success",
        "ci_low",
        "ci_high",
        "episodes",
        "base_success",
        "base_ci_low",
        "base_ci_high",
        "base_episodes",
        "change_points",
        "change_ci_low",
        "change_ci_high",
        "change_paired",
    ]
    assert [(r["task"], int(r["target_grasps"])) for r in rows] == [
        (t, n) for t in schema.CHALLENGE_TASKS for n in SMOKE.sizes
    ]
    robustness = {r["task"]: r for r in _csv(smoke["run_dir"], "robustness")}
    for row in rows:
        rate, base = _check_rate(row), _check_rate(row, "base_")
        assert base == float(robustness[row["task"]]["success"])
        assert float(row["change_points"]) == pytest.approx(100 * (rate - base), abs=0.06)
        low, high = float(row["change_ci_low"]), float(row["change_ci_high"])
        assert low <= float(row["change_points"]) <= high


def test_baselines_table_compares_four_methods_at_the_largest_size(smoke):
    rows = _csv(smoke["run_dir"], "baselines")
    assert list(rows[0]) == [
        "task",
        "target_grasps",
        "method",
        "success",
        "ci_low",
        "ci_high",
        "episodes",
    ]
    assert [(r["task"], r["method"]) for r in rows] == [
        (t, m) for t in schema.CHALLENGE_TASKS for m in report.METHODS
    ]
    assert {int(r["target_grasps"]) for r in rows} == {max(SMOKE.sizes)}
    for row in rows:
        _check_rate(row)


def test_continual_table_has_a_row_per_link_with_forgetting(smoke):
    rows = _csv(smoke["run_dir"], "continual")
    assert list(rows[0])[:2] == ["link", "task"]
    for prefix in ("continual_", "single_step_", "base_after_link_"):
        for key in ("success", "ci_low", "ci_high", "episodes"):
            assert f"{prefix}{key}" in rows[0]
    assert list(rows[0])[-4:] == [
        "forgetting_points",
        "forgetting_ci_low",
        "forgetting_ci_high",
        "forgetting_paired",
    ]
    assert [(int(r["link"]), r["task"]) for r in rows] == list(
        enumerate(schema.CHALLENGE_TASKS, start=1)
    )
    base_on_base = json.load(open(paper.eval_path(smoke["run_dir"], "base", "base")))
    finetune = {(r["task"]): r for r in _csv(smoke["run_dir"], "finetune")}
    for row in rows:
        _check_rate(row, "continual_")
        after = _check_rate(row, "base_after_link_")
        assert _check_rate(row, "single_step_") == float(finetune[row["task"]]["success"])
        expected = 100 * (base_on_base["success_rate"] - after)
        assert float(row["forgetting_points"]) == pytest.approx(expected, abs=0.06)


def test_findings_table_agrees_with_the_other_tables(smoke):
    rows = _csv(smoke["run_dir"], "findings")
    assert [r["task"] for r in rows] == list(schema.CHALLENGE_TASKS)
    robustness = {r["task"]: float(r["success"]) for r in _csv(smoke["run_dir"], "robustness")}
    finetune = {r["task"]: float(r["success"]) for r in _csv(smoke["run_dir"], "finetune")}
    methods = {
        (r["task"], r["method"]): float(r["success"]) for r in _csv(smoke["run_dir"], "baselines")
    }
    for row in rows:
        task = row["task"]
        cost = 100 * (robustness["base"] - robustness[task])
        assert float(row["cost_points"]) == pytest.approx(cost, abs=0.06)
        scratch = 100 * (finetune[task] - methods[(task, "scratch")])
        assert float(row["vs_scratch_points"]) == pytest.approx(scratch, abs=0.06)
        for key in report.FINDINGS:
            low, high = float(row[f"{key}_ci_low"]), float(row[f"{key}_ci_high"])
            assert -100 <= low <= float(row[f"{key}_points"]) <= high <= 100
            # Every evaluation of the run recorded its outcomes on the same seeds.
            assert row[f"{key}_paired"] == "1", (task, key)


def test_report_only_rebuilds_the_report_from_what_finished_and_runs_nothing(
    smoke, tmp_path, capsys
):
    """A copy of the run's results with one step's evaluation missing, as in a run
    still going: --report-only writes every table, n/a where the result is not in."""
    from neverstop import cli

    run_dir = str(tmp_path / "partial")
    os.makedirs(run_dir)
    shutil.copy(os.path.join(smoke["run_dir"], paper.EXPERIMENT_FILE), run_dir)
    shutil.copytree(os.path.join(smoke["run_dir"], "eval"), os.path.join(run_dir, "eval"))
    shutil.rmtree(os.path.join(run_dir, "eval", "scratch-harsh_lighting-4"))
    assert cli.main(["experiment", "paper", "--run-dir", run_dir, "--report-only"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {paper.report_path(run_dir)}"
    assert sorted(os.listdir(run_dir)) == sorted([paper.EXPERIMENT_FILE, "eval", "report"])
    baselines = _csv(run_dir, "baselines")
    missing = [r for r in baselines if (r["task"], r["method"]) == ("harsh_lighting", "scratch")]
    assert [r["success"] for r in missing] == [""]
    assert _csv(run_dir, "baselines")[0] == _csv(smoke["run_dir"], "baselines")[0]
    findings = {r["task"]: r for r in _csv(run_dir, "findings")}
    assert findings["harsh_lighting"]["vs_scratch_points"] == ""
    assert (
        findings["checkerboard"]
        == {r["task"]: r for r in _csv(smoke["run_dir"], "findings")}["checkerboard"]
    )
    # Another scale is refused, naming the file; the record is left as it was.
    before = open(os.path.join(run_dir, paper.EXPERIMENT_FILE)).read()
    assert (
        cli.main(["experiment", "paper", "--scale", "small", "--run-dir", run_dir, "--report-only"])
        == 2
    )
    assert "experiment.json: this run dir was made with scale 'smoke'" in capsys.readouterr().err
    assert open(os.path.join(run_dir, paper.EXPERIMENT_FILE)).read() == before


def test_report_only_needs_a_run_dir_and_a_run_needs_a_scale(tmp_path, capsys):
    from neverstop import cli

    empty = str(tmp_path / "empty")
    assert cli.main(["experiment", "paper", "--run-dir", empty, "--report-only"]) == 2
    assert "experiment.json not found" in capsys.readouterr().err
    assert not os.path.exists(empty)
    assert cli.main(["experiment", "paper", "--run-dir", empty]) == 2
    assert "--scale is required" in capsys.readouterr().err
    assert not os.path.exists(empty)
    # A damaged record is named, and left for the user to look at.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for text, message in (
        ('{"experiment": "paper", "sca', "experiment.json: not valid JSON"),
        ('{"experiment": "paper"}', "experiment.json: expected {'scale'"),
    ):
        (damaged / paper.EXPERIMENT_FILE).write_text(text)
        for argv in (["--report-only"], ["--scale", "smoke"]):
            assert cli.main(["experiment", "paper", "--run-dir", str(damaged)] + argv) == 2
            assert message in capsys.readouterr().err
            assert (damaged / paper.EXPERIMENT_FILE).read_text() == text
        assert sorted(os.listdir(damaged)) == [paper.EXPERIMENT_FILE]


def test_plots_are_valid_pngs(smoke):
    for name in ("finetune.png", "continual.png"):
        path = os.path.join(smoke["run_dir"], "report", name)
        assert os.path.getsize(path) > 5000
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size[0] >= 600 and image.size[1] >= 300


def test_readme_ties_tables_plots_scale_and_datasets_together(smoke):
    assert smoke["readme"] == os.path.join(smoke["run_dir"], "report", "README.md")
    text = open(smoke["readme"]).read()
    for name in ("findings", "robustness", "finetune", "baselines", "continual"):
        assert f"[{name}.csv]({name}.csv)" in text
        assert report.TABLE_TITLES[name] in text
    assert "![success vs target grasps](finetune.png)" in text
    assert "![continual chain](continual.png)" in text
    for dataset in ("grasps/base:1.0.0", "grasps/base:1.1.0", "grasps/checkerboard:1.0.0"):
        assert f"`{dataset}`" in text
    assert '"name": "smoke"' in text
    # Every checkpoint's data and config: the base pre-training, and a fine-tune
    # that starts from the base policy's last checkpoint on the 50/50 mixture.
    runs = text.split("## Training runs")[1].split("## Scale")[0]
    assert (
        f"| `base-r0` | pretrain |  | `grasps/base:1.0.0:train:1` | {SMOKE.pretrain_steps} |"
        in runs
    )
    parent = json.load(
        open(
            os.path.join(smoke["run_dir"], "checkpoints", "finetune-checkerboard-4", "lineage.json")
        )
    )
    assert parent["parent_checkpoint"]["id"].startswith("base.ckpt-")
    assert (
        f"| `finetune-checkerboard-4` | finetune | `{parent['parent_checkpoint']['id']}` | "
        "`grasps/base:1.1.0:train:0.5,grasps/checkerboard:1.0.0:train[:4]:0.5` | "
    ) in runs
    assert "| `scratch-checkerboard-4` | scratch |  |" in runs
    assert "| `imagenet-checkerboard-4` | imagenet | the vision tower |" in runs
    assert "`base`'s config:" in runs and '"conservative_weight": 0.3' in runs
    assert "| checkerboard | 4 |" in text
