"""The ``sparserec`` command: one entry point in front of the four stages, ``compare`` and ``bento``.

    sparserec train --data ml-100k --model lightgcn --out runs/lgn --epochs 200 --seed 2024
    sparserec export runs/lgn --out artifacts/lgn
    sparserec serve --artifact artifacts/lgn --port 3000
    sparserec loadtest run --host http://127.0.0.1:3000 --users 50 --duration 60s
    sparserec compare artifacts/lgn artifacts/lgn-small artifacts/lgn-dsl --out reports/lgn
    sparserec bento --artifact artifacts/lgn       # a BentoML model + a Bento: bentoml serve sparserec:latest

``python -m sparserec ...`` is the same. Each stage keeps its own command line (``python -m train``,
``python -m export``, ``python -m serving``, ``python -m loadtest``); this package dispatches to it,
importing the stage it runs and no other, so it sits above the stages and none imports it.
``compare`` (sparserec/compare.py) is this package's own: the user's artifacts side by side;
so is ``bento`` (sparserec/bento.py): an artifact as a BentoML model and the Bento that serves it.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["STAGES", "main"]

# stage -> (module, function taking the remaining argv and returning an exit status)
STAGES = {
    "train": ("train.cli", "train_main"),
    "export": ("export.__main__", "main"),
    "serve": ("serving.__main__", "main"),
    "loadtest": ("loadtest.__main__", "main"),
    "compare": ("sparserec.compare", "main"),
    "bento": ("sparserec.bento", "main"),
}

EPILOG = """examples:
  sparserec serve --artifact artifacts/demo-lightgcn --port 3000
  sparserec loadtest run --host http://127.0.0.1:3000 --users 20 --duration 60s
"""


def main(argv: list[str] | None = None) -> int:
    """``sparserec <stage> ...``: run one stage's command line with the rest of the arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STAGES:
        usage = (
            "usage: sparserec {"
            + ",".join(STAGES)
            + "} ...\n\n"
            + __doc__.split("\n\n", 1)[1].rstrip()
            + "\n\n"
            + EPILOG
        )
        if argv and argv[0] not in ("-h", "--help"):
            print(f"sparserec: unknown stage {argv[0]!r}; choose one of {', '.join(STAGES)}\n", file=sys.stderr)
        print(usage)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    module_name, func = STAGES[argv[0]]
    return int(getattr(importlib.import_module(module_name), func)(argv[1:]) or 0)
