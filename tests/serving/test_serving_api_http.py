"""The new API over real HTTP: filters, fold-in, similar items, versions, reload, metrics.

Servers are `python -m serving` on free ports (tests/server_utils.py), stopped by PID. The
artifacts are the tiny MF (flat) and a copy of it exported with the sparse index ("second"), so a
reload has two artifacts with different manifests to swap between.
"""

from __future__ import annotations

import re
import shutil
import time

import httpx
import numpy as np
import pytest

from conftest import run_cli
from export.artifact import load_artifact
from server_utils import running_server
from serving.reload import HEADER, artifact_version

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def second(tiny_mf_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("second") / "tiny-sparse"
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


@pytest.fixture(scope="module")
def server(tiny_mf_artifact, tmp_path_factory):
    # its own BENTOML_HOME: BentoML empties $BENTOML_HOME/prometheus_multiproc_dir when any server
    # starts, so another test's server would wipe this one's counts (serving.metrics)
    home = tmp_path_factory.mktemp("bentoml-home")
    with running_server(
        tiny_mf_artifact,
        via="cli",
        SPARSEREC_WORKERS="2",
        SPARSEREC_ADMIN_TOKEN=TOKEN,
        SPARSEREC_RELOAD_POLL_MS="50",
        BENTOML_HOME=str(home),
    ) as running:
        yield running


def _version(response: httpx.Response) -> str:
    """The sha256 the header names, checked against the body's."""
    header = response.headers[HEADER]
    sha, _, name = header.partition("; name=")
    body = response.json()
    first = body[0] if isinstance(body, list) else body
    assert first["artifact"]["sha256"] == sha and first["artifact"]["name"] == name
    return sha


def test_versions_filters_fold_in_and_similar_items(server, tiny_mf_artifact):
    art = load_artifact(tiny_mf_artifact)
    sha = artifact_version(tiny_mf_artifact)["sha256"]
    user, items = art.user_ids[3], art.item_ids
    with httpx.Client(base_url=server.url, timeout=30) as client:
        plain = client.post("/recommend", json={"user_id": user, "k": 5})
        assert plain.status_code == 200 and _version(plain) == sha
        top = [i["item_id"] for i in plain.json()["items"]]
        filtered = client.post("/recommend", json={"user_id": user, "k": 5, "exclude_items": top[:2]})
        assert _version(filtered) == sha
        got = [i["item_id"] for i in filtered.json()["items"]]
        assert got[:3] == top[2:] and not set(got) & set(top[:2]) and len(got) == 5
        allowed = client.post(
            "/recommend", json={"user_id": user, "k": 5, "allow_items": items[:4], "exclude_seen": False}
        )
        assert {i["item_id"] for i in allowed.json()["items"]} <= set(items[:4])
        bad = client.post("/recommend", json={"user_id": user, "exclude_items": ["no-such-item", items[0]]})
        assert bad.status_code == 400 and "no-such-item" in bad.text and "exclude_items" in bad.text
        batch = client.post(
            "/recommend_batch", json={"queries": [{"user_id": user, "k": 5}, {"history": items[:5], "k": 3}]}
        )
        assert batch.status_code == 200 and _version(batch) == sha
        assert batch.json()[1]["folded_in"] and batch.json()[1]["user_id"] is None
        assert not {i["item_id"] for i in batch.json()[1]["items"]} & set(items[:5])
        for body, word in (
            ({"history": []}, "history"),
            ({"history": ["zzz"]}, "zzz"),
            ({"k": 3}, "history"),
            ({"user_id": user, "allow_items": ["x"] * 1001}, "at most 1000"),
        ):
            answer = client.post("/recommend", json=body)
            assert answer.status_code == 400 and word in answer.text, (body, answer.text)
        similar = client.post("/similar_items", json={"item_id": items[7], "k": 4, "metric": "cosine"})
        assert similar.status_code == 200 and _version(similar) == sha
        assert items[7] not in [i["item_id"] for i in similar.json()["items"]] and len(similar.json()["items"]) == 4
        many = client.post("/similar_items_batch", json={"queries": [{"item_id": items[1]}, {"item_id": items[2]}]})
        assert many.status_code == 200 and [a["item_id"] for a in many.json()] == items[1:3]
        unknown = client.post("/similar_items", json={"item_id": "no-such-item"})
        assert unknown.status_code == 400 and "no-such-item" in unknown.text
        info = client.get("/info").json()
        assert info["artifact"]["sha256"] == sha and "this worker only" in info["serving"]["stats_scope"]


def _metric_total(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _per_worker_stats(url: str) -> dict[str, dict]:
    """/info of each of the 2 workers, by pid (fresh connections until both have answered)."""
    seen: dict[str, dict] = {}
    for _ in range(200):
        serving = httpx.get(url + "/info", timeout=30).json()["serving"]
        seen[serving["stats_scope"]] = serving["stats"]
        if len(seen) == 2:
            return seen
    raise AssertionError(f"only {list(seen)} answered /info")


def test_metrics_are_totals_over_both_workers(server):
    before_stats = _per_worker_stats(server.url)
    before = httpx.get(server.url + "/metrics").text
    n = 60
    for _ in range(n):  # a fresh connection each: the workers share the listening socket
        assert httpx.post(server.url + "/recommend", json={"user_id": "no-such-user", "k": 2}).status_code == 200
    after_stats = _per_worker_stats(server.url)
    after = httpx.get(server.url + "/metrics").text
    per_worker = [after_stats[w]["direct_queries"] - before_stats[w]["direct_queries"] for w in after_stats]
    assert sum(per_worker) == n and min(per_worker) > 0, f"both workers should have answered: {per_worker}"
    fallbacks = _metric_total(after, "sparserec_queries_total", endpoint="/recommend", kind="fallback") - _metric_total(
        before, "sparserec_queries_total", endpoint="/recommend", kind="fallback"
    )
    assert fallbacks == n, "the /metrics total is not the sum over the workers"
    assert _metric_total(after, "sparserec_request_seconds_count", endpoint="/recommend") >= n
    assert "sparserec_search_seconds_bucket" in after and "sparserec_batch_size_bucket" in after
    assert re.search(r'sparserec_request_seconds_count\{artifact="[^"@]+@[0-9a-f]{12}"', after)


def _versions_seen(url: str, n: int) -> set[str]:
    """Versions named by n /recommend answers, each on a fresh connection (so both workers answer)."""
    return {_version(httpx.post(url + "/recommend", json={"user_id": "0", "k": 3}, timeout=30)) for _ in range(n)}


def _worker_versions(url: str) -> dict[str, str]:
    """The sha256 each of the 2 workers serves, from their /info."""
    seen: dict[str, str] = {}
    for _ in range(200):
        info = httpx.get(url + "/info", timeout=30).json()
        seen[info["serving"]["stats_scope"]] = info["artifact"]["sha256"]
        if len(seen) == 2:
            return seen
    raise AssertionError(f"only {list(seen)} answered /info")


def test_reload_refuses_a_tampered_artifact_and_every_worker_swaps(server, tiny_mf_artifact, second, tmp_path):
    first_sha = artifact_version(tiny_mf_artifact)["sha256"]
    second_sha = artifact_version(second)["sha256"]
    assert first_sha != second_sha
    tampered = tmp_path / "tampered"
    shutil.copytree(second, tampered)
    victim = next(p for p in sorted(tampered.glob("*.npy")))
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        refused = client.post("/admin/reload", json={"artifact": str(tampered)})
        assert refused.status_code == 403, refused.text  # the token is set: it is required
        refused = client.post("/admin/reload", json={"artifact": str(tampered)}, headers=auth)
        assert refused.status_code == 400 and victim.name in refused.text, refused.text
        assert _versions_seen(server.url, 20) == {first_sha}, "a refused reload changed what is served"
        missing = client.post("/admin/reload", json={"artifact": str(tmp_path / "nothing")}, headers=auth)
        assert missing.status_code == 400 and "nothing" in missing.text
        done = client.post("/admin/reload", json={"artifact": str(second)}, headers=auth)
        assert done.status_code == 200, done.text
        assert done.json()["artifact"]["sha256"] == second_sha and done.json()["previous"]["sha256"] == first_sha
        assert _version(done) == second_sha
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the other worker follows within its poll interval + a load
            if set(_worker_versions(server.url).values()) == {second_sha}:
                break
            _versions_seen(server.url, 5)
            time.sleep(0.2)
        assert set(_worker_versions(server.url).values()) == {second_sha}, "a worker kept the old artifact"
        assert _versions_seen(server.url, 40) == {second_sha}
        answer = client.post("/recommend", json={"user_id": "5", "k": 10}).json()
        rec_scores = np.array([i["score"] for i in answer["items"]])
        assert (np.diff(rec_scores) <= 1e-6).all()
        back = client.post("/admin/reload", json={"artifact": str(tiny_mf_artifact)}, headers=auth)
        assert back.status_code == 200 and _version(back) == first_sha
        metrics = client.get("/metrics").text
    assert _metric_total(metrics, "sparserec_reloads_total", outcome="refused") >= 2
    assert _metric_total(metrics, "sparserec_reloads_total", outcome="swapped") >= 3


def test_filters_fold_in_and_similar_items_through_the_shard_router(tiny_mf_artifact):
    """`python -m serving --shards 2` (2 shard services + the router) answers the new queries exactly
    like the unsharded service: each shard filters and searches its own items, the router merges."""
    import sys

    from export.shards import split_artifact
    from server_utils import server_env
    from serving.process import ServerProcess, free_port

    split_artifact(tiny_mf_artifact, 2, progress=False)
    art = load_artifact(tiny_mf_artifact)
    items, users = art.item_ids, art.user_ids
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
    queries = [
        ("/recommend", {"user_id": users[4], "k": 12, "exclude_items": items[:40] + items[150:190]}),
        ("/recommend", {"user_id": users[5], "k": 6, "allow_items": items[::9], "exclude_seen": False}),
        ("/recommend", {"history": items[100:110], "k": 8}),
        ("/recommend", {"user_id": "nobody", "k": 4, "exclude_items": items[:3]}),
        (
            "/recommend_batch",
            {
                "queries": [
                    {"user_id": users[6], "exclude_items": items[140:160]},
                    {"history": items[:3], "allow_items": items[100:300]},
                ]
            },
        ),
        ("/similar_items", {"item_id": items[3], "k": 9}),
        ("/similar_items", {"item_id": items[160], "k": 9, "metric": "cosine", "exclude_items": items[:20]}),
        ("/similar_items_batch", {"queries": [{"item_id": items[1]}, {"item_id": items[299], "metric": "cosine"}]}),
    ]
    try:
        with running_server(tiny_mf_artifact) as whole:
            sharded.wait_ready(180)
            for route, body in queries:
                want = httpx.post(whole.url + route, json=body, timeout=30)
                got = httpx.post(sharded.url + route, json=body, timeout=30)
                assert want.status_code == got.status_code == 200, (route, body, got.text)
                assert got.json() == want.json(), (route, body)
                assert got.headers[HEADER] == want.headers[HEADER]
            bad = httpx.post(sharded.url + "/recommend", json={"user_id": users[0], "exclude_items": ["nope"]})
            assert bad.status_code == 400 and "nope" in bad.text
    finally:
        sharded.stop()


def test_metrics_survive_another_server_starting_with_the_same_bentoml_home(tiny_mf_artifact, tmp_path):
    """BentoML empties $BENTOML_HOME/prometheus_multiproc_dir whenever a server starts;
    `python -m serving` gives each server a metrics folder of its own, so a second server started
    with the same BENTOML_HOME leaves the first one's counts alone (and the folder goes with its server)."""
    from serving.bentoml_serve import metrics_dir

    home = str(tmp_path / "shared-bentoml-home")

    def fallbacks(url: str) -> float:
        return _metric_total(
            httpx.get(url + "/metrics", timeout=30).text,
            "sparserec_queries_total",
            endpoint="/recommend",
            kind="fallback",
        )

    def ask(url: str, n: int) -> None:
        for _ in range(n):
            assert (
                httpx.post(url + "/recommend", json={"user_id": "no-such-user", "k": 2}, timeout=30).status_code == 200
            )

    with running_server(tiny_mf_artifact, BENTOML_HOME=home) as first:
        ask(first.url, 12)
        assert fallbacks(first.url) == 12
        first_dir = metrics_dir(first.process.pid)
        assert first_dir.is_dir() and any(first_dir.iterdir())
        with running_server(tiny_mf_artifact, BENTOML_HOME=home) as second:
            second_dir = metrics_dir(second.process.pid)
            assert second_dir != first_dir and second_dir.is_dir()
            assert fallbacks(first.url) == 12, "the second server's start wiped the first one's metrics"
            ask(second.url, 3)
            assert (fallbacks(first.url), fallbacks(second.url)) == (12, 3)
        assert not second_dir.exists(), "a stopped server's metrics folder stays behind"
        assert fallbacks(first.url) == 12
