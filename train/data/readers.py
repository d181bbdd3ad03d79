"""Readers, one per file format; each returns :class:`RawInteractions` (LightGCN: train and test).

    python -c "from train.data.readers import read_delimited; print(len(read_delimited('examples/ratings.csv')))"

Formats: MovieLens ``u.data`` (:func:`read_movielens`), MovieLens-1M/10M ``ratings.dat``
(:func:`read_ratings_dat`), RecBole ``.inter`` (:func:`read_recbole_inter`), a generic delimited file
(:func:`read_delimited`: delimiter sniffed, quotes read by the csv module, columns found by the
header's names or by position), and the LightGCN benchmark folder (:func:`read_lightgcn`, plain or
gzip-compressed). A bad file is a :class:`DataError` naming the file and line.
"""

from __future__ import annotations

import csv
import io
import logging
from itertools import chain
from pathlib import Path

import numpy as np

from train.config import COLUMN_ROLES, ColumnsConfig, ConfigError

from . import headers
from .interactions import DataError, RawInteractions
from .text import data_lines, is_int, raw_columns, read_text, sep_name, split_columns

logger = logging.getLogger(__name__)

SNIFF_LINES = 20
SNIFF_CANDIDATES = (",", "\t", ";", "|", "::", None)  # None: runs of whitespace
DELIMITER_ALIASES = {"tab": "\t", "\\t": "\t", "space": None, "whitespace": None, " ": None, "comma": ",",
                     "semicolon": ";", "pipe": "|"}
HEADER_CHOICES = ("auto", "yes", "no")
DEFAULT_POSITIONS = {"user": 0, "item": 1, "rating": 2, "timestamp": 3}  # columns of a file without a header
QUOTE = '"'
UNIT_SEPARATOR = "\x1f"  # what ``::`` becomes for the csv module, which takes one-character delimiters


class ColumnError(DataError, ConfigError):
    """A ``data.columns`` entry that does not fit the file: a data and a config error at once."""


# ----------------------------------------------------------------------------------------------
# Readers: each returns RawInteractions (LightGCN: a train and a test one)


def _read_fixed(path: str | Path, sep: str) -> RawInteractions:
    path = Path(path)
    text = read_text(path)
    lines, numbers = data_lines(text)
    table = split_columns(path, text, lines, numbers, sep, 4)
    return raw_columns(path, table, numbers, 0, 1, 2, 3)


def read_movielens(path: str | Path) -> RawInteractions:
    """MovieLens ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``, no header."""
    return _read_fixed(path, "\t")


def read_ratings_dat(path: str | Path) -> RawInteractions:
    """MovieLens-1M/10M ``ratings.dat``: ``user::item::rating::timestamp``, no header."""
    return _read_fixed(path, "::")


def read_recbole_inter(path: str | Path) -> RawInteractions:
    """RecBole atomic ``.inter`` file: tab-separated with a ``name:type`` header.

    ``user_id`` and ``item_id`` columns are required; ``rating`` and ``timestamp`` are read when
    present; other columns are ignored.
    """
    path = Path(path)
    text = read_text(path)
    lines, numbers = data_lines(text)
    header = [field.strip() for field in lines[0].split("\t")]
    names = [field.split(":", 1)[0] for field in header]
    if "user_id" not in names or "item_id" not in names:
        raise DataError(
            f"{path}:{numbers[0]}: a RecBole .inter header (tab-separated name:type fields) with "
            f"user_id and item_id columns was expected, got {lines[0][:80]!r}"
        )
    if len(lines) == 1:
        raise DataError(f"{path}: only a header, no interactions")
    table = split_columns(path, text, lines[1:], numbers[1:], "\t", len(header))

    def column(name: str) -> int | None:
        return names.index(name) if name in names else None

    user, item = names.index("user_id"), names.index("item_id")
    return raw_columns(path, table, numbers[1:], user, item, column("rating"), column("timestamp"))


def _normalise_delimiter(delimiter: str) -> str | None:
    """``data.delimiter`` as the reader uses it: one character, ``"::"``, or ``None`` (runs of whitespace)."""
    sep = DELIMITER_ALIASES.get(delimiter.lower() if delimiter.isalpha() else delimiter, delimiter)
    if sep is not None and sep != "::" and (len(sep) != 1 or sep in QUOTE + "\r\n" or sep == UNIT_SEPARATOR):
        raise DataError(f"data.delimiter must be one character, tab, space or ::, got {delimiter!r}")
    return sep


