"""The service over real HTTP: a tiny run trained and exported once, served by `python -m serving`.

No mocks: answers are checked against a brute-force top-K computed in-process from the artifact's
own arrays; bad inputs (one test per class found, plus property-based fuzzing in test_serving_fuzz.py driven by the
service's OpenAPI document and by raw requests), BentoML's own client, concurrency, load shedding,
health endpoints and a tampered artifact go through real server processes.
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
from server_utils import REPO_ROOT, ServerFailed, running_server, start_server
from serving.schemas import EXAMPLE_QUERY
from serving_reference import assert_matches_brute_force, reference_arrays

pytestmark = pytest.mark.slow

N_USERS, N_ITEMS = TINY_USERS, TINY_ITEMS  # the conftest fixture's sizes


@pytest.fixture(scope="session")
def artifact(tiny_mf_artifact) -> Path:
    """The session's tiny MF artifact (tests/conftest.py), trained and exported once."""
    return tiny_mf_artifact


@pytest.fixture(scope="module")
def server(artifact):
    """SPARSEREC_BATCH_ROUTE=always: concurrent /recommend calls go through BentoML's dispatcher
    (the default, auto, keeps a catalogue this small out of it; see test_shedding_...).
    A 3 s body timeout bounds the fuzzed requests that promise more body than they send."""
    with running_server(artifact, via="cli", SPARSEREC_BATCH_ROUTE="always", SPARSEREC_BODY_TIMEOUT_S="3") as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def reference(artifact):
    return reference_arrays(artifact)


# --------------------------------------------------------------------------- answers
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_batch_answers_equal_brute_force_for_every_user(client, reference, exclude_seen):
    k = 10
    queries = [{"user_id": u, "k": k, "exclude_seen": exclude_seen} for u in reference["user_ids"]]
    results = []
    for start in range(0, len(queries), 100):
        response = client.post("/recommend_batch", json={"queries": queries[start : start + 100]})
        assert response.status_code == 200, response.text
        results += response.json()
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
    batch = client.post(
        "/recommend_batch",
        json={"queries": [{"user_id": reference["user_ids"][0], "k": 3}, {"user_id": "nobody", "k": 3}]},
    ).json()
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
    ("malformed json", b'{"user_id": "0", "k": 3', "JSON"),
    ("not json at all", b"hello", "JSON"),
    ("empty body", b"", "user_id"),
    ("a list, not an object", b"[1, 2]", "object"),
    ("deeply nested json", b"[" * 100_000 + b"]" * 100_000, "JSON"),
    ("nesting inside a field", b'{"user_id": ' + b"[" * 5000 + b"]" * 5000 + b"}", "JSON"),
    ("invalid utf-8", b'{"user_id": "\xff\xfe"}', "JSON"),
    ("lone surrogate escape", b'{"user_id": "\\ud800"}', "JSON"),
    ("number too large", b'{"user_id": "0", "k": 1' + b"0" * 5000 + b"}", "JSON"),
    ("NaN", b'{"user_id": "0", "k": NaN}', "k"),
    ("k 1e400", b'{"user_id": "0", "k": 1e400}', "k"),
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


@pytest.mark.parametrize(
    ("path", "case", "body", "field"),
    [("/recommend", *c) for c in BAD_SINGLE] + [("/recommend_batch", *c) for c in BAD_BATCH],
    ids=[c[0] for c in BAD_SINGLE] + [f"batch: {c[0]}" for c in BAD_BATCH],
)
def test_bad_input_is_a_4xx_naming_the_field(client, path, case, body, field):
    response = _post(client, path, body)
    assert response.status_code == 400, (case, response.status_code, response.text)
    answer = response.json()
    assert answer["error"].startswith(f"invalid {path} request: "), answer
    assert field in answer["error"], f"{case}: the message does not name {field!r}: {response.text}"
    assert all(set(problem) == {"field", "problem"} for problem in answer["detail"]), answer
    assert_our_wording(response)
    # and the worker is still there
    ok = client.post("/recommend", json={"user_id": USER, "k": 2})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 2


def assert_our_wording(response: httpx.Response) -> None:
    """No traceback, no pydantic class or documentation link in an error answer."""
    for leak in ("Traceback", 'File "', "IODescriptor", "errors.pydantic.dev", "validation error for"):
        assert leak not in response.text, (leak, response.text)


