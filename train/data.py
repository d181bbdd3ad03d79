"""Interaction data: readers, filters, splits, a synthetic generator and the ``Dataset`` container.

    python -c "import train.data as d; print(d.load_dataset(d.DataConfig()).summary())"
    python -c "import train.data as d; print(d.load_dataset(d.DataConfig(name='synthetic-longtail')).summary())"

``load_dataset(config)`` runs one pipeline whatever the source:

1. read external ids (strings; integers from the generator and LightGCN files), plus ratings and
   timestamps where the format has them;
2. keep ratings >= ``threshold`` (``None`` keeps everything);
3. drop repeated (user, item) pairs, keeping the first in input order;
4. k-core: repeatedly drop users and items with fewer than ``k_core`` interactions;
5. map the external ids that are left to contiguous internal ids in sorted order (numeric order
   when every id is a canonical integer, ``"2" < "10"``; code-point order otherwise);
6. split: per-user random ratios, leave-last-out by timestamp, or the given test file (LightGCN).

Sources (``DataConfig.name``): ``ml-100k`` (the MovieLens-100K ``.inter`` file shipped in the
``recbole==1.2.1`` wheel, fetched once and checked by sha256), ``synthetic``,
``synthetic-longtail``, or a path to a file or folder; ``DataConfig.format="auto"`` picks the
reader from the name (see :func:`detect_format`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass
from itertools import chain
from operator import methodcaller
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy import special
from tqdm.auto import tqdm

from common.io import sha256_file
from train.config import DataConfig

logger = logging.getLogger(__name__)

ML100K_WHEEL = "recbole==1.2.1"
ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
# sha256 of the extracted ml-100k.inter (1,979,230 bytes), not of the wheel.
ML100K_SHA256 = "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"

FORMATS = ("auto", "movielens", "ratings-dat", "recbole", "csv", "lightgcn", "synthetic")
SPLITS = ("train", "valid", "test")
SAVE_FORMAT_VERSION = 1

# Generator presets. ``synthetic`` takes popularity_exponent from the config; the longtail preset
# fixes a steeper popularity and lognormal user activity (many users with 1-3 interactions).
SYNTHETIC_PRESETS: dict[str, dict[str, float | None]] = {
    "synthetic": {"popularity_exponent": None, "activity_sigma": 0.0},
    "synthetic-longtail": {"popularity_exponent": 1.2, "activity_sigma": 1.5},
}
SYNTHETIC_OVERSAMPLE = 4  # candidates drawn per kept interaction
SYNTHETIC_TEMPERATURE = 0.5  # softmax temperature over latent scores (scores have unit variance)
SYNTHETIC_CHUNK = 2_000_000  # candidates per vectorised chunk (bounds peak memory)
SYNTHETIC_TIME_RANGE = (1_500_000_000, 1_600_000_000)  # random unix timestamps

SNIFF_LINES = 20
SNIFF_CANDIDATES = (",", "\t", ";", "|", None)  # None: runs of whitespace
DELIMITER_ALIASES = {"tab": "\t", "\\t": "\t", "space": None, "whitespace": None, " ": None}
HEADER_USER = re.compile(r"(user|uid|customer|visitor)([ _-]?id)?(:\w+)?", re.IGNORECASE)


class DataError(ValueError):
    """Bad input data or a bad data option; the message names the file (and line where relevant)."""


@dataclass(frozen=True)
class RawInteractions:
    """Interactions as read, in input order, before any filtering.

    Attributes:
        users, items: ``[n]`` external ids, ``str`` arrays (files) or ``int64`` (generated,
            LightGCN files).
        ratings: ``[n]`` float64 or ``None`` when the source has no rating column.
        timestamps: ``[n]`` float64 or ``None`` when the source has no timestamp column.
        source: where they came from, for messages.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.users)


# ----------------------------------------------------------------------------------------------
# Reading text files


