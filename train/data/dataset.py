"""The ``Dataset`` container (contiguous ids, a train/valid/test split) and its folder on disk."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from common.io import atomic_write_text, replace_folder, sha256_file

from .filters import distinct_sorted
from .interactions import DataError

SPLITS = ("train", "valid", "test")
SAVE_FORMAT_VERSION = 1


def pair(users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(users, dtype=np.int64), np.ascontiguousarray(items, dtype=np.int64)


@dataclass(eq=False)
class Dataset:
    """Implicit-feedback interactions with contiguous ids and a train/valid/test split.

    Attributes:
        name: the source (``DataConfig.name``).
        n_users, n_items: id ranges ``[0, n_users)``, ``[0, n_items)``.
        user_ids, item_ids: internal id -> external id (strings).
        train, valid, test: ``(users [n] int64, items [n] int64)``; pairs are distinct within
            and across splits.
    """

    name: str
    n_users: int
    n_items: int
    user_ids: list[str]
    item_ids: list[str]
    train: tuple[np.ndarray, np.ndarray]
    valid: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]

    def _split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        return getattr(self, split)

    def csr(self, split: str = "train") -> sp.csr_matrix:
        """The split as a ``[n_users, n_items]`` float32 CSR matrix of ones."""
        users, items = self._split(split)
        ones = np.ones(len(users), dtype=np.float32)
        return sp.csr_matrix((ones, (users, items)), shape=(self.n_users, self.n_items))

    def item_popularity(self) -> np.ndarray:
        """Train interactions per item, ``[n_items]`` int64."""
        return np.bincount(self.train[1], minlength=self.n_items).astype(np.int64)

    def summary(self) -> dict:
        """Counts, density and split sizes (JSON-ready)."""
        sizes = {split: int(len(self._split(split)[0])) for split in SPLITS}
        total = sum(sizes.values())
        all_users = np.concatenate([self._split(split)[0] for split in SPLITS])
        all_items = np.concatenate([self._split(split)[1] for split in SPLITS])
        per_user = np.bincount(all_users, minlength=self.n_users)
        per_item = np.bincount(all_items, minlength=self.n_items)
        train_users = np.bincount(self.train[0], minlength=self.n_users)

        def stats(counts: np.ndarray) -> dict:
            if not len(counts):
                return {"min": 0, "median": 0.0, "max": 0}
            return {"min": int(counts.min()), "median": float(np.median(counts)), "max": int(counts.max())}

        return {
            "name": self.name,
            "n_users": int(self.n_users),
            "n_items": int(self.n_items),
            "n_interactions": total,
            "density": total / max(1, self.n_users * self.n_items),
            "n_train": sizes["train"],
            "n_valid": sizes["valid"],
            "n_test": sizes["test"],
            "users_without_train": int((train_users == 0).sum()),
            "items_without_train": int((self.item_popularity() == 0).sum()),
            "interactions_per_user": stats(per_user),
            "interactions_per_item": stats(per_item),
        }

    # -- on disk: interactions.npz (np.savez, int64), user_ids.json, item_ids.json, dataset.json

    def save(self, folder: str | Path) -> None:
        """Write the dataset to ``folder`` atomically (a temp folder beside it, then a rename).

        An existing dataset folder (or an empty folder) is replaced; anything else is refused.
        """
        folder = Path(folder)
        replaceable = folder.is_dir() and (not any(folder.iterdir()) or (folder / "dataset.json").is_file())
        if folder.exists() and not replaceable:
            raise DataError(f"{folder}: exists and is not a dataset folder; refusing to replace it")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        try:
            staging.chmod(0o755)  # mkdtemp makes it 0700
            arrays = {}
            for split in SPLITS:
                arrays[f"{split}_users"], arrays[f"{split}_items"] = self._split(split)
            with open(staging / "interactions.npz", "wb") as handle:
                np.savez(handle, **arrays)
                handle.flush()
                os.fsync(handle.fileno())
            atomic_write_text(staging / "user_ids.json", json.dumps(list(self.user_ids)))
            atomic_write_text(staging / "item_ids.json", json.dumps(list(self.item_ids)))
            files = ("interactions.npz", "user_ids.json", "item_ids.json")
            meta = {
                "format_version": SAVE_FORMAT_VERSION,
                "name": self.name,
                "n_users": int(self.n_users),
                "n_items": int(self.n_items),
                "sizes": {split: int(len(self._split(split)[0])) for split in SPLITS},
                "sha256": {name: sha256_file(staging / name) for name in files},
            }
            atomic_write_text(staging / "dataset.json", json.dumps(meta, indent=2, sort_keys=True))
            replace_folder(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @classmethod
    def load(cls, folder: str | Path) -> "Dataset":
        """Read a folder written by :meth:`save`, verifying hashes, shapes and id ranges."""
        folder = Path(folder)
        meta_path = folder / "dataset.json"
        meta = _read_json(meta_path)
        required = {"format_version": int, "name": str, "n_users": int, "n_items": int, "sha256": dict}
        for key, kind in required.items():
            if not isinstance(meta, dict) or not isinstance(meta.get(key), kind):
                raise DataError(f"{meta_path}: missing or invalid {key!r}")
        if meta["format_version"] != SAVE_FORMAT_VERSION:
            raise DataError(f"{meta_path}: format_version {meta['format_version']} is not {SAVE_FORMAT_VERSION}")
        for name in ("interactions.npz", "user_ids.json", "item_ids.json"):
            path = folder / name
            if not path.is_file():
                raise DataError(f"{path}: missing")
            digest = sha256_file(path)
            if digest != meta["sha256"].get(name):
                raise DataError(f"{path}: corrupted (sha256 {digest} does not match {meta_path.name})")
        n_users, n_items = meta["n_users"], meta["n_items"]
        user_ids = _read_id_list(folder / "user_ids.json", n_users)
        item_ids = _read_id_list(folder / "item_ids.json", n_items)
        npz_path = folder / "interactions.npz"
        expected = {f"{split}_{part}" for split in SPLITS for part in ("users", "items")}
        try:
            with np.load(npz_path, allow_pickle=False) as archive:
                if set(archive.files) != expected:
                    raise DataError(f"{npz_path}: arrays {sorted(archive.files)}, expected {sorted(expected)}")
                arrays = {key: archive[key] for key in expected}
        except DataError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"{npz_path}: cannot read: {exc}") from exc
        splits = {}
        keys = []
        for split in SPLITS:
            users, items = arrays[f"{split}_users"], arrays[f"{split}_items"]
            for array, bound, what in ((users, n_users, "users"), (items, n_items, "items")):
                if array.ndim != 1 or array.dtype != np.int64:
                    raise DataError(f"{npz_path}: {split}_{what} must be 1-D int64, got {array.dtype} {array.shape}")
                if len(array) and (array.min() < 0 or array.max() >= bound):
                    raise DataError(f"{npz_path}: {split}_{what} out of range [0, {bound})")
            if len(users) != len(items):
                raise DataError(f"{npz_path}: {split}_users and {split}_items differ in length")
            splits[split] = (users, items)
            keys.append(users * n_items + items)
        all_keys = np.concatenate(keys)
        if len(distinct_sorted(all_keys)) != len(all_keys):
            raise DataError(f"{npz_path}: repeated (user, item) pairs")
        return cls(meta["name"], n_users, n_items, user_ids, item_ids, splits["train"], splits["valid"], splits["test"])


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: missing (not a saved dataset folder?)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc


def _read_id_list(path: Path, expected: int) -> list[str]:
    ids = _read_json(path)
    if not isinstance(ids, list) or len(ids) != expected or not all(isinstance(x, str) for x in ids):
        raise DataError(f"{path}: expected a list of {expected} string ids")
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: repeated ids")
    return ids


