"""Serving settings and request schemas, in-process (no server)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from serving.cli import build_parser, server_env
from serving.config import ConfigError, ServeConfig
from serving.schemas import EXAMPLE_QUERY, EXAMPLE_QUERY_FILE, LIMITS, BatchRequest, RecommendRequest


def test_defaults_from_env():
    config = ServeConfig.from_env({"SPARSEREC_ARTIFACT": "artifacts/x", "SPARSEREC_WORKERS": "2"})
    assert (config.device, config.workers, config.max_k, config.max_batch) == ("cpu", 2, 1000, 256)
    assert config.threads >= 1
    assert (config.batch_max_size, config.batch_max_latency_ms) == (64, 60000)
    # shedding is off unless asked for; every 503 says when to come back
    assert (config.shed_in_flight, config.retry_after_s, config.max_body_bytes) == (0, 1, 1 << 20)
    assert config.batch_route == "auto"
    assert (config.header_timeout_s, config.body_timeout_s) == (10.0, 30.0)


def test_import_time_settings_need_no_artifact():
    """The service module reads workers, batching, shedding and the body limit when imported
    (`bentoml build` imports it without an artifact); a bad one still fails naming it."""
    config = ServeConfig.import_time({"SPARSEREC_SHED_IN_FLIGHT": "8", "SPARSEREC_RETRY_AFTER_S": "3"})
    assert (config.shed_in_flight, config.retry_after_s) == (8, 3)
    with pytest.raises(ConfigError, match="SPARSEREC_SHED_IN_FLIGHT"):
        ServeConfig.import_time({"SPARSEREC_SHED_IN_FLIGHT": "-1"})


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "SPARSEREC_ARTIFACT"),
        ({"SPARSEREC_ARTIFACT": "a", "SPARSEREC_THREADS": "two"}, "SPARSEREC_THREADS"),
        ({"SPARSEREC_ARTIFACT": "a", "SPARSEREC_MAX_K": "0"}, "SPARSEREC_MAX_K"),
        ({"SPARSEREC_ARTIFACT": "a", "SPARSEREC_BATCH_MAX_SIZE": "1"}, "SPARSEREC_BATCH_MAX_SIZE"),
        ({"SPARSEREC_ARTIFACT": "a", "SPARSEREC_DEVICE": "tpu"}, "SPARSEREC_DEVICE"),
        ({"SPARSEREC_ARTIFACT": "a", "SPARSEREC_RETRY_AFTER_S": "0"}, "SPARSEREC_RETRY_AFTER_S"),
        ({"SPARSEREC_ARTIFACT": "a", "SPARSEREC_BATCH_ROUTE": "sometimes"}, "SPARSEREC_BATCH_ROUTE"),
        ({"SPARSEREC_ARTIFACT": "a", "SPARSEREC_MAX_BODY_BYTES": "10"}, "SPARSEREC_MAX_BODY_BYTES"),
        ({"SPARSEREC_ARTIFACT": "a", "SPARSEREC_HEADER_TIMEOUT_S": "0"}, "SPARSEREC_HEADER_TIMEOUT_S"),
        ({"SPARSEREC_ARTIFACT": "a", "SPARSEREC_BODY_TIMEOUT_S": "soon"}, "SPARSEREC_BODY_TIMEOUT_S"),
    ],
)
def test_bad_settings_fail_naming_the_variable(env, named):
    with pytest.raises(ConfigError, match=named):
        ServeConfig.from_env(env)


def test_cli_pins_thread_pools_and_binds_localhost():
    args = build_parser().parse_args(["--artifact", "artifacts/x", "--workers", "2", "--threads", "3"])
    assert args.host == "127.0.0.1" and args.port == 3000
    env = server_env(args, base={})
    assert env["SPARSEREC_WORKERS"] == "2" and env["SPARSEREC_THREADS"] == "3"
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert env["SPARSEREC_ARTIFACT"].endswith("artifacts/x")


def test_example_query_file_is_a_valid_request():
    assert json.loads(EXAMPLE_QUERY_FILE.read_text()) == EXAMPLE_QUERY
    RecommendRequest.model_validate(EXAMPLE_QUERY)


def test_limits_are_read_at_validation_time(monkeypatch):
    monkeypatch.setattr(LIMITS, "max_k", 5)
    monkeypatch.setattr(LIMITS, "max_batch", 2)
    RecommendRequest.model_validate({"user_id": "1", "k": 5})
    with pytest.raises(ValidationError, match="k must be <= 5"):
        RecommendRequest.model_validate({"user_id": "1", "k": 6})
    with pytest.raises(ValidationError, match="at most 2 queries"):
        BatchRequest.model_validate({"queries": [{"user_id": "1"}] * 3})


def test_read_timeouts_reach_the_guard_and_uvicorn():
    """The timeouts read from the environment are the ones the service hands its guard and its
    uvicorn protocol (as each worker does at import)."""
    from uvicorn.config import HTTP_PROTOCOLS

    from serving.guard import RequestGuard
    from serving.header_timeout import HeaderTimeoutH11Protocol, install_header_timeout

    config = ServeConfig.import_time({"SPARSEREC_HEADER_TIMEOUT_S": "2.5", "SPARSEREC_BODY_TIMEOUT_S": "4"})
    before = HeaderTimeoutH11Protocol.header_timeout_s
    try:
        install_header_timeout(config.header_timeout_s)
        assert HeaderTimeoutH11Protocol.header_timeout_s == 2.5
        assert HTTP_PROTOCOLS["h11"].endswith(":HeaderTimeoutH11Protocol")
    finally:
        install_header_timeout(before)
    assert (
        RequestGuard(lambda *a: None, max_body_bytes=2048, body_timeout_s=config.body_timeout_s).body_timeout_s == 4.0
    )
    assert RequestGuard(lambda *a: None, max_body_bytes=2048).body_timeout_s == ServeConfig("-").body_timeout_s


def test_metrics_folders_of_servers_no_longer_running_are_removed(tmp_path):
    """serving.bentoml_serve names each server's metrics folder <pid>-<start time>: a folder whose
    process is gone, or whose pid now belongs to a later process, is removed; a live one stays."""
    import subprocess
    import sys

    from serving.bentoml_serve import metrics_dir, remove_stale

    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    live = tmp_path / metrics_dir().name  # this process: running
    gone = tmp_path / f"{done.pid}-1"  # an exited process (or a reused pid with another start time)
    reused = tmp_path / f"{metrics_dir().name.split('-')[0]}-1"  # this pid, another start time
    other = tmp_path / "not-a-server"  # not ours to remove
    for path in (live, gone, reused, other):
        path.mkdir()
    assert sorted(remove_stale(tmp_path)) == sorted([gone, reused])
    assert live.is_dir() and other.is_dir() and not gone.exists() and not reused.exists()
