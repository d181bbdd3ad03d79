"""Write ``examples/ratings.csv``: a small invented book-ratings file in the shape of public rating dumps.

    python examples/make_ratings.py                  # rewrites examples/ratings.csv (same seed, same bytes)
    python -m train --data examples/ratings.csv --model mf --out runs/example --epochs 20

Every field is quoted, a title holds commas and quotes, and the columns come in an unusual order
(``Title, ISBN, Rating, User-ID, Date``): the reader finds them by the header's names. Nothing is
taken from a real data set: readers, books and titles are drawn from a seeded generator (readers
lean towards one of four shelves, so a model has something to learn).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from datetime import date, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.io import atomic_write_text  # noqa: E402  (the repository root is put on the path above)

ADJECTIVES = ("Silent", "Hidden", "Last", "Winter", "Broken", "Golden", "Quiet", "Northern", "Paper", "Distant")
NOUNS = (
    "River",
    "Garden",
    "Lighthouse",
    "Orchard",
    "Harbour",
    "Library",
    "Mountain",
    "Station",
    "Clockmaker",
    "Island",
)
SHELVES = ("a Novel", "Poems", "a Memoir", "Stories")


def isbn10(number: int) -> str:
    """A syntactically valid ISBN-10 (check digit, ``X`` for 10) for a 9-digit ``number``."""
    digits = f"{number:09d}"
    check = sum((10 - position) * int(digit) for position, digit in enumerate(digits)) % 11
    return digits + ("X" if (11 - check) % 11 == 10 else str((11 - check) % 11))


def make_rows(n_users: int, n_books: int, seed: int) -> list[list[str]]:
    """``[title, isbn, rating, user, date]`` rows; each reader rates 5 to 12 distinct books."""
    rng = np.random.default_rng(seed)
    shelf = np.arange(n_books) % len(SHELVES)
    popularity = 1.0 / (1.0 + np.arange(n_books)) ** 0.6
    titles = []
    for book in range(n_books):
        adjective, noun = ADJECTIVES[book % len(ADJECTIVES)], NOUNS[(book // len(ADJECTIVES)) % len(NOUNS)]
        title = f"The {adjective} {noun}, {SHELVES[shelf[book]]}"
        if book % 7 == 3:
            title = f'"{noun}s": {title}'  # a quote inside a quoted field, doubled by the csv module
        titles.append(title)
    isbns = [isbn10(int(number)) for number in rng.choice(10**9, size=n_books, replace=False)]
    start = date(2024, 1, 1)
    rows = []
    for user in range(n_users):
        favourite = user % len(SHELVES)
        weights = popularity * np.where(shelf == favourite, 6.0, 1.0)
        books = rng.choice(n_books, size=int(rng.integers(5, 13)), replace=False, p=weights / weights.sum())
        for book in books.tolist():
            liked = shelf[book] == favourite
            rating = int(np.clip(rng.normal(4.2 if liked else 2.8, 0.8), 1, 5).round())
            day = start + timedelta(days=int(rng.integers(0, 366)))
            rows.append([titles[book], isbns[book], str(rating), str(1001 + user), day.isoformat()])
    order = rng.permutation(len(rows))
    return [rows[index] for index in order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "examples" / "ratings.csv"))
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--books", type=int, default=80)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(["Title", "ISBN", "Rating", "User-ID", "Date"])
    writer.writerows(make_rows(args.users, args.books, args.seed))
    atomic_write_text(Path(args.out), buffer.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
