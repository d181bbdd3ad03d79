"""Checkpoint format (common.checkpoint): safetensors + JSON, exact round trip, old .pt refused, no cycles."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from common.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    pack,
    read_checkpoint,
    sniff_format,
    unpack,
    write_checkpoint,
)
from common.io import atomic_write_json, sha256_file

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("train", "export", "serving", "loadtest")


def test_round_trip_keeps_every_type_and_value(tmp_path):
    state = {
        "epoch": 3,
        "lr": 0.1 + 0.2,
        "tiny": 5e-324,
        "name": "mf",
        "none": None,
        "flag": False,
        "betas": (0.9, 0.999),
        "history": [{"ndcg": 0.25}],
        "optimizer": {"state": {0: {"step": np.array(7.0, dtype=np.float32), "exp_avg": np.ones((2, 3))}}},
        "mask": np.array([[True, False]]),
        "generator": np.arange(5, dtype=np.uint8),
        "empty": np.zeros(0, np.int64),
    }
    path = tmp_path / "x.safetensors"
    write_checkpoint(path, state)
    assert sniff_format(path) == "safetensors"
    back = read_checkpoint(path)
    assert back["betas"] == (0.9, 0.999) and isinstance(back["betas"], tuple)
    assert list(back["optimizer"]["state"]) == [0]  # int keys stay int (torch optimizers need them)
    assert back["lr"] == 0.1 + 0.2 and back["tiny"] == 5e-324 and back["none"] is None and back["flag"] is False
    for key in ("mask", "generator", "empty"):
        assert back[key].dtype == state[key].dtype and np.array_equal(back[key], state[key])
    step = back["optimizer"]["state"][0]["step"]
    assert step.shape == () and step.dtype == np.float32 and float(step) == 7.0
    header_len = int.from_bytes(path.read_bytes()[:8], "little")  # the non-array state is plain JSON
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    assert header["__metadata__"]["format_version"] == str(FORMAT_VERSION)
    assert json.loads(header["__metadata__"]["sparserec"])["epoch"] == 3


@pytest.mark.parametrize(
    "bad, words",
    [({"x": object()}, "object"), ({"x": {1: 1, "a": 2}}, "all str or all int"), ({"__array__": 1}, "reserved")],
)
def test_pack_refuses_what_it_cannot_store(bad, words):
    with pytest.raises((TypeError, ValueError), match=words):
        pack(bad)


def test_unpack_is_pack_inverse_without_arrays():
    tree = {"a": [1, (2, 3)], "b": {4: "x"}}
    arrays, skeleton = pack(tree)
    assert arrays == {} and unpack(json.loads(json.dumps(skeleton)), arrays) == tree


def _torch_zip_bytes() -> bytes:
    buffer = io.BytesIO()  # the first bytes torch.save writes: a zip archive (holding a pickle)
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return buffer.getvalue()


@pytest.mark.parametrize("content, kind", [(_torch_zip_bytes(), "torch zip"), (b"\x80\x02}q\x00.", "pickle")])
def test_old_pt_checkpoint_is_refused_by_format(tmp_path, content, kind):
    old = tmp_path / "best.pt"
    old.write_bytes(content)
    for path in (old, tmp_path / "best.safetensors"):  # asked by its name, or found beside the new name
        with pytest.raises(CheckpointError, match=rf"best\.pt: a {kind} checkpoint .*format 1.*never unpickles"):
            read_checkpoint(path)


def test_sniff_reads_safetensors_whatever_its_header_length(tmp_path):
    path = tmp_path / "x.safetensors"
    for pad in range(260):  # every low byte of the header length: 0x80 ('pickle') or 'P' must not fool it
        write_checkpoint(path, {"pad": "x" * pad, "w": np.zeros(1)})
        assert sniff_format(path) == "safetensors", int.from_bytes(path.read_bytes()[:8], "little")
        assert read_checkpoint(path)["pad"] == "x" * pad


def test_wrong_format_and_missing_file_named(tmp_path):
    from safetensors.numpy import save

    other = tmp_path / "other.safetensors"
    other.write_bytes(save({"w": np.zeros(2)}))  # a safetensors file that is not a sparserec checkpoint
    with pytest.raises(CheckpointError, match="other.safetensors: format None"):
        read_checkpoint(other)
    with pytest.raises(CheckpointError, match="nope.safetensors: no such checkpoint"):
        read_checkpoint(tmp_path / "nope.safetensors")


def test_atomic_json_and_sha256(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write_json(path, {"b": 1, "a": 2})
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temp file left
    assert sha256_file(path) == __import__("hashlib").sha256(path.read_bytes()).hexdigest()


def test_replace_folder_swaps_in_one_rename_or_refuses(tmp_path):
    from common.io import replace_folder

    target, staging = tmp_path / "artifact", tmp_path / ".artifact.partial"
    for folder, text in ((target, "old"), (staging, "new")):
        folder.mkdir()
        (folder / "f").write_text(text)
    with pytest.raises(FileExistsError, match="artifact"):
        replace_folder(staging, target, overwrite=False)
    assert (target / "f").read_text() == "old" and staging.exists()
    replace_folder(staging, target)
    assert (target / "f").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_nothing_unpickles():
    """No torch.load (even weights_only=True reads pickle), no pickle.load(s), no allow_pickle=True."""
    offenders = []
    for package in (*STAGES, "common", "tests"):
        for file in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                unpickles = (owner, name) in {("torch", "load"), ("pickle", "load"), ("pickle", "loads")}
                unpickles |= any(
                    k.arg == "allow_pickle" and getattr(k.value, "value", False) is True for k in node.keywords
                )
                if unpickles:
                    offenders.append(f"{file.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_checkpoint_reader_needs_no_torch(tmp_path):
    code = (
        "import sys, numpy as np; from common.checkpoint import write_checkpoint, read_checkpoint; "
        "write_checkpoint(sys.argv[1], {'w': np.ones(2)}); read_checkpoint(sys.argv[1]); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "c.safetensors")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr


def test_exporter_and_resume_name_an_old_run_folder(tmp_path):
    """A run folder from before format 2 (best.pt / checkpoint.pt): export and --resume say what it is."""
    from export.exporter import export_run
    from train.config import load_config
    from train.loop import train

    (tmp_path / "best.pt").write_bytes(_torch_zip_bytes())
    with pytest.raises(CheckpointError, match=r"best\.pt: a torch zip checkpoint"):
        export_run(tmp_path, tmp_path / "artifact")
    (tmp_path / "checkpoint.pt").write_bytes(_torch_zip_bytes())
    config = load_config(
        overrides=[
            "data.name=synthetic",
            "data.n_users=40",
            "data.n_items=50",
            "model.name=mf",
            "run.epochs=1",
            "run.threads=1",
            f"run.out={tmp_path}",
        ]
    )
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: a torch zip checkpoint"):
        train(config, resume=True, progress=False)  # not a silent fresh start
