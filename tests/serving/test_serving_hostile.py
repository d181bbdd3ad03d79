"""Hostile input at every boundary, against real servers over real sockets.

- duplicated framing headers and conflicting encodings: 400/415, never 500, on the plain server
  and on the shard router; duplicate JSON keys: 400 naming the key;
- the router refuses k beyond the catalogue with the server's 400;
- shard parts that do not belong together make `python -m serving --shards` exit 2 naming the part;
- `kill -9` of the launcher, the router or a shard: nothing of the deployment is left within 5 s;
- a flood of bad requests grows the server log by <= 300 bytes per request;
- a half-sent request is dropped after the header / body timeout while others are answered;
- an export removes the stale temp folders of its own target, never another's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import run_cli
from export.artifact import load_artifact
from export.exporter.write import remove_stale_partials
from export.shards import shard_paths, split_artifact, verify_shard_set
from server_utils import ServerProcess, free_port, running_server, server_env
from serving.process import alive

pytestmark = pytest.mark.slow

TIMEOUT_S = "2"  # header and body read timeouts of the servers below


def raw_request(port: int, head: str, body: bytes = b"", timeout: float = 30) -> tuple[int, bytes]:
    """Send ``head`` (request line and headers, CRLF-joined by the caller) and ``body`` on a fresh
    socket; return the status code and the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < _expected_length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


def _expected_length(answer: bytes) -> int:
    head, _, _ = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value.strip())
    return len(answer) + 1


BODY = json.dumps({"user_id": "0", "k": 3}).encode()
MULTIPART = "multipart/form-data; boundary=zz"
# (headers after the request line, expected status): each framing header read one way only
VARIANTS = [
    ([f"Content-Type: {MULTIPART}", "Content-Type: application/json"], 400),
    (["Content-Type: application/json", f"Content-Type: {MULTIPART}"], 400),
    (["Content-Type: application/x-www-form-urlencoded", "Content-Type: application/json"], 400),
    (["Content-Type: application/json", "Content-Type: application/json"], 400),
    (["Content-Type: application/json", "Content-Encoding: gzip", "Content-Encoding: identity"], 400),
    (["Content-Type: application/json", "Content-Encoding: identity", "Content-Encoding: identity"], 400),
    (["Content-Type: application/json", "Content-Encoding: gzip, identity"], 415),
    (["Content-Type: application/x-www-form-urlencoded"], 415),
    ([f"Content-Type: {MULTIPART}"], 415),
]


