"""Readers, one per file format; each returns :class:`RawInteractions` (LightGCN: train and test).

    python -c "from train.data.readers import read_delimited; print(len(read_delimited('ratings.csv')))"

Formats: MovieLens ``u.data`` (:func:`read_movielens`), MovieLens-1M/10M ``ratings.dat``
(:func:`read_ratings_dat`), RecBole ``.inter`` (:func:`read_recbole_inter`), a generic delimited file
with a sniffed delimiter and optional header (:func:`read_delimited`), and the LightGCN benchmark
folder (:func:`read_lightgcn`, plain or gzip-compressed). A bad file is a :class:`DataError` naming
the file and line.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import zlib
from itertools import chain
from operator import methodcaller
from pathlib import Path

import numpy as np

from .interactions import DataError, RawInteractions

SNIFF_LINES = 20
SNIFF_CANDIDATES = (",", "\t", ";", "|", None)  # None: runs of whitespace
DELIMITER_ALIASES = {"tab": "\t", "\\t": "\t", "space": None, "whitespace": None, " ": None}
HEADER_USER = re.compile(r"(user|uid|customer|visitor)([ _-]?id)?(:\w+)?", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------
# Reading text files


def _read_text(path: Path, sha256: str | None = None) -> str:
    """The file's text; a missing, unreadable, undecodable or empty file is a DataError.

    A ``.gz`` file is decompressed (a truncated or corrupt one is a DataError naming it);
    ``sha256``, when given, must match the (uncompressed) bytes.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: not a complete gzip file (truncated or corrupt: {exc})") from exc
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise DataError(f"{path}: sha256 of the {'uncompressed ' if path.suffix == '.gz' else ''}content is "
                            f"{digest}, expected {sha256}: the file is altered or truncated")
    if not data.strip():
        raise DataError(f"{path}: file is empty (no interactions)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _data_lines(text: str) -> tuple[list[str], np.ndarray]:
    """Stripped non-blank lines and their 1-based line numbers ``[n]`` int64."""
    lines = list(map(str.strip, text.split("\n")))
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    numbers = np.flatnonzero(lengths) + 1
    if len(numbers) != len(lines):
        lines = [lines[n - 1] for n in numbers]
    return lines, numbers


def _sep_name(sep: str | None) -> str:
    return {None: "whitespace", "\t": "tabs"}.get(sep, repr(sep))


def _field_counts(lines: list[str], sep: str | None) -> np.ndarray:
    if sep is None:
        return np.fromiter(map(len, map(str.split, lines)), dtype=np.int64, count=len(lines))
    return np.fromiter(map(methodcaller("count", sep), lines), dtype=np.int64, count=len(lines)) + 1


def _split_columns(
    path: Path, text: str, lines: list[str], numbers: np.ndarray, sep: str | None, width: int
) -> list[list[str]]:
    """Split every line into exactly ``width`` stripped fields. Returns ``width`` columns."""
    counts = _field_counts(lines, sep)
    bad = np.flatnonzero(counts != width)
    if bad.size:
        i = int(bad[0])
        hint = " (the file looks truncated)" if i == len(lines) - 1 and not text.endswith("\n") else ""
        raise DataError(
            f"{path}:{numbers[i]}: expected {width} fields separated by {_sep_name(sep)}, "
            f"got {counts[i]}{hint}: {lines[i][:80]!r}"
        )
    # one join and one split in C instead of a split per line
    if sep is None:
        tokens = " ".join(lines).split()
    else:
        joined = sep.join(lines)
        tokens = joined.split(sep)
        if " " in joined or (sep != "\t" and "\t" in joined):
            tokens = list(map(str.strip, tokens))
    return [tokens[column::width] for column in range(width)]


def _id_column(path: Path, column: list[str], numbers: np.ndarray, what: str) -> np.ndarray:
    if "" in column:
        raise DataError(f"{path}:{numbers[column.index('')]}: empty {what} id")
    return np.array(column, dtype=str)


def _float_column(path: Path, column: list[str], numbers: np.ndarray, what: str) -> np.ndarray:
    """Parse a column of numbers; the first bad or non-finite one is a DataError with its line."""
    try:
        values = np.fromiter(map(float, column), dtype=np.float64, count=len(column))
    except ValueError:
        index = next(i for i, token in enumerate(column) if not _is_number(token))
    else:
        bad = np.flatnonzero(~np.isfinite(values))
        if not bad.size:
            return values
        index = int(bad[0])
    raise DataError(f"{path}:{numbers[index]}: {what} {column[index]!r} is not a finite number")


def _is_number(token: str) -> bool:
    try:
        return bool(np.isfinite(float(token)))
    except ValueError:
        return False


def _is_int(token: str) -> bool:
    try:
        int(token)
        return True
    except ValueError:
        return False


def _columns(
    path: Path,
    table: list[list[str]],
    numbers: np.ndarray,
    user: int,
    item: int,
    rating: int | None,
    timestamp: int | None,
) -> RawInteractions:
    return RawInteractions(
        users=_id_column(path, table[user], numbers, "user"),
        items=_id_column(path, table[item], numbers, "item"),
        ratings=None if rating is None else _float_column(path, table[rating], numbers, "rating"),
        timestamps=None if timestamp is None else _float_column(path, table[timestamp], numbers, "timestamp"),
        source=str(path),
    )


# ----------------------------------------------------------------------------------------------
# Readers: each returns RawInteractions (LightGCN: a train and a test one)


def _read_fixed(path: str | Path, sep: str) -> RawInteractions:
    path = Path(path)
    text = _read_text(path)
    lines, numbers = _data_lines(text)
    table = _split_columns(path, text, lines, numbers, sep, 4)
    return _columns(path, table, numbers, 0, 1, 2, 3)


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
    text = _read_text(path)
    lines, numbers = _data_lines(text)
    header = [field.strip() for field in lines[0].split("\t")]
    names = [field.split(":", 1)[0] for field in header]
    if "user_id" not in names or "item_id" not in names:
        raise DataError(
            f"{path}:{numbers[0]}: a RecBole .inter header (tab-separated name:type fields) with "
            f"user_id and item_id columns was expected, got {lines[0][:80]!r}"
        )
    if len(lines) == 1:
        raise DataError(f"{path}: only a header, no interactions")
    table = _split_columns(path, text, lines[1:], numbers[1:], "\t", len(header))

    def column(name: str) -> int | None:
        return names.index(name) if name in names else None

    user, item = names.index("user_id"), names.index("item_id")
    return _columns(path, table, numbers[1:], user, item, column("rating"), column("timestamp"))


def _normalise_delimiter(delimiter: str) -> str | None:
    return DELIMITER_ALIASES.get(delimiter.lower() if delimiter.isalpha() else delimiter, delimiter)


def _sniff_delimiter(lines: list[str]) -> tuple[str | None, int] | None:
    """Pick ``(delimiter, width)`` from sample lines, or ``None`` when nothing fits.

    The delimiter is the first of ``, TAB ; | whitespace`` that gives the same 2-4 fields on the
    most sample lines (more than half of them), so one bad line does not hide the delimiter.
    """
    best: tuple[int, str | None, int] | None = None
    for sep in SNIFF_CANDIDATES:
        counts = _field_counts(lines, sep)
        widths, votes = np.unique(counts[(counts >= 2) & (counts <= 4)], return_counts=True)
        if not votes.size:
            continue
        agree = int(votes.max())
        if 2 * agree > len(lines) and (best is None or agree > best[0]):
            best = (agree, sep, int(widths[votes.argmax()]))
    return None if best is None else (best[1], best[2])


def _split_line(line: str, sep: str | None) -> list[str]:
    return [field.strip() for field in line.split(sep)]


def _is_header(first: list[str], second: list[str] | None) -> bool:
    """Whether the first row of a generic file names its columns.

    With 3-4 columns: a non-numeric rating/timestamp field. With 2: the first field looks like a
    user column name (``user``, ``user_id``, ``userId``, ``uid``...), or neither field is an
    integer while both fields of the second row are.
    """
    if len(first) >= 3:
        return not all(_is_number(field) for field in first[2:])
    if HEADER_USER.fullmatch(first[0]):
        return True
    if _is_int(first[0]) or _is_int(first[1]) or second is None or len(second) < 2:
        return False
    return _is_int(second[0]) and _is_int(second[1])


def read_delimited(path: str | Path, delimiter: str = "") -> RawInteractions:
    """Generic delimited file: ``user,item[,rating[,timestamp]]`` per line, optional header.

    Args:
        path: the file.
        delimiter: ``""`` sniffs one of ``, TAB ; | whitespace``; ``"tab"``/``"\\t"`` and
            ``"space"`` are accepted spellings. Fields are stripped; quoting is not supported.
    """
    path = Path(path)
    text = _read_text(path)
    lines, numbers = _data_lines(text)
    sample = lines[:SNIFF_LINES]
    if delimiter:
        sep = _normalise_delimiter(delimiter)
        counts = _field_counts(sample, sep)
        widths, votes = np.unique(counts, return_counts=True)
        width = int(widths[votes.argmax()])
    else:
        sniffed = _sniff_delimiter(sample)
        if sniffed is None:
            raise DataError(
                f"{path}: cannot detect the delimiter (tried , tab ; | whitespace for 2-4 fields: "
                f"user, item[, rating[, timestamp]]); set data.delimiter"
            )
        sep, width = sniffed
    if not 2 <= width <= 4:
        raise DataError(
            f"{path}:{numbers[0]}: expected 2 to 4 fields (user, item[, rating[, timestamp]]) "
            f"separated by {_sep_name(sep)}, got {width}"
        )
    first = _split_line(lines[0], sep)
    second = _split_line(lines[1], sep) if len(lines) > 1 else None
    if len(first) == width and _is_header(first, second):
        lines, numbers = lines[1:], numbers[1:]
        if not lines:
            raise DataError(f"{path}: only a header, no interactions")
    table = _split_columns(path, text, lines, numbers, sep, width)
    return _columns(path, table, numbers, 0, 1, 2 if width >= 3 else None, 3 if width == 4 else None)


def _read_lightgcn_file(path: Path, sha256: str | None = None) -> RawInteractions:
    text = _read_text(path, sha256)
    lines, numbers = _data_lines(text)
    rows = [line.split() for line in lines]
    sizes = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    tokens = np.array(list(chain.from_iterable(rows)), dtype=str)
    try:
        ids = tokens.astype(np.int64)
    except (ValueError, OverflowError):
        for row, line_number in zip(rows, numbers):
            for token in row:
                if not _is_int(token):
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

