"""benchmarks.pareto_gowalla on tiny synthetic runs named as two of the front's runs (trained with the
project's CLI through the benchmark's own resumable step, 2 epochs): export, compare, tile and the
three results files in a temp folder; the verdict on a hand-made set; the tiling keeps row lengths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import pareto_gowalla as front
from benchmarks import pareto_report, pareto_tiling
from conftest import TINY_ITEMS, TINY_USERS
from export.artifact import read_manifest

SYNTHETIC = (
    "--data",
    "synthetic",
    "--model",
    "mf",
    "--epochs",
    "2",
    "--seed",
    "1",
    f"--data.n_users={TINY_USERS}",
    f"--data.n_items={TINY_ITEMS}",
    "--run.threads=1",
)


def tiny(name: str) -> front.Run:
    """The front's run ``name`` with the synthetic data's flags instead of Gowalla's."""
    run = next(r for r in front.RUNS if r.name == name)
    updater = (
        ("--sparsity.updater=dsl", "--sparsity.mask_init=nmf")
        if run.kind == "dsl"
        else ("--sparsity.updater=small-dense",)
    )
    return front.Run(
        run.name,
        run.model,
        run.density,
        run.kind,
        (*SYNTHETIC, f"--sparsity.density={run.density:g}", *updater),
        run.width,
    )


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("pareto") / "runs"
    wanted = [tiny("mf-sd-d3"), tiny("mf-dsl-nmf-0.05")]
    front.train_missing(runs, wanted)
    assert all(front.finished(runs / r.name) for r in wanted)
    stamp = (runs / "mf-sd-d3" / "metrics.json").stat().st_mtime_ns
    front.train_missing(runs, wanted)  # finished runs are skipped
    assert (runs / "mf-sd-d3" / "metrics.json").stat().st_mtime_ns == stamp
    return runs


def test_pipeline_exports_compares_tiles_and_writes(tiny_runs, tmp_path):
    artifacts, results = tmp_path / "artifacts", tmp_path / "results"
    code = front.main(
        [
            "--runs",
            str(tiny_runs),
            "--artifacts",
            str(artifacts),
            "--results",
            str(results),
            "--no-train",
            "--allow-noisy",
            "--items",
            str(3 * TINY_ITEMS),
        ]
    )
    assert code == 0
    assert sorted(p.name for p in results.iterdir()) == [
        "pareto-gowalla.json",
        "pareto-gowalla.md",
        "pareto-gowalla.png",
    ]
    result = json.loads((results / "pareto-gowalla.json").read_text())
    names = sorted(p["artifact"] for p in result["points"])
    assert names == [
        "mf-dsl-nmf-0.05.sparse-fp16",
        "mf-dsl-nmf-0.05.sparse-fp32",
        "mf-sd-d3.flat-fp16",
        "mf-sd-d3.flat-fp32",
        "mf-sd-d3.pq-fp32",
        "mf-sd-d3.sq8-fp32",
    ]
    by_name = {p["artifact"]: p for p in result["points"]}
    assert by_name["mf-dsl-nmf-0.05.sparse-fp32"]["index"] == "sparse"
    assert by_name["mf-sd-d3.pq-fp32"]["index_recall_vs_flat"] is not None
    assert all(p["ndcg"] is not None and p["served_bytes"] > 0 and p["p50_ms"] > 0 for p in result["points"])
    # dense fp32 through an exact index: the training run's own test figure over every user
    test = json.loads((tiny_runs / "mf-sd-d3" / "metrics.json").read_text())["test"]
    assert by_name["mf-sd-d3.flat-fp32"]["ndcg"] == pytest.approx(test["ndcg@20"], abs=1e-6)
    assert by_name["mf-sd-d3.flat-fp32"]["recall"] == pytest.approx(test["recall@20"], abs=1e-6)
    # the sparse one: the export's own exact figure (every user here: the catalogue is tiny). Not the training
    # run's: its rows share few dims, so many scores are exactly 0 and the two rankers break those ties apart
    exported = read_manifest(artifacts / "mf-dsl-nmf-0.05.sparse-fp32").quality["exact"]
    assert exported["n_users"] == TINY_USERS
    assert by_name["mf-dsl-nmf-0.05.sparse-fp32"]["ndcg"] == pytest.approx(exported["ndcg@20"], abs=1e-6)
    tiled = {p["artifact"]: p for p in result["points_tiled"]}
    assert sorted(tiled) == names and all(p["n_items"] == 3 * TINY_ITEMS for p in tiled.values())
    assert all(tiled[n]["ndcg"] == by_name[n]["ndcg"] for n in names)  # the source's quality, said so
    assert all(tiled[n]["served_bytes"] > by_name[n]["served_bytes"] for n in names)
    status = {(v["model"], v["density"], v["catalogue"]): v["status"] for v in result["verdicts"]}
    assert status[("mf", 0.1, "gowalla")] == "pending"  # its DSL run was not trained
    assert status[("lightgcn", 0.05, "tiled")] == "pending"
    assert status[("mf", 0.05, "gowalla")] in ("missed", "pending")  # seven widths not trained: never met
    finished = {r["name"] for r in result["runs"] if r["finished"]}
    assert finished == {"mf-sd-d3", "mf-dsl-nmf-0.05"}
    table = (results / "pareto-gowalla.md").read_text()
    assert "NOISY" in table or "Quiet" in table or "Load average" in table
    assert "Quality is not defined at the tiled size" in table and "mf-sd-d2" in table  # a pending run named
    assert (results / "pareto-gowalla.png").read_bytes()[:4] == b"\x89PNG"


