"""Tests for neverstop/cli.py: the `neverstop` console script and its subcommands."""

import argparse
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from neverstop import cli
from neverstop import rawlog
from neverstop import schema
from neverstop.envs import grasp_env
from tests.workflows import eval_results

# The console script installed next to this interpreter, so the test runs the
# entry point users run rather than `python -m`.
NEVERSTOP = os.path.join(os.path.dirname(sys.executable), "neverstop")


def _neverstop(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([NEVERSTOP, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


class _Terminal(io.StringIO):
    """A stderr that claims to be a terminal, so the CLI's progress bar is enabled."""

    def isatty(self) -> bool:
        return True


def test_help_lists_the_subcommands(tmp_path):
    completed = _neverstop("--help", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    for command in ("quickstart", "experiment", "render", "rollout", "bench", "tasks"):
        assert re.search(rf"^\s+{command}\s", completed.stdout, re.MULTILINE), command


def _subparsers(parser):
    """Yields (name, parser) for every subcommand, nested ones too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for nested_name, nested in _subparsers(sub):
                    yield f"{name} {nested_name}", nested


def test_every_help_text_prints_percent_signs_once():
    # argparse %-formats argument help but not descriptions or epilogs, so a
    # "95%%" there reaches the user doubled.
    parser = cli.build_parser()
    pages = {"neverstop": parser.format_help()}
    pages.update({name: sub.format_help() for name, sub in _subparsers(parser)})
    assert {"rollout", "eval", "train"} <= set(pages)
    doubled = sorted(name for name, text in pages.items() if "%%" in text)
    assert doubled == []
    assert re.search(r"Wilson\s+95%\s+interval", pages["eval"])


def test_every_flag_of_every_command_has_help_text():
    # docs/cli.md promises that `neverstop COMMAND --help` explains every flag.
    parser = cli.build_parser()
    silent = [
        f"{name} {action.option_strings[-1]}"
        for name, sub in _subparsers(parser)
        for action in sub._actions
        if action.option_strings and not action.help
    ]
    assert silent == []


def test_every_seed_flag_refuses_a_negative_seed_by_name(capsys):
    # Episode seeds are uint32s derived from --seed; -1 used to reach numpy in
    # some commands ("expected non-negative integer") and pass silently in others.
    parser = cli.build_parser()
    seeded = [
        name
        for name, sub in _subparsers(parser)
        if any("--seed" in action.option_strings for action in sub._actions)
    ]
    assert {"render", "rollout", "collect", "train", "eval", "export", "pretrain-vision"} <= set(
        seeded
    )
    for name in seeded:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([*name.split(), "--seed", "-1"])
        assert exit_info.value.code == 2, name
        err = capsys.readouterr().err
        assert "argument --seed: a seed is a non-negative integer, got -1" in err, (name, err)
    with pytest.raises(SystemExit):
        parser.parse_args(["rollout", "--seed", "x"])
    assert "a seed is a non-negative integer, got 'x'" in capsys.readouterr().err
    assert parser.parse_args(["rollout", "--seed", "7"]).seed == 7


def test_render_writes_the_first_observation_as_a_scaled_png(tmp_path):
    out = tmp_path / "images" / "checkerboard.png"
    args = "render --task checkerboard --seed 3 --scale 2".split()
    completed = _neverstop(*args, "--out", str(out), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "128x128" in completed.stdout and "renderer tiny" in completed.stdout
    with Image.open(out) as image:
        assert image.size == (128, 128)
        assert image.mode == "RGB"
        pixels = np.asarray(image)
    # The CLI renders the held-out objects unless told otherwise.
    with grasp_env.GraspEnv("checkerboard", grasp_env.EnvConfig(object_split="eval")) as env:
        expected = env.reset(3)[schema.IMAGE]
    np.testing.assert_array_equal(pixels[::2, ::2], expected)
    np.testing.assert_array_equal(pixels[1::2, 1::2], expected)


def test_render_with_unknown_task_names_the_valid_ones(tmp_path):
    completed = _neverstop("render", "--task", "nope", "--out", "x.png", cwd=tmp_path)
    assert completed.returncode == 2
    assert "invalid choice: 'nope'" in completed.stderr
    for task in schema.TASKS:
        assert f"'{task}'" in completed.stderr
    assert not (tmp_path / "x.png").exists()


def test_rollout_writes_json_when_stderr_is_not_a_terminal(tmp_path):
    out = tmp_path / "result.json"
    completed = _neverstop(
        "rollout", "--policy", "random", "--episodes", "3", "--json", str(out), cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(out.read_text())["episodes"] == 3


def test_rollout_writes_json(tmp_path, monkeypatch, capsys):
    # With a terminal the progress bar counts, which sidesteps the bug above.
    monkeypatch.setattr(sys, "stderr", _Terminal())
    out = tmp_path / "result.json"
    code = cli.main(["rollout", "--policy", "random", "--episodes", "3", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["episodes"] == 3
    assert result["policy"] == "random"
    assert result["object_split"] == "eval"
    assert 0 <= result["successes"] <= 3
    assert len(result["interval_95"]) == 2
    assert f"{result['successes']}/3" in capsys.readouterr().out


def test_rollout_with_no_episodes_exits_2(capsys):
    assert cli.main(["rollout", "--episodes", "0"]) == 2
    assert "neverstop rollout: error: episodes must be positive, got 0" in capsys.readouterr().err


def test_render_with_zero_scale_exits_2(tmp_path, capsys):
    assert cli.main(["render", "--out", str(tmp_path / "x.png"), "--scale", "0"]) == 2
    assert "scale must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_tasks_lists_each_task_with_its_robot(capsys):
    assert cli.main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(schema.TASKS)
    for line, task in zip(lines, schema.TASKS):
        assert schema.robot_id(task) in line
    assert "the reference world" in lines[0]
    assert "finger_extension=0.08" in lines[schema.TASKS.index("extended_gripper")]


def test_bench_env_ends_with_a_result_line(tmp_path):
    completed = _neverstop("bench", "env", "--episodes", "2", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert re.match(r"^RESULT env_grasps_per_s_ratio \d+\.\d+$", lines[-1]), lines[-1]
    assert any(line.startswith("neverstop GraspEnv (tiny): 2 grasp episodes") for line in lines)
    assert any(line.startswith("pybullet_envs KukaDiverseObjectEnv: 2 grasp") for line in lines)


# --- collect and export-bag -------------------------------------------------------------


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """`neverstop collect` of three random episodes, run once for the tests below."""
    root = tmp_path_factory.mktemp("cli-collect")
    out = root / "raw"
    completed = _neverstop(
        *"collect --episodes 3 --workers 1 --task base --policy random --seed 1".split(),
        "--out",
        str(out),
        cwd=root,
    )
    return root, out, completed


def test_help_lists_collect_and_export_bag(tmp_path):
    completed = _neverstop("--help", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    for command in ("collect", "export-bag"):
        assert re.search(rf"^\s+{command}\s", completed.stdout, re.MULTILINE), command


def test_collect_writes_the_episodes_and_says_so(collected):
    _, out, completed = collected
    assert completed.returncode == 0, completed.stderr
    assert f"{out}: 3 episodes written, 0 already there" in completed.stdout
    names = sorted(os.listdir(out))
    # The episodes, and the local workers' start-up chatter kept off the terminal.
    assert names == ["_logs"] + [f"sim-base-random-s1-{i:06d}.nsep" for i in range(3)]
    assert "semi_persistent_directory" not in completed.stderr
    names = names[1:]
    for name in names:
        episode = rawlog.read_episode(str(out / name))
        assert episode.metadata[schema.POLICY] == "random"
        assert episode.provenance["object_split"] == "train"


def test_collect_with_no_episodes_exits_2_before_starting(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["collect", "--episodes", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "neverstop collect: error: --episodes must be a positive integer, got 0" in err
    assert not out.exists()


def test_collect_with_an_unknown_policy_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["collect", "--episodes", "1", "--policy", "nope", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_collect_into_an_unwritable_directory_exits_2(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "sub"
    assert cli.main(["collect", "--episodes", "1", "--out", str(out)]) == 2
    assert f"output directory {str(out)!r} is not writable" in capsys.readouterr().err


def test_unknown_flags_on_a_command_without_beam_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["tasks", "--bogus"])
    assert exit_info.value.code == 2
    # The command's own parser reports it, so the message names the command.
    assert "neverstop tasks: error: unrecognized arguments: --bogus" in capsys.readouterr().err


def test_a_mistyped_beam_flag_exits_2_before_any_work(tmp_path, capsys):
    out = tmp_path / "raw"
    code = cli.main(["collect", "--episodes", "2", "--out", str(out), "--epislon", "0.2"])
    assert code == 2
    assert "neverstop collect: error: unknown option --epislon" in capsys.readouterr().err
    assert not out.exists()


def test_export_bag_from_an_empty_directory_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["export-bag", "--input", str(empty), "--out", str(tmp_path / "x")]) == 2
    assert f"no .nsep episode files in {str(empty)!r}" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_bag_writes_one_bag_per_episode(collected):
    root, out, _ = collected
    bags = root / "bags"
    completed = _neverstop(
        "export-bag", "--input", str(out), "--out", str(bags), "--storage", "sqlite3", cwd=root
    )
    assert completed.returncode == 0, completed.stderr
    assert f"wrote 3 bags (sqlite3) to {bags}" in completed.stdout
    names = sorted(os.listdir(bags))
    assert names == [f"sim-base-random-s1-{i:06d}.bag" for i in range(3)]
    for name in names:
        files = sorted(os.listdir(bags / name))
        assert "metadata.yaml" in files
        assert [f for f in files if f.endswith(".db3")], files


def test_cli_choices_match_the_library():
    from neverstop.envs import grasp_env, policies

    assert set(cli.POLICY_NAMES) == set(policies.POLICY_NAMES)
    assert cli.EXPLORER_NAMES == tuple(policies.EXPLORERS)
    assert set(cli.RENDERERS) == set(grasp_env.RENDERERS)
    from neverstop.trainers import config, distribute

    assert cli.ACTING == config.ACTING
    assert cli.STRATEGIES == distribute.STRATEGIES


def test_ingest_then_datasets_list_and_show(tmp_path):
    from tests.pipelines.test_ingest import _episode, _write_raw

    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(5):
        _write_raw(raw, _episode(i))
    (raw / "junk.nsep").write_bytes(b"junk")
    data = tmp_path / "data"
    completed = _neverstop(
        "ingest",
        "--input",
        str(raw / "*.nsep"),
        "--dataset",
        "grasps",
        "--config",
        "base",
        "--data-dir",
        str(data),
        "--workers",
        "2",
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "published grasps/base:1.0.0" in completed.stdout
    assert "5 episodes, 20 steps" in completed.stdout
    assert "1 dead letters (unreadable: 1)" in completed.stdout
    assert "semi_persistent_directory" not in completed.stderr  # worker chatter goes to a log
    listed = _neverstop("datasets", "list", "--data-dir", str(data), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("grasps/base:1.0.0  [train: 5 episodes in 1 shards")
    shown = _neverstop("datasets", "show", "grasps/base", "--data-dir", str(data), cwd=tmp_path)
    assert "release notes: {'1.0.0': 'Initial ingestion.'}" in shown.stdout
    missing = _neverstop("datasets", "show", "--data-dir", str(data), cwd=tmp_path)
    assert missing.returncode == 2
    assert "neverstop datasets: error: datasets show needs a NAME" in missing.stderr


@pytest.mark.parametrize("stage, expected", [("env", 30), ("collect", 600), ("ingest", 20000)])
def test_bench_without_episodes_uses_the_stage_default(monkeypatch, stage, expected):
    import importlib

    module = importlib.import_module(f"neverstop.benchmarks.{stage}_bench")
    seen = {}

    def fake_run(episodes=None, *args, **kwargs):
        seen["episodes"] = kwargs.get("episodes", episodes)
        side = {
            "name": "x",
            "episodes": 1,
            "seconds": 1.0,
            "grasps_per_s": 1.0,
            "success_rate": 0.0,
            "episodes_per_s": 1.0,
            "steady_per_s": 1.0,
            "startup_s": 0.0,
            "workers": 1,
            "peak_rss_mb": 1.0,
        }
        return {
            "ours": side,
            "peer": side,
            "runs": [side, side],
            "identical": True,
            "results": {1: {"ours": side, "peer": side}},
            "workers": 2,
            "ratio": 1.0,
            "rss_growth": 1.0,
            "rss_sizes": (1, 1),
            "episodes": 1,
        }

    monkeypatch.setattr(module, "run", fake_run)
    assert cli.main(["bench", stage]) == 0
    assert seen["episodes"] == expected


def test_bench_mix_defaults_and_prints_the_result_last(monkeypatch, capsys):
    from neverstop.benchmarks import mix_bench

    seen = {}

    def fake_run_generated(base, target):
        seen.update(base=base, target=target)
        side = {"transitions_per_s": 10.0, "seconds": 1.0}
        return {
            "ours": side,
            "ours_augmented": side,
            "ours_decode_sampled": side,
            "decode_seconds": 0.2,
            "decoded_mb": 10.0,
            "peer": dict(side, transitions_per_s=4.0),
            "batches": 1,
            "batch_size": 64,
            "table_seconds": 0.1,
            "sources": [("a", 1), ("b", 1)],
            "ratio": 2.5,
        }

    from neverstop.benchmarks import train_bench

    monkeypatch.setattr(mix_bench, "run_generated", fake_run_generated)
    monkeypatch.setattr(train_bench, "trainer_steps_per_s", lambda config: 0.125)
    assert cli.main(["bench", "mix"]) == 0
    assert seen == {"base": 2000, "target": 200}
    lines = capsys.readouterr().out.strip().splitlines()
    assert "0.1 steps/s = 8 transitions/s; our augmented stream delivers 1.2x that" in lines[-2]
    assert lines[-1] == "RESULT mix_speed_ratio 2.50"


def test_bench_train_prints_the_late_merge_fraction_last(monkeypatch, capsys):
    from neverstop.benchmarks import train_bench

    seen = {}

    def fake_run(steps):
        seen["steps"] = steps
        return {"late": 0.4567, "qtopt": 0.9}

    monkeypatch.setattr(train_bench, "run", fake_run)
    assert cli.main(["bench", "train"]) == 0
    assert seen == {"steps": 40}
    assert capsys.readouterr().out.strip().splitlines()[-1] == "RESULT train_flops_fraction 0.46"


def test_eval_prints_the_rate_and_interval_and_writes_json(monkeypatch, capsys, tmp_path):
    from neverstop.trainers import evaluate

    calls = []

    def fake_evaluate(
        checkpoint, task, episodes, workers, seed, object_split, renderer, progress, acting
    ):
        calls.append(acting)
        for ok in (True, False, True):  # a disabled (non-tty) bar must not break the count
            progress(ok)
        return {
            "policy": "qtopt:run.ckpt-5",
            "acting": acting or "cem",
            "successes": 2,
            "episodes": 3,
            "success_rate": 2 / 3,
            "interval_95": [0.2, 0.94],
            "seconds": 1.0,
        }

    monkeypatch.setattr(evaluate, "evaluate", fake_evaluate)
    out = tmp_path / "e.json"
    assert cli.main(["eval", "--checkpoint", "x", "--episodes", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "qtopt:run.ckpt-5 (cem) on base" in text
    assert "2/3 = 66.7%, 95% interval [20.0%, 94.0%]" in text
    assert json.loads(out.read_text())["successes"] == 2
    assert cli.main(["eval", "--checkpoint", "x", "--acting", "actor", "--out", str(out)]) == 0
    assert calls == [None, "actor"] and "(actor) on base" in capsys.readouterr().out


def _eval_json(path, outcomes, seed=1_000_000, task="checkerboard", **extra):
    """neverstop eval's JSON for these per-episode outcomes (counts from them
    unless `extra` says otherwise)."""
    successes = extra.pop("successes", outcomes.count("1"))
    result = eval_results.eval_result(
        task, successes, len(outcomes), outcomes, seed, policy=f"qtopt:{path.stem}.ckpt-9", **extra
    )
    return eval_results.write(path, result)


def test_compare_names_a_result_with_impossible_counts(capsys, tmp_path):
    good = _eval_json(tmp_path / "good.json", "10" * 50)
    empty = tmp_path / "empty.json"
    result = json.loads(open(good).read())
    result.update(episodes=0, successes=0, outcomes="")
    empty.write_text(json.dumps(result))
    assert cli.main(["compare", good, str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"{empty}: expected 'episodes' >= 1 and 0 <= 'successes' <= 'episodes'" in err
    png = tmp_path / "plot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert cli.main(["compare", good, str(png)]) == 2
    assert f"{png}: not valid JSON" in capsys.readouterr().err


def test_compare_pairs_two_evaluations_on_the_same_seeds(capsys, tmp_path):
    # 100 scenes both solve, 40 only the fine-tune, 60 neither: +20 points. By
    # hand: Wilson 140/200 [0.6332, 0.7593], 100/200 [0.4314, 0.5686]; phi =
    # (100 * 60 - 0 - 200 / 2) / sqrt(140 * 60 * 100 * 100) = 0.6437; low = 0.2 -
    # sqrt(0.0668^2 + 0.0686^2 - 2 phi 0.0668 * 0.0686) = 0.1428, high = 0.2546.
    tuned = _eval_json(tmp_path / "tuned.json", "1" * 100 + "1" * 40 + "0" * 60)
    base = _eval_json(tmp_path / "base.json", "1" * 100 + "0" * 100)
    assert cli.main(["compare", tuned, base]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("A: qtopt:tuned.ckpt-9 on checkerboard: 140/200 = 70.0% [")
    assert out[1].startswith("B: qtopt:base.ckpt-9 on checkerboard: 100/200 = 50.0% [")
    assert out[2] == (
        "A - B: +20.0 points, 95% interval [+14.3, +25.5], "
        "paired over the same 200 episodes (seed 1000000)"
    )
    # The same counts on other seeds: independent samples (phi 0), wider, and why.
    other = _eval_json(tmp_path / "other.json", "1" * 100 + "0" * 100, seed=2_000_000)
    assert cli.main(["compare", tuned, other]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == (
        "A - B: +20.0 points, 95% interval [+10.4, +29.1], "
        "as independent samples: different seed (1000000 and 2000000)"
    )
    # `neverstop rollout` results record no `seed` (their episodes' seeds are
    # numbered another way): never paired, and the reason says so.
    rollouts = []
    for name in ("r1.json", "r2.json"):
        result = json.loads(open(other).read())
        result["first_seed"] = result.pop("seed")
        del result["outcomes"]
        (tmp_path / name).write_text(json.dumps(result))
        rollouts.append(str(tmp_path / name))
    assert cli.main(["compare", tuned, rollouts[0]]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.endswith("as independent samples: no seed recorded in one"), last
    assert cli.main(["compare", *rollouts]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.endswith("+0.0 points, 95% interval [-9.7, +9.7], as independent samples: "
                         "no seed recorded in both"), last


def test_compare_names_a_result_whose_outcomes_disagree(capsys, tmp_path):
    good = _eval_json(tmp_path / "good.json", "10" * 50)
    bad = _eval_json(tmp_path / "bad.json", "10" * 50, successes=49)
    assert cli.main(["compare", good, bad]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: expected 'outcomes' to be one '0' or '1' per episode (100) with 49 '1's" in err


def test_train_with_actor_trains_and_acts_with_one():
    parser = cli.build_parser()
    base = ["train", "--mixture", "base:train:1", "--data-dir", "d", "--run-dir", "r"]
    config = cli._train_config(parser.parse_args(base))
    assert (config.actor, config.acting) == (False, "cem")
    config = cli._train_config(parser.parse_args(base + ["--actor"]))
    assert (config.actor, config.acting) == (True, "actor")


def test_train_with_the_qtopt_merge_drops_the_late_merges_keypoints():
    parser = cli.build_parser()
    base = ["train", "--mixture", "base:train:1", "--data-dir", "d", "--run-dir", "r"]
    config = cli._train_config(parser.parse_args(base + ["--merge", "qtopt"]))
    assert (config.merge, config.keypoints) == ("qtopt", False)
    assert cli._train_config(parser.parse_args(base)).keypoints


def test_results_that_could_not_be_written_are_refused_before_the_episodes(tmp_path, capsys):
    (tmp_path / "adir").mkdir()
    code = cli.main(["rollout", "--episodes", "1", "--json", str(tmp_path / "adir")])
    assert code == 2
    assert f"neverstop rollout: error: {tmp_path / 'adir'} is a directory" in capsys.readouterr().err
    # A missing folder is made, as for every other output.
    out = tmp_path / "new" / "r.json"
    assert cli.main(["rollout", "--episodes", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["episodes"] == 1
    code = cli.main(
        ["eval", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "adir")]
    )
    assert code == 2
    assert f"neverstop eval: error: {tmp_path / 'adir'} is a directory" in capsys.readouterr().err


def test_train_reports_bad_input_as_an_error_line(capsys, tmp_path):
    code = cli.main(
        ["train", "--mixture", "base:train:0:5", "--data-dir", str(tmp_path), "--run-dir", "r"]
    )
    assert code == 2
    assert "neverstop train: error:" in capsys.readouterr().err


# --- experiment -------------------------------------------------------------------------


def test_experiment_help_names_the_scales_and_resuming(tmp_path):
    completed = _neverstop("experiment", "--help", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    text = " ".join(completed.stdout.split())
    assert "--scale {smoke,small,full}" in text
    assert "--workers WORKERS" in text
    assert "running the same command again skips those" in text


def test_experiment_refuses_a_run_dir_of_another_scale(tmp_path, capsys):
    from neverstop.workflows import paper

    paper.check_run_dir(str(tmp_path), paper.SCALES["smoke"])
    code = cli.main(["experiment", "paper", "--scale", "small", "--run-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("neverstop experiment: error: ")
    assert os.path.join(str(tmp_path), "experiment.json") in err
    assert "made with scale 'smoke'" in err and "'small' now" in err
    assert not os.path.exists(tmp_path / ".done")


def test_experiment_with_no_workers_exits_2(tmp_path, capsys):
    code = cli.main(
        ["experiment", "paper", "--scale", "smoke", "--run-dir", str(tmp_path), "--workers", "0"]
    )
    assert code == 2
    assert "--workers must be >= 1, got 0" in capsys.readouterr().err


def test_step_printer_prints_a_line_per_start_and_finish():
    out = io.StringIO()
    printer = cli._StepPrinter(out)
    for event in (
        {"event": "skip", "step": "a"},
        {"event": "skip", "step": "b"},
        {"event": "start", "step": "c"},
        {"event": "done", "step": "c", "seconds": 3.25},
        {"event": "failed", "step": "d", "reason": "RuntimeError: x"},
    ):
        printer(event)
    lines = out.getvalue().splitlines()
    assert lines[0] == "  resuming: 2 steps already done, skipped"
    assert re.fullmatch(r"\[ +\d+:\d\d\] start  c", lines[1])
    assert re.fullmatch(r"\[ +\d+:\d\d\] done   c \(3\.2 s\)", lines[2])
    assert lines[3].endswith("FAILED d (RuntimeError: x)")