JSON = {"content-type": "application/json"}
BAD_HEADERS = [  # (case, headers, body, status, words the answer must hold)
    ("text/plain", {"content-type": "text/plain"}, b'{"user_id": "0"}', 415, "text/plain"),
    (
        "multipart",
        {"content-type": "multipart/form-data; boundary=x"},
        b'--x\r\nContent-Disposition: form-data; name="user_id"\r\n\r\n0\r\n--x--\r\n',
        415,
        "multipart",
    ),
    ("multipart without boundary", {"content-type": "multipart/form-data"}, b"garbage", 415, "multipart"),
    ("form", {"content-type": "application/x-www-form-urlencoded"}, b"user_id=0", 415, "form-urlencoded"),
    ("pickle", {"content-type": "application/vnd.bentoml+pickle"}, b"\x80\x04K\x01.", 415, "pickle"),
    ("garbage content type", {"content-type": ";;;==="}, b'{"user_id": "0"}', 415, "Content-Type"),
    ("latin-1 charset", {"content-type": "application/json; charset=latin-1"}, b'{"user_id": "0"}', 415, "charset"),
    ("gzip encoding", {**JSON, "content-encoding": "gzip"}, b"\x1f\x8b\x08\x00", 415, "gzip"),
    ("oversized body", JSON, b'{"user_id": "' + b"a" * 2_000_000 + b'"}', 413, "SPARSEREC_MAX_BODY_BYTES"),
]


@pytest.mark.parametrize(("case", "headers", "body", "status", "words"), BAD_HEADERS, ids=[c[0] for c in BAD_HEADERS])
def test_unsupported_bodies_get_a_4xx_naming_the_problem(client, case, headers, body, status, words):
    for path in ("/recommend", "/recommend_batch", "/ping"):
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == status, (case, path, response.status_code, response.text)
        assert words in response.json()["error"], response.text
        assert_our_wording(response)
    assert client.post("/recommend", json={"user_id": USER, "k": 1}).status_code == 200


def test_oversized_body_sent_in_chunks_is_refused(client):
    """No Content-Length (chunked transfer): the limit holds while the body is read."""

    def chunks():
        yield b'{"user_id": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    response = client.post("/recommend", content=chunks(), headers=JSON)
    assert response.status_code == 413 and "SPARSEREC_MAX_BODY_BYTES" in response.text


def test_accepted_edge_cases(client):
    """What stays a 2xx: no content type (JSON assumed), a UTF-8 charset, control characters in an
    unknown user id. Not duplicate keys: a proxy may read the first, json.loads the last (400)."""
    assert client.post("/recommend", content=b'{"user_id": "0"}').status_code == 200
    assert (
        client.post(
            "/recommend", content=b'{"user_id": "0"}', headers={"content-type": "application/json; charset=UTF-8"}
        ).status_code
        == 200
    )
    answer = client.post("/recommend", content=b'{"user_id": "x", "user_id": "0", "k": 1}', headers=JSON)
    assert answer.status_code == 400 and answer.json()["detail"] == [{"field": "user_id", "problem": "duplicate key"}]
    answer = client.post("/recommend", json={"user_id": "a\u0000b\n", "k": 1}).json()
    assert answer["user_id"] == "a\u0000b\n" and answer["fallback"] is True


def test_wrong_methods_and_paths(client):
    assert client.get("/recommend").status_code == 405
    assert client.put("/recommend", json={}).status_code == 405
    assert client.delete("/info").status_code == 405
    assert client.post("/info").status_code == 405
    assert client.post("/nope", json={}).status_code == 404
    assert client.post("/recommend/submit", json={}).status_code == 404
    assert client.get("/info?x=%ff").status_code == 200


def test_bentoml_client_with_keyword_parameters(server, reference):
    """BentoML's own client reads naturally: keyword parameters, the same answers as raw HTTP."""
    import bentoml

    user = reference["user_ids"][5]
    with bentoml.SyncHTTPClient(server.url) as bento:
        answer = bento.recommend(user_id=user, k=4)
        assert_matches_brute_force(reference, answer, 4, True)
        answer = bento.recommend(user_id=user, k=4, exclude_seen=False)
        assert_matches_brute_force(reference, answer, 4, False)
        assert bento.recommend(user_id="nobody", k=2)["fallback"] is True
        both = bento.recommend_batch(queries=[{"user_id": user, "k": 3}, {"user_id": "nobody", "k": 3}])
        assert [r["fallback"] for r in both] == [False, True]
        with pytest.raises(bentoml.exceptions.BentoMLException) as refused:
            bento.recommend(user_id=user, k=0)
        assert refused.value.error_code == 400 and "k" in str(refused.value)


