"""benchmarks.training.data_read: the large-CSV read timing writes its results (no timing asserted)."""

import json


def test_bench_read_writes_its_results(tmp_path):
    from benchmarks.training import data_read as bench_read

    assert bench_read.main(["--rows", "3000", "--repeats", "1", "--results", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "data-read.json").read_text())
    assert record["files"]["plain"]["rows"] == record["files"]["quoted"]["rows"] > 2000
    assert record["files"]["quoted"]["bytes"] > record["files"]["plain"]["bytes"]
    assert record["provenance"]["commit"] and "# Reading a large CSV" in (tmp_path / "data-read.md").read_text()