def _csv_text(text: str, sep: str | None) -> str:
    """``text`` as the csv module reads it with ``sep``: ``::`` becomes one character, whitespace one space."""
    if sep is None:  # runs of spaces and tabs: one space between fields (skipinitialspace eats the rest)
        return "\n".join(line.strip().replace("\t", " ") for line in text.split("\n"))
    if sep == "::":  # the csv module takes one-character delimiters
        return text.replace("::", UNIT_SEPARATOR)
    return text


def _csv_reader(source: str, sep: str | None, strict: bool):
    delimiter = " " if sep is None else UNIT_SEPARATOR if sep == "::" else sep
    return csv.reader(io.StringIO(source, newline=""), delimiter=delimiter, quotechar=QUOTE,
                      skipinitialspace=True, strict=strict)


def _sample_rows(lines: list[str], sep: str | None) -> list[list[str]]:
    """The sample lines parsed with ``sep`` (lenient: a quote left open by the sample's cut is no error)."""
    rows = _csv_reader(_csv_text("\n".join(lines), sep), sep, strict=False)
    return [[field.strip() for field in row] for row in rows if row]


def _sniff_delimiter(lines: list[str]) -> tuple[str | None, int] | None:
    """Pick ``(delimiter, width)`` from sample lines, or ``None`` when nothing fits.

    Each of ``, TAB ; | ::`` parses the sample with the csv module (quotes honoured) and counts
    the rows that agree on one width of 2 fields or more; more than half must agree. The most
    agreeing rows win, then the most fields (``1;2;4,5`` is three fields by ``;``, not two by
    ``,``), then the earlier candidate. Runs of whitespace are tried only when none of them fits
    (``a | b | 5`` is split by ``|``).
    """
    best: tuple[int, int, str | None] | None = None
    for sep in SNIFF_CANDIDATES:
        if best is not None and sep is None:
            break
        if sep == "::" and UNIT_SEPARATOR in "".join(lines):
            continue
        rows = _sample_rows(lines, sep)
        counts = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        widths, votes = np.unique(counts[counts >= 2], return_counts=True)
        if not votes.size:
            continue
        agree, width = int(votes.max()), int(widths[votes.argmax()])
        if 2 * agree > len(rows) and (best is None or (agree, width) > best[:2]):
            best = (agree, width, sep)
    return None if best is None else (best[2], best[1])


def _csv_rows(path: Path, text: str, sep: str | None) -> tuple[list[list[str]], np.ndarray]:
    """Every non-blank row of ``text`` parsed by the csv module, and the line each row starts on ``[n]``."""
    source = _csv_text(text, sep)
    reader = _csv_reader(source, sep, strict=True)
    try:
        rows = list(reader)
    except csv.Error as exc:
        why = ("the file ends inside a quoted field (truncated?)" if "unexpected end of data" in str(exc)
               else "a quoted field is not closed, or text follows its closing quote")
        raise DataError(f"{path}:{max(reader.line_num, 1)}: not valid delimited text ({exc}): {why}") from None
    physical = source.count("\n") + (not source.endswith("\n"))
    if len(rows) == physical and "\r" not in source.replace("\r\n", ""):
        numbers = np.arange(1, len(rows) + 1, dtype=np.int64)  # one row per line: no field spans lines
    else:  # a quoted field holds a line break: replay for the first line of each row
        starts, previous = [], 0
        reader = _csv_reader(source, sep, strict=True)
        for _ in reader:
            starts.append(previous + 1)
            previous = reader.line_num
        numbers = np.array(starts, dtype=np.int64)
    keep = [index for index, row in enumerate(rows) if len(row) > 1 or (row and row[0].strip())]
    if len(keep) != len(rows):
        rows, numbers = [rows[index] for index in keep], numbers[keep]
    return rows, numbers


def _csv_columns(
    path: Path, text: str, rows: list[list[str]], numbers: np.ndarray, sep: str | None, width: int, what: str
) -> list[list[str]]:
    """``width`` columns of stripped fields from parsed rows; a row of another width is a DataError."""
    counts = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    bad = np.flatnonzero(counts != width)
    if bad.size:
        i = int(bad[0])
        hint = " (the file looks truncated)" if i == len(rows) - 1 and not text.endswith("\n") else ""
        raise DataError(f"{path}:{numbers[i]}: expected {width} fields separated by {sep_name(sep)} ({what}), "
                        f"got {counts[i]}{hint}: {repr(rows[i])[:80]}")
    tokens = list(map(str.strip, chain.from_iterable(rows)))
    return [tokens[column::width] for column in range(width)]