def _send_variants(port: int, path: str) -> None:
    for headers, expected in VARIANTS:
        head = "\r\n".join([f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(BODY)}", *headers])
        status, answer = raw_request(port, head, BODY)
        assert status == expected, (path, headers, answer[:400])
        error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
        if expected == 400:
            assert "duplicate" in error or "both" in error, error
    # two different Content-Length headers: h11 refuses them before the app (equal ones it reads as one)
    head = "\r\n".join(
        [
            f"POST {path} HTTP/1.1",
            "Host: x",
            "Content-Type: application/json",
            f"Content-Length: {len(BODY)}",
            f"Content-Length: {len(BODY) + 1}",
        ]
    )
    status, answer = raw_request(port, head, BODY)
    assert status == 400, answer[:400]
    # duplicate JSON keys, at the top and deeper
    for body, key in (
        (b'{"user_id": "0", "user_id": "1"}', "user_id"),
        (b'{"queries": [{"user_id": "0", "k": 2, "k": 3}]}', "k"),
    ):
        head = "\r\n".join(
            [f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json", f"Content-Length: {len(body)}"]
        )
        status, answer = raw_request(port, head, body)
        assert status == 400, answer[:400]
        assert f"{key}: duplicate key" in json.loads(answer.partition(b"\r\n\r\n")[2])["error"]


@pytest.fixture(scope="module")
def server(tiny_mf_artifact):
    with running_server(
        tiny_mf_artifact, SPARSEREC_HEADER_TIMEOUT_S=TIMEOUT_S, SPARSEREC_BODY_TIMEOUT_S=TIMEOUT_S
    ) as running:
        yield running


@pytest.fixture(scope="module")
def parts(tiny_mf_artifact):
    return split_artifact(tiny_mf_artifact, 2, progress=False)


def _start_sharded(artifact: Path, host: str = "127.0.0.1") -> ServerProcess:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "serving",
        "--artifact",
        str(artifact),
        "--shards",
        "2",
        "--threads",
        "1",
        "--port",
        str(port),
        "--host",
        host,
    ]
    return ServerProcess(command, server_env(artifact), port)


def _listening(pid: int) -> set[str]:
    """The addresses ``pid`` listens on (TCP)."""
    return {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


def test_duplicate_headers_and_keys_refused_by_the_server(server):
    _send_variants(server.port, "/recommend")
    _send_variants(server.port, "/recommend_batch")
    assert httpx.post(server.url + "/recommend", json={"user_id": "0", "k": 3}).status_code == 200


def test_rejected_requests_log_one_short_line_each_at_most(server, tiny_mf_artifact):
    """200 bad requests of a few kinds: the log grows by <= 300 bytes a request, no traceback."""
    bad = [{"user_id": "0", "k": 100000}, {"user_id": 5}, {"nope": 1}, {"user_id": "0", "k": "3"}]
    before = server.log_path.stat().st_size
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(200):
            assert client.post("/recommend", json=bad[i % len(bad)]).status_code == 400
        time.sleep(1.0)  # the worker's log lines reach the file
    grown = server.log_path.read_bytes()[before:]
    assert len(grown) <= 300 * 200, grown[-3000:].decode(errors="replace")
    assert b"Traceback" not in grown and b"ERROR" not in grown, grown[-3000:].decode(errors="replace")
    assert b"suppressed" in grown or grown.count(b"400 /recommend") <= 4 * 5 + 4


def test_half_sent_requests_are_dropped_and_others_answered(server):
    """A head that never ends, and a body that never ends: the server closes the first after the
    header timeout, answers the second 408 after the body timeout; another client meanwhile gets
    its answer at once."""
    limit = float(TIMEOUT_S)
    idle = socket.create_connection(("127.0.0.1", server.port))
    half_head = socket.create_connection(("127.0.0.1", server.port))
    half_body = socket.create_connection(("127.0.0.1", server.port))
    try:
        started = time.monotonic()
        half_head.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Ty")
        half_body.sendall(
            b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"user_id": '
        )
        answered = httpx.post(server.url + "/recommend", json={"user_id": "0", "k": 2}, timeout=30)
        assert answered.status_code == 200
        assert time.monotonic() - started < limit  # not held behind the slow ones
        for sock in (idle, half_head, half_body):
            sock.settimeout(limit + 10)
        assert half_head.recv(1024) == b""  # closed without an answer
        assert idle.recv(1024) == b""
        answer = b""
        while chunk := half_body.recv(65536):  # headers and body may come in separate segments
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"SPARSEREC_BODY_TIMEOUT_S" in answer
        assert time.monotonic() - started < limit + 8
    finally:
        for sock in (idle, half_head, half_body):
            sock.close()


def test_router_validates_like_the_server_and_refuses_duplicates(parts, tiny_mf_artifact, server):
    """Also: with --host 0.0.0.0 the deployment becomes ready and only the router takes that
    address; the shards listen on 127.0.0.1."""
    n_items = load_artifact(tiny_mf_artifact).n_items
    sharded = _start_sharded(tiny_mf_artifact, host="0.0.0.0")
    try:
        sharded.wait_ready(240)
        members = _deployment(sharded)
        assert "0.0.0.0" in _listening(members["router"][0].pid)  # (its arbiter's control sockets: 127.0.0.1)
        shard_pids = [group[0].pid for role, group in members.items() if role.startswith("shard")]
        assert len(shard_pids) == 2 and all(_listening(pid) == {"127.0.0.1"} for pid in shard_pids)
        _send_variants(sharded.port, "/recommend")
        _send_variants(sharded.port, "/recommend_batch")
        for k in (n_items + 1, 1000):
            query = {"user_id": "0", "k": k}
            via_router = httpx.post(sharded.url + "/recommend", json=query, timeout=30)
            direct = httpx.post(server.url + "/recommend", json=query, timeout=30)
            assert via_router.status_code == direct.status_code == 400, via_router.text
            assert via_router.json() == direct.json()
            batch = httpx.post(sharded.url + "/recommend_batch", json={"queries": [query]}, timeout=30)
            assert batch.status_code == 400 and "k" in batch.json()["error"]
        # a 4xx only a shard finds is passed on as that 4xx (not 503)
        assert httpx.post(sharded.url + "/recommend", json={"user_id": "0", "k": n_items}).status_code == 200
    finally:
        sharded.stop()


def _fail_to_start(artifact: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving", "--artifact", str(artifact), "--shards", "2", "--port", str(free_port())],
        env=server_env(artifact),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_parts_that_do_not_belong_together_exit_2_naming_the_part(tiny_mf_artifact, tiny_mf_run, tmp_path):
    mine = tmp_path / "mine"
    shutil.copytree(tiny_mf_artifact, mine, ignore=shutil.ignore_patterns("shards"))
    split_artifact(mine, 2, progress=False)
    verify_shard_set(mine, 2)
    other = tmp_path / "other"
    run_cli(
        "-m",
        "export",
        str(tiny_mf_run),
        "--out",
        str(other),
        "--index",
        "sparse",
        "--no-memory",
        "--quiet",
        cwd=tmp_path,
    )
    split_artifact(other, 2, progress=False)
    first, second = shard_paths(mine, 2)
    # a part copied over another's name
    saved = tmp_path / "saved"
    shutil.move(second, saved)
    shutil.copytree(first, second)
    done = _fail_to_start(mine)
    assert done.returncode == 2, done.stderr[-2000:]
    assert str(second) in done.stderr and "part 0 of 2" in done.stderr, done.stderr[-2000:]
    # a part from another export
    shutil.rmtree(second)
    shutil.copytree(shard_paths(other, 2)[1], second)
    done = _fail_to_start(mine)
    assert done.returncode == 2, done.stderr[-2000:]
    assert str(second) in done.stderr and "another export" in done.stderr, done.stderr[-2000:]
    shutil.rmtree(second)
    shutil.move(saved, second)
    verify_shard_set(mine, 2)


def _deployment(launcher: ServerProcess) -> dict[str, list[psutil.Process]]:
    """The launcher, the router's tree and each shard's tree, by PID."""
    root = psutil.Process(launcher.process.pid)
    children = root.children()
    tree = {"launcher": [root]}
    for child in children:
        role = "router" if "serving.router:ShardRouter" in " ".join(child.cmdline()) else f"shard {child.pid}"
        tree[role] = [child] + child.children(recursive=True)
    return tree


@pytest.mark.parametrize("victim", ["launcher", "router", "shard"])
def test_kill_9_of_any_process_leaves_nothing_running(parts, tiny_mf_artifact, victim):
    sharded = _start_sharded(tiny_mf_artifact)
    try:
        sharded.wait_ready(240)
        tree = _deployment(sharded)
        everything = [p for group in tree.values() for p in group]
        assert len(tree) == 4 and all(len(tree[k]) >= 2 for k in tree if k != "launcher"), tree
        shard_trees = [group for role, group in tree.items() if role.startswith("shard")]
        target = {"launcher": tree["launcher"][0], "router": tree["router"][0], "shard": shard_trees[0][0]}[victim]
        target.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(p) for p in everything):
            time.sleep(0.1)
        left = [(p.pid, p.cmdline()[:6]) for p in everything if alive(p)]
        assert not left, left
    finally:
        sharded.stop(grace=2)


def test_exports_remove_their_own_stale_partials_only(tiny_mf_run, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "art"
    stale = [tmp_path / f".art.partial-{dead.pid}-0123abcd", tmp_path / ".art.partial-89abcdef"]
    kept = [
        tmp_path / f".art.partial-{os.getppid()}-0123abcd",  # a live process: an export still running
        tmp_path / f".art2.partial-{dead.pid}-0123abcd",  # another target
        tmp_path / f".art.partial-x.partial-{dead.pid}-0123abcd",  # the target "art.partial-x"
        tmp_path / ".other.partial-89abcdef",
    ]
    for folder in stale + kept:
        folder.mkdir()
        (folder / "manifest.json").write_text("{}")
    run_cli("-m", "export", str(tiny_mf_run), "--out", str(out), "--no-memory", "--quiet", cwd=tmp_path)
    assert (out / "manifest.json").is_file()
    assert not any(folder.exists() for folder in stale)
    assert all(folder.is_dir() for folder in kept)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".art.partial-") and p not in kept]
    assert remove_stale_partials(tmp_path / "missing-parent" / "x") == []
