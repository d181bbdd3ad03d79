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
    assert (config.batch_max_size, config.batch_max_latency_ms) == (64, 500)


@pytest.mark.parametrize(("env", "named"), [
    ({}, "SPARSEREC_ARTIFACT"),
    ({"SPARSEREC_ARTIFACT": "a", "SPARSEREC_THREADS": "two"}, "SPARSEREC_THREADS"),
    ({"SPARSEREC_ARTIFACT": "a", "SPARSEREC_MAX_K": "0"}, "SPARSEREC_MAX_K"),
    ({"SPARSEREC_ARTIFACT": "a", "SPARSEREC_BATCH_MAX_SIZE": "1"}, "SPARSEREC_BATCH_MAX_SIZE"),
    ({"SPARSEREC_ARTIFACT": "a", "SPARSEREC_DEVICE": "tpu"}, "SPARSEREC_DEVICE"),
])
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
