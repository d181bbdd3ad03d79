"""Replicas and shards (issue 12): mmap-loaded indexes, shard parts, the router over real HTTP.

- `export.shards` writes item-disjoint parts that verify like any artifact (and are refused when altered);
- an index mapped from its file (SPARSEREC_MMAP=1, the default) answers like one read into memory,
  in-process and over HTTP with 2 workers;
- `python -m serving --artifact A --shards 2` answers exactly like the unsharded service (many users,
  with and without seen exclusion, an unknown user);
- a killed shard makes the router answer 503 naming it, and its /readyz 503.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import numpy as np
import psutil
import pytest

from conftest import run_cli
from export.artifact import ArtifactError, load_artifact, verify_artifact
from export.shards import shard_bounds, split_artifact
from server_utils import REPO_ROOT, ServerProcess, free_port, running_server, server_env, start_server
from serving.recommender import Query, Recommender
from serving.router import merge_answers


@pytest.fixture(scope="module")
def parts(tiny_mf_artifact):
    return split_artifact(tiny_mf_artifact, 2, progress=False)


@pytest.fixture(scope="module")
def sparse_artifact(tiny_mf_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-sparse") / "tiny"
    run_cli(
        "-m",
        "export",
        str(tiny_mf_run),
        "--out",
        str(out),
        "--index",
        "sparse",
        "--no-memory",
        "--quiet",
        cwd=out.parent,
    )
    return out


def _queries(art, exclude_seen: bool, k: int) -> list[Query]:
    return [Query(u, k, exclude_seen) for u in art.user_ids] + [Query("no-such-user", k, exclude_seen)]


def _as_answer(rec) -> dict:
    return {
        "user_id": rec.user_id,
        "items": [{"item_id": i, "score": s} for i, s in zip(rec.item_ids, rec.scores)],
        "fallback": rec.fallback,
    }


def test_shard_bounds_cover_the_catalogue_disjointly():
    bounds = shard_bounds(10, 3)
    assert bounds[0][0] == 0 and bounds[-1][1] == 10
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    with pytest.raises(ValueError, match="--shards"):
        shard_bounds(10, 0)


def test_parts_verify_and_an_altered_part_is_refused(parts, tiny_mf_artifact):
    whole = load_artifact(tiny_mf_artifact)
    ranges = []
    for i, part in enumerate(parts):
        manifest = verify_artifact(part, deep=True)
        shard = manifest.shard
        assert (shard.index, shard.count) == (i, 2)
        ranges.append((shard.start, shard.stop))
    assert ranges == shard_bounds(whole.n_items, 2)
    index_file = parts[1] / load_artifact(parts[1]).manifest.index.file
    data = bytearray(index_file.read_bytes())
    data[-1] ^= 0xFF
    index_file.write_bytes(bytes(data))
    try:
        with pytest.raises(ArtifactError, match="sha256 mismatch"):
            verify_artifact(parts[1])
    finally:
        data[-1] ^= 0xFF
        index_file.write_bytes(bytes(data))


@pytest.mark.parametrize("which", ["flat", "sparse"])
def test_merged_parts_equal_the_whole_in_process(which, tiny_mf_artifact, sparse_artifact, tmp_path):
    """Each part's exact top-k (seen items dropped by the part) merged = the unsharded answer."""
    source = tiny_mf_artifact if which == "flat" else sparse_artifact
    whole = load_artifact(source)
    full = Recommender.from_artifact(whole, mmap=True)
    shards = [Recommender.from_artifact(load_artifact(p), mmap=True) for p in split_artifact(source, 3, progress=False)]
    for exclude_seen in (True, False):
        queries = _queries(whole, exclude_seen, 15)
        expected = full.recommend(queries)
        per_shard = [s.recommend(queries) for s in shards]
        for j, want in enumerate(expected):
            got = merge_answers([_as_answer(answers[j]) for answers in per_shard], 15)
            assert [i["item_id"] for i in got["items"]] == want.item_ids, (which, exclude_seen, want.user_id)
            np.testing.assert_allclose([i["score"] for i in got["items"]], want.scores, rtol=1e-5, atol=1e-6)


