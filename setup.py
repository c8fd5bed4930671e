"""Installs the repository root as the package `neverstop`.

The root directory *is* the package (as in Google research repositories), so
its folders become `neverstop.envs`, `neverstop.pipelines`, ... and nothing
named `datasets` or `envs` is ever installed at top level, where it would
shadow HuggingFace `datasets` (which TFDS may import).
"""

import pathlib

import setuptools
from setuptools.command.build_py import build_py

_ROOT = pathlib.Path(__file__).resolve().parent


def _version() -> str:
    # Executed rather than imported: importing the package would need it
    # installed already.
    namespace = {}
    exec((_ROOT / "version.py").read_text(), namespace)
    return namespace["__version__"]


def _packages() -> list:
    subpackages = setuptools.find_packages(
        where=str(_ROOT),
        exclude=["tests", "tests.*", ".venv*", "build*"],
    )
    return ["neverstop"] + [f"neverstop.{name}" for name in subpackages]


class _BuildPy(build_py):
    """Leaves setup.py out of the package: it sits in the package directory."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [
            module
            for module in modules
            if not (package == "neverstop" and module[1] == "setup")
        ]


setuptools.setup(
    name="neverstop",
    version=_version(),
    description=(
        "Offline QT-Opt grasping in simulation and on robot logs, with "
        "fine-tuning to new variations, built on RLDS/TFDS and Apache Beam."
    ),
    long_description=(_ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.12",
    package_dir={"neverstop": "."},
    packages=_packages(),
    package_data={"neverstop": ["envs/assets/*", "*.yaml", "pipelines/topic_maps/*.yaml"]},
    cmdclass={"build_py": _BuildPy},
    install_requires=[
        # dm-reverb 0.14.0 (the last release, needed by `import rlds`) is
        # built against TF 2.15 only; newer TF makes `import rlds` fail.
        "tensorflow==2.15.1",
        "dm-reverb==0.14.0",
        "rlds==0.1.8",
        "tensorflow-datasets>=4.9,<4.10",
        # 2.72.x is what resolves together with protobuf < 5.
        "apache-beam[gcp]>=2.72,<2.73",
        # TF 2.15 needs numpy < 2.
        "numpy>=1.26,<2",
        # Has a manylinux wheel for cp311, with the EGL renderer plugin.
        "pybullet==3.2.7",
        # Newer releases import protobuf 5's `runtime_version` and crash
        # under TF 2.15's protobuf 4.
        "tensorflow-metadata<1.17",
        # TFDS 4.9.10 imports it without declaring it.
        "importlib_resources",
        # gs:// publishing and reading; unlike TF's own gs:// filesystem it
        # honours a local emulator endpoint.
        "gcsfs",
        # CRC-32C in C for TFRecord framing: ingestion workers write shards
        # without importing TensorFlow (datasets/tfrecord.py).
        "google-crc32c",
        "protobuf<5",
        "pyyaml",
        "tqdm",
        "pillow",
        # The experiment report's plots (Agg backend, no display); 3.8 is
        # the last series built against numpy 1.x, which TF 2.15 needs.
        "matplotlib==3.8.4",
        # Pure-Python ROS 1/2 bag reading and writing (no ROS install);
        # 0.11 writes ROS 2 bags with both the sqlite3 and MCAP plugins.
        "rosbags>=0.11,<0.12",
    ],
    extras_require={
        # gcp-storage-emulator: the gs:// publishing tests run against it, never a real bucket.
        "test": ["pytest>=7", "pytest-timeout", "gcp-storage-emulator"],
        # gym 0.21 does not build with current setuptools and 0.26.2 does;
        # the benchmark loads pybullet_envs' env module directly, bypassing
        # pybullet_envs/__init__.py.
        "bench": ["gym==0.26.2"],
    },
    entry_points={"console_scripts": ["neverstop=neverstop.cli:main"]},
)
