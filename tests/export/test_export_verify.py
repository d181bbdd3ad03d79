"""export/: verification (damaged, altered, tampered or mislabelled files refused, naming the file), the
verify CLI's exit codes, artifacts older than a field, and atomic writes (an interrupted export leaves no
folder; the reader never imports torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export import to_onnx
from export.artifact import FORMAT_VERSION, ArtifactError, load_artifact, verify_artifact
from export.exporter import ExportError
from export.exporter import tables as table_writer
from export.index import ItemIndex
from export_models import DIM, N_ITEMS, prefix_model, sparse_model
from export_models import export_flat as export
from manifest_edits import rewrite_manifest

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mf_artifact(tmp_path_factory):
    model, seen = sparse_model("mf")
    out = export(model, seen, tmp_path_factory.mktemp("mf") / "art", onnx_int8=True)
    return model, seen, out


@pytest.fixture(scope="module")
def prefix_artifact(tmp_path_factory):
    model, seen = prefix_model("mf")
    return (
        model,
        seen,
        export(model, seen, tmp_path_factory.mktemp("prefix") / "art", onnx_layout="packed", index="sparse"),
    )


# ---------------------------------------------------------------------------- verification
@pytest.fixture
def artifact_copy(mf_artifact, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(mf_artifact[2], target)
    return target


def test_old_artifacts_without_a_layout_field_read_as_csr(artifact_copy):
    want = load_artifact(artifact_copy).tables()

    def drop_layout(manifest):
        for entry in manifest["tables"].values():
            del entry["layout"], entry["layout_reason"]

    rewrite_manifest(artifact_copy, drop_layout)
    artifact = load_artifact(artifact_copy)
    assert artifact.table_layout("user_embedding") == "csr"
    for name, table in artifact.tables().items():
        assert (table != want[name]).nnz == 0


def test_verify_accepts_a_good_artifact(artifact_copy):
    manifest = verify_artifact(artifact_copy, deep=True)
    assert manifest.model_kind == "mf"


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, name, words",
    [
        (lambda p: _flip_byte(p / "user_embedding.values.npy"), "user_embedding.values.npy", "sha256"),
        (lambda p: (p / "items.faiss").write_bytes((p / "items.faiss").read_bytes()[:100]), "items.faiss", "truncated"),
        (lambda p: (p / "seen.indices.npy").unlink(), "seen.indices.npy", "missing"),
        (lambda p: (p / "manifest.json").unlink(), "manifest.json", "missing"),
    ],
)
def test_verify_refuses_damaged_files(artifact_copy, damage, name, words):
    damage(artifact_copy)
    with pytest.raises(ArtifactError, match=words) as error:
        load_artifact(artifact_copy)
    assert name in str(error.value)


def test_verify_refuses_unknown_version_and_bad_shapes(artifact_copy):
    rewrite_manifest(artifact_copy, lambda manifest: manifest.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ArtifactError, match="format version") as error:
        verify_artifact(artifact_copy)
    assert "manifest.json" in str(error.value)

    def wrong_shape(manifest):
        manifest["format_version"] = FORMAT_VERSION
        manifest["arrays"]["popularity.npy"]["shape"] = [N_ITEMS + 1]

    rewrite_manifest(artifact_copy, wrong_shape)
    with pytest.raises(ArtifactError, match="popularity.npy"):
        verify_artifact(artifact_copy)


@pytest.fixture
def prefix_copy(prefix_artifact, tmp_path):
    import shutil

    target = tmp_path / "prefix-copy"
    shutil.copytree(prefix_artifact[2], target)
    return target


def _replace_lengths(folder: Path, lengths: np.ndarray) -> None:
    """Swap in other row lengths and re-sign them, as a careful forger would."""
    from export.artifact import sha256_file

    target = folder / "user_embedding.lengths.npy"
    np.save(target, lengths.astype(np.uint8), allow_pickle=False)

    def resign(manifest):
        manifest["files"][target.name] = {"sha256": sha256_file(target), "bytes": target.stat().st_size}

    rewrite_manifest(folder, resign)


def test_verify_refuses_tampered_prefix_tables(prefix_copy):
    lengths = np.load(prefix_copy / "user_embedding.lengths.npy")
    _flip_byte(prefix_copy / "user_embedding.lengths.npy")
    with pytest.raises(ArtifactError, match="sha256") as error:
        load_artifact(prefix_copy)
    assert "user_embedding.lengths.npy" in str(error.value)

    more = lengths.copy()
    more[1] += 1  # row 1 is empty: one value more than the values file holds
    _replace_lengths(prefix_copy, more)
    with pytest.raises(ArtifactError, match="sum to"):
        load_artifact(prefix_copy)
    too_long = lengths.copy()
    too_long[0] = DIM + 1
    _replace_lengths(prefix_copy, too_long)
    with pytest.raises(ArtifactError, match="outside"):
        load_artifact(prefix_copy)
    _replace_lengths(prefix_copy, lengths)
    load_artifact(prefix_copy)  # restored: accepted again


@pytest.mark.parametrize("layout, words", [("csr", "indptr"), ("coo", "layout' is 'coo'")])
def test_verify_refuses_a_wrong_layout_field(prefix_copy, layout, words):
    def relabel(manifest):
        manifest["tables"]["user_embedding"]["layout"] = layout

    rewrite_manifest(prefix_copy, relabel)
    with pytest.raises(ArtifactError, match=words):
        load_artifact(prefix_copy)


def test_verify_cli_exit_codes(artifact_copy):
    command = [sys.executable, "-m", "export", "verify", str(artifact_copy)]
    ok = subprocess.run(command, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    _flip_byte(artifact_copy / "item_ids.npy")
    bad = subprocess.run(command, capture_output=True, text=True)
    assert bad.returncode != 0 and "item_ids.npy" in bad.stderr


# ---------------------------------------------------------------------------- atomic writes
class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("where", ["index", "tables", "interrupt"])
def test_interrupted_export_leaves_no_folder(tmp_path, monkeypatch, where):
    model, seen = sparse_model("mf")

    def fail(*args, **kwargs):
        raise KeyboardInterrupt if where == "interrupt" else Boom("disk full")

    if where == "index":
        monkeypatch.setattr(ItemIndex, "save", fail)
    elif where == "tables":
        calls = {"n": 0}
        real = table_writer.save_npy  # the tables are the first .npy files written

        def second_call_fails(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                fail()
            return real(*args, **kwargs)

        monkeypatch.setattr(table_writer, "save_npy", second_call_fails)
    else:
        monkeypatch.setattr(to_onnx, "save_model", fail)
    with pytest.raises(KeyboardInterrupt if where == "interrupt" else Boom):
        export(model, seen, tmp_path / "art")
    assert list(tmp_path.iterdir()) == []  # neither the artifact nor its temp folder


def test_existing_artifact_is_not_replaced_without_overwrite(mf_artifact, tmp_path):
    model, seen, _ = mf_artifact
    out = export(model, seen, tmp_path / "art")
    with pytest.raises(ExportError, match="already exists"):
        export(model, seen, out)
    export(model, seen, out, overwrite=True, values="fp16")
    assert load_artifact(out).value_dtype == "fp16"
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_reader_does_not_import_torch(mf_artifact):
    """serving imports the reader; it must not pull in torch."""
    code = (
        "import sys; from export.artifact import load_artifact; import export.index; "
        f"a = load_artifact({str(mf_artifact[2])!r}); a.user_vectors(); a.load_index().search(a.user_vectors()[:2], 5); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2]
    )
    assert done.returncode == 0, done.stderr
