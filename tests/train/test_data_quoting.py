"""Delimited files with quotes and delimiters: the csv module reads them (quoted fields, delimiters and line
breaks inside fields, sniffed delimiters), and whatever it writes reads back (property-based).
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_files import many_rows, rows_of, write
from train.config import load_config
from train.data import DataError, read_delimited

# ---------------------------------------------------------------------------------------------
# Quoting and delimiters: the csv module


BOOK_CROSSING = '"User-ID";"ISBN";"Book-Rating"\n'


def test_quoted_semicolon_file(tmp_path):
    text = BOOK_CROSSING + '"276725";"034545104X";"0"\n"276726";"0155061224";"5"\n"276727";"0446520802";"0"\n'
    raw = read_delimited(write(tmp_path / "BX-Book-Ratings.csv", text))
    assert rows_of(raw) == [
        ("276725", "034545104X", 0.0, None),
        ("276726", "0155061224", 5.0, None),
        ("276727", "0446520802", 0.0, None),
    ]


def test_quoted_semicolon_file_trains(tmp_path):
    from train.loop import train

    lines = [f'"{user}";"{item}";"{rating}"' for user, item, rating in (row.split(",") for row in many_rows())]
    path = write(tmp_path / "ratings.csv", BOOK_CROSSING + "\n".join(lines) + "\n")
    config = load_config(
        overrides=[
            f"data.name={path}",
            "model.name=mf",
            "model.dim=8",
            "run.epochs=1",
            "run.threads=1",
            f"run.out={tmp_path / 'run'}",
            "optim.batch_size=16",
        ]
    )
    metrics = train(config, progress=False)
    assert metrics["epochs"] == 1 and np.isfinite(metrics["test"]["ndcg@20"])
    saved = json.loads((tmp_path / "run" / "data" / "user_ids.json").read_text())
    assert saved == sorted(f"u{user}" for user in range(12))  # code-point order: not all integers


def test_quotes_delimiters_and_line_breaks_inside_fields(tmp_path):
    text = 'user,item,title\n1,10,"Heat, 1995"\n2,20,"say ""hi"" ; | again"\n3,30,"two\nlines"\n4,40,plain\n'
    raw = read_delimited(write(tmp_path / "r.csv", text))
    assert rows_of(raw) == [
        ("1", "10", None, None),
        ("2", "20", None, None),
        ("3", "30", None, None),
        ("4", "40", None, None),
    ]
    # after a field that spans two lines, a bad row is still named by its own line
    bad = write(tmp_path / "bad.csv", text + '5,"50"\n')
    with pytest.raises(DataError, match=rf"{bad}:7: expected 3 fields separated by ','"):
        read_delimited(bad)


@pytest.mark.parametrize(
    "delimiter, given",
    [(",", ""), (";", ""), ("\t", ""), ("|", ""), ("::", ""), (" ", ""), (";", ";"), ("\t", "tab"), ("::", "::")],
)
def test_delimiters_quoted_or_not(tmp_path, delimiter, given):
    rows = [["u 1" if delimiter != " " else "u1", "i;1" if delimiter != ";" else "i1", "4"], ["u2", "i2", "5"]]
    quoted = "\n".join(delimiter.join(f'"{field}"' for field in row) for row in rows) + "\n"
    raw = read_delimited(
        write(tmp_path / "q.txt", "user_id" + delimiter + "item_id" + delimiter + "rating\n" + quoted), given
    )
    assert rows_of(raw) == [(rows[0][0], rows[0][1], 4.0, None), ("u2", "i2", 5.0, None)]


@pytest.mark.parametrize(
    "lines, expected",
    [
        (["1;2;4,5", "3;4;1,0"], (";", 3)),  # decimal commas in a semicolon file
        (["a | b | 5", "c | d | 4"], ("|", 3)),  # spaces around a pipe: not whitespace-separated
        (["1,Toy Story (1995),Adventure|Animation", "2,Heat (1995),Crime", "3,Up,Kids|Fun|Animation"], (",", 3)),
        (['"1";"a,b";"5"', '"2";"c,d";"4"'], (";", 3)),  # a comma inside quotes
        (["1::2::5::9", "1::3::4::9"], ("::", 4)),
        (["1  2 5", "3\t4   1"], (None, 3)),  # runs of spaces and tabs
        (["1", "2"], None),
    ],
)
def test_delimiter_sniffing(lines, expected):
    from train.data.readers import _sniff_delimiter

    assert _sniff_delimiter(lines) == expected


def test_bad_delimiter_option(tmp_path):
    path = write(tmp_path / "r.csv", "1,2\n")
    with pytest.raises(DataError, match="data.delimiter must be one character, tab, space or ::"):
        read_delimited(path, "=>")


def test_bulk_split_and_csv_module_agree(tmp_path):
    """A file without quotes is split in bulk; the same rows quoted go through csv.reader: same result."""
    rng = np.random.default_rng(0)
    rows = [
        [f"u{rng.integers(50)}", f"i {rng.integers(80)}", str(rng.integers(1, 6)), str(rng.integers(10**9))]
        for _ in range(500)
    ]
    plain = "user;item;rating;timestamp\n" + "\n".join(";".join(row) for row in rows) + "\n\n"
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=";", quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(
        [["user", "item", "rating", "timestamp"], *rows]
    )
    a = read_delimited(write(tmp_path / "plain.csv", plain))
    b = read_delimited(write(tmp_path / "quoted.csv", buffer.getvalue()))
    assert rows_of(a) == rows_of(b) == [(u, i, float(r), float(t)) for u, i, r, t in rows]


ID_TEXT = st.text(alphabet=st.sampled_from(list("ab7Z_-. ,;|\t\"'\né字")), min_size=1, max_size=6).filter(
    lambda text: text == text.strip()
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.tuples(ID_TEXT, ID_TEXT, st.integers(1, 5)), min_size=1, max_size=12),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    quote_all=st.booleans(),
    crlf=st.booleans(),
)
def test_what_the_csv_module_writes_reads_back(tmp_path, rows, delimiter, quote_all, crlf):
    """Any ids (delimiters, quotes, line breaks, non-ASCII inside) written by csv.writer come back as written."""
    buffer = io.StringIO()
    writer = csv.writer(
        buffer,
        delimiter=delimiter,
        quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL,
        lineterminator="\r\n" if crlf else "\n",
    )
    writer.writerow(["user_id", "item_id", "rating"])
    writer.writerows(rows)
    path = tmp_path / "r.csv"
    path.write_bytes(buffer.getvalue().encode())
    raw = read_delimited(path, delimiter)
    assert rows_of(raw) == [(user, item, float(rating), None) for user, item, rating in rows]
