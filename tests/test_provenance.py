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
    assert command(["python", "-m", "train.bench_train"]).startswith("make bench-train  (")
