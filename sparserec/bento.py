"""`sparserec bento`: store an artifact as a BentoML model and build the Bento that serves it.

    sparserec bento --artifact artifacts/demo-lightgcn        # the same as: make bento ARTIFACT=...
    bentoml models list                                       # sparserec-demo-lightgcn:<manifest sha256>
    bentoml serve sparserec:latest --port 3000                # the Bento, its artifact from the model store
    bentoml containerize sparserec:latest                     # then: docker run -p 3000:3000 sparserec:<version>

Two steps, both into the user's BentoML store (BENTOML_HOME, default ~/bentoml):

1. the artifact, verified, becomes the BentoML model ``sparserec-<folder name>:<version>``
   (``bentoml.models.create``), its version the first 32 hex digits of the sha256 of its
   manifest.json, so one export is stored once and a changed one gets a new version; the files
   sit in the model's ``artifact/`` folder, the full sha256 and the model's shape in its metadata;
2. ``bentoml build -f bentofile.yaml --arg artifact_model=<tag>`` builds the Bento: the product's
   code (serving/, export/, common/; no benchmark, no training code, no torch) and a reference to
   that model, which `bentoml serve`, `bentoml containerize` and `bentoml export` resolve from the
   model store. The service reads the tag back with ``bentoml.use_arguments()`` and declares it
   as a ``bentoml.models.BentoModel`` (serving/service.py).

The build runs `bentoml build` in a subprocess, so the service module is imported there with the
argument set, never from a copy already imported here.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from common.paths import REPO_ROOT

__all__ = ["build_bento", "main", "model_tag", "store_artifact"]

BENTOFILE = REPO_ROOT / "bentofile.yaml"
VERSION_DIGITS = 32  # a BentoML tag's version holds at most 63 characters; a sha256 has 64 hex digits
EPILOG = """examples:
  sparserec bento --artifact artifacts/demo-lightgcn
  BENTOML_HOME=/srv/bentoml sparserec bento --artifact artifacts/gowalla-dsl --name sparserec-gowalla
"""


class BentoError(RuntimeError):
    """The artifact could not be stored or the Bento could not be built; the message says why."""


def model_tag(artifact: str | Path, name: str | None = None) -> tuple[str, str]:
    """``("NAME:VERSION", manifest sha256)`` of an artifact folder: NAME is ``name`` or
    ``sparserec-<folder name>`` (lower case, other characters as ``-``), VERSION the sha256's
    first VERSION_DIGITS hex digits."""
    from common.io import sha256_file

    folder = Path(artifact).resolve()
    digest = sha256_file(folder / "manifest.json")
    if name is None:
        name = "sparserec-" + re.sub(r"[^a-z0-9_.-]+", "-", folder.name.lower()).strip("-._")
    name = name[:63].rstrip("-._")
    if not re.fullmatch(r"[a-z0-9]([a-z0-9_.-]*[a-z0-9])?", name):
        raise BentoError(f"model name {name!r}: use lower-case letters, digits, '-', '_' and '.'")
    return f"{name}:{digest[:VERSION_DIGITS]}", digest


def store_artifact(artifact: str | Path, name: str | None = None) -> str:
    """Verify ``artifact`` and store it as a BentoML model (once: the same manifest is the same
    model); the model's tag."""
    import bentoml
    from bentoml.exceptions import NotFound

    from export.artifact import ArtifactError, read_manifest, verify_artifact
    from serving.service import ARTIFACT_FOLDER, stored_artifact

    folder = Path(artifact).resolve()
    try:
        verify_artifact(folder)
    except ArtifactError as exc:
        raise BentoError(f"{folder}: not stored: the artifact failed verification: {exc}") from None
    tag, digest = model_tag(folder, name)
    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        stored = None
    if stored is not None:
        if stored.info.metadata.get("manifest_sha256") != digest:
            raise BentoError(
                f"BentoML model {tag} exists with another manifest sha256 "
                f"({stored.info.metadata.get('manifest_sha256')}); delete it: bentoml models delete {tag}"
            )
        return str(stored.tag)
    manifest = read_manifest(folder)
    metadata = {
        "manifest_sha256": digest,
        "source": str(folder),
        "model_kind": manifest.model_kind,
        "n_users": manifest.n_users,
        "n_items": manifest.n_items,
        "dim": manifest.dim,
        "density": manifest.density,
        "index": manifest.index.kind,
        "format_version": manifest.format_version,
    }
    with bentoml.models.create(tag, labels={"project": "sparserec"}, metadata=metadata) as model:
        shutil.copytree(folder, Path(model.path_of(ARTIFACT_FOLDER)) / folder.name)
    stored = bentoml.models.get(tag)
    try:  # the copy in the store, as the Bento will read it
        verify_artifact(stored_artifact(stored.path_of(ARTIFACT_FOLDER)))
    except ArtifactError as exc:
        raise BentoError(f"the stored copy of {folder} ({tag}) failed verification: {exc}") from None
    return str(stored.tag)


def build_bento(model: str, bentofile: str | Path = BENTOFILE) -> str:
    """``bentoml build`` of ``bentofile`` with ``--arg artifact_model=MODEL``; the Bento's tag."""
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": os.environ.get("BENTOML_DO_NOT_TRACK", "true")}
    env.pop("SPARSEREC_ARTIFACT", None)  # the Bento serves the model, whatever this shell points at
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "build",
        "-f",
        str(bentofile),
        "--arg",
        f"artifact_model={model}",
        "--output",
        "tag",
        str(REPO_ROOT),
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    found = re.search(r"__tag__:(\S+)", done.stdout)
    if done.returncode != 0 or not found:
        raise BentoError(
            f"bentoml build failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return found.group(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparserec bento",
        description=__doc__.split("\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--artifact", type=Path, required=True, help="artifact folder written by `python -m export`")
    parser.add_argument(
        "--name", default=None, help="the BentoML model's name (default: sparserec-<artifact folder name>)"
    )
    parser.add_argument("--bentofile", type=Path, default=BENTOFILE, help="build file (default: bentofile.yaml)")
    parser.add_argument("--model-only", action="store_true", help="store the model, build no Bento")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.artifact / "manifest.json").is_file():
        print(
            f"error: {args.artifact}: not an artifact folder (no manifest.json); make one with: "
            f"python -m export runs/NAME --out {args.artifact}",
            file=sys.stderr,
        )
        return 2
    try:
        model = store_artifact(args.artifact, args.name)
        print(f"BentoML model: {model} (bentoml models list)")
        if args.model_only:
            return 0
        bento = build_bento(model, args.bentofile)
    except BentoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"Bento: {bento} (bentoml list)\n"
        f"  serve:       bentoml serve {bento} --port 3000\n"
        f"  containerize: bentoml containerize {bento}\n"
        f"  run:         docker run --rm -p 3000:3000 {bento}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
