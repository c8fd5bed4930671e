"""Tests for neverstop/datasets/mixture.py, transitions.py and stream.py."""

import json
import os
import shutil

import numpy as np
import pytest

from neverstop import schema
from neverstop.datasets import mixture as mixture_lib
from neverstop.datasets import stream
from neverstop.datasets import transitions as tr
from neverstop.pipelines import ingest
from tests.pipelines.test_ingest import _episode, _write_raw

BASE = range(0, 25)
TARGET = range(100, 125)


def _steps(index: int) -> int:
    return 3 + index % 5  # 2 to 6 transitions


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """grasps/base and grasps/checkerboard, 25 episodes each, known contents."""
    root = tmp_path_factory.mktemp("mix")
    data = root / "data"
    for task, indices in (("base", BASE), ("checkerboard", TARGET)):
        raw = root / task
        raw.mkdir()
        for i in indices:
            _write_raw(raw, _episode(i, task=task, steps=_steps(i)))
        ingest.ingest(
            ingest.IngestConfig(
                input=str(raw / "*.nsep"),
                dataset="grasps",
                config=task,
                data_dir=str(data),
                workers=1,
                episodes_per_shard=10,
            ),
            running_mode="in_memory",
        )
    return str(data)


def _episodes_by_id():
    return {
        e.episode_id: e
        for e in [_episode(i, "base", _steps(i)) for i in BASE]
        + [_episode(i, "checkerboard", _steps(i)) for i in TARGET]
    }


def _take(ds, n_batches):
    return list(ds.take(n_batches).as_numpy_iterator())


# --- the mixture as data -------------------------------------------------------------------


def test_short_strings_parse_with_slices_versions_and_defaults():
    m = mixture_lib.Mixture.parse(
        "base:train:0.5, grasps/checkerboard:1.0.0:train[:800]:0.5,other/x:train[10%:]:2"
    )
    assert [(s.dataset, s.split, s.weight) for s in m.sources] == [
        ("base", "train", 0.5),
        ("grasps/checkerboard:1.0.0", "train[:800]", 0.5),
        ("other/x", "train[10%:]", 2.0),
    ]
    assert m.sources[0].dataset_prefix == "grasps/base"
    assert m.weights == pytest.approx((1 / 6, 1 / 6, 4 / 6))
    assert mixture_lib.Mixture.parse(str(m)) == m