def test_export_cli_writes_the_parts(tiny_mf_run, tmp_path):
    out = tmp_path / "art"
    done = run_cli(
        "-m",
        "export",
        str(tiny_mf_run),
        "--out",
        str(out),
        "--index",
        "hnsw",
        "--shards",
        "3",
        "--no-memory",
        "--quiet",
        cwd=tmp_path,
    )
    assert json.loads(done.stdout)["shards"] == [str(out / "shards" / f"part-{i}-of-3") for i in range(3)]
    for i in range(3):
        assert verify_artifact(out / "shards" / f"part-{i}-of-3", deep=True).index.kind == "hnsw"
    # an hnsw index maps its vectors too (IO_FLAG_MMAP_IFC) and answers like one read into memory
    art = load_artifact(out)
    queries = _queries(art, True, 20)
    assert [r.item_ids for r in Recommender.from_artifact(art, mmap=True).recommend(queries)] == [
        r.item_ids for r in Recommender.from_artifact(art, mmap=False).recommend(queries)
    ]


@pytest.mark.parametrize("which", ["flat", "sparse"])
def test_mmap_index_answers_like_an_index_in_memory(which, tiny_mf_artifact, sparse_artifact):
    art = load_artifact(tiny_mf_artifact if which == "flat" else sparse_artifact)
    queries = _queries(art, True, 20)
    mapped = Recommender.from_artifact(art, mmap=True).recommend(queries)
    read = Recommender.from_artifact(art, mmap=False).recommend(queries)
    assert [r.item_ids for r in mapped] == [r.item_ids for r in read]


