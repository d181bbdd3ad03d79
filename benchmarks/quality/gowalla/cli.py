"""The command line of the Gowalla grid: `python -m benchmarks.quality.gowalla --help`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.quality import gowalla
from common.provenance import provenance

from .logs import record_of
from .report import write_report
from .spec import DSL_VARIANTS, LIGHTGCN_VARIANT, MODEL_SETTINGS, Run, grid, train_overrides
from .supervise import Child, run_state, train_run
from .sweep import is_long, mf_settings, sweep_epochs, sweep_stage, write_sweep

log = logging.getLogger("sparserec.bench_gowalla")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality.gowalla", description=gowalla.__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data", default="gowalla")
    parser.add_argument("--models", default="mf,lightgcn")
    parser.add_argument("--lightgcn-variant", default=LIGHTGCN_VARIANT, choices=DSL_VARIANTS)
    parser.add_argument(
        "--epochs",
        default="",
        help="epoch caps per model, e.g. mf=60,lightgcn=200 (default: "
        + ", ".join(f"{m}={s['epochs']}" for m, s in MODEL_SETTINGS.items())
        + ")",
    )
    parser.add_argument("--only", default="", help="comma-separated run names to train (the rest are reported)")
    parser.add_argument("--report-only", action="store_true", help="train nothing; rebuild the table")
    parser.add_argument("--sweep-mf", action="store_true", help="the MF lr / init_std sweep on valid instead")
    parser.add_argument("--sweep-epochs", type=int, default=4)
    parser.add_argument("--results", default="results")
    parser.add_argument("--runs", default="runs/bench-gowalla", help="folder of the run folders")
    harness.add_grid_flags(
        parser, seed=None, set_help="extra config override for every run (repeatable), e.g. run.threads=1"
    )
    args = parser.parse_args(argv)
    args.set = harness.overrides(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, Child.stop)
    signal.signal(signal.SIGINT, Child.stop)
    source = provenance(None if argv is None else ["python", "-m", "benchmarks.quality.gowalla", *argv])
    results, runs_dir = Path(args.results), Path(args.runs)
    caps = {m: s["epochs"] for m, s in MODEL_SETTINGS.items()}
    for item in filter(None, args.epochs.split(",")):
        model, _, value = item.partition("=")
        caps[model] = int(value)

    if args.sweep_mf:
        records: list[dict[str, Any]] = []
        while True:
            planned = sweep_stage(records)
            todo = [p for p in planned if p[0] not in {r["name"] for r in records}]
            if not todo:
                break
            for name, lr, std, wd, sampling in todo:
                out = runs_dir.parent / "gowalla-mf-sweep" / name
                long = is_long(name)  # stages 3 to 5: early-stopped like the grid's runs
                schedule = (
                    ["run.eval_every=5", "run.patience=2", "run.min_epochs=10"]
                    if long
                    else ["run.eval_every=2", "run.patience=100"]
                )
                overrides = train_overrides(
                    Run("mf", "dense", 1.0),
                    args.data,
                    out,
                    sweep_epochs(name, args.sweep_epochs),
                    [
                        f"optim.weight_decay={wd}",
                        *schedule,
                        f"optim.lr={lr}",
                        f"model.init_std={std}",
                        f"optim.sampling={sampling}",
                    ],
                    args.set,
                )
                state = run_state(out, overrides)
                if state["status"] in ("stopped", "pending") and not args.report_only:
                    log.info("sweep %s", name)
                    train_run(out, overrides)
                    state = run_state(out, overrides)
                record = record_of(Run("mf", "dense", 1.0), state, out)
                record.update(name=name, lr=lr, init_std=std, weight_decay=wd, sampling=sampling)
                records.append(record)
                write_sweep(records, source, results, complete=False)
            if any(r["status"] != "done" for r in records):
                break
        complete = all(r["status"] == "done" for r in records) and len(records) == len(sweep_stage(records))
        write_sweep(records, source, results, complete=complete)
        return 0 if complete else 1

    mf_overrides, mf_source = mf_settings(results / "sweeps" / "gowalla-mf-sweep.json")
    log.info("MF settings: %s (%s)", " ".join(mf_overrides), mf_source)

    runs = grid(args.models.split(","), args.lightgcn_variant)
    only = set(filter(None, args.only.split(",")))
    unknown = only - {r.name for r in runs}
    if unknown:
        parser.error(f"--only: unknown run names {sorted(unknown)}; known: {[r.name for r in runs]}")

    def plan_of(run: Run) -> tuple[Path, list[str]]:
        out = runs_dir / run.name
        settings = MODEL_SETTINGS[run.model]["overrides"] + (mf_overrides if run.model == "mf" else [])
        return out, train_overrides(run, args.data, out, caps[run.model], settings, args.set)

    def report() -> list[dict[str, Any]]:
        records = [record_of(run, run_state(*plan_of(run)), plan_of(run)[0]) for run in runs]
        write_report(records, source, results, "quality-gowalla", args.lightgcn_variant, mf_source)
        return records

    for index, run in enumerate(runs, 1):
        out, overrides = plan_of(run)
        state = run_state(out, overrides)
        if args.report_only or (only and run.name not in only) or state["status"] in ("done", "running"):
            continue
        log.info("[%d/%d] %s (%s)", index, len(runs), run.name, "resuming" if state["status"] == "stopped" else "start")
        code = train_run(out, overrides)
        if code != 0:
            log.error("%s: training exited with %d; see %s", run.name, code, out / "train.log")
        report()
    records = report()
    done = sum(r["status"] == "done" for r in records)
    log.info("%d of %d runs finished; table in %s", done, len(records), results / "quality-gowalla.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
