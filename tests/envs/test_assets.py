"""Tests for neverstop/envs/assets.py: the train/eval object splits."""

import os

import pytest

from neverstop.envs import assets


def _object_id(path: str) -> str:
    return os.path.basename(os.path.dirname(path))


def test_random_urdf_splits_hold_out_ids_ending_in_zero():
    train = assets.random_urdf_paths("train")
    held_out = assets.random_urdf_paths("eval")
    assert len(held_out) == 100
    # 900 ids do not end in 0; 168 is left out because its mesh is all NaN.
    assert len(train) == 899
    assert "168" not in {_object_id(path) for path in train}
    assert all(_object_id(path).endswith("0") for path in held_out)
    assert not any(_object_id(path).endswith("0") for path in train)
    assert list(held_out) == sorted(held_out)
    assert list(train) == sorted(train)
    assert not set(train) & set(held_out)
    assert all(os.path.isfile(path) for path in held_out)


def test_bottle_splits_hold_out_ids_ending_in_zero():
    train = assets.bottle_ids("train")
    held_out = assets.bottle_ids("eval")
    assert len(held_out) == 100
    assert len(train) == 900
    assert all(i % 10 == 0 for i in held_out)
    assert not any(i % 10 == 0 for i in train)
    assert list(train) == sorted(train)
    assert list(held_out) == sorted(held_out)
    assert set(train) | set(held_out) == set(range(assets.NUM_RANDOM_URDFS))


def test_bottle_shape_is_a_pure_function_of_its_id():
    assert assets.bottle_shape(7) == assets.bottle_shape(7)
    assert assets.bottle_rgba(7) == assets.bottle_rgba(7)
    assert assets.bottle_shape(7) != assets.bottle_shape(8)
    parts = assets.bottle_shape(7)
    assert len(parts) == 3
    # Centred on its centre of mass, radii narrowing towards the neck.
    assert sum(length * z for _, length, z in parts) == pytest.approx(0.0, abs=1e-12)
    radii = [radius for radius, _, _ in parts]
    assert radii == sorted(radii, reverse=True)


@pytest.mark.parametrize("lookup", [assets.random_urdf_paths, assets.bottle_ids])
def test_unknown_split_is_rejected(lookup):
    with pytest.raises(ValueError, match="unknown object split 'test'.*train.*eval"):
        lookup("test")


def test_objects_with_non_finite_meshes_are_excluded(tmp_path):
    good = tmp_path / "good.urdf"
    bad = tmp_path / "bad.urdf"
    (tmp_path / "good.obj").write_text("o a\nv 0.1 0.2 0.3\nv 1 2 3\nf 1 2 1\n")
    (tmp_path / "bad.obj").write_text("o a\nv 0.1 0.2 0.3\nv nan nan nan\nf 1 2 1\n")
    assert assets._mesh_is_finite(str(good))
    assert not assets._mesh_is_finite(str(bad))
