"""Write an artifact folder from a trained model, checking what it wrote as it goes.

``export_run(run_dir, out, options)`` loads a finished training run (``train.checkpoint.
load_trained``) and calls ``export_model``, which:

1. packs every embedding table (mask = structure) with fp32/fp16/int8 values, in the ``prefix``
   layout where every row of its mask is a prefix ``[0, L_r)`` (dsl-nested / dsl-mixed; no column
   indices), else as CSR (``--table-layout`` forces one; ``prefix`` refuses other masks);
2. stores the train interactions, popularity counts and id maps;
3. reads the served vectors back through :class:`export.artifact.Artifact` (LightGCN: propagated
   with scipy) and compares them, and the top-20 lists they give, with the torch model;
4. writes ``user_tower.onnx`` and ``scorer.onnx`` and checks them in onnxruntime against torch;
   optionally an int8 dynamically quantised scorer; measures the session memory of both layouts;
5. builds the item index and measures its recall@20 against exact search: ``--index auto`` (the
   default) builds the exact ``sparse`` index (export.sparse_index) where the served item vectors
   are sparse, times it against a flat faiss index over the zero-filled vectors on sampled users,
   keeps the faster and records both figures; dense vectors keep ``flat``. Where the served item
   rows are prefixes, the items are first put in prefix-length order *in the artifact itself*
   (id map, tables, seen columns, popularity), which the prefix layout needs;
6. writes ``manifest.json`` with sha256 and size of every file, verifies the folder, and renames
   it into place. Everything happens in a temp folder beside the target; any failure (or Ctrl-C)
   removes it, so an interrupted export leaves no artifact folder behind.

One module per step: ``options`` (``ExportOptions``, ``ExportError``), ``write`` (``export_model``,
``export_run``: the steps in order), ``item_order`` (step 5's prefix-length item order), ``tables``
(1), ``files`` (``.npy``/JSON writes, the manifest's sha256 list), ``checks`` and ``lightgcn_output``
(3), ``onnx_files`` (4; graphs and sessions from :mod:`export.to_onnx`), ``memory`` (session RSS,
bytes by component), ``index_build`` (5). The names below are the package's interface.
"""

from .options import (
    FULL_RANKING_LIMIT,
    INDEX_CHOICES,
    LIGHTGCN_OUTPUTS,
    ONNX_LAYOUTS,
    SPARSE_PARAMS,
    TABLE_LAYOUT_CHOICES,
    TOLERANCE_FP32,
    ExportError,
    ExportOptions,
)
from .write import export_model, export_run

__all__ = [
    "FULL_RANKING_LIMIT",
    "INDEX_CHOICES",
    "LIGHTGCN_OUTPUTS",
    "ONNX_LAYOUTS",
    "SPARSE_PARAMS",
    "TABLE_LAYOUT_CHOICES",
    "TOLERANCE_FP32",
    "ExportError",
    "ExportOptions",
    "export_model",
    "export_run",
]