def test_yaml_mixtures_and_chains_load(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(
        "sources:\n"
        "  - {dataset: grasps/base:1.0.0, split: train, weight: 0.9}\n"
        "  - {dataset: checkerboard, split: 'train[:800]', weight: 0.1}\n"
    )
    m = mixture_lib.Mixture.load(str(path))
    assert m.weights == pytest.approx((0.9, 0.1))
    assert mixture_lib.Mixture.from_dict(m.as_dict()) == m  # what a run's lineage records
    chain_path = tmp_path / "chain.yaml"
    chain_path.write_text(
        "chain:\n"
        "  - {name: first, mixture: 'base:train:0.5,checkerboard:train:0.5'}\n"
        "  - name: second\n"
        "    mixture: {sources: [{dataset: base}, {dataset: harsh_lighting}]}\n"
    )
    chain = mixture_lib.Chain.load(str(chain_path))
    assert [name for name, _ in chain.links] == ["first", "second"]
    assert chain.links[1][1].weights == (0.5, 0.5)
    study = mixture_lib.Chain.study()
    assert [name for name, _ in study.links] == list(schema.CHALLENGE_TASKS)
    assert all(str(m).startswith("base:train:0.5,") for _, m in study.links)


@pytest.mark.parametrize(
    "text, message",
    [
        ("base:train:0", "weight 0.0 must be positive"),
        ("base:train:-0.5", "weight -0.5 must be positive"),
        ("base:train:nan", "must be positive and finite"),
        ("base:train:x", "weight 'x' is not a number"),
        ("base:0.5", "cannot read mixture entry 'base:0.5'"),
        ("Base:train:1", "cannot read mixture entry"),
        ("base:train:1,base:train:1", "appears twice"),
        ("", "empty mixture"),
    ],
)
def test_bad_mixture_strings_are_clear_errors(text, message):
    with pytest.raises(mixture_lib.MixtureError, match=message):
        mixture_lib.Mixture.parse(text)


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sources:\n  - {dataset: base, weight: 1, colour: red}\n")
    with pytest.raises(mixture_lib.MixtureError, match=r"bad.yaml: source 0 has unknown keys"):
        mixture_lib.Mixture.load(str(path))
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(mixture_lib.MixtureError, match=r"bad.yaml is not valid YAML"):
        mixture_lib.Mixture.load(str(path))
    chain = tmp_path / "chain.yaml"
    chain.write_text("chain: []\n")
    with pytest.raises(mixture_lib.MixtureError, match="non-empty 'chain' list"):
        mixture_lib.Chain.load(str(chain))


# --- checked against a data dir before anything trains ---------------------------------------


def test_resolve_pins_versions_and_sizes(data_dir):
    resolved = mixture_lib.Mixture.parse("base:train:0.5,checkerboard:train[:10]:0.5").resolve(
        data_dir
    )
    assert [r.name for r in resolved] == [
        "grasps/base:1.0.0:train",
        "grasps/checkerboard:1.0.0:train[:10]",
    ]
    assert [r.episodes for r in resolved] == [25, 10]
    assert sum(take for _, _, take in resolved[1].file_instructions) == 10


def test_a_missing_dataset_is_named_with_what_is_published(data_dir):
    with pytest.raises(
        mixture_lib.MixtureError,
        match=r"no dataset 'grasps/harsh_lighting'.*"
        r"published: grasps/base:1.0.0, grasps/checkerboard:1.0.0",
    ):
        mixture_lib.Mixture.parse("base:train:1,harsh_lighting:train:1").resolve(data_dir)
    with pytest.raises(mixture_lib.MixtureError, match="no dataset 'grasps/base:2.0.0'"):
        mixture_lib.Mixture.parse("grasps/base:2.0.0:train:1").resolve(data_dir)


def test_a_slice_larger_than_the_split_is_an_error(data_dir):
    with pytest.raises(
        mixture_lib.MixtureError,
        match=r"grasps/checkerboard:1.0.0: split slice 'train\[:800\]' does not fit the 'train' "
        r"split of 25 episodes",
    ):
        mixture_lib.Mixture.parse("base:train:0.5,checkerboard:train[:800]:0.5").resolve(data_dir)
    with pytest.raises(mixture_lib.MixtureError, match=r"no split 'test'; it has \['train'\]"):
        mixture_lib.Mixture.parse("base:test:1").resolve(data_dir)
    # TFDS counts a backwards slice as a negative number of episodes.
    with pytest.raises(mixture_lib.MixtureError, match=r"'train\[3:1\]' selects no episodes"):
        mixture_lib.Mixture.parse("base:train[3:1]:1").resolve(data_dir)


def test_an_incompatible_spec_is_an_error(data_dir, tmp_path):
    other = tmp_path / "data"
    shutil.copytree(os.path.join(data_dir, "grasps", "base"), other / "small" / "base")
    features_path = other / "small" / "base" / "1.0.0" / "features.json"
    spec = json.loads(features_path.read_text())
    text = json.dumps(spec).replace('"64"', '"32"')
    assert text != json.dumps(spec)
    features_path.write_text(text)
    with pytest.raises(
        mixture_lib.MixtureError,
        match=r"small/base:1.0.0: step feature 'observation/image' is \(\(32, 32, 3\), 'uint8'\)",
    ):
        mixture_lib.Mixture.parse("small/base:train:1").resolve(str(other))


# --- transitions and the stream --------------------------------------------------------------


def test_transitions_are_exact_and_never_cross_an_episode(data_dir):
    import tensorflow as tf

    episodes = _episodes_by_id()
    m = mixture_lib.Mixture.parse("base:train:0.5,checkerboard:train:0.5")
    config = stream.StreamConfig(batch_size=16, augment=False)
    seen = set()
    for batch in _take(stream.make_stream(m, data_dir, config), 20):
        for i in range(16):
            episode = episodes[batch[tr.EPISODE_ID][i].decode()]
            t, last = int(batch[tr.STEP][i]), episode.num_steps - 1
            seen.add((episode.episode_id, t))
            assert 0 <= t < last
            for key, offset in ((tr.OBSERVATION, 0), (tr.NEXT_OBSERVATION, 1)):
                expected = tf.io.decode_png(episode.images[t + offset]).numpy()
                np.testing.assert_array_equal(batch[key][schema.IMAGE][i], expected)
                assert batch[key][schema.HEIGHT_TO_BOTTOM][i] == pytest.approx(
                    episode.steps[schema.HEIGHT_TO_BOTTOM][t + offset]
                )
            np.testing.assert_array_equal(batch[schema.ACTION][i], episode.steps[schema.ACTION][t])
            assert batch[schema.REWARD][i] == episode.steps[schema.REWARD][t]
            assert bool(batch[tr.TERMINAL][i]) == (t == last - 1)
            expected_source = 0 if episode.metadata[schema.TASK] == "base" else 1
            assert batch[tr.SOURCE][i] == expected_source
    total = sum(_steps(i) - 1 for i in list(BASE) + list(TARGET))
    assert len(seen) > total // 2  # many distinct transitions, from both tasks


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.9, 0.1)])
def test_shares_follow_the_weights_over_20000_transitions(data_dir, weights):
    m = mixture_lib.Mixture.parse(f"base:train:{weights[0]},checkerboard:train[:10]:{weights[1]}")
    config = stream.StreamConfig(batch_size=500, augment=False, decode=False)
    sources = np.concatenate(
        [b[tr.SOURCE] for b in _take(stream.make_stream(m, data_dir, config), 40)]
    )
    assert len(sources) == 20_000
    shares = np.bincount(sources, minlength=2) / len(sources)
    assert abs(shares[0] - weights[0]) < 0.02 and abs(shares[1] - weights[1]) < 0.02