def _read_text(path: Path) -> str:
    """The file's text; a missing, unreadable, undecodable or empty file is a DataError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
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


def _read_lightgcn_file(path: Path) -> RawInteractions:
    text = _read_text(path)
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


def read_lightgcn(folder: str | Path) -> tuple[RawInteractions, RawInteractions]:
    """LightGCN benchmark folder (Gowalla, Yelp2018, Amazon-Book): ``train.txt``, ``test.txt``.

    Each line is ``user item item ...`` (integer ids, whitespace-separated; a user may have no
    items). Returns ``(train, test)``.
    """
    folder = Path(folder)
    return _read_lightgcn_file(folder / "train.txt"), _read_lightgcn_file(folder / "test.txt")


def detect_format(path: str | Path) -> tuple[str, Path]:
    """Pick a reader for a path. Returns ``(format, file or folder to read)``.

    A folder with ``train.txt`` and ``test.txt`` is ``lightgcn``; a folder holding ``u.data``,
    ``ratings.dat`` or a single ``*.inter`` resolves to that file. A file named ``u.data`` is
    ``movielens``, ``ratings.dat`` is ``ratings-dat``, ``*.inter`` is ``recbole``; any other file
    is ``csv`` (generic delimited).
    """
    path = Path(path)
    if path.is_dir():
        if (path / "train.txt").is_file() and (path / "test.txt").is_file():
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
            f"ml-100k, {', '.join(SYNTHETIC_PRESETS)})"
        )
    if path.name == "u.data":
        return "movielens", path
    if path.name == "ratings.dat":
        return "ratings-dat", path
    if path.suffix == ".inter":
        return "recbole", path
    return "csv", path


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


# ----------------------------------------------------------------------------------------------
# Synthetic interactions


def _power_law_ranks(rng: np.random.Generator, n: int, exponent: float, size: int) -> np.ndarray:
    """Draw ranks in ``[0, n)`` with ``P(r) ∝ ∫_{r+1}^{r+2} x^-exponent dx`` (inverse CDF, O(1) each)."""
    uniform = rng.random(size)
    if abs(exponent - 1.0) < 1e-9:
        x = np.exp(uniform * np.log(n + 1.0))
    else:
        power = 1.0 - exponent
        x = (1.0 + uniform * ((n + 1.0) ** power - 1.0)) ** (1.0 / power)
    return np.clip(x.astype(np.int64) - 1, 0, n - 1)


def _user_activity(rng: np.random.Generator, n_users: int, mean: float, sigma: float, n_items: int) -> np.ndarray:
    """Interactions wanted per user ``[n_users]`` int64, each in ``[1, n_items]``.

    ``sigma == 0``: ``1 + Poisson(mean - 1)``. ``sigma > 0``: lognormal with that sigma and the
    given mean, so most users have few interactions and a few have very many.
    """
    if sigma > 0:
        counts = np.rint(rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, n_users)).astype(np.int64)
    else:
        counts = 1 + rng.poisson(mean - 1.0, n_users)
    return np.clip(counts, 1, n_items)


def synthetic_interactions(
    n_users: int,
    n_items: int,
    n_factors: int = 16,
    interactions_per_user: float = 30.0,
    popularity_exponent: float = 1.0,
    activity_sigma: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> RawInteractions:
    """Seeded implicit feedback with power-law item popularity and low-rank preferences.

    For each user: draw ``4 x wanted`` candidate items from the popularity law
    ``P(rank r) ~ r^-popularity_exponent`` (items get a random rank), drop repeats, then keep the
    ``wanted`` candidates with the largest ``<u, v> / 0.5 + Gumbel`` noise, i.e. sample without
    replacement with probability ``∝ exp(<u, v> / 0.5)`` (Gumbel top-k). Latent factors are
    ``N(0, 1/sqrt(n_factors))`` so ``<u, v>`` has unit variance. Users are processed in chunks of
    about two million candidates; no user x item matrix is built.

    Args:
        n_users, n_items: id ranges ``[0, n_users)``, ``[0, n_items)``; every user gets >= 1
            interaction, unpopular items may get none.
        n_factors: rank of the latent preferences.
        interactions_per_user: mean wanted per user (>= 1); repeats may make the result smaller.
        popularity_exponent: >= 0; 0 is uniform.
        activity_sigma: 0 gives ``1 + Poisson(mean - 1)`` per user; > 0 lognormal with this sigma.
        seed: the result is a function of all arguments but ``progress``.

    Returns:
        RawInteractions with ``int64`` ids, no ratings, random integer timestamps, grouped by user.
    """
    if n_users < 1 or n_items < 1 or n_factors < 1:
        raise DataError(
            f"synthetic: n_users, n_items and n_factors must be >= 1, got {n_users}, {n_items}, {n_factors}"
        )
    if n_users >= 2**31 or n_users * n_items >= 2**62:
        raise DataError(f"synthetic: {n_users} x {n_items} is too large for int64 pair keys")
    if interactions_per_user < 1:
        raise DataError(f"synthetic: interactions_per_user must be >= 1, got {interactions_per_user}")
    if popularity_exponent < 0 or activity_sigma < 0:
        raise DataError(
            f"synthetic: popularity_exponent and activity_sigma must be >= 0, "
            f"got {popularity_exponent}, {activity_sigma}"
        )
    rng = np.random.default_rng(seed)
    scale = np.float32(n_factors**-0.25)
    user_factors = rng.standard_normal((n_users, n_factors), dtype=np.float32)
    user_factors *= scale
    item_factors = rng.standard_normal((n_items, n_factors), dtype=np.float32)
    item_factors *= scale
    item_by_rank = rng.permutation(n_items)
    wanted = _user_activity(rng, n_users, interactions_per_user, activity_sigma, n_items)
    budgets = wanted * SYNTHETIC_OVERSAMPLE
    # chunk boundaries: each chunk holds about SYNTHETIC_CHUNK candidates (and at least one user)
    marks = np.arange(SYNTHETIC_CHUNK, budgets.sum() + SYNTHETIC_CHUNK, SYNTHETIC_CHUNK)
    ends = np.searchsorted(np.cumsum(budgets), marks)
    bounds = np.unique(np.concatenate([[0], np.minimum(ends + 1, n_users), [n_users]]))
    user_parts, item_parts = [], []
    for low, high in tqdm(
        zip(bounds[:-1].tolist(), bounds[1:].tolist()),
        total=len(bounds) - 1,
        desc="synthetic",
        unit="chunk",
        disable=not progress or len(bounds) < 3,
    ):
        candidate_users = np.repeat(np.arange(low, high, dtype=np.int64), budgets[low:high])
        candidate_items = item_by_rank[_power_law_ranks(rng, n_items, popularity_exponent, len(candidate_users))]
        keys = _distinct_sorted(candidate_users * n_items + candidate_items)  # grouped by user
        users = keys // n_items
        items = keys - users * n_items
        scores = np.einsum("ij,ij->i", user_factors[users], item_factors[items]) / SYNTHETIC_TEMPERATURE
        scores += rng.gumbel(size=len(keys))
        # one integer sort key: user in the high bits, descending score (quantised) in the low 32
        descending = np.rint(special.expit(-scores) * (2**32 - 1)).astype(np.int64)
        order = np.argsort((users << 32) | descending)
        users, items = users[order], items[order]
        rank = np.arange(len(users)) - np.searchsorted(users, users)
        keep = rank < wanted[users]
        user_parts.append(users[keep])
        item_parts.append(items[keep])
    users = np.concatenate(user_parts)
    items = np.concatenate(item_parts)
    timestamps = rng.integers(*SYNTHETIC_TIME_RANGE, size=len(users)).astype(np.float64)
    return RawInteractions(users=users, items=items, timestamps=timestamps, source="synthetic")


def _distinct_sorted(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (``np.unique`` without return_* arrays is far slower in numpy 2.4)."""
    values = np.sort(values)
    if len(values) > 1:
        values = values[np.concatenate([[True], values[1:] != values[:-1]])]
    return values


