"""Tests for neverstop/workflows/dag.py: order, parallelism, markers, failures, resume."""

import json
import os

import pytest

from neverstop.workflows import dag
from tests.workflows import dag_steps


def _times(run_dir, name):
    with open(os.path.join(run_dir, "times", f"{name}.json")) as f:
        return json.load(f)


def _diamond():
    return [
        dag.Step("a", dag_steps.timed, {"name": "a", "seconds": 1.0}),
        dag.Step("b", dag_steps.timed, {"name": "b", "seconds": 1.0}),
        dag.Step("c", dag_steps.timed, {"name": "c"}, deps=("a", "b")),
    ]


def test_independent_steps_run_in_parallel_and_dependents_wait(tmp_path):
    run_dir = str(tmp_path)
    events = []
    markers = dag.run_steps(_diamond(), run_dir, workers=2, progress=events.append)
    a, b, c = (_times(run_dir, n) for n in "abc")
    # a and b overlap in time, in two different processes.
    assert a["start"] < b["end"] and b["start"] < a["end"]
    assert a["pid"] != b["pid"]
    assert c["start"] >= max(a["end"], b["end"])
    assert markers["c"]["outputs"] == {"name": "c", "pid": c["pid"]}
    starts = [e["step"] for e in events if e["event"] == "start"]
    assert starts.index("c") == 2
    assert sorted(os.listdir(os.path.join(run_dir, dag.DONE_DIR))) == ["a.json", "b.json", "c.json"]
    with open(dag.log_path(run_dir, "a")) as f:
        assert "step a" in f.read()


def test_one_worker_runs_one_step_at_a_time(tmp_path):
    run_dir = str(tmp_path)
    dag.run_steps(_diamond(), run_dir, workers=1)
    a, b = _times(run_dir, "a"), _times(run_dir, "b")
    assert a["end"] <= b["start"] or b["end"] <= a["start"]


def test_a_rerun_skips_finished_steps(tmp_path):
    run_dir = str(tmp_path)
    first = dag.run_steps(_diamond(), run_dir, workers=2)
    mtimes = {n: os.path.getmtime(dag.marker_path(run_dir, n)) for n in "abc"}
    events = []
    second = dag.run_steps(_diamond(), run_dir, workers=2, progress=events.append)
    assert [(e["event"], e["step"]) for e in events] == [("skip", n) for n in "abc"]
    assert second == first
    assert {n: os.path.getmtime(dag.marker_path(run_dir, n)) for n in "abc"} == mtimes
    log = dag.read_step_log(run_dir)
    assert [e["event"] for e in log].count("start") == 3


def test_a_failed_step_stops_its_dependents_and_a_rerun_finishes(tmp_path):
    run_dir = str(tmp_path)
    steps = [
        dag.Step("a", dag_steps.timed, {"name": "a"}),
        dag.Step("b", dag_steps.fail_unless_fixed, deps=("a",)),
        dag.Step("c", dag_steps.timed, {"name": "c"}, deps=("b",)),
    ]
    with pytest.raises(dag.WorkflowError) as error:
        dag.run_steps(steps, run_dir, workers=2)
    message = str(error.value)
    assert "1 step(s) failed: b" in message
    assert dag.log_path(run_dir, "b") in message
    assert "RuntimeError: injected failure" in message  # the end of b's log
    assert dag.read_marker(run_dir, "a") is not None
    assert dag.read_marker(run_dir, "b") is None
    assert not os.path.exists(os.path.join(run_dir, "times", "c.json"))
    failed = [e for e in dag.read_step_log(run_dir) if e["event"] == "failed"]
    assert [(e["step"], e["reason"]) for e in failed] == [("b", "RuntimeError: injected failure")]

    open(os.path.join(run_dir, "fixed"), "w").close()
    events = []
    dag.run_steps(steps, run_dir, workers=2, progress=events.append)
    assert [(e["event"], e["step"]) for e in events if e["event"] != "done"] == [
        ("skip", "a"),
        ("start", "b"),
        ("start", "c"),
    ]
    assert dag.read_marker(run_dir, "c")["outputs"]["name"] == "c"


def test_a_killed_worker_is_a_failed_step(tmp_path):
    steps = [dag.Step("boom", dag_steps.kill_self)]
    with pytest.raises(dag.WorkflowError, match="1 step.s. failed: boom"):
        dag.run_steps(steps, str(tmp_path), workers=1)
    (event,) = [e for e in dag.read_step_log(str(tmp_path)) if e["event"] == "failed"]
    assert "worker process died" in event["reason"]
    assert dag.read_marker(str(tmp_path), "boom") is None


def test_bad_graphs_are_refused_before_anything_runs(tmp_path):
    step = lambda name, *deps: dag.Step(name, dag_steps.timed, {"name": name}, deps)  # noqa
    with pytest.raises(dag.WorkflowError, match="cycle: a -> b -> a"):
        dag.run_steps([step("a", "b"), step("b", "a")], str(tmp_path))
    with pytest.raises(dag.WorkflowError, match=r"'a' depends on unknown steps \['x'\]"):
        dag.check_graph([step("a", "x")])
    with pytest.raises(dag.WorkflowError, match="two steps are named 'a'"):
        dag.check_graph([step("a"), step("a")])
    with pytest.raises(dag.WorkflowError, match="workers must be a positive integer"):
        dag.run_steps([step("a")], str(tmp_path), workers=0)
    assert not os.path.exists(os.path.join(str(tmp_path), "times"))


def test_the_longest_chain_starts_first(tmp_path):
    steps = [
        dag.Step("short", dag_steps.timed, {"name": "short"}),
        dag.Step("long1", dag_steps.timed, {"name": "long1"}),
        dag.Step("long2", dag_steps.timed, {"name": "long2"}, deps=("long1",)),
        dag.Step("end", dag_steps.timed, {"name": "end"}, deps=("short", "long2")),
    ]
    assert dag.chain_heights(steps) == {"short": 2, "long1": 3, "long2": 2, "end": 1}
    events = []
    dag.run_steps(steps, str(tmp_path), workers=1, progress=events.append)
    # long1 first; then short and long2 tie (2 each) and keep their list order.
    assert [e["step"] for e in events if e["event"] == "start"] == [
        "long1",
        "short",
        "long2",
        "end",
    ]
