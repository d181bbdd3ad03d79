"""The service over real HTTP: a tiny run trained and exported once, served by `python -m serving`.

No mocks: answers are checked against a brute-force top-K computed in-process from the artifact's
own arrays; bad inputs, concurrency, health endpoints and a tampered artifact go through real
server processes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import TINY_ITEMS, TINY_USERS
from export.artifact import load_artifact
from serving.schemas import EXAMPLE_QUERY
from server_utils import REPO_ROOT, ServerFailed, running_server, start_server

pytestmark = pytest.mark.slow

N_USERS, N_ITEMS = TINY_USERS, TINY_ITEMS  # the conftest fixture's sizes


@pytest.fixture(scope="session")
def artifact(tiny_mf_artifact) -> Path:
    """The session's tiny MF artifact (tests/conftest.py), trained and exported once."""
    return tiny_mf_artifact


@pytest.fixture(scope="module")
def server(artifact):
    with running_server(artifact, via="cli") as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def reference(artifact):
    """The artifact read in-process: what the brute force scores with."""
    art = load_artifact(artifact)
    return {
        "users": art.user_vectors(), "items": art.item_vectors(), "seen": art.seen().tocsr(),
        "user_ids": art.user_ids, "item_ids": art.item_ids, "user_index": art.user_index(),
        "item_index": art.item_index(),
        "popularity": art.popularity(),
    }


def brute_force(ref, user_id: str, k: int, exclude_seen: bool) -> tuple[list[str], np.ndarray]:
    row = ref["user_index"][user_id]
    scores = (ref["users"][row].astype(np.float64) @ ref["items"].T.astype(np.float64))
    if exclude_seen:
        scores[ref["seen"][row].indices] = -np.inf
    order = np.argsort(-scores, kind="stable")
    order = order[np.isfinite(scores[order])][:k]
    return [ref["item_ids"][i] for i in order], scores[order]


def assert_matches_brute_force(ref, answer: dict, k: int, exclude_seen: bool) -> None:
    """Same scores rank by rank; so an item id may differ from the brute force's only where the
    two items tie (the faiss contrib tests' rule)."""
    want_ids, want_scores = brute_force(ref, answer["user_id"], k, exclude_seen)
    got_ids = [item["item_id"] for item in answer["items"]]
    got_scores = np.array([item["score"] for item in answer["items"]])
    assert answer["fallback"] is False
    assert len(got_ids) == len(want_ids) == k
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-4, atol=1e-5)
    assert np.all(np.diff(got_scores) <= 1e-6), "not highest first"
    assert len(set(got_ids)) == len(got_ids), "an item twice"
    # and each item's score is its own true score (a tie cannot hide a wrong item)
    row = ref["user_index"][answer["user_id"]]
    item_rows = [ref["item_index"][item] for item in got_ids]
    true = ref["items"][item_rows].astype(np.float64) @ ref["users"][row].astype(np.float64)
    np.testing.assert_allclose(got_scores, true, rtol=1e-4, atol=1e-5)
    if exclude_seen:
        seen = {ref["item_ids"][i] for i in ref["seen"][row].indices}
        assert not seen & set(got_ids), "a seen item was returned"


# --------------------------------------------------------------------------- answers
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_batch_answers_equal_brute_force_for_every_user(client, reference, exclude_seen):
    k = 10
    queries = [{"user_id": u, "k": k, "exclude_seen": exclude_seen} for u in reference["user_ids"]]
    results = []
    for start in range(0, len(queries), 100):
        response = client.post("/recommend_batch", json={"queries": queries[start:start + 100]})
        assert response.status_code == 200, response.text
        results += response.json()["results"]
    assert [r["user_id"] for r in results] == reference["user_ids"]
    for answer in results:
        assert_matches_brute_force(reference, answer, k, exclude_seen)


def test_single_answers_equal_brute_force(client, reference):
    rng = np.random.default_rng(0)
    for user in rng.choice(reference["user_ids"], size=40, replace=False):
        for k, exclude_seen in ((1, True), (20, True), (7, False)):
            response = client.post("/recommend", json={"user_id": str(user), "k": k, "exclude_seen": exclude_seen})
            assert response.status_code == 200, response.text
            assert_matches_brute_force(reference, response.json(), k, exclude_seen)


def test_defaults_and_large_k(client, reference):
    """k defaults to 10 and exclude_seen to true; k up to n_items gives every unseen item."""
    user = reference["user_ids"][3]
    answer = client.post("/recommend", json={"user_id": user}).json()
    assert_matches_brute_force(reference, answer, 10, True)
    answer = client.post("/recommend", json={"user_id": user, "k": N_ITEMS}).json()
    n_unseen = N_ITEMS - reference["seen"][reference["user_index"][user]].nnz
    assert len(answer["items"]) == n_unseen  # the catalogue allows no more
    assert_matches_brute_force(reference, answer, n_unseen, True)