def _place_columns(
    path: Path, header: list[str] | None, width: int, columns: ColumnsConfig
) -> dict[str, int | None]:
    """The column of each role (``None``: absent) from ``data.columns``, the header's names, or positions."""
    placed: dict[str, int] = {}
    absent = set()
    names = {index: name for index, name in enumerate(header or [])}
    for role, column in columns.given().items():
        if column.lower() == "none":
            absent.add(role)
            continue
        if column.isdigit() and column.isascii():
            index = int(column)
            if index >= width:
                raise ColumnError(f"{path}: data.columns.{role}={column}: the file has {width} columns "
                                  f"(positions 0 to {width - 1})")
        else:
            exact = [i for i, name in names.items() if name == column]
            loose = [i for i, name in names.items() if headers.normalise(name) == headers.normalise(column)]
            found = exact or loose
            if len(found) != 1:
                listed = ", ".join(map(repr, header or []))
                raise ColumnError(f"{path}: data.columns.{role}={column!r} "
                                  f"{'matches several' if found else 'is not one'} of the header's columns "
                                  f"({listed})")
            index = found[0]
        taken = [other for other, i in placed.items() if i == index]
        if taken:
            raise ColumnError(f"{path}: data.columns places {taken[0]} and {role} in the same column {index}")
        placed[role] = index
    if header is not None:
        try:
            placed, unused = headers.assign(header, placed)
        except ValueError as exc:
            raise DataError(f"{path}:1: {exc}") from None
        for role in ("user", "item"):
            if role not in placed:
                raise DataError(
                    f"{path}: the header names no {role} column (columns: {', '.join(map(repr, header))}); "
                    f"{'an' if role == 'item' else 'a'} {role} column is named one of: "
                    f"{headers.accepted_names(role)}. Or set "
                    f"data.columns {role}=NAME (or a 0-based position), or data.header=no if line 1 is data")
        how = ", ".join(f"{role}={header[index]!r} (column {index})" for role, index in placed.items()
                        if role not in absent)
        ignored = [repr(name) for index, name in enumerate(header) if index not in placed.values()]
        logger.info("%s: columns by header: %s%s", path, how, f"; not read: {', '.join(ignored)}" if ignored else "")
        for role, others in unused.items():
            logger.info("%s: %s also matches the %s role; not used (data.columns picks another)", path,
                        ", ".join(map(repr, others)), role)
    else:
        if not columns.given() and not 2 <= width <= 4:
            raise DataError(
                f"{path}:1: no header row, and {width} fields: without a header a file holds user, item[, "
                f"rating[, timestamp]] in that order; add a header naming the columns or set data.columns")
        for role, index in DEFAULT_POSITIONS.items():
            if role not in placed and role not in absent and index < width and index not in placed.values():
                placed[role] = index
        for role in ("user", "item"):
            if role not in placed:
                raise ColumnError(f"{path}: no header row and no column left for the {role} at its default "
                                  f"position {DEFAULT_POSITIONS[role]}; set data.columns {role}=POSITION")
        order = sorted(placed, key=placed.get)
        logger.info("%s: no header row; columns by position: %s (set data.columns to change)", path,
                    ", ".join(f"{role}={placed[role]}" for role in order))
    return {role: placed.get(role) if role not in absent else None for role in COLUMN_ROLES}


