"""benchmarks.inference.postings: bytes-only run on a small catalogue (no timing asserted)."""

from __future__ import annotations

import json

from benchmarks.inference.postings import LAYOUTS, main


def test_bytes_only_run_writes_every_layout_exact_and_counted(tmp_path):
    assert main(["--items", "3000", "--users", "40", "--densities", "0.1", "--bytes-only", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "postings.json").read_text())
    rows = {row["layout"]: row for row in record["rows"]}
    assert set(rows) == set(LAYOUTS) and record["timed"] is False
    assert all(row["recall@20"] == 1.0 for row in rows.values())
    assert rows["small-dense"]["index_bytes"] == 3000 * 6 * 4 and rows["postings"]["index_bytes_per_nnz"] >= 8.0
    assert (
        rows["gaps"]["nnz"] == rows["postings"]["nnz"] and rows["gaps"]["index_bytes"] < rows["postings"]["index_bytes"]
    )
    for row in rows.values():
        assert row["served_bytes"] == row["index_bytes"] + row["user_bytes"] + row["id_map_bytes"]
    # the sparse layouts' users are held compressed, below their dense float32 rows
    assert rows["small-dense"]["user_bytes"] == 40 * 6 * 4
    assert all(0 < rows[layout]["user_bytes"] < 40 * 64 * 4 for layout in ("prefix", "postings", "gaps"))
    assert "gaps" in (tmp_path / "postings.md").read_text()
