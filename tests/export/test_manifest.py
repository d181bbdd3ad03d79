"""export.manifest: the typed manifest's round trip, its refusals, and the manifest.sha256 self-check
(at load, by `python -m export seal`, and by `python -m serving` before any worker starts)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from export.artifact import (
    MANIFEST,
    MANIFEST_SHA256,
    ArtifactError,
    Manifest,
    load_artifact,
    read_manifest,
    verify_artifact,
    write_manifest,
)
from export.manifest import shard_bounds
from manifest_edits import reseal, rewrite_manifest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def artifact(tiny_mf_artifact, tmp_path) -> Path:
    """A copy of the session's tiny MF artifact (flat index), free to damage."""
    target = tmp_path / "art"
    shutil.copytree(tiny_mf_artifact, target)
    return target


def _json(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


# ---------------------------------------------------------------------------- round trip
def test_typed_round_trip_is_exact(artifact, tmp_path):
    manifest = read_manifest(artifact)
    assert manifest.to_json() == _json(artifact)
    assert Manifest.from_json(manifest.to_json()) == manifest
    # the typed fields are what the file says
    raw = _json(artifact)
    assert (manifest.format_version, manifest.model_kind, manifest.n_users, manifest.n_items, manifest.dim) == (
        raw["format_version"],
        raw["model_kind"],
        raw["n_users"],
        raw["n_items"],
        raw["dim"],
    )
    assert manifest.index.kind == raw["index"]["kind"] and manifest.index.file == raw["index"]["file"]
    assert {n: t.nnz for n, t in manifest.tables.items()} == {n: t["nnz"] for n, t in raw["tables"].items()}
    assert manifest.files["popularity.npy"].sha256 == raw["files"]["popularity.npy"]["sha256"]
    assert manifest.shard is None and manifest.index_items == manifest.n_items
    # written in the one place, read back: equal, and byte for byte the exporter's file
    out = tmp_path / "written"
    out.mkdir()
    digest = write_manifest(out, manifest)
    assert read_manifest(out) == manifest
    assert (out / MANIFEST).read_bytes() == (artifact / MANIFEST).read_bytes()
    assert (out / MANIFEST_SHA256).read_text() == (artifact / MANIFEST_SHA256).read_text() == digest + "\n"


def test_manifests_are_frozen(artifact):
    manifest = read_manifest(artifact)
    with pytest.raises(AttributeError):
        manifest.n_items = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        manifest.index.kind = "hnsw"  # type: ignore[misc]


# ---------------------------------------------------------------------------- refusals
def _set(path: str | tuple[str, ...], value):
    """A change to the manifest JSON: set the dotted ``path`` (or the keys of a tuple) to ``value``."""

    def change(manifest: dict) -> None:
        *parents, last = path.split(".") if isinstance(path, str) else path
        node = manifest
        for key in parents:
            node = node[key]
        node[last] = value

    return change


@pytest.mark.parametrize(
    "change, words",
    [
        (_set("format_version", True), "'format_version' is True (boolean), expected an integer format version"),
        (_set("format_version", 2.0), "'format_version' is 2.0 (number), expected an integer format version"),
        (_set("format_version", "1"), "'format_version' is '1' (string), expected an integer format version"),
        (
            _set("format_version", 3),
            "'format_version' is 3 (integer), expected an integer format version this reader knows (1, 2)",
        ),
        (_set("n_layers", "2"), "'n_layers' is '2' (string), expected an integer >= 0"),
        (_set("n_items", -1), "'n_items' is -1 (integer), expected an integer >= 0"),
        (_set("n_users", 200.0), "'n_users' is 200.0 (number), expected an integer >= 0"),
        (
            _set("index.kind", "annoy"),
            "'index.kind' is 'annoy' (string), expected one of ['flat', 'ivf', 'hnsw', 'sq8', 'pq', 'sparse']",
        ),
        (_set("model_kind", "bert4rec"), "'model_kind' is 'bert4rec'"),
        (_set("value_dtype", "bf16"), "'value_dtype' is 'bf16'"),
        (_set("tables.user_embedding.nnz", "many"), "'tables.user_embedding.nnz' is 'many'"),
        (_set("vectors.items.stop", 10), "'vectors.items' is"),
        (_set(("files", "popularity.npy"), {"sha256": "x", "bytes": 1}), "'files.popularity.npy.sha256' is 'x'"),
        (_set("index.file", "../../etc/passwd"), "expected a file name inside the artifact folder"),
        (_set("seen.shape", [1, 2]), "'seen.shape' is [1, 2]"),
        (_set("surprise", 1), "unknown field(s) surprise"),
    ],
)
def test_wrong_types_and_values_are_refused_naming_field_value_and_expectation(artifact, change, words):
    manifest = _json(artifact)
    change(manifest)
    with pytest.raises(ArtifactError) as error:
        Manifest.from_json(manifest)
    assert words in str(error.value)
    rewrite_manifest(artifact, change)  # re-sealed, as a forger would: still refused, by the parser
    with pytest.raises(ArtifactError) as error:
        load_artifact(artifact)
    assert words in str(error.value) and MANIFEST in str(error.value)


@pytest.mark.parametrize(
    "shard, words",
    [
        (
            {"index": 0, "count": 2, "start": 0, "stop": 10},
            "expected the item range of part 0 of 2 over 300 items, [0, 150)",
        ),
        ({"index": 0, "count": 1, "start": 0, "stop": 305}, "expected the item range of part 0 of 1 over 300 items"),
        ({"index": 2, "count": 2, "start": 150, "stop": 300}, "'shard.index' is 2"),
        ({"index": 0, "count": 301, "start": 0, "stop": 1}, "'shard.count' is 301"),
        ({"index": 0, "count": 2, "start": 0, "stop": 150, "parent_manifest_sha256": "abc"}, "parent_manifest_sha256"),
    ],
)
def test_a_fake_shard_range_is_refused(artifact, shard, words):
    manifest = _json(artifact)
    assert manifest["n_items"] == 300
    manifest["shard"] = {"parent_manifest_sha256": "0" * 64, **shard}
    with pytest.raises(ArtifactError, match="shard") as error:
        Manifest.from_json(manifest)
    assert words in str(error.value)


def test_a_true_shard_range_is_accepted(artifact):
    manifest = _json(artifact)
    start, stop = shard_bounds(300, 3)[1]
    manifest["shard"] = {"index": 1, "count": 3, "start": start, "stop": stop, "parent_manifest_sha256": "0" * 64}
    parsed = Manifest.from_json(manifest)
    assert (parsed.shard.start, parsed.shard.stop, parsed.index_items) == (start, stop, stop - start)


def test_duplicate_keys_are_refused(artifact):
    text = (artifact / MANIFEST).read_text()
    (artifact / MANIFEST).write_text(text.replace('"n_layers": 0,', '"n_layers": 0,\n  "n_layers": 3,', 1))
    reseal(artifact)
    with pytest.raises(ArtifactError, match="duplicate key 'n_layers'"):
        read_manifest(artifact)


# ---------------------------------------------------------------------------- the self-check
def test_a_hand_edited_manifest_is_refused_by_the_reader(artifact):
    def grow(manifest):
        manifest["density"] = 0.5  # a plausible value: only the checksum can tell

    rewrite_manifest(artifact, grow, seal=False)
    for read in (read_manifest, load_artifact, verify_artifact):
        with pytest.raises(ArtifactError, match="sha256 mismatch with manifest.sha256") as error:
            read(artifact)
        assert str(artifact / MANIFEST) in str(error.value)


def test_a_missing_sidecar_is_refused_and_seal_accepts_a_verified_old_artifact(artifact):
    (artifact / MANIFEST_SHA256).unlink()
    with pytest.raises(ArtifactError, match="manifest.sha256: missing") as error:
        load_artifact(artifact)
    assert "python -m export seal" in str(error.value)
    seal = [sys.executable, "-m", "export", "seal", str(artifact)]
    done = subprocess.run(seal, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    load_artifact(artifact)  # sealed: accepted
    again = subprocess.run(seal, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "not resealed" in again.stderr


def test_seal_refuses_an_artifact_whose_files_do_not_match(artifact):
    (artifact / MANIFEST_SHA256).unlink()
    target = artifact / "popularity.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    done = subprocess.run(
        [sys.executable, "-m", "export", "seal", str(artifact)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "popularity.npy" in done.stderr
    assert not (artifact / MANIFEST_SHA256).exists()


def _serve(folder: Path) -> subprocess.CompletedProcess:
    """`python -m serving` on ``folder``: it must refuse before starting any worker."""
    return subprocess.run(
        [sys.executable, "-m", "serving", "--artifact", str(folder), "--port", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "change, seal, words",
    [
        # hand-edited, not re-sealed: the self-check
        (_set("n_layers", "3"), False, "sha256 mismatch with manifest.sha256"),
        (_set("index.kind", "hnsw"), False, "sha256 mismatch with manifest.sha256"),
        # re-sealed by a forger: the typed parse
        (_set("n_layers", "3"), True, "'n_layers' is '3'"),
        (_set("format_version", True), True, "'format_version' is True"),
        # re-sealed and well typed, but the index cannot be opened as that kind: the start-up check opens
        # it the way a worker does, so the workers never crash-loop on it
        (_set("index.kind", "ivf"), True, "the ivf index cannot be opened"),
        (_set("index.kind", "hnsw"), True, "items.faiss"),
    ],
)
def test_the_serving_cli_exits_2_naming_the_problem(artifact, change, seal, words):
    rewrite_manifest(artifact, change, seal=seal)
    done = _serve(artifact)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "refusing to start" in done.stderr and words in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_the_start_up_check_opens_the_index_like_a_worker(artifact):
    verify_artifact(artifact, index=True, mmap=True)  # the good artifact passes, mapped or not
    verify_artifact(artifact, index=True, mmap=False)
    rewrite_manifest(artifact, _set("index.params", {"nprobe": 4}))
    verify_artifact(artifact)  # checksums and shapes cannot tell: a flat index ignores params
    rewrite_manifest(artifact, _set("index.kind", "ivf"))
    verify_artifact(artifact)  # nor can they tell the kind
    with pytest.raises(ArtifactError, match="items.faiss: the ivf index cannot be opened"):
        verify_artifact(artifact, index=True)


def test_the_kinds_and_layouts_agree_with_the_modules_that_build_them():
    from export import manifest_parts
    from export.index import INDEX_KINDS
    from export.sparse_index import SPARSE_LAYOUTS

    assert manifest_parts.FAISS_KINDS == INDEX_KINDS and manifest_parts.SPARSE_LAYOUTS == SPARSE_LAYOUTS


@pytest.mark.slow
def test_a_worker_refuses_in_one_line_what_it_cannot_open(artifact):
    """`bentoml serve` directly (no start-up check before it): the worker refuses, without a traceback."""
    import time

    from server_utils import ServerFailed, start_server

    rewrite_manifest(artifact, _set("index.kind", "ivf"))  # re-sealed: only opening the index can tell
    server = start_server(artifact, via="bentoml")
    try:
        with pytest.raises(ServerFailed):
            server.wait_ready(timeout=20)
        deadline = time.monotonic() + 30
        while "refusing to start" not in server.log and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "refusing to start" in server.log and "cannot serve" in server.log, server.log[-2000:]
        assert "Traceback" not in server.log
    finally:
        server.stop()


@pytest.mark.parametrize(
    "text, words", [("[1, 2]", "the manifest is [1, 2] (array), expected a JSON object"), ("{", "not valid JSON")]
)
def test_a_manifest_that_is_not_a_json_object_is_refused(artifact, text, words):
    (artifact / MANIFEST).write_text(text)
    reseal(artifact)
    with pytest.raises(ArtifactError, match=re.escape(words)):
        read_manifest(artifact)