def test_no_latency_says_pending_and_refuses_nothing(tiny_runs, tmp_path):
    results = tmp_path / "results"
    code = front.main(
        [
            "--runs",
            str(tiny_runs),
            "--artifacts",
            str(tmp_path / "a"),
            "--results",
            str(results),
            "--no-train",
            "--no-latency",
            "--no-1m",
        ]
    )
    assert code == 0
    result = json.loads((results / "pareto-gowalla.json").read_text())
    assert result["points_tiled"] == [] and all(p["p50_ms"] is None for p in result["points"])
    assert all(v["status"] == "pending" for v in result["verdicts"] if v["catalogue"] == "tiled")
    assert "**Latency pending**" in (results / "pareto-gowalla.md").read_text()
    # a second pass exports nothing again and reuses each artifact's all-user quality (keyed by its manifest)
    kept = {
        p.name: p.stat().st_mtime_ns for p in [*(tmp_path / "a").iterdir(), *(tmp_path / "a" / "quality").iterdir()]
    }
    assert len(kept) == 6 + 1 + 6  # six artifacts, the quality folder, one figure per artifact
    assert (
        front.main(
            [
                "--runs",
                str(tiny_runs),
                "--artifacts",
                str(tmp_path / "a"),
                "--results",
                str(results),
                "--no-train",
                "--no-latency",
                "--no-1m",
            ]
        )
        == 0
    )
    assert {
        p.name: p.stat().st_mtime_ns for p in [*(tmp_path / "a").iterdir(), *(tmp_path / "a" / "quality").iterdir()]
    } == kept
    again = json.loads((results / "pareto-gowalla.json").read_text())
    assert [p["ndcg"] for p in again["points"]] == [p["ndcg"] for p in result["points"]]


def test_busy_machine_refused_before_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(front, "load_average", lambda: 99.0)
    code = front.main(
        [
            "--runs",
            str(tmp_path / "runs"),
            "--artifacts",
            str(tmp_path / "a"),
            "--results",
            str(tmp_path / "results"),
            "--no-train",
        ]
    )
    assert code == 2 and "busy machine" in capsys.readouterr().err
    assert not (tmp_path / "results").exists() and not (tmp_path / "a").exists()


def _point(artifact: str, run: str, kind: str, ndcg: float, cost: float | None, index: str = "flat") -> dict:
    return {"artifact": artifact, "run": run, "kind": kind, "ndcg": ndcg, "served_bytes": cost, "index": index}


