"""Tests for train/data/fetch.py: MovieLens-100K from the RecBole wheel (sha256-checked) and the shipped
Gowalla files (checked at every read). No network."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from data_files import write
from train import data
from train.config import DataConfig
from train.data import (
    DataError,
    detect_format,
    fetch_ml100k,
    load_dataset,
    read_lightgcn,
)

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# ml-100k


def test_fetch_rejects_a_cached_file_with_the_wrong_hash(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(subprocess, "run", no_network)
    target = tmp_path / "ml-100k" / "ml-100k.inter"
    target.parent.mkdir()
    write(target, "user_id:token\titem_id:token\n1\t2\n")
    with pytest.raises(DataError, match=rf"{target}: sha256 .* does not match"):
        fetch_ml100k(tmp_path)


def test_fetch_checks_the_downloaded_member(tmp_path, monkeypatch):
    # a fake `pip download` leaving a wheel whose member has the wrong content
    def fake_pip(command, **kwargs):
        folder = Path(command[command.index("-d") + 1])
        with zipfile.ZipFile(folder / "recbole-1.2.1-py3-none-any.whl", "w") as archive:
            archive.writestr(data.ML100K_MEMBER, "user_id:token\titem_id:token\n1\t2\n")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    with pytest.raises(DataError, match="ml-100k.inter: sha256 .* does not match"):
        fetch_ml100k(tmp_path)
    assert list((tmp_path / "ml-100k").iterdir()) == []  # nothing cached, no temp file left


def test_ml100k_cached():
    # never skipped: fetched from the recbole wheel on PyPI if `make setup` has not cached it yet
    fetch_ml100k(REPO / "data")
    dataset = load_dataset(DataConfig(name="ml-100k", cache_dir=str(REPO / "data")), progress=False)
    summary = dataset.summary()
    assert (summary["n_users"], summary["n_items"], summary["n_interactions"]) == (943, 1682, 100000)
    assert dataset.user_ids[:3] == ["1", "2", "3"]


# ---------------------------------------------------------------- Gowalla, shipped in the package

GOWALLA_SHA256 = {  # the uncompressed files, as published in ../shared/data/gowalla/README.md
    "train.txt": "0f086326b28a56c2e6dcb81d86ee72d4ccb7eed3a8d26788392356d8f51111cc",
    "test.txt": "099a2a73924e4b754dc6efd730d764f492321b53c38eb93298850c83acf57be3",
}


def test_gowalla_is_shipped_with_its_checksums_and_counts():
    import gzip
    import hashlib

    folder = data.shipped_folder("gowalla")
    assert data.SHIPPED_LIGHTGCN["gowalla"] == GOWALLA_SHA256
    readme = (folder / "README.md").read_text()
    for name, digest in GOWALLA_SHA256.items():
        assert hashlib.sha256(gzip.decompress((folder / f"{name}.gz").read_bytes())).hexdigest() == digest
        assert digest in readme
    train, test = read_lightgcn(folder, GOWALLA_SHA256)
    assert (len(train), len(test)) == (810_128, 217_242)

    dataset = load_dataset(DataConfig(name="gowalla"), progress=False)
    assert (dataset.n_users, dataset.n_items) == (29_858, 40_981)
    assert len(dataset.train[0]) + len(dataset.valid[0]) == 810_128
    assert len(dataset.test[0]) == 217_242  # the published test split, untouched
    assert 0.10 < len(dataset.valid[0]) / 810_128 < 0.125  # valid: 1/9 of train, cut per user
    assert dataset.user_ids[:3] == ["0", "1", "2"] and dataset.item_ids[-1] == "40980"  # ids kept as published


def test_gowalla_truncated_or_altered_file_is_named(tmp_path):
    import gzip
    import shutil

    folder = data.shipped_folder("gowalla")
    shutil.copy(folder / "test.txt.gz", tmp_path / "test.txt.gz")
    packed = (folder / "train.txt.gz").read_bytes()
    (tmp_path / "train.txt.gz").write_bytes(packed[: len(packed) // 2])  # truncated download
    with pytest.raises(DataError, match=rf"{tmp_path / 'train.txt.gz'}: not a complete gzip file"):
        read_lightgcn(tmp_path, GOWALLA_SHA256)
    text = gzip.decompress(packed)
    (tmp_path / "train.txt.gz").write_bytes(gzip.compress(text.replace(b" ", b"  ", 1)))  # altered
    with pytest.raises(
        DataError, match=rf"{tmp_path / 'train.txt.gz'}: sha256 .* expected {GOWALLA_SHA256['train.txt']}"
    ):
        read_lightgcn(tmp_path, GOWALLA_SHA256)
    (tmp_path / "train.txt.gz").write_bytes(gzip.compress(text[: len(text) - 1000]))  # truncated, valid gzip
    with pytest.raises(DataError, match="altered or truncated"):
        read_lightgcn(tmp_path, GOWALLA_SHA256)
    assert detect_format(tmp_path) == ("lightgcn", tmp_path)  # gzip members are recognised
