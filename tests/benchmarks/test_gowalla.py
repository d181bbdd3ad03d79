"""The Gowalla quality driver: its grid, and a killed run that resumes where it stopped."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.quality.gowalla.spec import grid
from train.checkpoint import CHECKPOINT

SMALL = [
    "--data",
    "synthetic",
    "--models",
    "mf",
    "--set",
    "run.threads=1",
    "--set",
    "data.n_users=600",
    "--set",
    "data.n_items=800",
    "--set",
    "run.eval_every=1",
    "--set",
    "run.patience=100",
    "--set",
    "run.min_epochs=0",
]


def test_grid_runs_cheap_mf_first_with_seeds_and_rivals():
    runs = grid(["mf", "lightgcn"], "dsl-mixed")
    names = [r.name for r in runs]
    assert len(names) == len(set(names))
    models = [r.model for r in runs]
    assert models == sorted(models, key=lambda m: m != "mf")  # every MF run before any LightGCN run
    mf = [r for r in runs if r.model == "mf"]
    for density in (0.2, 0.1, 0.05):
        methods = {r.updater for r in mf if r.density == density and r.seed == 2024}
        assert methods == {"small-dense", "static", "dsl", "dsl-nested", "dsl-mixed", "dsl-nmf", "prune-finetune"}
    assert {(r.updater, r.density) for r in mf if r.seed == 2025} == {
        ("small-dense", 0.1),
        ("dsl-nmf", 0.1),
        ("small-dense", 0.05),
        ("dsl-nmf", 0.05),
    }
    order = [r.name for r in mf]  # both seeds of the rival and the lead variant before the other variants
    assert order.index("mf-dsl-nmf-0.05-s2025") < order.index("mf-dsl-0.1") < order.index("mf-small-dense-0.2")
    assert [(r.updater, r.density) for r in runs if r.mask_output] == [("dsl-mixed", 0.1)]  # option (c) beside it
    assert "lightgcn-dsl-mixed-0.1-mask-output" in names
    lightgcn = {(r.updater, r.density) for r in runs if r.model == "lightgcn"}
    assert lightgcn == {("dense", 1.0), ("static", 0.1)} | {
        (u, d) for u in ("small-dense", "dsl-mixed") for d in (0.2, 0.1, 0.05)
    }
    assert [(r.updater, r.density) for r in runs if r.model == "lightgcn" and r.seed == 2025] == [
        ("small-dense", 0.2),
        ("dsl-mixed", 0.2),
    ]  # the narrowest LightGCN cell's spread, after the rest
    assert names[-2:] == ["lightgcn-small-dense-0.2-s2025", "lightgcn-dsl-mixed-0.2-s2025"]


@pytest.mark.slow
def test_killed_run_resumes_where_it_stopped(tmp_path):
    args = [
        sys.executable,
        "-m",
        "benchmarks.quality.gowalla",
        *SMALL,
        "--epochs",
        "mf=12",
        "--only",
        "mf-dense",
        "--runs",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "results"),
    ]
    run = tmp_path / "runs" / "mf-dense"
    driver = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (run / CHECKPOINT).exists() and driver.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert driver.poll() is None, "the run finished before it could be stopped"
    child = json.loads((run / "running.json").read_text())["pid"]
    driver.send_signal(signal.SIGTERM)  # the driver stops its training process too
    driver.wait(timeout=120)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert not (run / "metrics.json").exists() and not (run / "running.json").exists()

    subprocess.run(args + ["--report-only"], check=True, capture_output=True, timeout=300)
    report = json.loads((tmp_path / "results" / "quality-gowalla.json").read_text())
    [record] = [r for r in report["records"] if r["name"] == "mf-dense"]
    assert record["status"] == "stopped" and 1 <= record["epoch_reached"] < 12
    pending = [r for r in report["records"] if r["name"] != "mf-dense"]
    assert pending and all(r["status"] == "pending" for r in pending)
    assert "pending" in (tmp_path / "results" / "quality-gowalla.md").read_text()

    subprocess.run(args, check=True, capture_output=True, timeout=900)
    log = (run / "train.log").read_text()
    segments = [line.split()[3] for line in log.splitlines() if line.startswith("# ")]
    assert segments == ["start:", "resume:"] and "resumed from" in log
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 12
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, 13))  # no epoch lost or repeated
    report = json.loads((tmp_path / "results" / "quality-gowalla.json").read_text())
    [record] = [r for r in report["records"] if r["name"] == "mf-dense"]
    assert record["status"] == "done" and len(json.loads((run / "wall.json").read_text())["segments"]) == 2
    assert (tmp_path / "results" / "quality-gowalla.png").stat().st_size > 10_000


def _done(name, lr, std, wd, sampling, ndcg):
    return {
        "name": name,
        "lr": lr,
        "init_std": std,
        "weight_decay": wd,
        "sampling": sampling,
        "status": "done",
        "valid_ndcg@20": ndcg,
        "valid_recall@20": 2 * ndcg,
        "best_epoch": 10,
        "epochs": 20,
    }


def test_mf_sweep_stages_choose_lr_then_init_then_climb_weight_decay(tmp_path):
    from benchmarks.quality.gowalla.sweep import mf_settings, sweep_stage, write_sweep

    stage1 = sweep_stage([])
    assert [p[1] for p in stage1] == ["2e-3", "5e-3", "1e-2"] and {p[3] for p in stage1} == {"1e-4"}
    records = [_done(*p, score) for p, score in zip(stage1, (0.05, 0.07, 0.06))]
    [stage2] = sweep_stage(records)[3:]
    assert stage2[1:] == ("5e-3", "0.01", "1e-4", "interaction")
    records.append(_done(*stage2, 0.065))  # init_std 0.1 stays
    stage3 = sweep_stage(records)[4:]
    assert [p[1:] for p in stage3] == [("5e-3", "0.1", wd, "interaction") for wd in ("1e-4", "1e-3", "1e-2")]
    records += [_done(*p, score) for p, score in zip(stage3, (0.06, 0.07, 0.08))]  # the largest wins: climb
    assert sweep_stage(records)[-1][3] == "3e-2"
    records.append(_done(*sweep_stage(records)[-1], 0.075))  # 3e-2 loses: stop climbing
    stage4 = sweep_stage(records)[-1]
    assert stage4[1:] == ("1e-3", "0.1", "1e-2", "interaction")  # the reference lr at the chosen decay
    records.append(_done(*stage4, 0.079))
    # stage 5, from the best long run (stage 3's wd 1e-2 at 0.08): users drawn uniformly; a smaller init
    user, init = sweep_stage(records)[-2:]
    assert user == ("mf-lr5e-3-std0.1-wd1e-2-user", "5e-3", "0.1", "1e-2", "user")
    assert init == ("mf-lr5e-3-std0.01-wd1e-2", "5e-3", "0.01", "1e-2", "interaction")
    records += [_done(*user, 0.078), _done(*init, 0.081)]  # the smaller init wins: step down again
    assert sweep_stage(records)[-1] == ("mf-lr5e-3-std1e-3-wd1e-2", "5e-3", "1e-3", "1e-2", "interaction")
    records.append(_done(*sweep_stage(records)[-1], 0.0805))  # 1e-3 loses: the sweep is complete
    assert len(sweep_stage(records)) == len(records)

    write_sweep(records, {"command": "test"}, tmp_path, complete=True)
    settings = mf_settings(tmp_path / "sweeps" / "gowalla-mf-sweep.json")[0]
    assert settings == [
        "optim.lr=5e-3",
        "model.init_std=0.01",
        "optim.weight_decay=1e-2",
        "optim.sampling=interaction",
    ]  # a long run chose; the user sampler lost
    assert "**chosen**" in (tmp_path / "sweeps" / "gowalla-mf-sweep.md").read_text()


def test_a_run_folder_counts_wherever_it_is_named_from_but_not_with_other_flags(tmp_path):
    from benchmarks.quality.grid import made_with
    from train.config import load_config

    out = tmp_path / "runs" / "mf-dense"
    out.mkdir(parents=True)
    saved = load_config(overrides=[f"run.out={out.resolve()}", "model.name=mf", "run.threads=1"])
    (out / "config.json").write_text(json.dumps(saved.to_dict()))
    relative = load_config(overrides=["run.out=runs/mf-dense", "model.name=mf", "run.threads=1"])
    assert made_with(out, relative)  # an absolute or a relative path to the same folder
    assert not made_with(out, load_config(overrides=["run.out=runs/mf-dense", "model.name=mf", "run.threads=2"]))
    assert not made_with(out, load_config(overrides=["run.out=runs/mf-dense", "model.name=lightgcn", "run.threads=1"]))
    # where it trained is not what it is: a run folder trained on a GPU counts in a table built on a CPU
    on_gpu = load_config(overrides=[f"run.out={out}", "model.name=mf", "run.threads=1", "run.device=cuda"])
    (out / "config.json").write_text(json.dumps(on_gpu.to_dict()))
    assert made_with(out, relative)


def test_the_table_marks_a_run_trained_on_a_gpu(tmp_path):
    from benchmarks.quality.gowalla.report import markdown
    from benchmarks.quality.gowalla.verdicts import done_label

    def rec(updater, test, device=None):
        r = {
            "model": "mf",
            "density": 0.1 if updater != "dense" else 1.0,
            "updater": updater,
            "seed": 2024,
            "status": "done",
            "test_ndcg@20": test,
            "test_recall@20": test,
            "valid_ndcg@20": test,
            "nnz": 10,
            "n_params_dense": 100,
            "best_epoch": 5,
            "epochs": 10,
            "wall_seconds": 1.0,
            "seconds_per_epoch": 0.1,
            "peak_rss_mb": 1.0,
            "dim": 6,
            "curve": [],
        }
        if device:
            r["device"] = device
        return r

    records = [rec("dense", 0.12), rec("small-dense", 0.08), rec("static", 0.01, "cuda (NVIDIA H200)")]
    assert done_label(records[1]) == "done" and done_label(records[2]) == "done, GPU"
    text = markdown(records, {"command": "test", "commit": "0" * 40}, "dsl-nmf")
    [static] = [line for line in text.splitlines() if line.startswith("| mf | 0.1 | static |")]
    assert static.rstrip().endswith("| done, GPU |")
    assert "`cuda (NVIDIA H200)`" in text


def test_wall_time_counts_a_segment_that_ended_with_the_machine(tmp_path):
    from benchmarks.quality.gowalla.logs import record_of, segments_from_log
    from benchmarks.quality.gowalla.spec import Run

    out = tmp_path / "run"
    out.mkdir()
    (out / "train.log").write_text(
        "# 2026-11-30 10:00:00 start: python -m train\n"
        "2026-11-30 10:00:05,100 INFO sparserec.train: data\n"
        '2026-11-30 10:30:00,000 INFO sparserec.train: {"event": "eval", "epoch": 5, "valid": {}}\n'
        "traceback lines without a time\n"
        "# 2026-11-30 12:00:00 resume: python -m train --resume\n"
        "2026-11-30 12:10:00,500 INFO sparserec.train: done\n"
    )
    assert segments_from_log(out) == [1800.0, 600.0]
    (out / "wall.json").write_text(json.dumps({"segments": [601.0]}))  # the driver saw only the second
    record = record_of(Run("mf", "dense", 1.0), {"status": "stopped"}, out)
    assert record["wall_seconds"] == 2400.0 and record["wall_from"] == "train.log"
    (out / "wall.json").write_text(json.dumps({"segments": [1801.0, 601.0]}))  # both recorded: wall.json wins
    assert record_of(Run("mf", "dense", 1.0), {"status": "stopped"}, out)["wall_seconds"] == 2402.0


def test_dsl_nmf_is_dsl_with_the_nmf_mask_and_a_candidate_variant():
    from benchmarks.quality.gowalla.spec import Run, grid, train_overrides

    run = Run("mf", "dsl-nmf", 0.1)
    overrides = train_overrides(run, "gowalla", Path("runs/x"), 10, [], [])
    assert "sparsity.updater=dsl" in overrides and "sparsity.mask_init=nmf" in overrides
    assert run.name == "mf-dsl-nmf-0.1" and run.name in {r.name for r in grid(["mf"])}
    lightgcn = [r.name for r in grid(["lightgcn"], "dsl-nmf")]
    assert "lightgcn-dsl-nmf-0.05" in lightgcn and "lightgcn-dsl-mixed-0.1" not in lightgcn
    assert [r.name for r in grid(["lightgcn"])] == lightgcn  # the default variant, chosen on ML-100K valid
    assert "sparsity.mask_init=nmf" not in train_overrides(Run("mf", "dense", 1.0), "gowalla", Path("x"), 1, [], [])


def test_verdict_uses_the_chosen_variants_seeds_and_says_when_it_is_provisional():
    from benchmarks.quality.gowalla.verdicts import verdicts

    def rec(updater, seed, test, valid=0.05, status="done"):
        return {
            "model": "mf",
            "density": 0.1,
            "updater": updater,
            "seed": seed,
            "status": status,
            "test_ndcg@20": test,
            "valid_ndcg@20": valid,
        }

    records = [
        rec("small-dense", 2024, 0.080),
        rec("small-dense", 2025, 0.078),
        rec("dsl-nmf", 2024, 0.090, 0.056),
        rec("dsl-nmf", 2025, 0.089, 0.055),
        rec("dsl", 2024, 0.070, 0.040),
        rec("dsl-nested", 2024, None, None, "pending"),
    ]
    [row] = [line for line in verdicts(records) if line.startswith("| mf | 0.1 |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "dsl-nmf" and cells[5] == "+0.0100" and cells[6] == "0.0010, 0.0020"
    assert cells[7] == "DSL wins (provisional: best on valid so far, 2 of 3 variants)"
    records[-1] = rec("dsl-nested", 2024, 0.085, 0.050)
    [row] = [line for line in verdicts(records) if line.startswith("| mf | 0.1 |")]
    assert row.rstrip().endswith("| DSL wins |")
    # one seed of the variant: its spread is not measured, so the stand-in (0.0035) counts, not only
    # small-dense's measured 0.0001
    records = [rec("small-dense", 2024, 0.080), rec("small-dense", 2025, 0.0801), rec("dsl-nmf", 2024, 0.0830)]
    [row] = [line for line in verdicts(records) if line.startswith("| mf | 0.1 |")]
    assert "| +0.0030 | -, 0.0001 | within the spread |" in row


def test_the_table_says_whether_lightgcn_at_0_2_keeps_95_percent_of_dense():
    from benchmarks.quality.gowalla.verdicts import keep_dense_line

    def rec(updater, density, test, status="done"):
        return {
            "model": "lightgcn",
            "density": density,
            "updater": updater,
            "seed": 2024,
            "status": status,
            "test_ndcg@20": test,
            "valid_ndcg@20": test,
        }

    records = [rec("dense", 1.0, 0.1450), rec("small-dense", 0.2, 0.1212), rec("dsl-nmf", 0.2, None, "running")]
    assert keep_dense_line(records)[0].endswith(": pending.")
    records[-1] = rec("dsl-nmf", 0.2, 0.1256)
    line = keep_dense_line(records)[0]
    assert "0.1256 against dense 0.1450 = 86.6%, **missed**" in line and "small-dense keeps 83.6%" in line
    records[-1] = rec("dsl-nmf", 0.2, 0.1378)
    assert "= 95.0%, **met**" in keep_dense_line(records)[0]
