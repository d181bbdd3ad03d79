"""Tests for train/data/: readers, filters, splits, the generator, save/load. No network."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from common.io import sha256_file
from data_files import write
from train.config import DataConfig
from train.data import (
    DataError,
    Dataset,
    detect_format,
    encode_ids,
    k_core_filter,
    load_dataset,
    read_delimited,
    read_lightgcn,
    read_movielens,
    read_ratings_dat,
    read_recbole_inter,
    split_leave_last_out,
    split_random,
    synthetic_interactions,
)

REPO = Path(__file__).resolve().parents[2]


def pairs(dataset: Dataset, split: str) -> set[tuple[str, str]]:
    users, items = getattr(dataset, split)
    return {(dataset.user_ids[u], dataset.item_ids[i]) for u, i in zip(users.tolist(), items.tolist())}


def all_pairs(dataset: Dataset) -> set[tuple[str, str]]:
    return pairs(dataset, "train") | pairs(dataset, "valid") | pairs(dataset, "test")


# ---------------------------------------------------------------------------------------------
# Readers


def test_read_movielens_u_data(tmp_path):
    path = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n\n22\t377\t1.5\t878887116\n")
    raw = read_movielens(path)
    assert raw.users.tolist() == ["196", "186", "22"]
    assert raw.items.tolist() == ["242", "302", "377"]
    assert raw.ratings.tolist() == [3.0, 3.0, 1.5]
    assert raw.timestamps.tolist() == [881250949.0, 891717742.0, 878887116.0]
    assert detect_format(path) == ("movielens", path)
    assert detect_format(tmp_path) == ("movielens", path)


def test_read_movielens_bad_line_names_file_and_line(tmp_path):
    # line 3 is blank; line 4 has three fields
    path = write(tmp_path / "u.data", "1\t2\t3\t4\n1\t3\t3\t5\n\n2\t2\t3\n")
    with pytest.raises(DataError, match=rf"{path}:4: expected 4 fields"):
        read_movielens(path)


def test_truncated_last_line_is_reported(tmp_path):
    path = write(tmp_path / "u.data", "1\t2\t3\t4\n1\t3\t3\t5\n2\t2")
    with pytest.raises(DataError, match=rf"{path}:3: .*truncated"):
        read_movielens(path)


@pytest.mark.parametrize("name", ["u.data", "ratings.dat", "x.inter", "x.csv"])
def test_empty_file(tmp_path, name):
    path = write(tmp_path / name, "\n  \n")
    with pytest.raises(DataError, match=rf"{path}: file is empty"):
        load_dataset(DataConfig(name=str(path)), progress=False)


def test_missing_path_lists_known_names(tmp_path):
    with pytest.raises(DataError, match="ml-100k, gowalla, synthetic, synthetic-longtail"):
        load_dataset(DataConfig(name=str(tmp_path / "nope.csv")), progress=False)


def test_read_ratings_dat(tmp_path):
    path = write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    raw = read_ratings_dat(path)
    assert raw.users.tolist() == ["1", "1"] and raw.items.tolist() == ["1193", "661"]
    assert raw.ratings.tolist() == [5.0, 3.0]
    bad = write(tmp_path / "bad.dat", "1::2::5::9\n1::3::x::9\n")
    with pytest.raises(DataError, match=rf"{bad}:2: rating 'x' is not a finite number"):
        read_ratings_dat(bad)


def test_read_recbole_inter(tmp_path):
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    text = header + "196\t242\t3\t881250949\n186\t302\t4\t891717742\n"
    raw = read_recbole_inter(write(tmp_path / "a.inter", text))
    assert raw.users.tolist() == ["196", "186"] and raw.ratings.tolist() == [3.0, 4.0]
    # columns found by name, extra columns ignored, no timestamp column
    raw = read_recbole_inter(write(tmp_path / "b.inter", "item_id:token\textra:float\tuser_id:token\n7\t0.5\tu1\n"))
    assert raw.users.tolist() == ["u1"] and raw.items.tolist() == ["7"] and raw.timestamps is None
    path = write(tmp_path / "c.inter", "user\titem\n1\t2\n")
    with pytest.raises(DataError, match=rf"{path}:1: .*user_id and item_id"):
        read_recbole_inter(path)
    path = write(tmp_path / "d.inter", "user_id:token\titem_id:token\trating:float\n1\t2\t5\n1\t3\tNaN\n")
    with pytest.raises(DataError, match=rf"{path}:3: rating 'NaN'"):
        read_recbole_inter(path)


@pytest.mark.parametrize(
    "text, delimiter",
    [
        ("user,item,rating,timestamp\na,x,5,10\nb,y,4,20\n", ""),  # header, sniffed comma
        ("a,x,5,10\nb,y,4,20\n", ""),  # no header
        ("userId;movieId;rating;timestamp\na;x;5;10\nb;y;4;20\n", ""),  # semicolon
        ("a|x|5|10\nb|y|4|20\n", ""),  # pipe
        ("a\tx\t5\t10\nb\ty\t4\t20\n", ""),  # tab
        ("a  x 5 10\nb y   4 20\n", ""),  # runs of spaces
        ("a, x, 5, 10\nb, y, 4, 20\n", ","),  # given; fields are stripped
        ("a\tx\t5\t10\nb\ty\t4\t20\n", "tab"),
    ],
)
def test_read_delimited_four_columns(tmp_path, text, delimiter):
    raw = read_delimited(write(tmp_path / "r.txt", text), delimiter)
    assert raw.users.tolist() == ["a", "b"]
    assert raw.items.tolist() == ["x", "y"]
    assert raw.ratings.tolist() == [5.0, 4.0]
    assert raw.timestamps.tolist() == [10.0, 20.0]


def test_read_delimited_two_and_three_columns(tmp_path):
    raw = read_delimited(write(tmp_path / "a.csv", "user_id,item_id\n1,2\n3,4\n"))
    assert raw.users.tolist() == ["1", "3"] and raw.ratings is None and raw.timestamps is None
    raw = read_delimited(write(tmp_path / "b.csv", "u1,i1\nu2,i2\n"))  # string ids, no header
    assert raw.users.tolist() == ["u1", "u2"]
    raw = read_delimited(write(tmp_path / "c.csv", "1,2,4.5\n3,4,1\n"))
    assert raw.ratings.tolist() == [4.5, 1.0] and raw.timestamps is None


def test_read_delimited_errors(tmp_path):
    lines = ["1,2,5"] * 5 + ["1,2"] + ["3,4,5"]
    path = write(tmp_path / "a.csv", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{path}:6: expected 3 fields separated by ','"):
        read_delimited(path)
    path = write(tmp_path / "b.csv", "1,2\n,3\n")
    with pytest.raises(DataError, match=rf"{path}:2: empty user id"):
        read_delimited(path)
    path = write(tmp_path / "c.csv", "1;2;5;100\n1;3;4;1e\n")
    with pytest.raises(DataError, match=rf"{path}:2: timestamp '1e' is not a finite number"):
        read_delimited(path, ";")
    path = write(tmp_path / "d.csv", "1,2,3,4,5\n")
    with pytest.raises(DataError, match=rf"{path}"):
        read_delimited(path)
    path = write(tmp_path / "e.csv", "user,item,rating\n")
    with pytest.raises(DataError, match=rf"{path}: only a header"):
        read_delimited(path)


def test_read_lightgcn_folder(tmp_path):
    write(tmp_path / "train.txt", "0 1 2 3\n1 2\n2\n3 0 1 2 3 4\n")  # user 2 has no items
    write(tmp_path / "test.txt", "0 4\n3 5\n")
    train, test = read_lightgcn(tmp_path)
    assert train.users.tolist() == [0, 0, 0, 1, 3, 3, 3, 3, 3]
    assert train.items.tolist() == [1, 2, 3, 2, 0, 1, 2, 3, 4]
    assert test.users.tolist() == [0, 3] and test.items.tolist() == [4, 5]
    assert detect_format(tmp_path) == ("lightgcn", tmp_path)

    dataset = load_dataset(DataConfig(name=str(tmp_path), ratios=(0.5, 0.25, 0.25)), progress=False)
    assert pairs(dataset, "test") == {("0", "4"), ("3", "5")}
    given_train = {(str(u), str(i)) for u, i in zip(train.users, train.items)}
    assert pairs(dataset, "train") | pairs(dataset, "valid") == given_train
    assert not pairs(dataset, "train") & pairs(dataset, "valid")
    assert dataset.user_ids == ["0", "1", "3"]  # user 2 has no interaction at all
    assert len(dataset.valid[0]) > 0


def test_read_lightgcn_errors(tmp_path):
    write(tmp_path / "train.txt", "0 1 2\n1 2 x3\n")
    write(tmp_path / "test.txt", "0 3\n")
    with pytest.raises(DataError, match=rf"{tmp_path / 'train.txt'}:2: 'x3' is not an integer id"):
        read_lightgcn(tmp_path)
    write(tmp_path / "train.txt", "0 1 2\n")
    write(tmp_path / "test.txt", "")
    with pytest.raises(DataError, match=rf"{tmp_path / 'test.txt'}: file is empty"):
        read_lightgcn(tmp_path)
    write(tmp_path / "test.txt", "0 3\n")
    with pytest.raises(DataError, match="split=time"):
        load_dataset(DataConfig(name=str(tmp_path), split="time"), progress=False)


def test_unknown_format_lists_choices():
    with pytest.raises(DataError, match="auto, movielens"):
        load_dataset(DataConfig(name="x", format="parquet"), progress=False)


# ---------------------------------------------------------------------------------------------
# Ids, threshold, k-core


def test_ids_sorted_numerically_when_all_ints(tmp_path):
    codes, vocab = encode_ids(np.array(["10", "9", "2", "10"]))
    assert vocab.tolist() == ["2", "9", "10"] and codes.tolist() == [2, 1, 0, 2]
    codes, vocab = encode_ids(np.array(["b", "10", "a", "9"]))
    assert vocab.tolist() == ["10", "9", "a", "b"]  # not all ints: code-point order
    _, vocab = encode_ids(np.array(["007", "7"]))
    assert len(vocab) == 2  # "007" is not "7"


def test_threshold_dedup_and_id_map(tmp_path):
    text = "u,i,r\n1,10,5\n1,10,2\n1,11,1\n2,10,4\n2,12,4\n3,11,2\n"
    path = write(tmp_path / "r.csv", text)
    everything = load_dataset(DataConfig(name=str(path), ratios=(1.0, 0.0, 0.0)), progress=False)
    assert len(everything.train[0]) == 5  # (1, 10) counted once
    kept = load_dataset(DataConfig(name=str(path), threshold=4, ratios=(1.0, 0.0, 0.0)), progress=False)
    assert all_pairs(kept) == {("1", "10"), ("2", "10"), ("2", "12")}
    assert kept.user_ids == ["1", "2"] and kept.item_ids == ["10", "12"]
    with pytest.raises(DataError, match="no ratings"):
        load_dataset(DataConfig(name="synthetic", threshold=1.0, n_users=5, n_items=5), progress=False)
    with pytest.raises(DataError, match="no interactions left"):
        load_dataset(DataConfig(name=str(path), threshold=6), progress=False)


def test_k_core_iterates_to_a_fixed_point(tmp_path):
    # k=2: item z has one user, so (c, z) goes; then c has one item, so (c, x) goes too
    rows = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "x"), ("c", "z")]
    users, user_vocab = encode_ids(np.array([u for u, _ in rows]))
    items, item_vocab = encode_ids(np.array([i for _, i in rows]))
    keep = k_core_filter(users, items, 2)
    assert keep.tolist() == [True, True, True, True, False, False]
    assert k_core_filter(users, items, 0).all()
    path = write(tmp_path / "r.csv", "\n".join(f"{u},{i}" for u, i in rows) + "\n")
    dataset = load_dataset(DataConfig(name=str(path), k_core=2, ratios=(1.0, 0.0, 0.0)), progress=False)
    assert dataset.user_ids == ["a", "b"] and dataset.item_ids == ["x", "y"]
    for counts in (np.bincount(dataset.train[0]), np.bincount(dataset.train[1])):
        assert counts.min() >= 2


# ---------------------------------------------------------------------------------------------
# Splits


def random_users(seed: int = 0, n_users: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 60, n_users)
    return rng.permutation(np.repeat(np.arange(n_users), counts))


def test_split_random_invariants():
    users = random_users()
    ratios = (0.8, 0.1, 0.1)
    train, valid, test = split_random(users, ratios, seed=1)
    merged = np.concatenate([train, valid, test])
    assert len(merged) == len(users) and len(np.unique(merged)) == len(users)  # disjoint, covering
    counts = np.bincount(users)
    train_counts = np.bincount(users[train], minlength=len(counts))
    assert (train_counts >= 1).all()
    assert (train_counts[counts == 1] == 1).all()
    # ratios within a few points overall, and per user within one interaction
    assert abs(len(test) / len(users) - 0.1) < 0.02 and abs(len(valid) / len(users) - 0.1) < 0.02
    test_counts = np.bincount(users[test], minlength=len(counts))
    many = counts >= 10
    assert np.all(np.abs(test_counts[many] - counts[many] * 0.1) <= 1)
    # deterministic for a seed, different for another
    again = split_random(users, ratios, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip((train, valid, test), again))
    other = split_random(users, ratios, seed=2)
    assert not np.array_equal(test, other[2])


def test_split_random_small_users():
    # n=1: all train; n=2: 1 train + 1 test at 50/0/50; n=5 at 80/10/10: one each of valid and test
    train, valid, test = split_random(np.array([0, 1, 1]), (0.5, 0.0, 0.5), seed=0)
    assert 0 in train and len(test) == 1 and len(train) == 2
    train, valid, test = split_random(np.zeros(5, dtype=np.int64), (0.8, 0.1, 0.1), seed=0)
    assert (len(train), len(valid), len(test)) == (3, 1, 1)
    with pytest.raises(DataError, match="ratios"):
        split_random(np.zeros(3, dtype=np.int64), (0.5, 0.5, 0.5), seed=0)


def test_load_dataset_random_split(tmp_path):
    users = random_users(3, 100)
    rng = np.random.default_rng(0)
    lines = sorted({f"{u},{i}" for u, i in zip(users, rng.integers(0, 500, len(users)))})
    path = write(tmp_path / "r.csv", "\n".join(lines) + "\n")
    a = load_dataset(DataConfig(name=str(path), seed=5), progress=False)
    b = load_dataset(DataConfig(name=str(path), seed=5), progress=False)
    c = load_dataset(DataConfig(name=str(path), seed=6), progress=False)
    assert all_pairs(a) == {tuple(line.split(",")) for line in lines}
    assert not pairs(a, "train") & pairs(a, "test") and not pairs(a, "valid") & pairs(a, "test")
    assert pairs(a, "test") == pairs(b, "test") and pairs(a, "test") != pairs(c, "test")
    assert (np.bincount(a.train[0], minlength=a.n_users) >= 1).all()


def test_split_leave_last_out():
    users = np.array([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])
    times = np.array([4, 1, 3, 2, 5, 9, 1, 7, 7, 7], dtype=float)
    train, valid, test = split_leave_last_out(users, times)
    assert test.tolist() == [0, 5, 9]  # latest per user; ties: the later row is the later one
    assert valid.tolist() == [2, 8]  # user 1 (two rows) has no valid, user 2 (one row) none
    assert train.tolist() == [1, 3, 4, 6, 7]


def test_time_split_through_load_dataset(tmp_path):
    path = write(tmp_path / "u.data", "1\t10\t5\t300\n1\t11\t5\t100\n1\t12\t5\t200\n1\t13\t5\t50\n2\t10\t5\t1\n")
    dataset = load_dataset(DataConfig(name=str(path), split="time"), progress=False)
    assert pairs(dataset, "test") == {("1", "10")}
    assert pairs(dataset, "valid") == {("1", "12")}
    assert pairs(dataset, "train") == {("1", "11"), ("1", "13"), ("2", "10")}
    no_time = write(tmp_path / "r.csv", "1,2\n1,3\n")
    with pytest.raises(DataError, match="needs timestamps"):
        load_dataset(DataConfig(name=str(no_time), split="time"), progress=False)


# ---------------------------------------------------------------------------------------------
# Synthetic


def test_synthetic_deterministic_shaped_long_tailed():
    config = DataConfig(name="synthetic", n_users=400, n_items=1000, interactions_per_user=20, seed=3)
    a = load_dataset(config, progress=False)
    b = load_dataset(config, progress=False)
    c = load_dataset(replace(config, seed=4), progress=False)
    assert (a.n_users, a.n_items) == (400, 1000)
    assert len(a.user_ids) == 400 and a.item_ids[:3] == ["0", "1", "2"]
    for split in ("train", "valid", "test"):
        assert np.array_equal(getattr(a, split)[0], getattr(b, split)[0])
        assert np.array_equal(getattr(a, split)[1], getattr(b, split)[1])
    assert not np.array_equal(a.train[1], c.train[1])
    n = sum(len(getattr(a, s)[0]) for s in ("train", "valid", "test"))
    assert 0.8 * 400 * 20 < n <= 1.2 * 400 * 20
    popularity = np.sort(np.bincount(np.concatenate([a.train[1], a.valid[1], a.test[1]]), minlength=a.n_items))[::-1]
    assert popularity[:100].sum() / n > 0.4  # top 10% of items: far above the uniform 10%
    assert len(all_pairs(a)) == n  # distinct pairs


def test_synthetic_longtail_preset_and_raw_generator():
    raw = synthetic_interactions(300, 500, n_factors=4, interactions_per_user=10, seed=0)
    again = synthetic_interactions(300, 500, n_factors=4, interactions_per_user=10, seed=0)
    assert np.array_equal(raw.users, again.users) and np.array_equal(raw.items, again.items)
    assert np.array_equal(raw.timestamps, again.timestamps)
    assert raw.users.dtype == np.int64 and raw.users.min() >= 0 and raw.items.max() < 500
    assert len(np.unique(raw.users * 500 + raw.items)) == len(raw)
    assert np.array_equal(np.unique(raw.users), np.arange(300))  # every user has an interaction

    longtail = load_dataset(DataConfig(name="synthetic-longtail", n_users=1000, n_items=1000, seed=1), progress=False)
    per_user = np.bincount(np.concatenate([longtail.train[0], longtail.valid[0], longtail.test[0]]), minlength=1000)
    assert (per_user <= 3).mean() > 0.15 and per_user.max() > 100
    timed = load_dataset(DataConfig(name="synthetic", n_users=50, n_items=80, split="time"), progress=False)
    assert len(timed.test[0]) == 50


# ---------------------------------------------------------------------------------------------
# Dataset: csr, popularity, summary, save/load


@pytest.fixture
def small_dataset() -> Dataset:
    config = DataConfig(name="synthetic", n_users=60, n_items=40, interactions_per_user=6, seed=0)
    return load_dataset(config, progress=False)


def test_csr_popularity_summary(small_dataset):
    matrix = small_dataset.csr("train")
    assert matrix.shape == (60, 40) and matrix.dtype == np.float32
    assert matrix.nnz == len(small_dataset.train[0]) and set(matrix.data.tolist()) == {1.0}
    assert np.array_equal(np.asarray(matrix.sum(axis=0)).ravel().astype(np.int64), small_dataset.item_popularity())
    summary = small_dataset.summary()
    assert summary["n_interactions"] == summary["n_train"] + summary["n_valid"] + summary["n_test"]
    assert summary["density"] == pytest.approx(summary["n_interactions"] / (60 * 40))
    json.dumps(summary)
    with pytest.raises(ValueError, match="train, valid, test"):
        small_dataset.csr("dev")


def test_save_load_round_trip(tmp_path, small_dataset):
    folder = tmp_path / "ds"
    small_dataset.save(folder)
    loaded = Dataset.load(folder)
    assert (loaded.name, loaded.n_users, loaded.n_items) == (small_dataset.name, 60, 40)
    assert loaded.user_ids == small_dataset.user_ids and loaded.item_ids == small_dataset.item_ids
    for split in ("train", "valid", "test"):
        for got, want in zip(getattr(loaded, split), getattr(small_dataset, split)):
            assert got.dtype == np.int64 and np.array_equal(got, want)
    # replacing an existing dataset folder works and leaves nothing beside it
    other = load_dataset(DataConfig(name="synthetic", n_users=10, n_items=10, interactions_per_user=3), progress=False)
    other.save(folder)
    assert Dataset.load(folder).n_users == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    # a folder that is not a dataset is not clobbered
    (tmp_path / "mine").mkdir()
    write(tmp_path / "mine" / "notes.txt", "keep me")
    with pytest.raises(DataError, match="not a dataset folder"):
        other.save(tmp_path / "mine")


def test_load_rejects_corruption(tmp_path, small_dataset):
    folder = tmp_path / "ds"
    small_dataset.save(folder)
    npz = folder / "interactions.npz"
    blob = bytearray(npz.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    npz.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=rf"{npz}: corrupted"):
        Dataset.load(folder)

    small_dataset.save(folder)
    write(folder / "dataset.json", "{not json")
    with pytest.raises(DataError, match=rf"{folder / 'dataset.json'}: cannot read"):
        Dataset.load(folder)

    # consistent hashes but an out-of-range id: caught by the range check
    small_dataset.save(folder)
    with np.load(npz) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays["test_items"] = arrays["test_items"].copy()
    arrays["test_items"][0] = 40
    with open(npz, "wb") as handle:
        np.savez(handle, **arrays)
    meta = json.loads((folder / "dataset.json").read_text())
    meta["sha256"]["interactions.npz"] = sha256_file(npz)
    write(folder / "dataset.json", json.dumps(meta))
    with pytest.raises(DataError, match=rf"{npz}: test_items out of range"):
        Dataset.load(folder)
    with pytest.raises(DataError, match="missing"):
        Dataset.load(tmp_path / "nowhere")
