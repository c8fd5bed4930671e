"""Tests for neverstop/benchmarks/env_bench.py (our side; the peer runs in tests/test_cli.py)."""

import pytest

from neverstop.benchmarks import env_bench


def test_run_rejects_no_episodes():
    with pytest.raises(ValueError, match="episodes must be positive, got 0"):
        env_bench.run(0)


def test_run_ours_reports_consistent_counts():
    calls = []
    result = env_bench.run_ours(3, seed=0, progress=lambda: calls.append(1))
    assert result["name"] == "neverstop GraspEnv (tiny)"
    assert result["episodes"] == 3
    assert len(calls) == 3
    assert result["success_rate"] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert result["grasps_per_s"] == pytest.approx(3 / result["seconds"])


def test_run_ours_is_repeatable():
    first = env_bench.run_ours(4, seed=20)
    second = env_bench.run_ours(4, seed=20)
    assert first["success_rate"] == second["success_rate"]
