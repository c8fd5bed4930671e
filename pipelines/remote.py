"""Publishing datasets to gs:// through gcsfs.

GCS has no atomic rename, so a version is uploaded file by file with
`dataset_info.json` last: TFDS only sees a dataset version that has its
card, so readers see either nothing or the complete version. An existing
published version is never overwritten (a half-replaced version would be
neither old nor new); publish a new version instead.

gcsfs (unlike TF 2.15's own gs:// file system) honours STORAGE_EMULATOR_HOST,
which is how the tests publish to a local emulator; reading a published
dataset with `tfds.load(..., data_dir="gs://...")` goes through tf.io.gfile
and works on real GCS.
"""

import os

INFO_FILE = "dataset_info.json"


def is_remote(path: str) -> bool:
    return path.startswith("gs://")


def filesystem():
    import gcsfs

    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        return gcsfs.GCSFileSystem(endpoint_url=emulator, token="anon", project="emulator")
    return gcsfs.GCSFileSystem()


def publish(staging: str, url: str, fs=None) -> None:
    """Uploads a complete local dataset version to `url` (gs://...), card last."""
    fs = fs or filesystem()
    target = url[len("gs://") :].rstrip("/")
    if fs.exists(f"{target}/{INFO_FILE}"):
        raise ValueError(
            f"{url} is already published; publish a new --version instead "
            "(a gs:// version is never overwritten)"
        )
    names = sorted(os.listdir(staging))
    if INFO_FILE not in names:
        raise ValueError(f"{staging} has no {INFO_FILE}; nothing complete to publish")
    for name in [n for n in names if n != INFO_FILE] + [INFO_FILE]:
        fs.put_file(os.path.join(staging, name), f"{target}/{name}")


def fetch(url: str, local: str, fs=None) -> str:
    """Downloads a published version to `local` (for tests and offline use)."""
    fs = fs or filesystem()
    fs.get(url[len("gs://") :].rstrip("/"), local, recursive=True)
    return local
