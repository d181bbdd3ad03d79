"""The umbrella ``sparserec`` command: it dispatches to each stage's own command line and sits above them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import sparserec

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_every_stage(capsys):
    assert sparserec.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sparserec {train,export,serve,loadtest,compare,bento}")
    assert all(stage in out.splitlines()[0] for stage in sparserec.STAGES)


@pytest.mark.parametrize("argv", [[], ["fit"]])
def test_no_or_unknown_stage_is_a_usage_error(argv, capsys):
    assert sparserec.main(argv) == 2
    assert "usage: sparserec" in capsys.readouterr().out


def test_dispatches_to_the_stage_command_line(capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's --help exits 0
        sparserec.main(["train", "--help"])
    assert exit_info.value.code == 0
    assert "usage: python -m train" in capsys.readouterr().out


def test_every_stage_entry_point_exists():
    import importlib

    for stage, (module, func) in sparserec.STAGES.items():
        assert callable(getattr(importlib.import_module(module), func)), stage


def test_python_dash_m_sparserec():
    done = subprocess.run(
        [sys.executable, "-m", "sparserec", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0 and "sparserec export" in done.stdout, done.stderr