def test_verdict_on_hand_made_sets():
    runs = (
        front.Run("m-sd-d2", "mf", 0.03, "small-dense", (), 2),
        front.Run("m-sd-d4", "mf", 0.06, "small-dense", (), 4),
        front.Run("m-dsl", "mf", 0.05, "dsl", ()),
    )
    dsl = runs[2]
    everything = {"m-sd-d2", "m-sd-d4", "m-dsl"}
    on_front = [
        _point("m-dsl.a", "m-dsl", "dsl", 0.070, 100.0),
        _point("m-sd-d2.a", "m-sd-d2", "small-dense", 0.060, 80.0),  # cheaper, worse
        _point("m-sd-d4.a", "m-sd-d4", "small-dense", 0.075, 150.0),  # better, dearer
        _point("m-sd-d4.q", "m-sd-d4", "small-dense", 0.075, 50.0, "pq"),
    ]  # quantised: reported only
    got = pareto_report.verdict(dsl, runs, on_front, everything, "served_bytes")
    assert got["status"] == "met" and got["artifacts"][0]["beaten_by"] == []
    assert got["artifacts"][0]["beaten_by_quantised"] == [("m-sd-d4.q", 0.075, 50.0)]
    beaten = [*on_front[:2], _point("m-sd-d4.a", "m-sd-d4", "small-dense", 0.070, 90.0)]  # equal NDCG, fewer bytes
    got = pareto_report.verdict(dsl, runs, beaten, everything, "served_bytes")
    assert got["status"] == "missed" and got["artifacts"][0]["beaten_by"] == [("m-sd-d4.a", 0.070, 90.0)]
    # the same set with d4 still training: not beaten by d2 alone, so pending (nothing interpolated)
    got = pareto_report.verdict(dsl, runs, beaten[:2], {"m-sd-d2", "m-dsl"}, "served_bytes")
    assert got["status"] == "pending" and got["widths_pending"] == [4]
    # beaten by a finished width while another trains: missed all the same
    got = pareto_report.verdict(
        dsl,
        runs,
        [on_front[0], _point("m-sd-d2.a", "m-sd-d2", "small-dense", 0.08, 10.0)],
        {"m-sd-d2", "m-dsl"},
        "served_bytes",
    )
    assert got["status"] == "missed"
    assert pareto_report.verdict(dsl, runs, on_front[1:], {"m-sd-d2", "m-sd-d4"}, "served_bytes")["status"] == "pending"
    untimed = [_point("m-dsl.a", "m-dsl", "dsl", 0.07, None), *on_front[1:3]]
    assert pareto_report.verdict(dsl, runs, untimed, everything, "served_bytes")["status"] == "pending"
    # one of the DSL run's artifacts unbeaten (fp16, fewer bytes) is enough
    two = [*beaten, _point("m-dsl.b", "m-dsl", "dsl", 0.0699, 60.0)]
    assert pareto_report.verdict(dsl, runs, two, everything, "served_bytes")["status"] == "met"


def test_tiling_keeps_the_row_length_profile(tiny_runs, tmp_path):
    from export.artifact import load_artifact

    source = tmp_path / "src"
    front._subprocess(
        [
            front.sys.executable,
            "-m",
            "export",
            str(tiny_runs / "mf-dsl-nmf-0.05"),
            "--out",
            str(source),
            "--index",
            "sparse",
            "--no-memory",
            "--quiet",
        ]
    )
    n_tiled = 2 * TINY_ITEMS + 17  # a partial last copy too
    out = pareto_tiling.tile_artifact(source, tmp_path / "tiled", n_tiled, seed=3)
    src, tiled = load_artifact(source), load_artifact(out)
    assert tiled.n_items == n_tiled and tiled.n_users == src.n_users
    assert tiled.manifest.index.kind == "sparse" and tiled.manifest.index.layout == src.manifest.index.layout
    assert tiled.manifest.training.config["tiled_from"]["n_items_source"] == src.n_items
    src_lengths = np.diff(src.served_item_table().indptr)
    src_row = {item: row for row, item in enumerate(src.item_ids)}
    rows = np.array([src_row[item.split("#")[0]] for item in tiled.item_ids])
    np.testing.assert_array_equal(np.bincount(rows, minlength=src.n_items)[:17], 3)  # j mod n: 3 copies of the first 17
    np.testing.assert_array_equal(np.diff(tiled.served_item_table().indptr), src_lengths[rows])
    src_items, tiled_items = src.item_vectors(), tiled.item_vectors()
    ratio = np.divide(tiled_items, src_items[rows], out=np.ones_like(tiled_items), where=src_items[rows] != 0)
    assert np.all((tiled_items == 0) == (src_items[rows] == 0))  # zeros stay zeros
    first = np.array(["#" not in item for item in tiled.item_ids])
    np.testing.assert_array_equal(tiled_items[first], src_items[rows[first]])  # the first copy unchanged
    assert np.abs(ratio - 1).max() <= 3 * pareto_tiling.PERTURBATION + 1e-6 and np.abs(ratio[~first] - 1).max() > 0
    np.testing.assert_allclose(tiled.user_vectors(), src.user_vectors())
    again = pareto_tiling.tile_vectors(src_items, n_tiled, seed=3)
    np.testing.assert_array_equal(again, pareto_tiling.tile_vectors(src_items, n_tiled, seed=3))  # seeded