def _batch(url: str, queries: list[dict]) -> list[dict]:
    response = httpx.post(url + "/recommend_batch", json={"queries": queries}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _http_queries(art, exclude_seen: bool, k: int) -> list[dict]:
    return [{"user_id": u, "k": k, "exclude_seen": exclude_seen} for u in art.user_ids[:120]] + [
        {"user_id": "no-such-user", "k": k, "exclude_seen": exclude_seen}
    ]


def test_two_mmap_workers_answer_like_one_over_http(tiny_mf_artifact):
    art = load_artifact(tiny_mf_artifact)
    queries = _http_queries(art, True, 10)
    with running_server(tiny_mf_artifact, SPARSEREC_WORKERS="1", SPARSEREC_MMAP="0") as one:
        expected = _batch(one.url, queries)
    with running_server(tiny_mf_artifact, SPARSEREC_WORKERS="2") as two:
        assert httpx.get(two.url + "/info").json()["serving"]["mmap"] is True
        # enough separate calls that both workers answer some
        got = [httpx.post(two.url + "/recommend", json=q, timeout=60).json() for q in queries]
    assert got == expected


def test_sharded_service_equals_unsharded_over_http(parts, tiny_mf_artifact):
    art = load_artifact(tiny_mf_artifact)
    port = free_port()
    env = server_env(tiny_mf_artifact)
    sharded = ServerProcess(
        [
            sys.executable,
            "-m",
            "serving",
            "--artifact",
            str(tiny_mf_artifact),
            "--shards",
            "2",
            "--threads",
            "1",
            "--port",
            str(port),
        ],
        env,
        port,
    )
    try:
        with running_server(tiny_mf_artifact) as whole:
            sharded.wait_ready(180)
            for exclude_seen in (True, False):
                for k in (10, 60):
                    queries = _http_queries(art, exclude_seen, k)
                    assert _batch(sharded.url, queries) == _batch(whole.url, queries), (exclude_seen, k)
            one = {"user_id": art.user_ids[3], "k": 7, "exclude_seen": True}
            assert (
                httpx.post(sharded.url + "/recommend", json=one).json()
                == httpx.post(whole.url + "/recommend", json=one).json()
            )
    finally:
        sharded.stop()


def test_a_killed_shard_makes_the_router_answer_503_naming_it(parts, tiny_mf_artifact):
    shards = [start_server(p) for p in parts]
    router = None
    try:
        for shard in shards:
            shard.wait_ready()
        port = free_port()
        env = server_env(
            tiny_mf_artifact, SPARSEREC_SHARD_URLS=",".join(s.url for s in shards), SPARSEREC_SHARD_TIMEOUT_S="5"
        )
        router = ServerProcess(
            [
                sys.executable,
                "-m",
                "bentoml",
                "serve",
                "serving.router:ShardRouter",
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                "--working-dir",
                str(REPO_ROOT),
            ],
            env,
            port,
        )
        router.wait_ready()
        user = load_artifact(tiny_mf_artifact).user_ids[0]
        assert httpx.post(router.url + "/recommend", json={"user_id": user}).status_code == 200
        # a shard that hangs (its server and workers stopped): the timeout names it
        tree = [shards[0].process.pid] + [c.pid for c in psutil.Process(shards[0].process.pid).children(recursive=True)]
        for pid in tree:
            os.kill(pid, signal.SIGSTOP)
        try:
            hung = httpx.post(router.url + "/recommend", json={"user_id": user}, timeout=30)
        finally:
            for pid in tree:
                os.kill(pid, signal.SIGCONT)
        assert hung.status_code == 503 and "shard 0" in hung.text and "did not answer within 5 s" in hung.text
        assert httpx.post(router.url + "/recommend", json={"user_id": user}, timeout=30).status_code == 200
        shards[1].stop()
        answer = httpx.post(router.url + "/recommend", json={"user_id": user}, timeout=30)
        assert answer.status_code == 503, answer.text
        assert "shard 1" in answer.text and shards[1].url in answer.text
        assert "items" not in answer.text  # never a partial list
        batch = httpx.post(router.url + "/recommend_batch", json={"queries": [{"user_id": user}]}, timeout=30)
        assert batch.status_code == 503 and "shard 1" in batch.text
        assert httpx.get(router.url + "/readyz", timeout=30).status_code == 503
    finally:
        if router is not None:
            router.stop()
        for shard in shards:
            shard.stop()


def test_router_info_samples_known_users_and_loadtest_runs_against_it(parts, tiny_mf_artifact, tmp_path):
    """The router's GET /info has `sample_user_ids` (known users, answered by the model), the
    whole catalogue's size and each shard; `python -m loadtest run --host ROUTER_URL` takes its
    users from there and gets no failure."""
    art = load_artifact(tiny_mf_artifact)
    port = free_port()
    sharded = ServerProcess(
        [
            sys.executable,
            "-m",
            "serving",
            "--artifact",
            str(tiny_mf_artifact),
            "--shards",
            "2",
            "--threads",
            "1",
            "--port",
            str(port),
        ],
        server_env(tiny_mf_artifact),
        port,
    )
    try:
        sharded.wait_ready(180)
        info = httpx.get(sharded.url + "/info", timeout=30).json()
        sample = info["sample_user_ids"]
        known = set(art.user_ids)
        assert 0 < len(sample) <= 100 and len(set(sample)) == len(sample) and set(sample) <= known
        assert (info["n_users"], info["n_items"]) == (art.n_users, art.n_items)
        shards = info["serving"]["shards"]
        assert info["serving"]["router"] is True and len(shards) == 2
        assert [(s["shard"]["start"], s["shard"]["stop"]) for s in shards] == list(shard_bounds(art.n_items, 2))
        answer = httpx.post(sharded.url + "/recommend", json={"user_id": sample[0], "k": 5}, timeout=30).json()
        assert answer["fallback"] is False and len(answer["items"]) == 5
        results = tmp_path / "results"
        env = {
            key: value for key, value in os.environ.items() if key not in ("SPARSEREC_ARTIFACT", "SPARSEREC_USER_IDS")
        }  # the ids must come from the router
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "loadtest",
                "run",
                "--host",
                sharded.url,
                "--duration",
                "4s",
                "--users",
                "4",
                "--spawn-rate",
                "4",
                "--results",
                str(results),
                "--name",
                "router",
                "--max-fail-ratio",
                "0",
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            env={**env, "PYTHONPATH": str(REPO_ROOT)},
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        report = json.loads((results / "loadtest-router.json").read_text())
        assert report["traffic"]["user_source"] == "server" and report["traffic"]["users"] == len(sample)
        assert report["requests"] > 0 and report["failures"] == 0, report["errors"]
        assert sharded.process.poll() is None, "the load test stopped a deployment it did not start"
    finally:
        sharded.stop()
