"""Small data files for the train/data tests: write one, read its rows back as tuples, a many-user file.

from data_files import many_rows, rows_of, write
assert rows_of(read_delimited(write(tmp_path / "r.csv", "1,2\n"))) == [("1", "2", None, None)]
"""

from __future__ import annotations

from pathlib import Path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def rows_of(raw) -> list[tuple]:
    ratings = [None] * len(raw) if raw.ratings is None else raw.ratings.tolist()
    times = [None] * len(raw) if raw.timestamps is None else raw.timestamps.tolist()
    return list(zip(raw.users.tolist(), raw.items.tolist(), ratings, times))


def many_rows(n_users: int = 12, per_user: int = 6, swap: bool = False) -> list[str]:
    """``user,item,rating`` lines (or ``item,user,rating``) with string ids, enough for an 80/10/10 split."""
    lines = []
    for user in range(n_users):
        for k in range(per_user):
            u, i = f"u{user}", f"i{(user * 3 + k) % 17}"
            lines.append(f"{i},{u},{1 + (user + k) % 5}" if swap else f"{u},{i},{1 + (user + k) % 5}")
    return lines