def test_concurrent_requests_all_complete(server, client, reference):
    """200 simultaneous queries over HTTP: every one answered, correctly, exactly once, and the
    ones that arrived while others were in flight went through BentoML's batching dispatcher."""
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
    assert after["batches"] > before["batches"] and after["batched_queries"] > before["batched_queries"], after
    assert client.post("/recommend", json={"user_id": USER, "k": 1}).status_code == 200


def test_concurrent_batch_calls_are_merged(server, client, reference):
    """/recommend_batch is BentoML-batchable: calls in flight together share dispatcher batches,
    and each caller gets its own answers back, in order."""
    before = client.get("/info").json()["serving"]["stats"]
    calls = [
        [{"user_id": reference["user_ids"][(7 * c + j) % N_USERS], "k": 3} for j in range(1 + c % 5)] for c in range(60)
    ]

    async def fire():
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=60)) as http:
            return await asyncio.gather(*(http.post("/recommend_batch", json={"queries": q}) for q in calls))

    responses = asyncio.run(fire())
    for queries, response in zip(calls, responses):
        assert response.status_code == 200, response.text
        assert [a["user_id"] for a in response.json()] == [q["user_id"] for q in queries]
        for answer in response.json():
            assert_matches_brute_force(reference, answer, 3, True)
    after = client.get("/info").json()["serving"]["stats"]
    assert after["batched_queries"] - before["batched_queries"] == sum(map(len, calls))
    assert after["batches"] - before["batches"] < len(calls), (before, after)  # some calls shared a batch


# --------------------------------------------------------------------------- load shedding (off by default)
def test_shedding_answers_503_with_retry_after(artifact, reference):
    """SPARSEREC_SHED_IN_FLIGHT=1: while one request is in flight, another one is refused with a
    503, our wording and Retry-After; nothing is shed once it is alone again."""
    with running_server(artifact, via="cli", SPARSEREC_SHED_IN_FLIGHT="1", SPARSEREC_RETRY_AFTER_S="7") as shedding:
        info = httpx.get(shedding.url + "/info", timeout=30).json()
        assert info["serving"]["shed_in_flight"] == 1
        # the default route: a search this cheap is not worth BentoML's batching path
        assert info["serving"]["batch_route"] == {"setting": "auto", "single_queries_batched": False}
        users = [reference["user_ids"][i % N_USERS] for i in range(100)]

        async def fire():
            limits = httpx.Limits(max_connections=100)
            async with httpx.AsyncClient(base_url=shedding.url, timeout=60, limits=limits) as http:
                # a batch of 256 keeps the worker busy while the single queries arrive
                slow = http.post("/recommend_batch", json={"queries": [{"user_id": u, "k": 50} for u in users * 2]})
                return await asyncio.gather(slow, *(http.post("/recommend", json={"user_id": u}) for u in users))

        responses = asyncio.run(fire())
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503}, statuses
        shed = [r for r in responses if r.status_code == 503]
        assert shed, "nothing was shed with one request allowed in flight"
        for response in shed:
            assert response.headers["retry-after"] == "7"
            assert response.json()["error"].startswith("overloaded: ")
        assert httpx.post(shedding.url + "/recommend", json={"user_id": USER}, timeout=30).status_code == 200


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
    assert serving["adaptive_batching"] == {"max_batch_size": 64, "max_latency_ms": 60000}
    assert serving["shed_in_flight"] is None and serving["max_body_bytes"] == 1 << 20
    assert serving["batch_route"] == {"setting": "always", "single_queries_batched": True}


def test_binds_to_localhost_only(server):
    """The default bind is 127.0.0.1: the port is closed on the machine's other addresses."""
    psutil = pytest.importorskip("psutil")
    import socket

    outside = [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]
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
    for query, answer in zip(queries, results):
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
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "refusing to start" in done.stderr and "items.faiss" in done.stderr
