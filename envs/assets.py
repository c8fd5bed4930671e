"""Scene assets: the robot with its gripper, textures, and the object sets.

Generated files (the robot URDF for each gripper geometry, the checkerboard
texture) are content-addressed and written atomically into a cache
directory, so parallel workers that build the same asset never see a
half-written file.
"""

import functools
import glob
import hashlib
import os
import tempfile
from typing import List, Sequence, Tuple

import numpy as np
import pybullet_data

from neverstop import rawlog

DATA_DIR = pybullet_data.getDataPath()

# Gripper geometry (metres). The finger length is what the robot's kinematic
# model believes; a task may add an extension it does not know about.
PALM_SIZE = (0.04, 0.12, 0.025)
FLANGE_TO_PALM = 0.045
FINGER_LENGTH = 0.07
FINGER_THICKNESS = 0.012
FINGER_WIDTH = 0.025
FINGER_TRAVEL = 0.05  # per finger; fully open leaves a 10 cm gap
# The tool centre point sits 1 cm above the nominal fingertips.
TCP_FROM_FLANGE = FLANGE_TO_PALM + PALM_SIZE[2] / 2 + FINGER_LENGTH - 0.01

NUM_RANDOM_URDFS = 1000
SPLITS = ("train", "eval")


def cache_dir() -> str:
    path = os.environ.get("NEVERSTOP_ASSET_CACHE") or os.path.join(
        tempfile.gettempdir(), f"neverstop-assets-{os.getuid()}"
    )
    os.makedirs(path, exist_ok=True)
    return path


def _write_cached(name: str, data: bytes) -> str:
    """Writes `data` under a content hash; returns the path (atomic)."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    root, ext = os.path.splitext(name)
    path = os.path.join(cache_dir(), f"{root}-{digest}{ext}")
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=cache_dir(), suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path


def _box(size, xyz=(0, 0, 0), rgba=None, name="m") -> str:
    material = ""
    if rgba is not None:
        material = (
            f'<material name="{name}"><color rgba="'
            f'{" ".join(str(c) for c in rgba)}"/></material>'
        )
    geometry = f'<geometry><box size="{size[0]} {size[1]} {size[2]}"/></geometry>'
    origin = f'<origin xyz="{xyz[0]} {xyz[1]} {xyz[2]}" rpy="0 0 0"/>'
    return (
        f"<visual>{origin}{geometry}{material}</visual>"
        f"<collision>{origin}{geometry}</collision>"
    )


def _inertial(mass: float) -> str:
    return (
        f'<inertial><origin xyz="0 0 0"/><mass value="{mass}"/>'
        '<inertia ixx="1e-4" ixy="0" ixz="0" iyy="1e-4" iyz="0" izz="1e-4"/>'
        "</inertial>"
    )


def robot_urdf(finger_extension: float = 0.0, mount_offset: float = 0.0) -> str:
    """The KUKA iiwa arm with a parallel-jaw gripper; returns a URDF path.

    Links added to the stock arm: `gripper_palm` (on the flange, shifted by
    `mount_offset` along the flange x axis), two prismatic fingers of length
    FINGER_LENGTH + finger_extension, and a massless `tcp` link where the
    robot's (nominal) model puts the tool centre: the controller always aims
    the tcp, so a changed gripper is a change the policy has to discover.
    """
    with open(os.path.join(DATA_DIR, "kuka_iiwa", "model.urdf")) as f:
        arm = f.read()
    mesh_dir = os.path.join(DATA_DIR, "kuka_iiwa", "meshes")
    arm = arm.replace('filename="meshes/', f'filename="{mesh_dir}/')
    length = FINGER_LENGTH + finger_extension
    grey, dark = (0.6, 0.6, 0.62, 1), (0.15, 0.15, 0.17, 1)
    palm = _box(PALM_SIZE, rgba=grey, name="palm_grey")
    if mount_offset:
        # The bracket that carries the gripper sideways; the camera sees it.
        palm += _box(
            (abs(mount_offset), 0.03, 0.02),
            xyz=(-mount_offset / 2, 0, -PALM_SIZE[2] / 2),
            rgba=grey,
            name="bracket_grey",
        )
    finger_box = (FINGER_WIDTH, FINGER_THICKNESS, length)
    gripper = f"""
  <joint name="gripper_mount" type="fixed">
    <parent link="lbr_iiwa_link_7"/><child link="gripper_palm"/>
    <origin xyz="{mount_offset} 0 {FLANGE_TO_PALM}" rpy="0 0 0"/>
  </joint>
  <link name="gripper_palm">{_inertial(0.3)}{palm}</link>
  <joint name="finger_left_joint" type="prismatic">
    <parent link="gripper_palm"/><child link="finger_left"/>
    <origin xyz="0 0 {PALM_SIZE[2] / 2}" rpy="0 0 0"/>
    <axis xyz="0 1 0"/>
    <limit lower="0" upper="{FINGER_TRAVEL}" effort="60" velocity="0.5"/>
  </joint>
  <link name="finger_left">{_inertial(0.05)}
    {_box(finger_box, xyz=(0, FINGER_THICKNESS / 2, length / 2), rgba=dark, name="finger_dark")}
  </link>
  <joint name="finger_right_joint" type="prismatic">
    <parent link="gripper_palm"/><child link="finger_right"/>
    <origin xyz="0 0 {PALM_SIZE[2] / 2}" rpy="0 0 0"/>
    <axis xyz="0 -1 0"/>
    <limit lower="0" upper="{FINGER_TRAVEL}" effort="60" velocity="0.5"/>
  </joint>
  <link name="finger_right">{_inertial(0.05)}
    {_box(finger_box, xyz=(0, -FINGER_THICKNESS / 2, length / 2), rgba=dark, name="finger_dark")}
  </link>
  <joint name="tcp_joint" type="fixed">
    <parent link="lbr_iiwa_link_7"/><child link="tcp"/>
    <origin xyz="0 0 {TCP_FROM_FLANGE}" rpy="0 0 0"/>
  </joint>
  <link name="tcp">{_inertial(1e-4)}</link>
