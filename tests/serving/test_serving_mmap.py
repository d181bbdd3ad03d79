"""Memory-mapped serving arrays (issue 12, replicas) and artifact format 2.

- `Recommender.from_artifact(mmap=True)` holds every array it reads at serving time (item ids,
  seen items, popularity and its order, user vectors stored dense) as a read-only map of the
  artifact's own files, and answers exactly like the arrays read into memory;
- a format 1 artifact (JSON id maps, no stored popularity order) still verifies and answers alike;
- a popularity order that is not the counts' order, or not a permutation, is refused even when
  re-signed; format 2 without a stored order or with JSON ids is refused by name.
"""

from __future__ import annotations

import json
import mmap
import shutil
from pathlib import Path

import numpy as np
import pytest

from export.artifact import FORMAT_VERSION, ArtifactError, id_array, load_artifact, sha256_file, verify_artifact
from manifest_edits import rewrite_manifest
from serving.recommender import Query, Recommender


def _mapped_file(array: np.ndarray) -> bool:
    """Whether ``array`` views a file mapping (np.memmap or mmap.mmap somewhere down its bases)."""
    while array is not None:
        if isinstance(array, (np.memmap, mmap.mmap)):
            return True
        array = getattr(array, "base", None)
    return False


def _queries(art, k: int = 10) -> list[Query]:
    return [Query(u, k, exclude) for u in art.user_ids for exclude in (True, False)] + [Query("no-such-user", k, True)]


def _answers(rec: Recommender, queries: list[Query]) -> list[tuple]:
    return [(r.user_id, r.item_ids, r.scores, r.fallback) for r in rec.recommend(queries)]


def test_mapped_recommender_holds_maps_and_answers_like_one_in_memory(tiny_mf_artifact):
    art = load_artifact(tiny_mf_artifact)
    assert art.manifest.format_version == FORMAT_VERSION == 2
    mapped = Recommender.from_artifact(art, mmap=True)
    arrays = {
        "item_ids": mapped.item_ids,
        "seen_indptr": mapped.seen_indptr,
        "seen_indices": mapped.seen_indices,
        "popularity": mapped.popularity,
        "popular_order": mapped.popular_order,
    }
    if art.manifest.tables[art.manifest.vectors.users.table].dense_prefix:
        arrays["user_vectors"] = mapped.user_vectors  # a dense fp32 table is served from its file
    for name, array in arrays.items():
        assert _mapped_file(array), name
        assert not array.flags.writeable, name
    read = Recommender.from_artifact(load_artifact(tiny_mf_artifact), mmap=False)
    assert not any(_mapped_file(a) for a in (read.item_ids, read.seen_indices, read.popularity, read.popular_order))
    queries = _queries(art)
    assert _answers(mapped, queries) == _answers(read, queries)
    # the fallback: most popular first, counts as scores
    fallback = mapped.recommend([Query("no-such-user", 5)])[0]
    counts = art.popularity()
    assert fallback.fallback and fallback.scores == sorted(counts, reverse=True)[:5]
    assert fallback.item_ids == [art.item_ids[i] for i in np.argsort(-counts, kind="stable")[:5]]


def _resign(folder: Path, names: list[str], change=None) -> None:
    """Record new checksums (and shapes) of ``names``, as a careful forger would."""

    def edit(manifest):
        if change is not None:
            change(manifest)
        for name in names:
            manifest["files"][name] = {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}

    rewrite_manifest(folder, edit)


def _as_format_1(source: Path, target: Path) -> Path:
    """A copy of a format 2 artifact written as format 1 was: JSON id maps, no stored popularity order."""
    shutil.copytree(source, target)

    def downgrade(manifest):
        for side in ("users", "items"):
            npy = manifest["ids"][side]
            ids = np.load(target / npy, allow_pickle=False).tolist()
            (target / npy).unlink()
            manifest["files"].pop(npy), manifest["arrays"].pop(npy)
            manifest["ids"][side] = npy.replace(".npy", ".json")
            (target / manifest["ids"][side]).write_text(json.dumps(ids, indent=2))
        order = manifest["popularity"].pop("order")
        (target / order).unlink()
        manifest["files"].pop(order), manifest["arrays"].pop(order)
        manifest["format_version"] = 1

    rewrite_manifest(target, downgrade)
    _resign(target, ["user_ids.json", "item_ids.json"])
    return target


def test_format_1_artifact_reads_and_answers_like_format_2(tiny_mf_artifact, tmp_path):
    old = _as_format_1(tiny_mf_artifact, tmp_path / "v1")
    assert verify_artifact(old).format_version == 1
    old_art, new_art = load_artifact(old), load_artifact(tiny_mf_artifact)
    assert old_art.user_ids == new_art.user_ids and old_art.item_ids == new_art.item_ids
    assert (old_art.popularity_order() == new_art.popularity_order()).all()
    queries = _queries(new_art)
    assert _answers(Recommender.from_artifact(old_art, mmap=True), queries) == _answers(
        Recommender.from_artifact(new_art, mmap=True), queries
    )


def test_format_2_refuses_json_ids_and_a_missing_order(tiny_mf_artifact, tmp_path):
    old = _as_format_1(tiny_mf_artifact, tmp_path / "v1")
    _resign(old, [], lambda m: m.update(format_version=2))
    with pytest.raises(ArtifactError, match="format 2 needs field 'popularity.order'"):
        verify_artifact(old)


@pytest.mark.parametrize(
    "forge, words",
    [
        (lambda order: order[::-1], "not non-increasing"),
        (lambda order: np.where(order == order[0], order[1], order), "not a permutation"),
    ],
)
def test_verify_refuses_a_forged_popularity_order(tiny_mf_artifact, tmp_path, forge, words):
    target = tmp_path / "forged"
    shutil.copytree(tiny_mf_artifact, target)
    name = load_artifact(target).manifest.popularity.order
    order = np.load(target / name)
    if words == "not non-increasing":  # reversing only forges an order whose counts differ
        counts = np.load(target / "popularity.npy")
        assert counts[order[0]] > counts[order[-1]]
    forged = np.ascontiguousarray(forge(order))
    np.save(target / name, forged, allow_pickle=False)
    _resign(target, [name])
    with pytest.raises(ArtifactError, match=words) as error:
        verify_artifact(target)
    assert name in str(error.value)


def test_id_array_keeps_ids_and_refuses_a_trailing_nul():
    ids = ["196", "é-ü", "", "a" * 40]
    assert id_array(ids).tolist() == ids and id_array([]).shape == (0,)
    with pytest.raises(ArtifactError, match="NUL"):
        id_array(["ok", "bad\x00"])