# ----------------------------------------------------------------------------------------------
# Filters and id maps (pure functions on arrays)


def encode_ids(external: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map external ids to codes in sorted order.

    Strings sort numerically when every distinct one is a canonical integer (``"2" < "10"``;
    ``"007"`` is not canonical, so it stays distinct from ``"7"``), by code point otherwise.

    Returns:
        ``(codes [n] int64, vocab [n_distinct])`` with ``vocab[codes] == external``.
    """
    vocab, codes = np.unique(external, return_inverse=True)
    codes = codes.astype(np.int64).ravel()
    if vocab.dtype.kind != "U" or not len(vocab):
        return codes, vocab
    try:
        numeric = vocab.astype(np.int64)
    except (ValueError, OverflowError):
        return codes, vocab
    if not np.array_equal(numeric.astype(str), vocab):
        return codes, vocab
    order = np.argsort(numeric, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[codes], vocab[order]


def first_occurrences(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the first occurrence of each distinct (user, item) pair.

    Args:
        users, items: ``[n]`` non-negative int64 codes.
    """
    if not len(users):
        return np.zeros(0, dtype=np.int64)
    keys = users * (int(items.max()) + 1) + items
    _, first = np.unique(keys, return_index=True)
    return np.sort(first)


def k_core_filter(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Mask ``[n]`` bool of the interactions in the k-core.

    Repeatedly drops interactions whose user or item has fewer than ``k`` of them until every
    user and item left has at least ``k``. Expects distinct pairs; ``k <= 1`` keeps everything.
    """
    keep = np.ones(len(users), dtype=bool)
    if k <= 1 or not len(users):
        return keep
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    index = np.arange(len(users))
    while True:
        user_counts = np.bincount(users[index], minlength=n_users)
        item_counts = np.bincount(items[index], minlength=n_items)
        ok = (user_counts[users[index]] >= k) & (item_counts[items[index]] >= k)
        if ok.all():
            break
        index = index[ok]
    keep[:] = False
    keep[index] = True
    return keep


def _check_ratios(ratios: tuple[float, float, float]) -> None:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6 or ratios[0] <= 0:
        raise DataError(
            f"data.ratios must be three non-negative numbers (train, valid, test) summing to 1 "
            f"with train > 0, got {ratios}"
        )


def split_random(
    users: np.ndarray, ratios: tuple[float, float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user random split. Returns ascending index arrays ``(train, valid, test)``.

    A user with ``n`` interactions gives ``n_test = min(round(n * r_test), n - 1)`` and
    ``n_valid = min(round(n * r_valid), n - 1 - n_test)`` (rounding half up), so train keeps at
    least one; a user with one interaction is all train. Which interactions go where comes from
    one seeded permutation of all rows, ranked within each user.

    Args:
        users: ``[n]`` int64 user codes (non-negative).
        ratios: ``(train, valid, test)``, summing to 1.
        seed: same seed, same split.
    """
    _check_ratios(ratios)
    n = len(users)
    if not n:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
    rng = np.random.default_rng(seed)
    permutation = rng.permutation(n)
    if int(users.max()) < 2**62 // n:  # distinct keys: by user, then in a random order within the user
        order = np.argsort(users * n + permutation)
    else:
        order = permutation[np.argsort(users[permutation], kind="stable")]
    sorted_users = users[order]
    counts = np.bincount(users)
    starts = np.cumsum(counts) - counts
    rank = np.arange(n) - starts[sorted_users]
    n_test = np.minimum(np.floor(counts * ratios[2] + 0.5 + 1e-9).astype(np.int64), counts - 1).clip(0)
    n_valid = np.minimum(np.floor(counts * ratios[1] + 0.5 + 1e-9).astype(np.int64), counts - 1 - n_test).clip(0)
    is_test = rank < n_test[sorted_users]
    is_valid = ~is_test & (rank < (n_test + n_valid)[sorted_users])
    is_train = ~is_test & ~is_valid
    return np.sort(order[is_train]), np.sort(order[is_valid]), np.sort(order[is_test])


def split_leave_last_out(users: np.ndarray, timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leave-last-out by time. Returns ascending index arrays ``(train, valid, test)``.

    Per user, the latest interaction goes to test and the second latest to valid; equal
    timestamps are ordered by input position (later row = later). Users with 2 interactions give
    one to test and none to valid; users with 1 keep it in train.

    Args:
        users: ``[n]`` int64 user codes (non-negative).
        timestamps: ``[n]`` numbers.
    """
    n = len(users)
    order = np.lexsort((timestamps, users))  # stable: equal timestamps keep input order
    sorted_users = users[order]
    counts = np.bincount(users) if n else np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    from_end = ends[sorted_users] - 1 - np.arange(n)  # 0 for a user's latest
    user_counts = counts[sorted_users]
    is_test = (from_end == 0) & (user_counts >= 2)
    is_valid = (from_end == 1) & (user_counts >= 3)
    is_train = ~is_test & ~is_valid
    return np.sort(order[is_train]), np.sort(order[is_valid]), np.sort(order[is_test])


# ----------------------------------------------------------------------------------------------
# Dataset


def _pair(users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
            _write_text(staging / "user_ids.json", json.dumps(list(self.user_ids)))
            _write_text(staging / "item_ids.json", json.dumps(list(self.item_ids)))
            files = ("interactions.npz", "user_ids.json", "item_ids.json")
            meta = {
                "format_version": SAVE_FORMAT_VERSION,
                "name": self.name,
                "n_users": int(self.n_users),
                "n_items": int(self.n_items),
                "sizes": {split: int(len(self._split(split)[0])) for split in SPLITS},
                "sha256": {name: sha256_file(staging / name) for name in files},
            }
            _write_text(staging / "dataset.json", json.dumps(meta, indent=2, sort_keys=True))
            _replace_folder(staging, folder)
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
        if len(_distinct_sorted(all_keys)) != len(all_keys):
            raise DataError(f"{npz_path}: repeated (user, item) pairs")
        return cls(meta["name"], n_users, n_items, user_ids, item_ids, splits["train"], splits["valid"], splits["test"])


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _replace_folder(staging: Path, folder: Path) -> None:
    """Move ``staging`` to ``folder``; an existing ``folder`` is set aside first, then removed."""
    if not folder.exists():
        os.rename(staging, folder)
        return
    old = folder.parent / f".{folder.name}.{uuid.uuid4().hex}.old"
    os.rename(folder, old)
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


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


# ----------------------------------------------------------------------------------------------
# load_dataset


def _check_config(config: DataConfig) -> None:
    if config.format not in FORMATS:
        raise DataError(f"data.format must be one of {', '.join(FORMATS)}, got {config.format!r}")
    if config.split not in ("random", "time"):
        raise DataError(f"data.split must be random or time, got {config.split!r}")
    if config.k_core < 0:
        raise DataError(f"data.k_core must be >= 0, got {config.k_core}")
    _check_ratios(tuple(config.ratios))


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
    path = Path(name).expanduser()
    if fmt == "auto":
        fmt, path = detect_format(path)
    elif path.is_dir() and fmt != "lightgcn":
        detected, inner = detect_format(path)
        if detected != fmt:
            raise DataError(f"{path}: a folder, and data.format={fmt} found no {fmt} file in it")
        path = inner
    if config.delimiter and fmt != "csv":
        logger.warning("data.delimiter=%r is ignored: the %s format fixes its delimiter", config.delimiter, fmt)
    if fmt == "lightgcn":
        train, test = read_lightgcn(path)
        return train, test, None
    if fmt == "csv":
        return read_delimited(path, config.delimiter), None, None
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

    dataset = Dataset(
        name=config.name,
        n_users=len(user_vocab),
        n_items=len(item_vocab),
        user_ids=[str(x) for x in user_vocab.tolist()],
        item_ids=[str(x) for x in item_vocab.tolist()],
        train=_pair(user_codes[train_index], item_codes[train_index]),
        valid=_pair(user_codes[valid_index], item_codes[valid_index]),
        test=_pair(user_codes[test_index], item_codes[test_index]),
    )
    logger.info(
        "%s: %d users, %d items, %d interactions (%d read, %d distinct; train %d, valid %d, test %d) in %.1f s",
        config.name, dataset.n_users, dataset.n_items, len(keep), n_read, n_distinct,
        len(train_index), len(valid_index), len(test_index), time.perf_counter() - started,
    )
    return dataset
