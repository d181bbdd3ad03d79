"""Delimited files read by their header: names, overrides, quoting, delimiters, and the errors a user can fix.

Every file is written here in a temporary folder; the shipped sample (examples/ratings.csv) is
trained on through the real ``python -m train``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_files import many_rows, rows_of, write
from train.config import ColumnsConfig, ConfigError, DataConfig, load_config
from train.data import ColumnError, DataError, load_dataset, read_delimited
from train.data.headers import is_header, match, normalise

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "ratings.csv"


def pairs(dataset, split: str) -> set[tuple[str, str]]:
    users, items = getattr(dataset, split)
    return {(dataset.user_ids[u], dataset.item_ids[i]) for u, i in zip(users.tolist(), items.tolist())}


# ---------------------------------------------------------------------------------------------
# Header names


def test_normalise_and_match():
    for spelling in ("userId", "user_id", "UserID", "User-ID", "USER ID", "user_id:token", "user"):
        assert match(spelling)[0] == "user", spelling
    for spelling in (
        "movieId",
        "item_id",
        "itemId",
        "ISBN",
        "book_id",
        "asin",
        "product_id",
        "item",
        "iid",
        "business_id",
        "track-no",
    ):
        assert match(spelling)[0] == "item", spelling
    for spelling in ("rating", "Book-Rating", "score", "stars", "overall", "review_score"):
        assert match(spelling)[0] == "rating", spelling
    for spelling in ("timestamp", "time", "ts", "date", "datetime", "unixReviewTime", "rating_date"):
        assert match(spelling)[0] == "timestamp", spelling
    for other in ("title", "genre", "comment", "", "---"):
        assert match(other) is None, other
    assert normalise("User-ID") == normalise("user_id:token") == "userid"
    assert match("rating")[1] < match("count")[1] < match("Book-Rating")[1]  # exact names before looser ones


@pytest.mark.parametrize(
    "header, delimiter",
    [
        ("userId,movieId,rating,timestamp", ","),
        ("user_id\titem_id\trating\ttimestamp", "\t"),
        ("UserID;ItemID;Rating;Time", ";"),
        ("User-ID|ISBN|Book-Rating|date", "|"),
        ("customer_id,product_id,stars,ts", ","),
        ("uid,iid,score,datetime", ","),
        ("user_id:token\titem_id:token\trating:float\ttimestamp:float", "\t"),  # RecBole's header, in a .tsv
        ("reviewerID,asin,overall,unixReviewTime", ","),
    ],
)
def test_header_synonyms(tmp_path, header, delimiter):
    body = [["u1", "x9", "5", "10"], ["u2", "y8", "4", "20"]]
    text = header + "\n" + "\n".join(delimiter.join(row) for row in body) + "\n"
    raw = read_delimited(write(tmp_path / "ratings.txt", text))
    assert rows_of(raw) == [("u1", "x9", 5.0, 10.0), ("u2", "y8", 4.0, 20.0)]


def test_header_in_any_order_with_extra_columns(tmp_path):
    text = "title,timestamp,rating,movieId,genre,userId\nHeat,100,4.5,m1,crime,u1\nUp,200,3,m2,kids,u2\n"
    raw = read_delimited(write(tmp_path / "r.csv", text))
    assert rows_of(raw) == [("u1", "m1", 4.5, 100.0), ("u2", "m2", 3.0, 200.0)]


def test_swapped_header_is_not_silently_swapped(tmp_path):
    path = write(tmp_path / "r.csv", "item_id,user_id,rating\n" + "\n".join(many_rows(swap=True)) + "\n")
    dataset = load_dataset(DataConfig(name=str(path)), progress=False)
    every = pairs(dataset, "train") | pairs(dataset, "valid") | pairs(dataset, "test")
    assert every == {(line.split(",")[1], line.split(",")[0]) for line in many_rows(swap=True)}
    assert all(user.startswith("u") for user in dataset.user_ids)
    assert all(item.startswith("i") for item in dataset.item_ids)


def test_two_columns_with_one_name_are_ambiguous(tmp_path):
    path = write(tmp_path / "r.csv", "user_id,UserID,item\n1,2,3\n")
    with pytest.raises(DataError, match=rf"{path}:1: the columns 'user_id', 'UserID' all name the user"):
        read_delimited(path)


def test_header_detection_rule():
    assert is_header(["user_id", "thing"], [["a", "b"]])  # an id name alone
    assert is_header(["ISBN", "x"], [])
    assert is_header(["customer", "book"], [["c1", "b1"]])  # two roles
    assert is_header(["a", "b", "c"], [["1", "2", "5"], ["3", "4", "1"]])  # numbers below a name
    assert not is_header(["u1", "book", "5"], [["u2", "game", "4"]])  # an item called "book" is data
    assert not is_header(["1", "2", "5"], [["3", "4", "1"]])
    assert not is_header(["u", "i"], [["a", "b"]])  # one-letter names do not make a header on their own


# ---------------------------------------------------------------------------------------------
# No header: positions, logged


def test_headerless_file_goes_by_position_and_says_so(tmp_path, caplog):
    path = write(tmp_path / "r.csv", "7,70,4\n8,80,5\n")
    with caplog.at_level(logging.INFO, logger="train.data.readers"):
        raw = read_delimited(path)
    assert rows_of(raw) == [("7", "70", 4.0, None), ("8", "80", 5.0, None)]
    lines = [record.getMessage() for record in caplog.records]
    expected = f"{path}: no header row; columns by position: user=0, item=1, rating=2 (set data.columns to change)"
    assert lines == [expected]


def test_header_is_logged_with_its_columns(tmp_path, caplog):
    path = write(tmp_path / "r.csv", "title,item_id,user_id\nHeat,m1,u1\n")
    with caplog.at_level(logging.INFO, logger="train.data.readers"):
        read_delimited(path)
    assert f"{path}: columns by header: user='user_id' (column 2), item='item_id' (column 1); not read: 'title'" in [
        record.getMessage() for record in caplog.records
    ]


def test_data_header_yes_and_no(tmp_path):
    path = write(tmp_path / "r.csv", "user42,book,5\nuser43,game,4\n")
    assert rows_of(read_delimited(path))[0] == ("user42", "book", 5.0, None)
    assert rows_of(read_delimited(path, header="no"))[0] == ("user42", "book", 5.0, None)
    named = write(tmp_path / "n.csv", "reader,thing\nr1,t1\nr2,t2\n")  # "reader" names the user, "thing" nothing
    assert rows_of(read_delimited(named, header="no"))[0] == ("reader", "thing", None, None)
    with pytest.raises(DataError, match=rf"{named}: the header names no item column"):
        read_delimited(named, header="yes")
    assert rows_of(read_delimited(named, header="yes", columns=ColumnsConfig(item="1"))) == [
        ("r1", "t1", None, None),
        ("r2", "t2", None, None),
    ]
    with pytest.raises(DataError, match="data.header must be one of auto, yes, no"):
        read_delimited(path, header="maybe")


# ---------------------------------------------------------------------------------------------
# data.columns: by name, by position, validated


def test_columns_override_by_name_and_by_position(tmp_path):
    path = write(tmp_path / "r.csv", "a,b,c,d\nx1,u1,3,100\nx2,u2,5,200\n")
    by_name = ColumnsConfig(user="b", item="a", rating="c")
    assert rows_of(read_delimited(path, columns=by_name)) == [("u1", "x1", 3.0, None), ("u2", "x2", 5.0, None)]
    by_position = ColumnsConfig(user="1", item="0", timestamp="3")
    headerless = write(tmp_path / "h.csv", "x1,u1,3,100\nx2,u2,5,200\n")
    # the roles not given keep their default positions where free (rating: 2)
    assert rows_of(read_delimited(headerless, columns=by_position)) == [
        ("u1", "x1", 3.0, 100.0),
        ("u2", "x2", 5.0, 200.0),
    ]
    # over a header's own names: the override wins, the rest still go by name
    named = write(tmp_path / "named.csv", "userId,movieId,rating,other_user\nu1,m1,4,w1\nu2,m2,5,w2\n")
    assert rows_of(read_delimited(named, columns=ColumnsConfig(user="other_user"))) == [
        ("w1", "m1", 4.0, None),
        ("w2", "m2", 5.0, None),
    ]
    assert rows_of(read_delimited(named, columns=ColumnsConfig(user="3", rating="none"))) == [
        ("w1", "m1", None, None),
        ("w2", "m2", None, None),
    ]


def test_columns_flag_through_the_config(tmp_path):
    path = write(tmp_path / "r.csv", "\n".join(many_rows(swap=True)) + "\n")  # headerless, item first
    for override in (["data.columns=user=1,item=0"], ["data.columns.user=1", "data.columns.item=0"]):
        config = load_config(overrides=[f"data.name={path}", *override])
        assert config.data.columns == ColumnsConfig(user="1", item="0")
        dataset = load_dataset(config.data, progress=False)
        assert all(user.startswith("u") for user in dataset.user_ids)


@pytest.mark.parametrize(
    "override, words",
    [
        ("data.columns=users=1", r"unknown config key\(s\) data\.columns\.users"),
        ("data.columns=user", "name=value pairs"),
        ("data.columns=user=1,user=2", "user given twice"),
        ("data.columns=user=1,item=1", "user and item both name the column '1'"),
        ("data.columns=item=none", "every file needs a item column"),
    ],
)
def test_columns_config_errors(override, words):
    with pytest.raises(ConfigError, match=words):
        load_config(overrides=[override])


def test_columns_that_the_file_lacks_are_named(tmp_path):
    path = write(tmp_path / "r.csv", "userId,movieId,rating\nu1,m1,4\n")
    with pytest.raises(
        ColumnError,
        match=rf"{path}: data.columns.item='isbn' is not one of the header's "
        r"columns \('userId', 'movieId', 'rating'\)",
    ):
        read_delimited(path, columns=ColumnsConfig(item="isbn"))
    with pytest.raises(ConfigError, match=rf"{path}: data.columns.rating=5: the file has 3 columns"):
        read_delimited(path, columns=ColumnsConfig(rating="5"))
    with pytest.raises(DataError, match="user and item in the same column 0"):
        read_delimited(path, columns=ColumnsConfig(user="userId", item="0"))
    with pytest.raises(ColumnError, match="data.header=no"):
        read_delimited(path, columns=ColumnsConfig(user="userId"), header="no")


# ---------------------------------------------------------------------------------------------
# Values: ratings, timestamps, ids


def test_iso_dates_as_timestamps(tmp_path):
    text = "user,item,date\nu1,i1,2024-01-02\nu1,i2,2024-01-02 00:00:10\nu2,i1,2024-01-02T00:01:00+01:00\n"
    raw = read_delimited(write(tmp_path / "r.csv", text))
    base = float(np.datetime64("2024-01-02T00:00:00", "s").astype(np.int64))
    assert raw.timestamps.tolist() == [base, base + 10, base + 60 - 3600]
    bad = write(tmp_path / "bad.csv", "user,item,date\nu1,i1,2024-01-02\nu2,i2,yesterday\n")
    with pytest.raises(DataError, match=rf"{bad}:3: timestamp 'yesterday' is not an ISO 8601 date"):
        read_delimited(bad)


def test_non_numeric_rating_names_line_and_value(tmp_path):
    path = write(tmp_path / "r.csv", '"user","item","rating"\n"1","2","5"\n"3","4","good"\n')
    with pytest.raises(DataError, match=rf"{path}:3: rating 'good' is not a finite number"):
        read_delimited(path)


# ---------------------------------------------------------------------------------------------
# Errors that name the file and the problem


def test_header_without_a_user_column(tmp_path):
    path = write(tmp_path / "r.csv", "name,ISBN,rating\nalice,0345,5\nbob,0346,4\n")
    with pytest.raises(DataError) as error:
        read_delimited(path)
    message = str(error.value)
    assert message.startswith(f"{path}: the header names no user column (columns: 'name', 'ISBN', 'rating')")
    assert "user, customer" in message and "userId, user_id, User-ID" in message and "data.columns user=" in message
    no_item = write(tmp_path / "i.csv", "user_id,title\n1,x\n")
    with pytest.raises(DataError, match=rf"{no_item}: the header names no item column"):
        read_delimited(no_item)


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("user,item,rating\n1,2,5\n3,4\n5,6,1\n", 3, "expected 3 fields separated by ',', got 2"),  # ragged, bulk
        ('"user","item","rating"\n1,2,5\n3,4,5,6\n', 3, r"expected 3 fields separated by ',' \(as the header\), got 4"),
        ("user,item,rating\n1,2,5\n3,4", 3, r"got 2 \(the file looks truncated\)"),  # truncated last line
        ('user,item,rating\n1,2,5\n3,"4', 3, "the file ends inside a quoted field"),  # truncated inside quotes
        ('user,item,rating\n1,"2"x,5\n', 2, "text follows its closing quote"),
        ('user,item\n1,2\n"",3\n', 3, "empty user id"),
    ],
)
def test_ragged_truncated_and_malformed_rows_name_their_line(tmp_path, text, line, words):
    path = write(tmp_path / "r.csv", text)
    with pytest.raises(DataError, match=rf"{path}:{line}: .*{words}"):
        read_delimited(path)


def test_too_small_for_the_split(tmp_path):
    path = write(tmp_path / "r.csv", "user,item\n1,2\n1,3\n2,4\n")
    with pytest.raises(DataError) as error:
        load_dataset(DataConfig(name=str(path)), progress=False)
    message = str(error.value)
    assert message.startswith(f"{path}: too small for the split: 3 interactions from 2 users, at most 2 per user")
    assert "data.ratios=(0.8, 0.1, 0.1) gives a user a test interaction only from 5 interactions on" in message
    with pytest.raises(DataError, match="data.split=time .* from 2 interactions on"):
        load_dataset(
            DataConfig(name=str(write(tmp_path / "t.csv", "user,item,ts\n1,2,5\n2,3,6\n")), split="time"),
            progress=False,
        )
    # the same file splits once the ratios need fewer interactions per user (50/0/50: two)
    dataset = load_dataset(DataConfig(name=str(path), ratios=(0.5, 0.0, 0.5)), progress=False)
    assert pairs(dataset, "test") and (np.bincount(dataset.train[0], minlength=dataset.n_users) >= 1).all()


def test_every_user_keeps_a_train_interaction(tmp_path):
    """Random and time splits keep one train interaction per user by construction; a given test file may not."""
    rng = np.random.default_rng(1)
    lines = [
        f"u{user},i{item},{t}"
        for user in range(200)
        for t, item in enumerate(rng.choice(50, size=int(rng.integers(1, 8)), replace=False))
    ]
    path = write(tmp_path / "r.csv", "user,item,timestamp\n" + "\n".join(lines) + "\n")
    for split in ("random", "time"):
        dataset = load_dataset(DataConfig(name=str(path), split=split), progress=False)
        assert dataset.summary()["users_without_train"] == 0
    folder = tmp_path / "lightgcn"
    folder.mkdir()
    write(folder / "train.txt", "0 1 2 3 4\n1 2 3 4 5\n")
    write(folder / "test.txt", "0 6\n1 7\n2 8\n")  # user 2 is only in test
    with pytest.raises(
        DataError,
        match=rf"{folder / 'test.txt'}: 1 users have test interactions and none in train "
        r"\(first: 2\)",
    ):
        load_dataset(DataConfig(name=str(folder), ratios=(0.6, 0.2, 0.2)), progress=False)


# ---------------------------------------------------------------------------------------------
# The shipped sample and the real command line


def test_sample_file_is_what_its_script_writes(tmp_path):
    out = tmp_path / "ratings.csv"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_ratings.py"), "--out", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == SAMPLE.read_bytes()
    raw = read_delimited(SAMPLE)
    assert 300 <= len(raw) <= 800 and raw.timestamps is not None and set(raw.ratings.tolist()) <= {1, 2, 3, 4, 5}
    assert SAMPLE.read_text().splitlines()[0] == '"Title","ISBN","Rating","User-ID","Date"'
    assert any('""' in line for line in SAMPLE.read_text().splitlines())  # a quote inside a quoted field


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    return subprocess.run(
        [sys.executable, "-m", "train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_sample_trains_end_to_end_through_the_cli(tmp_path):
    done = _cli(
        "--data",
        str(SAMPLE),
        "--model",
        "mf",
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "2",
        "--run.threads=1",
        "--no-progress",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 2 and np.isfinite(summary["test_ndcg@20"])
    assert "columns by header: user='User-ID' (column 3), item='ISBN' (column 1)" in done.stderr
    data = json.loads((tmp_path / "run" / "data" / "dataset.json").read_text())
    raw = read_delimited(SAMPLE)
    assert (data["n_users"], data["n_items"]) == (len(set(raw.users.tolist())), len(set(raw.items.tolist())))
    assert data["sizes"]["test"] > 0 and data["sizes"]["valid"] > 0


def test_cli_stops_with_the_file_and_the_problem(tmp_path):
    bad = write(tmp_path / "no-user.csv", "name,ISBN,rating\nalice,0345,5\n")
    done = _cli("--data", str(bad), "--model", "mf", "--out", str(tmp_path / "run"), "--quiet", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {bad}: the header names no user column") and "Traceback" not in done.stderr
    done = _cli(
        "--data", str(SAMPLE), "--data.columns", "user=User", "--out", str(tmp_path / "run"), "--quiet", cwd=tmp_path
    )
    assert done.returncode == 2 and "data.columns.user='User' is not one of the header's columns" in done.stderr
