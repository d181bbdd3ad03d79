"""common.provenance: what a results file records about how it was made."""

import re

from common.provenance import command, provenance, provenance_line


def test_provenance_names_command_commit_machine_and_date():
    record = provenance(["/x/y.py", "--flag", "a b"], extra_field=3)
    assert record["command"] == "/x/y.py --flag 'a b'"
    assert re.fullmatch(r"([0-9a-f]{40}(\+dirty)?|unknown)", record["commit"])
    assert record["machine"]["cpus"] >= 1 and record["machine"]["cpu"]
    assert re.match(r"\d{4}-\d\d-\d\dT", record["date"])
    assert record["extra_field"] == 3
    line = provenance_line(record)
    assert record["commit"] in line and "/x/y.py" in line


def test_command_names_make_target(monkeypatch):
    monkeypatch.setenv("MAKE_TARGET", "bench-train")
    assert command(["python", "-m", "benchmarks.training.speed"]).startswith("make bench-train  (")


def test_commit_is_dirty_for_code_changes_not_for_results(tmp_path):
    import subprocess

    from common.provenance import git_commit

    def git(*args):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True, capture_output=True
        )

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "a.json").write_text("1")
    (tmp_path / "code.py").write_text("x = 1")
    git("add", ".")
    git("commit", "-qm", "c")
    assert not git_commit(tmp_path).endswith("+dirty")
    (tmp_path / "results" / "a.json").write_text("2")  # a benchmark rewrote its output
    assert not git_commit(tmp_path).endswith("+dirty")
    (tmp_path / "code.py").write_text("x = 2")
    assert git_commit(tmp_path).endswith("+dirty")


def test_busy_reason_is_load_above_half_the_cpus():
    from common.provenance import busy_reason

    assert busy_reason(load=1.0, cpus=2) is None  # exactly half: quiet
    assert busy_reason(load=0.0, cpus=1) is None
    reason = busy_reason(load=1.01, cpus=2)
    assert reason is not None and "1.01" in reason and "2 CPUs" in reason
    assert busy_reason(load=7.9, cpus=16) is None and busy_reason(load=8.5, cpus=16) is not None
    assert isinstance(busy_reason(), (str, type(None)))  # this machine's own readings
