"""Text-file helpers of the readers: read (gzip, sha256), split into columns, parse id, float and time
columns, with a :class:`DataError` naming the file and line for a bad value.

    from train.data.text import data_lines, read_text
    lines, numbers = data_lines(read_text(Path("u.data")))
"""

from __future__ import annotations

import gzip
import hashlib
import warnings
import zlib
from operator import methodcaller
from pathlib import Path

import numpy as np

from .interactions import DataError, RawInteractions


def read_text(path: Path, sha256: str | None = None) -> str:
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


def data_lines(text: str) -> tuple[list[str], np.ndarray]:
    """Stripped non-blank lines and their 1-based line numbers ``[n]`` int64."""
    lines = list(map(str.strip, text.split("\n")))
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    numbers = np.flatnonzero(lengths) + 1
    if len(numbers) != len(lines):
        lines = [lines[n - 1] for n in numbers]
    return lines, numbers


def sep_name(sep: str | None) -> str:
    return {None: "whitespace", "\t": "tabs"}.get(sep, repr(sep))


def field_counts(lines: list[str], sep: str | None) -> np.ndarray:
    if sep is None:
        return np.fromiter(map(len, map(str.split, lines)), dtype=np.int64, count=len(lines))
    return np.fromiter(map(methodcaller("count", sep), lines), dtype=np.int64, count=len(lines)) + 1


def split_columns(
    path: Path, text: str, lines: list[str], numbers: np.ndarray, sep: str | None, width: int
) -> list[list[str]]:
    """Split every line into exactly ``width`` stripped fields. Returns ``width`` columns."""
    counts = field_counts(lines, sep)
    bad = np.flatnonzero(counts != width)
    if bad.size:
        i = int(bad[0])
        hint = " (the file looks truncated)" if i == len(lines) - 1 and not text.endswith("\n") else ""
        raise DataError(
            f"{path}:{numbers[i]}: expected {width} fields separated by {sep_name(sep)}, "
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


def id_column(path: Path, column: list[str], numbers: np.ndarray, what: str) -> np.ndarray:
    if "" in column:
        raise DataError(f"{path}:{numbers[column.index('')]}: empty {what} id")
    return np.array(column, dtype=str)


def float_column(path: Path, column: list[str], numbers: np.ndarray, what: str) -> np.ndarray:
    """Parse a column of numbers; the first bad or non-finite one is a DataError with its line."""
    try:
        values = np.fromiter(map(float, column), dtype=np.float64, count=len(column))
    except ValueError:
        index = next(i for i, token in enumerate(column) if not is_number(token))
    else:
        bad = np.flatnonzero(~np.isfinite(values))
        if not bad.size:
            return values
        index = int(bad[0])
    raise DataError(f"{path}:{numbers[index]}: {what} {column[index]!r} is not a finite number")


def time_column(path: Path, column: list[str], numbers: np.ndarray) -> np.ndarray:
    """Timestamps as float64 seconds: numbers as they are, or ISO 8601 dates/times (UTC seconds since 1970).

    The first field decides which: a number makes every field a number, a date every field a date;
    the first field of the other kind or of neither is a DataError with its line.
    """
    if not column or is_number(column[0]):
        return float_column(path, column, numbers, "timestamp")
    try:
        with warnings.catch_warnings():  # an explicit UTC offset is applied; numpy warns that it keeps none
            warnings.simplefilter("ignore", UserWarning)
            stamps = np.array(column, dtype="datetime64[s]")
    except ValueError:
        index = next(i for i, token in enumerate(column) if not is_date(token))
    else:
        bad = np.flatnonzero(np.isnat(stamps))
        if not bad.size:
            return stamps.astype(np.int64).astype(np.float64)
        index = int(bad[0])
    raise DataError(f"{path}:{numbers[index]}: timestamp {column[index]!r} is not an ISO 8601 date or time "
                    f"(the column's first value, {column[0]!r}, is one)")


def is_date(token: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return not np.isnat(np.datetime64(token, "s"))
    except ValueError:
        return False


def is_number(token: str) -> bool:
    try:
        return bool(np.isfinite(float(token)))
    except ValueError:
        return False


def is_int(token: str) -> bool:
    try:
        int(token)
        return True
    except ValueError:
        return False


def raw_columns(
    path: Path,
    table: list[list[str]],
    numbers: np.ndarray,
    user: int,
    item: int,
    rating: int | None,
    timestamp: int | None,
) -> RawInteractions:
    return RawInteractions(
        users=id_column(path, table[user], numbers, "user"),
        items=id_column(path, table[item], numbers, "item"),
        ratings=None if rating is None else float_column(path, table[rating], numbers, "rating"),
        timestamps=None if timestamp is None else time_column(path, table[timestamp], numbers),
        source=str(path),
    )