def read_delimited(
    path: str | Path, delimiter: str = "", columns: ColumnsConfig | None = None, header: str = "auto"
) -> RawInteractions:
    """Generic delimited file (CSV, TSV, ...): columns found by the header's names, or by position.

    Args:
        path: the file.
        delimiter: ``""`` sniffs one of ``, TAB ; | :: whitespace`` (:func:`_sniff_delimiter`);
            ``"tab"``/``"\\t"``, ``"space"`` are accepted spellings. Quoted fields (a delimiter
            or a doubled quote inside quotes) are read as the csv module reads them; fields are stripped.
        columns: ``data.columns``: a role's column by header name or 0-based position; roles left
            unset go by the header's names (:mod:`train.data.headers`) or, without a header, by
            position (user, item, rating, timestamp).
        header: ``auto`` (:func:`train.data.headers.is_header` decides; a name in ``columns``
            means a header), ``yes`` or ``no``.

    Without a header the reader logs the positions it assumed. A header that names no user or
    item column, a row of another width, an empty id and a rating or timestamp that is not a
    number (a timestamp may also be an ISO 8601 date) are DataErrors naming the file and line.
    """
    path = Path(path)
    columns = columns if columns is not None else ColumnsConfig()
    if header not in HEADER_CHOICES:
        raise DataError(f"data.header must be one of {', '.join(HEADER_CHOICES)}, got {header!r}")
    text = read_text(path)
    lines, numbers = data_lines(text)
    sample = lines[:SNIFF_LINES]
    if delimiter:
        sep = _normalise_delimiter(delimiter)
        counts = np.fromiter(map(len, _sample_rows(sample, sep)), dtype=np.int64)
        widths, votes = np.unique(counts, return_counts=True)
        width = int(widths[votes.argmax()])
    else:
        sniffed = _sniff_delimiter(sample)
        if sniffed is None:
            raise DataError(
                f"{path}: cannot detect the delimiter (tried , tab ; | :: whitespace for 2 or more fields: "
                f"user, item[, rating[, timestamp]]); set data.delimiter"
            )
        sep, width = sniffed
    # A file without a quote character is split in bulk (the csv module's own result on such text,
    # several times faster); one with quotes goes through csv.reader.
    parsed = _csv_rows(path, text, sep) if QUOTE in text else None
    if parsed is not None and not parsed[0]:
        raise DataError(f"{path}: no interactions (every row is empty)")
    first = [field.strip() for field in parsed[0][0]] if parsed is not None else _sample_rows(lines[:1], sep)[0]
    named = any(not (column.isdigit() and column.isascii()) and column.lower() != "none"
                for column in columns.given().values())
    if header == "no" and named:
        raise ColumnError(f"{path}: data.columns names columns by header name ({columns}), but data.header=no")
    has_header = header == "yes" or named
    if header == "auto" and not has_header:
        has_header = headers.is_header(first, _sample_rows(sample, sep)[1:])
    if has_header:
        width = len(first)
    placed = _place_columns(path, first if has_header else None, width, columns)
    start = 1 if has_header else 0
    if parsed is not None:
        table_rows, numbers = parsed[0][start:], parsed[1][start:]
        if not table_rows:
            raise DataError(f"{path}: only a header, no interactions")
        what = "as the header" if has_header else "as most of the first lines"
        table = _csv_columns(path, text, table_rows, numbers, sep, width, what)
    else:
        lines, numbers = lines[start:], numbers[start:]
        if not lines:
            raise DataError(f"{path}: only a header, no interactions")
        table = split_columns(path, text, lines, numbers, sep, width)
    return raw_columns(path, table, numbers, placed["user"], placed["item"], placed["rating"], placed["timestamp"])


def _read_lightgcn_file(path: Path, sha256: str | None = None) -> RawInteractions:
    text = read_text(path, sha256)
    lines, numbers = data_lines(text)
    rows = [line.split() for line in lines]
    sizes = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    tokens = np.array(list(chain.from_iterable(rows)), dtype=str)
    try:
        ids = tokens.astype(np.int64)
    except (ValueError, OverflowError):
        for row, line_number in zip(rows, numbers):
            for token in row:
                if not is_int(token):
                    raise DataError(
                        f"{path}:{line_number}: {token!r} is not an integer id (lines are 'user item item ...')"
                    ) from None
        raise
    starts = np.cumsum(sizes) - sizes
    users = np.repeat(ids[starts], sizes - 1)
    items = np.delete(ids, starts)
    if not len(items):
        raise DataError(f"{path}: no interactions (every line is a user without items)")
    return RawInteractions(users=users, items=items, source=str(path))


def lightgcn_member(folder: Path, name: str) -> Path | None:
    """``folder/name``, or ``folder/name.gz``; ``None`` when neither exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_lightgcn(folder: str | Path, checksums: dict[str, str] | None = None
                  ) -> tuple[RawInteractions, RawInteractions]:
    """LightGCN benchmark folder (Gowalla, Yelp2018, Amazon-Book): ``train.txt``, ``test.txt``.

    Each line is ``user item item ...`` (integer ids, whitespace-separated; a user may have no
    items); either file may be gzip-compressed (``train.txt.gz``). ``checksums`` maps
    ``train.txt``/``test.txt`` to the sha256 of their uncompressed bytes. Returns ``(train, test)``.
    """
    folder = Path(folder)
    files = []
    for name in ("train.txt", "test.txt"):
        path = lightgcn_member(folder, name)
        if path is None:
            raise DataError(f"{folder / name}: no such file (nor {name}.gz)")
        files.append(_read_lightgcn_file(path, (checksums or {}).get(name)))
    return files[0], files[1]

