"""benchmarks.harness: the quiet-machine refusal (load injected, no real load needed), --allow-noisy,
the --set check, repository-relative paths and the Markdown table."""

from __future__ import annotations

import argparse

import pytest

from benchmarks import harness
from common.paths import REPO_ROOT


def record(load_start):
    return {
        "command": "python -m benchmarks.x",
        "commit": "abc",
        "date": "today",
        "machine": {"cpu": "test cpu", "cpus": 2, "load_avg_1m": load_start},
    }


def test_busy_machine_is_refused_for_results(tmp_path):
    results = tmp_path / "results"
    with pytest.raises(
        harness.NoisyMachine, match=r"busy at end \(1-minute load average 1.50 is above half of the 2 CPUs"
    ):
        harness.finish(record(0.4), [results / "x.md"], allow_noisy=False, load=lambda: 1.5, cpus=2, results=results)
    with pytest.raises(
        harness.NoisyMachine, match=r"busy at start \(1-minute load average 3.00"
    ):  # busy when it started, quiet at the end
        harness.finish(record(3.0), [results / "x.json"], allow_noisy=False, load=lambda: 0.1, cpus=2, results=results)


def test_allow_noisy_writes_and_says_noisy(tmp_path):
    results = tmp_path / "results"
    source = harness.finish(
        record(4.0), [results / "x.md"], allow_noisy=True, load=lambda: 5.0, cpus=4, results=results
    )
    assert source["machine"]["load_avg_1m_end"] == 5.0
    assert source["quiet"]["quiet"] is False and source["quiet"]["noisy_allowed"] is True
    line = harness.provenance_line(source)
    assert "**NOISY**" in line and "Load 5.0 at end" in line
    assert "busy at start (1-minute load average 4.00" in line and "at end (1-minute load average 5.00" in line


def test_quiet_machine_writes_and_says_quiet(tmp_path):
    results = tmp_path / "results"
    source = harness.finish(
        record(1.0), [results / "x.md"], allow_noisy=False, load=lambda: 2.0, cpus=4, results=results
    )  # exactly half: quiet
    assert source["quiet"] == {"limit": 2.0, "quiet": True, "reason": ""}
    assert "Quiet machine" in harness.provenance_line(source) and "NOISY" not in harness.provenance_line(source)


def test_outside_results_is_never_refused_but_still_judged(tmp_path):
    source = harness.finish(
        record(9.0),
        [tmp_path / "scratch.md"],
        allow_noisy=False,
        load=lambda: 9.0,
        cpus=2,
        results=tmp_path / "results",
    )
    assert source["quiet"]["quiet"] is False and "noisy_allowed" not in source["quiet"]


def test_the_real_results_folder_is_the_repositorys():
    assert harness.in_results(REPO_ROOT / "results" / "a.md") and not harness.in_results(REPO_ROOT / "runs" / "a")


def test_set_flags_are_checked_once():
    parser = argparse.ArgumentParser()
    harness.add_grid_flags(parser, seed=7)
    args = parser.parse_args(["--set", "run.threads=1", "--set", "sparsity.alpha0=0.1"])
    assert harness.overrides(parser, args) == ["run.threads=1", "sparsity.alpha0=0.1"] and args.seed == 7
    for bad in ("threads=1", "run.threads", ".threads=1"):
        with pytest.raises(SystemExit):
            harness.overrides(parser, parser.parse_args(["--set", bad]))


def test_paths_inside_the_repository_are_written_relative(tmp_path):
    from common.paths import repo_relative

    assert repo_relative(REPO_ROOT / "artifacts" / "demo") == "artifacts/demo"
    assert repo_relative(tmp_path / "a") == str(tmp_path / "a")


def test_markdown_table():
    table = harness.markdown_table(["model", "ms"], [["mf", 1.5], ["lgcn", None]], align="lr")
    assert table.splitlines() == ["| model | ms |", "|---|---:|", "| mf | 1.5 |", "| lgcn |  |"]
    with pytest.raises(ValueError, match="2 columns"):
        harness.markdown_table(["a", "b"], [[1]])