def test_unknown_user_gets_popularity_fallback(client, reference):
    answer = client.post("/recommend", json={"user_id": "no-such-user", "k": 5}).json()
    assert answer["fallback"] is True and answer["user_id"] == "no-such-user"
    counts = np.sort(reference["popularity"])[::-1][:5]
    assert [item["score"] for item in answer["items"]] == counts.astype(float).tolist()
    index = {item: i for i, item in enumerate(reference["item_ids"])}
    assert [reference["popularity"][index[item["item_id"]]] for item in answer["items"]] == counts.tolist()
    # in a batch too, beside known users
    batch = client.post("/recommend_batch", json={"queries": [
        {"user_id": reference["user_ids"][0], "k": 3}, {"user_id": "nobody", "k": 3}]}).json()["results"]
    assert [r["fallback"] for r in batch] == [False, True]


def test_example_query_is_answered(client):
    response = client.post("/recommend", json=EXAMPLE_QUERY)
    assert response.status_code == 200
    assert len(response.json()["items"]) == EXAMPLE_QUERY["k"]
    on_disk = json.loads((REPO_ROOT / "serving" / "example_query.json").read_text())
    assert on_disk == EXAMPLE_QUERY


# --------------------------------------------------------------------------- bad input
USER = "0"
BAD_SINGLE = [
    ("malformed json", b'{"user_id": "0", "k": 3', "json"),
    ("not json at all", b"hello", "json"),
    ("empty body", b"", "user_id"),
    ("a list, not an object", b"[1, 2]", "object"),
    ("missing user_id", {"k": 3}, "user_id"),
    ("user_id not a string", {"user_id": 0}, "user_id"),
    ("empty user_id", {"user_id": ""}, "user_id"),
    ("huge user_id", {"user_id": "x" * 10_000}, "user_id"),
    ("k a string", {"user_id": USER, "k": "3"}, "k"),
    ("k a float", {"user_id": USER, "k": 2.5}, "k"),
    ("k a bool", {"user_id": USER, "k": True}, "k"),
    ("k zero", {"user_id": USER, "k": 0}, "k"),
    ("k negative", {"user_id": USER, "k": -5}, "k"),
    ("k above n_items", {"user_id": USER, "k": N_ITEMS + 1}, "k"),
    ("k huge", {"user_id": USER, "k": 10**18}, "k"),
    ("exclude_seen not a bool", {"user_id": USER, "exclude_seen": "yes"}, "exclude_seen"),
    ("unknown field", {"user_id": USER, "exclude_sen": False}, "exclude_sen"),
]
BAD_BATCH = [
    ("no queries field", {"query": []}, "queries"),
    ("empty batch", {"queries": []}, "queries"),
    ("oversized batch", {"queries": [{"user_id": USER}] * 257}, "queries"),
    ("bad query inside", {"queries": [{"user_id": USER}, {"user_id": USER, "k": -1}]}, "k"),
    ("queries not a list", {"queries": {"user_id": USER}}, "queries"),
]


def _post(client: httpx.Client, path: str, body) -> httpx.Response:
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"content-type": "application/json"})
    return client.post(path, json=body)


@pytest.mark.parametrize(("path", "case", "body", "field"),
                         [("/recommend", *c) for c in BAD_SINGLE] + [("/recommend_batch", *c) for c in BAD_BATCH],
                         ids=[c[0] for c in BAD_SINGLE] + [f"batch: {c[0]}" for c in BAD_BATCH])
def test_bad_input_is_a_4xx_naming_the_field(client, path, case, body, field):
    response = _post(client, path, body)
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
    assert field in response.text, f"{case}: the message does not name {field!r}: {response.text}"
    assert "Traceback" not in response.text and 'File "' not in response.text
    # and the worker is still there
    ok = client.post("/recommend", json={"user_id": USER, "k": 2})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 2


def test_wrong_methods_and_paths(client):
    assert client.get("/recommend").status_code == 405
    assert client.post("/info").status_code == 405
    assert client.post("/nope", json={}).status_code == 404


def test_concurrent_requests_all_complete(server, client, reference):
    """200 simultaneous queries over HTTP: every one answered, correctly, exactly once."""
    before = client.get("/info").json()["serving"]["stats"]
    users = [reference["user_ids"][i % N_USERS] for i in range(200)]

    async def fire():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
            return await asyncio.gather(*(http.post("/recommend", json={"user_id": u, "k": 5}) for u in users))

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 200, [r.text for r in responses if r.status_code != 200][:3]
    for user, response in zip(users, responses):
        assert response.json()["user_id"] == user
        assert_matches_brute_force(reference, response.json(), 5, True)
    after = client.get("/info").json()["serving"]["stats"]
    answered = sum(after[key] - before[key] for key in ("direct_queries", "batched_queries"))
    assert answered == 200, (before, after)
    assert client.post("/recommend", json={"user_id": USER, "k": 1}).status_code == 200


