"""benchmarks.export.sparse_index: the sparse index timed beside flat on an exported artifact (a table
with each rounding; no timing asserted)."""

from __future__ import annotations

import pytest

from export_models import export_tiny as export
from export_models import prefix_model, sparse_model


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """MF with prefix masks and with random masks, each exported with --index sparse."""
    root = tmp_path_factory.mktemp("sparse-index-bench")
    prefix, prefix_seen = prefix_model("mf", seed=2)
    random, random_seen = sparse_model("mf", seed=3)
    return {
        "prefix": export(prefix, prefix_seen, root / "prefix", index="sparse"),
        "postings": export(random, random_seen, root / "postings", index="sparse"),
    }


def test_compare_cli_times_each_rounding_beside_flat(artifacts, capsys):
    from benchmarks.export.sparse_index import main

    assert main([str(artifacts["prefix"]), "--round-to", "1,4", "--users", "10"]) == 0
    table = capsys.readouterr().out
    assert "sparse prefix round_to=1" in table and "sparse prefix round_to=4" in table and "| flat |" in table
    assert main([str(artifacts["postings"]), "--users", "10"]) == 0
    assert "sparse gaps" in capsys.readouterr().out
