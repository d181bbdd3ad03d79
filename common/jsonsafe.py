"""JSON read with every key at most once in each object: the one home of that check.

`json.loads` keeps the last copy of a repeated key, while another reader (a proxy in front of
the server, a person reading a manifest) may take the first, so both the request guard and the
manifest reader refuse a repeated key::

    from common.jsonsafe import DuplicateKeyError, duplicate_key, loads_unique
    loads_unique('{"k": 1, "k": 2}')      # raises DuplicateKeyError("duplicate key 'k'"), a ValueError
    duplicate_key(b'{"a": {"k": 1, "k": 2}}')   # "k"; None when there is none or it is not JSON
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["DuplicateKeyError", "duplicate_key", "loads_unique", "unique_keys"]


class DuplicateKeyError(ValueError):
    """A JSON object holds a key twice; ``key`` is that key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for `json.loads`: the object as a dict, or DuplicateKeyError."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise DuplicateKeyError(key)
        found[key] = value
    return found


def loads_unique(text: str | bytes) -> Any:
    """`json.loads` that raises DuplicateKeyError for a key repeated in one object (any depth)."""
    return json.loads(text, object_pairs_hook=unique_keys)


def duplicate_key(text: str | bytes) -> str | None:
    """The first key found twice in one JSON object of ``text`` (any depth); None if there is
    none, or if ``text`` is not JSON at all (the caller's own parser words that problem)."""
    try:
        loads_unique(text)
    except DuplicateKeyError as exc:
        return exc.key
    except (ValueError, RecursionError):
        return None
    return None
