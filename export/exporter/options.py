"""How to export (:class:`ExportOptions`), the choices each option takes, and :class:`ExportError`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..index import INDEX_KINDS
from ..to_sparse import TABLE_LAYOUTS, VALUE_DTYPES

ONNX_LAYOUTS = ("auto", "dense", "packed")
INDEX_CHOICES = ("auto", "sparse", *INDEX_KINDS)
SPARSE_PARAMS = ("layout", "round_to", "threaded")
# LightGCN's served vectors: auto = masked for a model trained with model.mask_output (option c),
# else propagated (a); masked on a standard model is option (b), measured at 0.74x test NDCG@20 on
# the demo's dsl-mixed 0.2 run (issue 10), hence not the default
LIGHTGCN_OUTPUTS = ("auto", "propagated", "masked")
TABLE_LAYOUT_CHOICES = ("auto", *TABLE_LAYOUTS)
TOLERANCE_FP32 = 1e-5
FULL_RANKING_LIMIT = 5e8  # users x items scored for the all-user figures; beyond it the user sample


class ExportError(RuntimeError):
    """The export could not be written or failed one of its own checks."""


@dataclass(frozen=True)
class ExportOptions:
    """How to export.

    Attributes:
        values: stored value dtype of the tables: fp32 | fp16 | int8.
        table_layout: auto (prefix where every mask row is a prefix [0, L_r), else csr) | csr |
            prefix (refused, with the first offending row named, when a mask is not prefix-shaped).
        index: item index kind: auto (sparse or flat, whichever answers faster at export, where the
            served item vectors are sparse; flat where dense) | sparse | flat | ivf | hnsw | sq8 | pq.
        index_params: overrides of :func:`export.index.default_params`; for sparse: layout
            (auto | prefix | gaps | postings), round_to (prefix lengths rounded up to a multiple), threaded.
        lightgcn_output: LightGCN's served vectors: auto (masked for a mask_output model, else
            propagated) | propagated (dense, option a) | masked (each row times its own mask: b, or c
            for a mask_output model). Both qualities are measured and stored.
        timing_users: sampled users whose queries time the ``auto`` choice.
        onnx_layout: user rows in ONNX: auto (packed where its arrays are smaller) | dense | packed.
        onnx_int8: also write ``scorer.int8.onnx`` (onnxruntime dynamic quantisation) and measure it.
        measure_memory: measure onnxruntime session RSS of both user-tower layouts (subprocesses).
        sample_users: users sampled for index recall and ONNX checks.
        k: cut-off of every top-k figure.
        seed: seed of the user sample.
        overwrite: replace an existing artifact folder.
        progress: show a progress bar on stderr.
    """

    values: str = "fp32"
    table_layout: str = "auto"
    index: str = "auto"
    index_params: dict[str, Any] = field(default_factory=dict)
    lightgcn_output: str = "auto"
    timing_users: int = 200
    onnx_layout: str = "auto"
    onnx_int8: bool = False
    measure_memory: bool = True
    sample_users: int = 1000
    k: int = 20
    seed: int = 0
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.values not in VALUE_DTYPES:
            raise ValueError(f"values: unknown dtype {self.values!r}; choose one of {list(VALUE_DTYPES)}")
        if self.table_layout not in TABLE_LAYOUT_CHOICES:
            raise ValueError(
                f"table_layout: unknown layout {self.table_layout!r}; choose one of {list(TABLE_LAYOUT_CHOICES)}"
            )
        if self.index not in INDEX_CHOICES:
            raise ValueError(f"index: unknown kind {self.index!r}; choose one of {list(INDEX_CHOICES)}")
        if self.lightgcn_output not in LIGHTGCN_OUTPUTS:
            raise ValueError(
                f"lightgcn_output: unknown choice {self.lightgcn_output!r}; choose one of {list(LIGHTGCN_OUTPUTS)}"
            )
        if self.onnx_layout not in ONNX_LAYOUTS:
            raise ValueError(f"onnx_layout: unknown layout {self.onnx_layout!r}; choose one of {list(ONNX_LAYOUTS)}")