def _first_transitions(data_dir, seed, augment=True, n=1000):
    m = mixture_lib.Mixture.parse("base:train:0.7,checkerboard:train:0.3")
    config = stream.StreamConfig(batch_size=100, seed=seed, augment=augment)
    batches = _take(stream.make_stream(m, data_dir, config), n // 100)
    keys = [
        (e.decode(), int(t), int(s))
        for b in batches
        for e, t, s in zip(b[tr.EPISODE_ID], b[tr.STEP], b[tr.SOURCE])
    ]
    images = np.concatenate([b[tr.OBSERVATION][schema.IMAGE] for b in batches])
    return keys, images


def test_same_seed_same_stream_and_another_seed_another_order(data_dir):
    keys, images = _first_transitions(data_dir, seed=3)
    again_keys, again_images = _first_transitions(data_dir, seed=3)
    assert keys == again_keys
    np.testing.assert_array_equal(images, again_images)  # augmentation is seeded too
    other_keys, _ = _first_transitions(data_dir, seed=4)
    assert other_keys != keys
    plain_keys, plain_images = _first_transitions(data_dir, seed=3, augment=False)
    assert plain_keys == keys  # augmentation changes pixels, not what is sampled
    assert not np.array_equal(plain_images, images)
    changed = np.mean(np.any(plain_images != images, axis=(1, 2, 3)))
    assert changed > 0.9


def test_augmentation_shifts_within_the_padding_and_keeps_s_and_next_s_aligned():
    import tensorflow as tf

    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3))
    batch = {
        tr.OBSERVATION: {schema.IMAGE: tf.constant(np.stack([image] * 8).astype(np.uint8))},
        tr.NEXT_OBSERVATION: {schema.IMAGE: tf.constant(np.stack([image] * 8).astype(np.uint8))},
    }
    out = tr.augment_batch(padding=4, brightness=0, contrast=0)(
        tf.constant([1, 2], tf.int64), batch
    )
    current = out[tr.OBSERVATION][schema.IMAGE].numpy()
    np.testing.assert_array_equal(current, out[tr.NEXT_OBSERVATION][schema.IMAGE].numpy())
    for shifted in current:  # the centre is the original moved by at most 4 pixels
        found = [
            (dy, dx)
            for dy in range(-4, 5)
            for dx in range(-4, 5)
            if np.array_equal(shifted[8:56, 8:56], image[8 + dy : 56 + dy, 8 + dx : 56 + dx])
        ]
        assert len(found) == 1