"""
    urdf = arm.replace("</robot>", gripper + "</robot>")
    return _write_cached("kuka_iiwa_gripper.urdf", urdf.encode())


def checkerboard_texture(squares: int = 12, pixels: int = 240) -> str:
    """A high-contrast black/yellow checkerboard PNG; returns its path."""
    cell = pixels // squares
    yy, xx = np.mgrid[0:pixels, 0:pixels]
    mask = ((yy // cell + xx // cell) % 2).astype(bool)
    image = np.where(mask[..., None], np.uint8([250, 220, 30]), np.uint8([10, 10, 10])).astype(
        np.uint8
    )
    return _write_cached("checkerboard.png", rawlog.encode_png(image))


def _mesh_is_finite(urdf_path: str) -> bool:
    """False for an object whose OBJ mesh has non-finite vertices.

    pybullet_data ships one such object (random_urdfs/168: every vertex is
    NaN). Bullet then reads outside its point array while computing the
    hull's bounding box, so anything touching that object depends on stray
    heap memory: the same seed gave different episodes in different
    processes (found with valgrind). Such objects are left out of the sets.
    """
    mesh = os.path.splitext(urdf_path)[0] + ".obj"
    with open(mesh) as f:
        return not any(
            line.startswith("v ") and ("nan" in line.lower() or "inf" in line.lower()) for line in f
        )


@functools.lru_cache(maxsize=None)
def random_urdf_paths(split: str) -> Tuple[str, ...]:
    """The training or held-out `random_urdfs` objects, sorted by id.

    Held-out ids end in 0 (DESIGN.md): 100 of them; training uses the other
    900 less any whose mesh is broken (one, id 168, in pybullet 3.2.7).
    Sorted so that every machine draws the same objects for a seed,
    whatever the on-disk order.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown object split {split!r}; expected one of {SPLITS}")
    paths = sorted(glob.glob(os.path.join(DATA_DIR, "random_urdfs", "*", "*.urdf")))
    if len(paths) != NUM_RANDOM_URDFS:
        raise FileNotFoundError(
            f"expected {NUM_RANDOM_URDFS} random_urdfs objects under {DATA_DIR}, "
            f"found {len(paths)}; is pybullet_data complete?"
        )
    held_out = split == "eval"
    return tuple(
        p
        for p in paths
        if os.path.basename(os.path.dirname(p)).endswith("0") == held_out and _mesh_is_finite(p)
    )


# Bottle shapes: 1000 shape ids like random_urdfs; ids ending in 0 are held
# out. A shape is a pure function of its id.
_BOTTLE_SEED = 20201118


def bottle_ids(split: str) -> Tuple[int, ...]:
    if split not in SPLITS:
        raise ValueError(f"unknown object split {split!r}; expected one of {SPLITS}")
    return tuple(i for i in range(NUM_RANDOM_URDFS) if (i % 10 == 0) == (split == "eval"))


def bottle_shape(shape_id: int) -> List[Tuple[float, float, float]]:
    """A bottle as stacked cylinders: [(radius, length, z_centre), ...]."""
    rng = np.random.default_rng([_BOTTLE_SEED, shape_id])
    radius = rng.uniform(0.02, 0.03)
    body = rng.uniform(0.07, 0.11)
    shoulder = rng.uniform(0.012, 0.025)
    neck_r = radius * rng.uniform(0.35, 0.55)
    neck = rng.uniform(0.02, 0.04)
    parts = [
        (radius, body, body / 2),
        (0.5 * (radius + neck_r), shoulder, body + shoulder / 2),
        (neck_r, neck, body + shoulder + neck / 2),
    ]
    centre = sum(l * z for _, l, z in parts) / sum(l for _, l, _ in parts)
    return [(r, l, z - centre) for r, l, z in parts]


def bottle_rgba(shape_id: int) -> Sequence[float]:
    rng = np.random.default_rng([_BOTTLE_SEED, shape_id, 1])
    tint = rng.uniform(0.8, 1.0, size=3)
    return (float(tint[0]), float(tint[1]), 1.0, 0.3)
