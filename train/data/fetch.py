"""Data that comes with the project: MovieLens-100K fetched once from a wheel, Gowalla shipped in the package.

    python -c "from train.data.fetch import fetch_ml100k; print(fetch_ml100k('data'))"
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from common.io import sha256_file

from .interactions import DataError

logger = logging.getLogger(__name__)

ML100K_WHEEL = "recbole==1.2.1"
ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
# sha256 of the extracted ml-100k.inter (1,979,230 bytes), not of the wheel.
ML100K_SHA256 = "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"

# Datasets shipped inside the package (LightGCN format, gzip-compressed): the sha256 of each
# *uncompressed* file, checked at every read. Provenance: train/datasets/<name>/README.md.
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "datasets"  # train/datasets/
SHIPPED_LIGHTGCN: dict[str, dict[str, str]] = {
    "gowalla": {
        "train.txt": "0f086326b28a56c2e6dcb81d86ee72d4ccb7eed3a8d26788392356d8f51111cc",
        "test.txt": "099a2a73924e4b754dc6efd730d764f492321b53c38eb93298850c83acf57be3",
    },
}


def shipped_folder(name: str) -> Path:
    """The folder of a dataset shipped in the package (``gowalla``)."""
    if name not in SHIPPED_LIGHTGCN:
        raise DataError(f"{name}: not a shipped dataset (shipped: {', '.join(SHIPPED_LIGHTGCN)})")
    return SHIPPED_DIR / name


# ----------------------------------------------------------------------------------------------
# MovieLens-100K from the recbole wheel


def fetch_ml100k(cache_dir: str | Path) -> Path:
    """Return ``<cache_dir>/ml-100k/ml-100k.inter``, fetching it on first use.

    The file is taken out of the ``recbole==1.2.1`` wheel, downloaded with
    ``python -m pip download --no-deps --only-binary=:all:`` (recbole is never installed), written
    atomically and checked against :data:`ML100K_SHA256`. A cached file with the right hash means
    no download; a wrong hash (cached or downloaded) is a DataError naming the file.
    """
    target = Path(cache_dir) / "ml-100k" / "ml-100k.inter"
    if target.exists():
        digest = sha256_file(target)
        if digest != ML100K_SHA256:
            raise DataError(
                f"{target}: sha256 {digest} does not match the expected {ML100K_SHA256}; "
                f"delete the file to download it again"
            )
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{target.parent}: cannot create the cache folder: {exc}") from exc
    logger.info("fetching ml-100k.inter from the %s wheel into %s (about 2 MB)", ML100K_WHEEL, target)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sparserec-ml100k-") as download_dir:
        command = [
            sys.executable, "-m", "pip", "download", ML100K_WHEEL, "--no-deps", "--only-binary=:all:",
            "-d", download_dir, "--disable-pip-version-check", "--no-input", "--quiet",
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataError(f"{target}: could not run {' '.join(command)}: {exc}") from exc
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip()[-1000:]
            raise DataError(f"{target}: pip download {ML100K_WHEEL} failed (exit {result.returncode}): {tail}")
        wheels = sorted(Path(download_dir).glob("recbole-*.whl"))
        if not wheels:
            raise DataError(f"{target}: pip download {ML100K_WHEEL} left no recbole wheel in {download_dir}")
        wheel = wheels[0]
        handle, partial = tempfile.mkstemp(prefix=".ml-100k.inter.", suffix=".tmp", dir=target.parent)
        try:
            digest = hashlib.sha256()
            with os.fdopen(handle, "wb") as out:
                try:
                    with zipfile.ZipFile(wheel) as archive, archive.open(ML100K_MEMBER) as member:
                        for block in iter(lambda: member.read(1 << 20), b""):
                            digest.update(block)
                            out.write(block)
                except (zipfile.BadZipFile, KeyError) as exc:
                    raise DataError(f"{wheel}: cannot extract {ML100K_MEMBER}: {exc}") from exc
                out.flush()
                os.fsync(out.fileno())
            os.chmod(partial, 0o644)  # mkstemp makes it 0600; the cache is an ordinary file
            if digest.hexdigest() != ML100K_SHA256:
                raise DataError(
                    f"{wheel.name}!{ML100K_MEMBER}: sha256 {digest.hexdigest()} does not match the "
                    f"expected {ML100K_SHA256}; not caching it as {target}"
                )
            os.replace(partial, target)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
    logger.info("cached %s in %.1f s", target, time.perf_counter() - started)
    return target