def test_simultaneous_queries_share_one_dispatcher_batch(artifact, reference, monkeypatch):
    """In-process, deterministic: queries in flight together go through BentoML's adaptive
    batching dispatcher as one batch, and each still gets its own correct answer."""
    from serving import schemas

    monkeypatch.setenv("SPARSEREC_ARTIFACT", str(artifact))
    monkeypatch.setenv("SPARSEREC_THREADS", "1")
    for name in ("max_k", "max_batch"):  # the service sets these for its process; restore after
        monkeypatch.setattr(schemas.LIMITS, name, getattr(schemas.LIMITS, name))
    from serving.service import SparseRecommender

    service = SparseRecommender.inner()
    users = reference["user_ids"][:50]

    async def together():
        requests = [schemas.RecommendRequest(user_id=u, k=4) for u in users]
        return await asyncio.gather(*(service.recommend(r) for r in requests))

    answers = asyncio.run(together())
    assert service.stats == {"direct_queries": 0, "batches": 1, "batched_queries": 50, "largest_batch": 50}
    for user, answer in zip(users, answers):
        assert answer.user_id == user
        assert_matches_brute_force(reference, answer.model_dump(), 4, True)
    service._stop_dispatcher()


# --------------------------------------------------------------------------- operations
def test_health_metrics_and_openapi(client):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text
    spec = client.get("/docs.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert {"/recommend", "/recommend_batch", "/ping"} <= set(paths)
    assert client.get("/").status_code == 200  # Swagger UI
    assert client.post("/ping", json={}).json() == {"ok": True}


def test_info_describes_the_artifact(client, artifact):
    info = client.get("/info").json()
    assert info["model_kind"] == "mf"
    assert (info["n_users"], info["n_items"]) == (N_USERS, N_ITEMS)
    assert info["index"]["kind"] == "flat" and info["value_dtype"] == "fp32"
    assert info["nnz"] > 0 and 0 < info["density"] <= 1
    assert "ndcg@20" in json.dumps(info["metrics"])
    serving = info["serving"]
    assert serving["device"] == "cpu" and serving["threads"] == 1 and serving["max_k"] == N_ITEMS
    assert serving["adaptive_batching"] == {"max_batch_size": 64, "max_latency_ms": 500}


def test_binds_to_localhost_only(server):
    """The default bind is 127.0.0.1: the port is closed on the machine's other addresses."""
    psutil = pytest.importorskip("psutil")
    import socket

    outside = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
               if a.family == socket.AF_INET and not a.address.startswith("127.")]
    if not outside:
        pytest.skip("no non-loopback IPv4 address on this machine")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{outside[0]}:{server.port}/livez", timeout=2)


@pytest.mark.gpu
def test_cuda_service_answers_like_the_cpu_one(artifact, reference):
    """SPARSEREC_DEVICE=cuda: exact scoring with torch on the GPU, the same answers."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    queries = [{"user_id": u, "k": 10, "exclude_seen": e} for u in reference["user_ids"][:50] for e in (True, False)]
    with running_server(artifact, via="cli", SPARSEREC_DEVICE="cuda") as gpu_server:
        info = httpx.get(gpu_server.url + "/info", timeout=30).json()
        assert info["serving"]["device"] == "cuda"
        results = httpx.post(gpu_server.url + "/recommend_batch", json={"queries": queries}, timeout=60).json()
    for query, answer in zip(queries, results["results"]):
        assert_matches_brute_force(reference, answer, 10, query["exclude_seen"])


# --------------------------------------------------------------------------- refusal
def _tampered_copy(artifact: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "tampered"
    shutil.copytree(artifact, copy)
    target = copy / "items.faiss"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte different: only the checksum can tell
    target.write_bytes(bytes(data))
    return copy


def test_altered_artifact_refused_by_the_service(artifact, tmp_path):
    """`bentoml serve` on a tampered artifact: clear log line, and /readyz never turns 200."""
    server = start_server(_tampered_copy(artifact, tmp_path), via="bentoml")
    try:
        with pytest.raises(ServerFailed):
            server.wait_ready(timeout=20)
        deadline = time.monotonic() + 30
        while "refusing to start" not in server.log and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "refusing to start" in server.log and "items.faiss" in server.log and "sha256" in server.log
    finally:
        server.stop()


def test_altered_artifact_refused_by_the_cli(artifact, tmp_path):
    """`python -m serving` checks before starting: exit status 2, the file named."""
    done = subprocess.run(
        [sys.executable, "-m", "serving", "--artifact", str(_tampered_copy(artifact, tmp_path)), "--port", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "refusing to start" in done.stderr and "items.faiss" in done.stderr
