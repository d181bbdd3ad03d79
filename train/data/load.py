"""``load_dataset``: from a ``DataConfig`` to a split ``Dataset`` (pick the source, read, filter, re-index, split).

    python -c "from train.config import DataConfig; from train.data import load_dataset; print(load_dataset(DataConfig()).summary())"
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from train.config import DataConfig

from .dataset import Dataset, pair
from .fetch import SHIPPED_LIGHTGCN, fetch_ml100k, shipped_folder
from .filters import encode_ids, first_occurrences, k_core_filter
from .interactions import DataError, RawInteractions
from .readers import (
    HEADER_CHOICES,
    lightgcn_member,
    read_delimited,
    read_lightgcn,
    read_movielens,
    read_ratings_dat,
    read_recbole_inter,
)
from .split import check_ratios, fewest_for_one, split_leave_last_out, split_random
from .synthetic import SYNTHETIC_PRESETS, synthetic_interactions

logger = logging.getLogger(__name__)

FORMATS = ("auto", "movielens", "ratings-dat", "recbole", "csv", "lightgcn", "synthetic")


def detect_format(path: str | Path) -> tuple[str, Path]:
    """Pick a reader for a path. Returns ``(format, file or folder to read)``.

    A folder with ``train.txt`` and ``test.txt`` is ``lightgcn``; a folder holding ``u.data``,
    ``ratings.dat`` or a single ``*.inter`` resolves to that file. A file named ``u.data`` is
    ``movielens``, ``ratings.dat`` is ``ratings-dat``, ``*.inter`` is ``recbole``; any other file
    is ``csv`` (generic delimited).
    """
    path = Path(path)
    if path.is_dir():
        if lightgcn_member(path, "train.txt") and lightgcn_member(path, "test.txt"):
            return "lightgcn", path
        for name, fmt in (("u.data", "movielens"), ("ratings.dat", "ratings-dat")):
            if (path / name).is_file():
                return fmt, path / name
        inter = sorted(path.glob("*.inter"))
        if len(inter) == 1:
            return "recbole", inter[0]
        raise DataError(
            f"{path}: cannot tell the format of this folder (expected train.txt + test.txt, u.data, "
            f"ratings.dat or one *.inter file); pass a file or set data.format"
        )
    if not path.exists():
        raise DataError(
            f"{path}: no such file or folder (data.name is a path or one of: "
            f"ml-100k, {', '.join(SHIPPED_LIGHTGCN)}, {', '.join(SYNTHETIC_PRESETS)})"
        )
    if path.name == "u.data":
        return "movielens", path
    if path.name == "ratings.dat":
        return "ratings-dat", path
    if path.suffix == ".inter":
        return "recbole", path
    return "csv", path


def _check_config(config: DataConfig) -> None:
    if config.format not in FORMATS:
        raise DataError(f"data.format must be one of {', '.join(FORMATS)}, got {config.format!r}")
    if config.split not in ("random", "time"):
        raise DataError(f"data.split must be random or time, got {config.split!r}")
    if config.k_core < 0:
        raise DataError(f"data.k_core must be >= 0, got {config.k_core}")
    if config.header not in HEADER_CHOICES:
        raise DataError(f"data.header must be one of {', '.join(HEADER_CHOICES)}, got {config.header!r}")
    if config.holdout_users < 0:
        raise DataError(f"data.holdout_users must be >= 0, got {config.holdout_users}")
    check_ratios(tuple(config.ratios))


def _read_source(
    config: DataConfig, progress: bool
) -> tuple[RawInteractions, RawInteractions | None, tuple[int, int] | None]:
    """Returns ``(interactions, given test or None, fixed id universe or None)``."""
    name, fmt = config.name, config.format
    if fmt == "synthetic" or (fmt == "auto" and name in SYNTHETIC_PRESETS):
        preset = SYNTHETIC_PRESETS.get(name, SYNTHETIC_PRESETS["synthetic"])
        exponent = preset["popularity_exponent"]
        raw = synthetic_interactions(
            config.n_users,
            config.n_items,
            n_factors=config.n_factors,
            interactions_per_user=config.interactions_per_user,
            popularity_exponent=config.popularity_exponent if exponent is None else exponent,
            activity_sigma=preset["activity_sigma"],
            seed=config.seed,
            progress=progress,
        )
        return raw, None, (config.n_users, config.n_items)
    if name == "ml-100k" and fmt in ("auto", "recbole"):
        return read_recbole_inter(fetch_ml100k(config.cache_dir)), None, None
    if name in SHIPPED_LIGHTGCN and fmt in ("auto", "lightgcn"):
        train, test = read_lightgcn(shipped_folder(name), SHIPPED_LIGHTGCN[name])
        return train, test, None
    path = Path(name).expanduser()
    if fmt == "auto":
        fmt, path = detect_format(path)
    elif path.is_dir() and fmt != "lightgcn":
        detected, inner = detect_format(path)
        if detected != fmt:
            raise DataError(f"{path}: a folder, and data.format={fmt} found no {fmt} file in it")
        path = inner
    if fmt != "csv":
        for key, value, default in (("delimiter", config.delimiter, ""), ("columns", str(config.columns), ""),
                                    ("header", config.header, "auto")):
            if value != default:
                logger.warning("data.%s=%r is ignored: the %s format fixes its columns", key, value, fmt)
    if fmt == "lightgcn":
        train, test = read_lightgcn(path)
        return train, test, None
    if fmt == "csv":
        return read_delimited(path, config.delimiter, config.columns, config.header), None, None
    reader = {"movielens": read_movielens, "ratings-dat": read_ratings_dat, "recbole": read_recbole_inter}[fmt]
    return reader(path), None, None


def load_dataset(config: DataConfig, progress: bool = True) -> Dataset:
    """Read, filter, re-index and split interactions as ``config`` says (see the module docstring).

    Args:
        config: the data section of the training config.
        progress: show a progress bar / log lines for long steps.

    Raises:
        DataError: bad options, unreadable or malformed input, nothing left after filtering.
    """
    _check_config(config)
    started = time.perf_counter()
    raw, given_test, universe = _read_source(config, progress)
    where = raw.source or config.name
    if given_test is not None:
        if config.split == "time":
            raise DataError(
                f"{where}: data.split=time needs timestamps; LightGCN files have none "
                f"(test.txt is the test split; use data.split=random)"
            )
        is_given_test = np.concatenate([np.zeros(len(raw), dtype=bool), np.ones(len(given_test), dtype=bool)])
        raw = RawInteractions(
            users=np.concatenate([raw.users, given_test.users]),
            items=np.concatenate([raw.items, given_test.items]),
            source=where,
        )
    else:
        is_given_test = None
    n_read = len(raw)

    users, items, ratings, timestamps = raw.users, raw.items, raw.ratings, raw.timestamps
    if config.threshold is not None:
        if ratings is None:
            raise DataError(f"{where}: data.threshold={config.threshold} but the source has no ratings")
        keep = ratings >= config.threshold
        users, items, timestamps = users[keep], items[keep], None if timestamps is None else timestamps[keep]
        is_given_test = None if is_given_test is None else is_given_test[keep]
    if config.split == "time" and timestamps is None:
        raise DataError(f"{where}: data.split=time needs timestamps and the source has none; use data.split=random")

    if universe is not None:
        user_codes, user_vocab = users.astype(np.int64), np.arange(universe[0])
        item_codes, item_vocab = items.astype(np.int64), np.arange(universe[1])
    else:
        user_codes, user_vocab = encode_ids(users)
        item_codes, item_vocab = encode_ids(items)

    keep = first_occurrences(user_codes, item_codes)  # LightGCN: train rows come first, so train wins
    n_distinct = len(keep)
    if is_given_test is not None and is_given_test[keep].sum() < is_given_test.sum():
        logger.warning(
            "%s: %d test.txt pairs repeat a train.txt pair (or each other) and were dropped from test",
            where, int(is_given_test.sum() - is_given_test[keep].sum()),
        )
    if config.k_core > 1:
        keep = keep[k_core_filter(user_codes[keep], item_codes[keep], config.k_core)]
    if not len(keep):
        raise DataError(f"{where}: no interactions left after threshold={config.threshold}, k_core={config.k_core}")
    user_codes, item_codes = user_codes[keep], item_codes[keep]
    timestamps = None if timestamps is None else timestamps[keep]
    is_given_test = None if is_given_test is None else is_given_test[keep]

    # Contiguous ids over the ids still used; the generator keeps its full ranges unless k-core ran.
    if universe is None or config.k_core > 1:
        used_users, user_codes = np.unique(user_codes, return_inverse=True)
        used_items, item_codes = np.unique(item_codes, return_inverse=True)
        user_vocab, item_vocab = user_vocab[used_users], item_vocab[used_items]
        user_codes, item_codes = user_codes.astype(np.int64).ravel(), item_codes.astype(np.int64).ravel()

    if is_given_test is not None:
        train_rows = np.flatnonzero(~is_given_test)
        r_train, r_valid, _ = config.ratios
        valid_share = r_valid / (r_train + r_valid)  # valid carved out of train.txt
        train_part, valid_part, _ = split_random(
            user_codes[train_rows], (1.0 - valid_share, valid_share, 0.0), config.seed
        )
        train_index, valid_index = train_rows[train_part], train_rows[valid_part]
        test_index = np.flatnonzero(is_given_test)
    elif config.split == "time":
        train_index, valid_index, test_index = split_leave_last_out(user_codes, timestamps)
    else:
        train_index, valid_index, test_index = split_random(user_codes, tuple(config.ratios), config.seed)

    _check_split(config, where, given_test.source if given_test is not None else None, user_codes, user_vocab,
                 (train_index, valid_index, test_index))
    dataset = Dataset(
        name=config.name,
        n_users=len(user_vocab),
        n_items=len(item_vocab),
        user_ids=[str(x) for x in user_vocab.tolist()],
        item_ids=[str(x) for x in item_vocab.tolist()],
        train=pair(user_codes[train_index], item_codes[train_index]),
        valid=pair(user_codes[valid_index], item_codes[valid_index]),
        test=pair(user_codes[test_index], item_codes[test_index]),
    )
    if config.holdout_users > 0:
        dataset = hide_users(dataset, holdout_users(dataset, config))
        logger.info("%s: %d users hidden from train and valid (data.holdout_users)", config.name, config.holdout_users)
    logger.info(
        "%s: %d users, %d items, %d interactions (%d read, %d distinct; train %d, valid %d, test %d) in %.1f s",
        config.name, dataset.n_users, dataset.n_items, len(keep), n_read, n_distinct,
        len(train_index), len(valid_index), len(test_index), time.perf_counter() - started,
    )
    return dataset


def _check_split(
    config: DataConfig,
    where: str,
    given_test: str | None,
    users: np.ndarray,
    user_ids: np.ndarray,
    splits: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Stop with a DataError when the split leaves valid or test empty, or a user without a train interaction.

    Random and time splits keep at least one train interaction per user by construction
    (:mod:`.split`); a given test file (LightGCN) may hold users that train.txt lacks.

    Args:
        users: ``[n]`` contiguous user codes of the interactions kept.
        user_ids: external id of each code.
        splits: ``(train, valid, test)`` row indices into ``users``.
    """
    train_index, valid_index, test_index = splits
    n_users = len(user_ids)
    has_train = np.zeros(n_users, dtype=bool)
    has_train[users[train_index]] = True
    if not has_train.all():
        missing = np.flatnonzero(~has_train)
        if given_test is None:  # split_random and split_leave_last_out never do this
            raise AssertionError(f"{where}: the {config.split} split left {len(missing)} users without train")
        raise DataError(
            f"{given_test}: {len(missing)} users have test interactions and none in train "
            f"(first: {user_ids[missing[0]]!s}); a model cannot score a user it never trained on: add a train "
            f"interaction for each or drop them from the test file"
        )
    if given_test is not None:
        counted = users[np.concatenate([train_index, valid_index])]
        valid_share = config.ratios[1] / (config.ratios[0] + config.ratios[1])
        needs = {"valid": fewest_for_one((1.0 - valid_share, valid_share, 0.0), "valid"), "test": None}
        if not len(test_index):
            raise DataError(f"{given_test}: no test interactions left (each repeats a train pair, or data.threshold "
                            f"or data.k_core dropped it)")
        how = f"a validation share of {valid_share:.3g} cut from the train file"
    elif config.split == "time":
        counted = users
        needs = {"valid": 3, "test": 2}
        how = "data.split=time (leave-last-out)"
    else:
        counted = users
        needs = {split: fewest_for_one(tuple(config.ratios), split) for split in ("valid", "test")}
        how = f"data.split=random with data.ratios={tuple(config.ratios)}"
    for split, index in (("test", test_index), ("valid", valid_index)):
        if len(index) or needs[split] is None:
            continue
        per_user = np.bincount(counted, minlength=n_users)
        raise DataError(
            f"{where}: too small for the split: "
            f"{len(counted)} interactions from {n_users} users, at most {int(per_user.max(initial=0))} per user, "
            f"and {how} gives a user a {split} interaction only from {needs[split]} interactions on: the {split} "
            f"split would be empty (nothing to select or score on). Use more data, a lower data.k_core or "
            f"data.threshold, or other data.ratios"
        )
def holdout_users(dataset: Dataset, config: DataConfig) -> np.ndarray:
    """The users ``data.holdout_users`` hides, chosen on the full split (sorted int64 rows)."""
    from .split import choose_holdout_users

    try:
        return choose_holdout_users(dataset.train[0], dataset.test[0], dataset.n_users, config.holdout_users,
                                    config.seed)
    except ValueError as exc:
        raise DataError(f"{config.name}: {exc}") from None


def hide_users(dataset: Dataset, users: np.ndarray) -> Dataset:
    """``dataset`` without the train and valid interactions of ``users`` (their test ones stay)."""
    def keep(split: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        mask = ~np.isin(split[0], users)
        return pair(split[0][mask], split[1][mask])

    return dataclasses.replace(dataset, train=keep(dataset.train), valid=keep(dataset.valid))
