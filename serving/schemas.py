"""Request and response bodies of the HTTP API (pydantic; BentoML turns them into OpenAPI).

Validation happens here, while BentoML parses the request, so every bad input is a 400 naming
the field; `serving.guard` words it: `{"error": "invalid /recommend request: k: ...",
"detail": [{"field": "k", "problem": "..."}]}`.

Types are strict (`"k": "10"` or `"user_id": 196` are errors, not coerced) and unknown fields are
rejected, so a typo such as `"exclude_sen"` does not silently fall back to the default.
The upper bounds depend on the loaded artifact (k <= min(SPARSEREC_MAX_K, n_items)), so they
live in `LIMITS`, which the service sets once per worker process before it answers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Shared by the tests and the locustfile (which imports no project code and reads the JSON file).
EXAMPLE_QUERY_FILE = Path(__file__).with_name("example_query.json")
EXAMPLE_QUERY: dict = json.loads(EXAMPLE_QUERY_FILE.read_text())
EXAMPLE_SIMILAR: dict = {"item_id": "242", "k": 10}


@dataclasses.dataclass
class Limits:
    """Per-process request bounds; `max_k` is lowered to n_items once the artifact is loaded."""

    max_k: int = 1000
    max_batch: int = 256
    max_user_id_chars: int = 256
    max_item_id_chars: int = 256
    max_filter_items: int = 1000  # exclude_items, allow_items: each at most this many ids
    max_history: int = 1000  # history (fold-in): at most this many item ids
    # the serving worker's catalogue check: raises ValueError naming unknown ids (None: no check,
    # e.g. in the shard router, whose shards check)
    check_items: Callable[[list[str]], None] | None = None


LIMITS = Limits()


def _bounded_list(name: str, limit_of: str, env: str):
    """A `mode="before"` validator: a list longer than the limit is refused before its items are read."""

    def check(cls, value: object) -> object:
        limit = getattr(LIMITS, limit_of)
        if isinstance(value, list) and len(value) > limit:
            raise ValueError(f"at most {limit} item ids in {name} ({env}), got {len(value)}")
        return value

    return field_validator(name, mode="before")(check)


def _known_items(ids: list[str] | None) -> list[str] | None:
    """Item ids of a reasonable length, known to the served artifact (an unknown one is a 400
    naming it, raised while the request is parsed, so one bad query never fails a batch it joins)."""
    for item in ids or ():
        if not 1 <= len(item) <= LIMITS.max_item_id_chars:
            raise ValueError(f"item ids are 1 to {LIMITS.max_item_id_chars} characters, got {len(item)}")
    if ids and LIMITS.check_items is not None:
        LIMITS.check_items(ids)
    return ids


class RecommendRequest(BaseModel):
    """A known user (`user_id`) or a new one (`history`), with optional exact filters."""

    model_config = ConfigDict(strict=True, extra="forbid")

    user_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=LIMITS.max_user_id_chars,
        description="external user id, as in the training data (required unless history is given; "
        "with history it only labels the answer)",
        examples=[EXAMPLE_QUERY["user_id"]],
    )
    k: int = Field(default=10, ge=1, description="number of items wanted")
    exclude_seen: bool = Field(
        default=True, description="drop items the user interacted with (with history: the history's items)"
    )
    exclude_items: list[str] | None = Field(
        default=None,
        description="item ids never to answer (exact: the top-k is filled from the best "
        "items that pass). At most SPARSEREC_MAX_FILTER_ITEMS ids; an id unknown to the artifact is a 400",
    )
    allow_items: list[str] | None = Field(
        default=None,
        description="answer only among these item ids (exact scores; fewer than k "
        "when fewer pass). At most SPARSEREC_MAX_FILTER_ITEMS ids; an unknown id is a 400",
    )
    history: list[str] | None = Field(
        default=None,
        description="item ids of a user the artifact does not know (fold-in): their vector "
        "is computed from these items. 1 to SPARSEREC_MAX_HISTORY ids; an unknown id is a 400",
    )

    _exclude_bound = _bounded_list("exclude_items", "max_filter_items", "SPARSEREC_MAX_FILTER_ITEMS")
    _allow_bound = _bounded_list("allow_items", "max_filter_items", "SPARSEREC_MAX_FILTER_ITEMS")
    _history_bound = _bounded_list("history", "max_history", "SPARSEREC_MAX_HISTORY")

    @field_validator("k")
    @classmethod
    def _k_within_limit(cls, k: int) -> int:
        if k > LIMITS.max_k:
            raise ValueError(f"k must be <= {LIMITS.max_k} (SPARSEREC_MAX_K, capped at n_items), got {k}")
        return k

    @field_validator("exclude_items", "allow_items", "history")
    @classmethod
    def _item_ids(cls, ids: list[str] | None) -> list[str] | None:
        return _known_items(ids)

    @model_validator(mode="after")
    def _user_or_history(self) -> RecommendRequest:
        if self.user_id is None and self.history is None:
            raise ValueError("give user_id (a known user) or history (item ids of a new user)")
        if self.history is not None and not self.history:
            raise ValueError("history is empty: give at least one item id")
        return self


class ArtifactVersion(BaseModel):
    name: str = Field(description="the artifact folder's name")
    sha256: str = Field(description="sha256 of the artifact's manifest.json (it holds every file's sha256)")


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    artifact: ArtifactVersion = Field(description="the artifact that answered (also the X-Sparserec-Artifact header)")
    user_id: str | None
    items: list[ScoredItem]
    fallback: bool = Field(description="true: unknown user, the most popular items instead")
    folded_in: bool = Field(default=False, description="true: the user vector was computed from `history`")


class BatchRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    queries: list[RecommendRequest] = Field(min_length=1, examples=[[EXAMPLE_QUERY]])

    @field_validator("queries", mode="before")
    @classmethod
    def _bounded(cls, queries: object) -> object:
        # before the items are validated, so an oversized batch costs nothing more
        if isinstance(queries, list) and len(queries) > LIMITS.max_batch:
            raise ValueError(f"at most {LIMITS.max_batch} queries per call (SPARSEREC_MAX_BATCH), got {len(queries)}")
        return queries


class SimilarRequest(BaseModel):
    """Items like one item: its served vector is the query."""

    model_config = ConfigDict(strict=True, extra="forbid")

    item_id: str = Field(
        min_length=1,
        max_length=LIMITS.max_item_id_chars,
        description="external item id",
        examples=[EXAMPLE_SIMILAR["item_id"]],
    )
    k: int = Field(default=10, ge=1, description="number of items wanted (the item itself is never one)")
    metric: Literal["inner_product", "cosine"] = Field(
        default="inner_product",
        description="inner_product: through the served index; cosine: exact, "
        "<v_i, v_j> / (|v_i| |v_j|) over the served item vectors",
    )
    exclude_items: list[str] | None = Field(default=None, description="item ids never to answer (exact)")

    _exclude_bound = _bounded_list("exclude_items", "max_filter_items", "SPARSEREC_MAX_FILTER_ITEMS")

    @field_validator("k")
    @classmethod
    def _k_within_limit(cls, k: int) -> int:
        if k > LIMITS.max_k:
            raise ValueError(f"k must be <= {LIMITS.max_k} (SPARSEREC_MAX_K, capped at n_items), got {k}")
        return k

    @field_validator("exclude_items")
    @classmethod
    def _item_ids(cls, ids: list[str] | None) -> list[str] | None:
        return _known_items(ids)

    @field_validator("item_id")
    @classmethod
    def _known_item(cls, item_id: str) -> str:
        _known_items([item_id])
        return item_id


class SimilarResponse(BaseModel):
    artifact: ArtifactVersion
    item_id: str
    items: list[ScoredItem]


class SimilarBatchRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    queries: list[SimilarRequest] = Field(min_length=1, examples=[[EXAMPLE_SIMILAR]])

    @field_validator("queries", mode="before")
    @classmethod
    def _bounded(cls, queries: object) -> object:
        if isinstance(queries, list) and len(queries) > LIMITS.max_batch:
            raise ValueError(f"at most {LIMITS.max_batch} queries per call (SPARSEREC_MAX_BATCH), got {len(queries)}")
        return queries


class ReloadRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    artifact: str = Field(
        min_length=1,
        max_length=4096,
        description="path of the artifact folder to serve, as the server sees it",
        examples=["artifacts/demo-lightgcn"],
    )


class ReloadResponse(BaseModel):
    artifact: ArtifactVersion = Field(description="the artifact this worker serves now")
    previous: ArtifactVersion
    path: str
