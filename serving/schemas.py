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
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Shared by the tests and the locustfile (which imports no project code and reads the JSON file).
EXAMPLE_QUERY_FILE = Path(__file__).with_name("example_query.json")
EXAMPLE_QUERY: dict = json.loads(EXAMPLE_QUERY_FILE.read_text())


@dataclasses.dataclass
class Limits:
    """Per-process request bounds; `max_k` is lowered to n_items once the artifact is loaded."""

    max_k: int = 1000
    max_batch: int = 256
    max_user_id_chars: int = 256


LIMITS = Limits()


class RecommendRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    user_id: str = Field(
        min_length=1,
        max_length=LIMITS.max_user_id_chars,
        description="external user id, as in the training data",
        examples=[EXAMPLE_QUERY["user_id"]],
    )
    k: int = Field(default=10, ge=1, description="number of items wanted")
    exclude_seen: bool = Field(default=True, description="drop items the user interacted with")

    @field_validator("k")
    @classmethod
    def _k_within_limit(cls, k: int) -> int:
        if k > LIMITS.max_k:
            raise ValueError(f"k must be <= {LIMITS.max_k} (SPARSEREC_MAX_K, capped at n_items), got {k}")
        return k


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    user_id: str
    items: list[ScoredItem]
    fallback: bool = Field(description="true: unknown user, the most popular items instead")


class BatchRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    queries: list[RecommendRequest] = Field(min_length=1, examples=[[EXAMPLE_QUERY]])

    @field_validator("queries", mode="before")
    @classmethod
    def _bounded(cls, queries: object) -> object:
        # before the items are validated, so an oversized batch costs nothing more
        if isinstance(queries, list) and len(queries) > LIMITS.max_batch:
            raise ValueError(
                f"at most {LIMITS.max_batch} queries per call (SPARSEREC_MAX_BATCH), got {len(queries)}"
            )
        return queries
