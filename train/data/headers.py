"""Column names of delimited files: which header name means user, item, rating or timestamp.

    python -c "from train.data.headers import match; print(match('User-ID'), match('ISBN'), match('Book-Rating'))"

A name is compared after :func:`normalise`: lower case, a RecBole ``:type`` suffix dropped, and
every character that is not a letter or digit dropped, so ``User-ID``, ``user_id``, ``userId``,
``UserID`` and ``user_id:token`` are all ``userid``. Each role has a list of names, best first
(:data:`NAMES`); a stem of the user or item role also matches with an id-like suffix
(``customer_no``, ``track_index``), a rating name also matches at the end of a longer name
(``Book-Rating``, ``review_score``) and so does a time name (``unixReviewTime``,
``rating_date``). Those looser matches rank after every name of the list.

:func:`assign` gives each role the unclaimed column whose name ranks best (roles in the order
user, item, rating, timestamp); two columns with the same normalised name for one role are
ambiguous and stop it. :func:`is_header` decides whether a first row names the columns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from train.config import COLUMN_ROLES

USER_STEMS = ("user", "customer", "visitor", "member", "reviewer", "client", "buyer", "account", "person",
              "profile", "player", "listener", "viewer", "reader", "subscriber", "student", "learner")
ITEM_STEMS = ("item", "movie", "film", "book", "product", "prod", "article", "track", "song", "artist", "album",
              "business", "venue", "location", "poi", "place", "video", "anime", "game", "recipe", "news", "doc",
              "document", "content", "post", "course", "restaurant", "hotel", "app", "beer", "joke", "question",
              "job", "event", "photo", "repo")
ID_SUFFIXES = ("ids", "idx", "index", "key", "code", "no", "num", "number", "name")


def _with_ids(stems: Sequence[str]) -> tuple[str, ...]:
    return tuple(name for stem in stems for name in (f"{stem}id", stem))


# normalised names per role, best first; one-letter names count only once a header is known (see is_header)
NAMES: dict[str, tuple[str, ...]] = {
    "user": _with_ids(USER_STEMS[:1]) + ("uid", "users") + _with_ids(USER_STEMS[1:]) + ("u",),
    "item": _with_ids(ITEM_STEMS[:1]) + ("iid", "items", "isbn", "asin", "parentasin", "sku")
    + _with_ids(ITEM_STEMS[1:]) + ("i",),
    "rating": ("rating", "ratings", "rate", "rated", "score", "stars", "star", "overall", "preference", "pref",
               "weight", "playcount", "plays", "count", "clicks", "value", "feedback", "grade", "label", "r"),
    "timestamp": ("timestamp", "time", "ts", "datetime", "date", "unixtime", "unixtimestamp", "unixreviewtime",
                  "epoch", "created", "createdat", "when", "t"),
}
# looser matches: a stem of the role followed by an id-like suffix, or a longer name ending like this
NAME_ENDINGS = {"rating": ("rating", "ratings", "score", "stars"),
                "timestamp": ("timestamp", "datetime", "time", "date")}
ID_NAMES = ("uid", "iid", "isbn", "asin", "parentasin", "sku")  # one of these alone makes a row a header

_DROP = re.compile(r"[\W_]+")


def normalise(name: str) -> str:
    """``User-ID`` -> ``userid``: lower case, no ``:type`` suffix, letters and digits only."""
    return _DROP.sub("", name.split(":", 1)[0].casefold())


def match(name: str) -> tuple[str, int] | None:
    """``(role, rank)`` for a column name (lower rank = better), or ``None`` when it names no role."""
    key = normalise(name)
    if not key:
        return None
    for role in COLUMN_ROLES:
        names = NAMES[role]
        if key in names:
            return role, names.index(key)
    loose = len(max(NAMES.values(), key=len))
    for role, stems in (("user", USER_STEMS), ("item", ITEM_STEMS)):
        for rank, stem in enumerate(stems):
            if key.startswith(stem) and key[len(stem):] in ID_SUFFIXES:
                return role, loose + rank
    for role, endings in NAME_ENDINGS.items():
        for rank, ending in enumerate(endings):
            if key.endswith(ending):
                return role, loose + rank
    return None


def accepted_names(role: str) -> str:
    """The names a role accepts, for messages (``user, uid, ... (each also with id ...)``)."""
    if role in ("user", "item"):
        stems = USER_STEMS if role == "user" else ITEM_STEMS
        alone = [name for name in NAMES[role] if name not in stems and name.removesuffix("id") not in stems]
        listed = ", ".join([*stems, *alone])
        return (f"{listed}; a stem also with id, no, index, ... ({role}Id, {role}_id, {role.title()}-ID); "
                f"any case, punctuation ignored")
    endings = "/".join(NAME_ENDINGS[role])
    return f"{', '.join(NAMES[role])}, or a name ending in {endings}; any case, punctuation ignored"


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def is_header(first: Sequence[str], following: Sequence[Sequence[str]]) -> bool:
    """Whether the first row of a delimited file names its columns (fields already unquoted and stripped).

    It does when two of its fields name different roles (one-letter names excepted), or one field is an
    id name (``user_id``, ``movieId``, ``uid``, ``ISBN``, ``asin``: a user or item name ending in
    ``id``, or an id name of its own), or a column holds a number in every following row of the same
    width but not in the first row. ``following``: the next rows of the sample.
    """
    roles = set()
    for field in first:
        found = match(field)
        key = normalise(field)
        if found is None or len(key) < 2:
            continue
        if found[0] in ("user", "item") and (key.endswith("id") or key in ID_NAMES):
            return True
        roles.add(found[0])
    if len(roles) >= 2:
        return True
    rows = [row for row in following if len(row) == len(first)]
    if not rows:
        return False
    return any(not _is_number(first[column]) and all(_is_number(row[column]) for row in rows)
               for column in range(len(first)))


def assign(header: Sequence[str], claimed: dict[str, int]) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Columns for the roles not in ``claimed``, from the header's names.

    Args:
        header: the column names.
        claimed: ``{role: column}`` already placed (``data.columns``); those columns are not reused.

    Returns:
        ``({role: column} for every role placed, claimed ones included; {role: [other matching
        names, not used]})``.

    Raises:
        ValueError: two columns with the same normalised name compete for a role (the message
        names them; the caller adds the file).
    """
    matches = [match(name) for name in header]
    placed = dict(claimed)
    unused: dict[str, list[str]] = {}
    for role in COLUMN_ROLES:
        candidates = [(found[1], column) for column, found in enumerate(matches)
                      if found is not None and found[0] == role and column not in placed.values()]
        if role in claimed:
            if candidates:
                unused[role] = [header[column] for _, column in sorted(candidates)]
            continue
        if not candidates:
            continue
        candidates.sort()
        best_rank, best = candidates[0]
        tied = [header[column] for rank, column in candidates if rank == best_rank]
        if len(tied) > 1:
            raise ValueError(f"the columns {', '.join(map(repr, tied))} all name the {role} "
                             f"(set data.columns {role}=NAME or position)")
        placed[role] = best
        if len(candidates) > 1:
            unused[role] = [header[column] for _, column in candidates[1:]]
    return placed, unused
