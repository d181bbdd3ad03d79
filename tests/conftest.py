"""Shared fixtures: the tiny MF run and its artifact, trained and exported once per test session.

Built with the project's own CLIs (``python -m train``, ``python -m export``) in a temp folder, run
from that folder (so nothing depends on the directory pytest started in) with the repository on
``PYTHONPATH`` and one thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_USERS, TINY_ITEMS = 200, 300


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python <args>`` from ``cwd`` with this checkout importable; fails the test with its stderr."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def train_until_stopped(config, epochs: int, monkeypatch) -> None:
    """Train ``config`` and stop it (``KeyboardInterrupt``, as Ctrl-C) once ``epochs`` epochs have run:
    a killed run, to resume from its last checkpoint. ``run_epoch`` is restored afterwards."""
    from train.loop import Trainer, train  # here, not at the top: most tests never import torch's trainer

    original = Trainer.run_epoch

    def stop(self):
        if self.epoch == epochs:
            raise KeyboardInterrupt("simulated stop")
        return original(self)

    monkeypatch.setattr(Trainer, "run_epoch", stop)
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False)
    monkeypatch.setattr(Trainer, "run_epoch", original)


@pytest.fixture(scope="session")
def tiny_mf_run(tmp_path_factory) -> Path:
    """A 200-user x 300-item synthetic MF run, 2 epochs, seed 1 (``runs/NAME`` layout)."""
    root = tmp_path_factory.mktemp("tiny-mf")
    run_cli(
        "-m",
        "train",
        "--data",
        "synthetic",
        "--model",
        "mf",
        "--out",
        str(root / "run"),
        "--epochs",
        "2",
        "--seed",
        "1",
        f"--data.n_users={TINY_USERS}",
        f"--data.n_items={TINY_ITEMS}",
        "--run.threads=1",
        "--quiet",
        cwd=root,
    )
    return root / "run"


@pytest.fixture(scope="session")
def tiny_mf_artifact(tiny_mf_run, tmp_path_factory) -> Path:
    """``tiny_mf_run`` exported with the defaults (fp32, exact index), without the memory probe."""
    out = tmp_path_factory.mktemp("tiny-mf-artifact") / "tiny"
    run_cli("-m", "export", str(tiny_mf_run), "--out", str(out), "--no-memory", "--quiet", cwd=out.parent)
    return out


@pytest.fixture(autouse=True)
def _no_make_target(monkeypatch):
    """`make test` exports MAKE_TARGET (results files name the target that wrote them); a test's own
    results are not written by a make target."""
    monkeypatch.delenv("MAKE_TARGET", raising=False)