def test_bad_stream_settings_are_refused():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        stream.StreamConfig(batch_size=0)
    with pytest.raises(ValueError, match="augment needs decoded images"):
        stream.StreamConfig(decode=False)


def test_mix_inspect_prints_sources_shares_and_writes_the_grid(data_dir, tmp_path, capsys):
    from PIL import Image

    from neverstop import cli

    png = tmp_path / "grid.png"
    code = cli.main(
        [
            "mix",
            "inspect",
            "base:train:0.5,checkerboard:train[:10]:0.5",
            "--data-dir",
            data_dir,
            "--png",
            str(png),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "grasps/checkerboard:1.0.0:train[:10]: 10 episodes" in out
    assert "weight 0.5 -> share 50.0%" in out
    assert "observation/image: uint8[64, 64, 64, 3]" in out
    assert Image.open(png).size == (2 * 8 * 66, 2 * 2 * 66)  # 8 images a row, a row a source
    code = cli.main(["mix", "inspect", "base:train:0", "--data-dir", data_dir])
    assert code == 2
    assert "weight 0.0 must be positive" in capsys.readouterr().err


def test_tiny_mix_bench_measures_both_streams(data_dir):
    from neverstop.benchmarks import mix_bench

    m = mixture_lib.Mixture.parse("base:train:0.5,checkerboard:train:0.5")
    result = mix_bench.run(m, data_dir, batches=4, warmup=1, batch_size=8)
    assert result["decoded_mb"] == pytest.approx(
        (sum(_steps(i) for i in BASE) + sum(_steps(i) for i in TARGET)) * 64 * 64 * 3 / 2**20
    )
    for side in ("ours", "ours_augmented", "ours_decode_sampled", "peer"):
        assert result[side]["transitions_per_s"] == pytest.approx(4 * 8 / result[side]["seconds"])
    assert (
        result["ratio"] == result["ours"]["transitions_per_s"] / result["peer"]["transitions_per_s"]
    )


@pytest.mark.parametrize("augment", [False, True])
def test_decoding_once_up_front_gives_the_same_stream_as_decoding_sampled_images(data_dir, augment):
    m = mixture_lib.Mixture.parse("base:train:0.5,checkerboard:train:0.5")
    cached, sampled = (
        _take(
            stream.make_stream(
                m,
                data_dir,
                stream.StreamConfig(batch_size=16, seed=3, augment=augment, decoded_cache_mb=mb),
            ),
            5,
        )
        for mb in (4096, 0)
    )
    for a, b in zip(cached, sampled):
        for key in (tr.OBSERVATION, tr.NEXT_OBSERVATION):
            np.testing.assert_array_equal(a[key][schema.IMAGE], b[key][schema.IMAGE])
        np.testing.assert_array_equal(a[tr.EPISODE_ID], b[tr.EPISODE_ID])
    with pytest.raises(ValueError, match="decoded_cache_mb must be >= 0"):
        stream.StreamConfig(decoded_cache_mb=-1)
