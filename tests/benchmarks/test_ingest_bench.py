"""Tests for neverstop/benchmarks/ingest_bench.py (tiny sizes; timings never asserted)."""

from neverstop.benchmarks import ingest_bench


def test_tiny_bench_measures_both_sides_on_the_same_episodes():
    result = ingest_bench.run(episodes=12, rss_small=6, rss_large=9)
    assert sorted(result["results"]) == [6, 9, 12]
    for n, sides in result["results"].items():
        for side in ("ours", "peer"):
            assert sides[side]["code"] == 0
            assert sides[side]["episodes_per_s"] == n / sides[side]["seconds"]
            assert sides[side]["peak_rss_mb"] > 50  # TensorFlow alone is bigger than this
    big = result["results"][12]
    assert result["ratio"] == big["ours"]["episodes_per_s"] / big["peer"]["episodes_per_s"]
    rss = [result["results"][n]["ours"]["peak_rss_mb"] for n in (9, 6)]
    assert result["rss_growth"] == rss[0] / rss[1]


def test_bench_refuses_sizes_out_of_order():
    import pytest

    with pytest.raises(ValueError, match="rss_small"):
        ingest_bench.run(episodes=10, rss_small=5, rss_large=4)
