"""ONNX graphs for onnxruntime serving: a user tower and a top-k scorer (built with onnx.helper).

``user_tower``: ``user`` int64 ``[B]`` -> ``user_vector`` float32 ``[B, d]``.
``scorer``:     ``user`` int64 ``[B]``, ``k`` int64 ``[1]`` -> ``scores`` float32 ``[B, k]``,
                ``items`` int64 ``[B, k]`` (``MatMul`` against the item matrix, then ``TopK``).

The user rows come in one of two layouts:

- ``dense``: a ``[n_users, d]`` initializer and one ``Gather`` (float32; or the stored float16 /
  int8 values, cast and scaled per row after the gather).
- ``packed``: the packed CSR arrays of :mod:`export.to_sparse` as initializers (uint32 row
  pointers, uint8 columns, fp32/fp16/int8 values, int8 scale). ONNX Runtime turns *sparse*
  initializers into dense tensors at load, so they would save nothing; instead the graph keeps
  plain 1-D arrays and expands only the requested rows: gather the row pointers of the batch,
  gather up to ``max_row_nnz`` positions per row, and ``ScatterElements`` the values into a
  ``[B, d + 1]`` zero block (padding positions write zeros into the spare last column, sliced off).
  No node has only constant inputs, so ORT's constant folding cannot re-densify anything.
  A prefix table (:class:`export.to_sparse.PrefixTable`) uses the same graph without the column
  indices: row ``r``'s ``i``-th value sits in column ``i``, so the columns are the position offsets
  themselves. The graph holds the row pointers (``cumsum`` of the stored lengths, uint32) rather
  than the lengths: a lookup then gathers only the batch's rows instead of summing every row.

The item matrix of the scorer is dense (every query scores every item).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .to_sparse import PackedTable, PrefixTable

OPSET = 17
IR_VERSION = 8  # opset 17; readable by every onnxruntime >= 1.13
USER_INPUT, K_INPUT = "user", "k"
TOWER_OUTPUT = "user_vector"
SCORE_OUTPUT, ITEM_OUTPUT = "scores", "items"


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name=name)


@dataclass
class DenseRows:
    """A dense table in a stored dtype: float32, float16, or int8 with a float32 scale per row."""

    values: np.ndarray
    scale: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + (0 if self.scale is None else self.scale.nbytes))


def _dense_rows(table: np.ndarray | DenseRows, nodes: list, inits: list, out: str) -> str:
    rows = table if isinstance(table, DenseRows) else DenseRows(np.ascontiguousarray(table, dtype=np.float32))
    make = helper.make_node
    inits.append(_const("user_table", np.ascontiguousarray(rows.values)))
    if rows.values.dtype == np.float32:
        nodes.append(make("Gather", ["user_table", USER_INPUT], [out], axis=0, name="gather_user_rows"))
        return "fp32"
    nodes += [
        make("Gather", ["user_table", USER_INPUT], ["user_rows_stored"], axis=0, name="gather_user_rows"),
        make("Cast", ["user_rows_stored"], ["user_rows_f32" if rows.scale is not None else out], to=TensorProto.FLOAT),
    ]
    if rows.scale is not None:
        inits += [_const("user_scale", rows.scale.astype(np.float32)), _const("axis_1", np.array([1], np.int64))]
        nodes += [
            make("Gather", ["user_scale", USER_INPUT], ["row_scale"], axis=0),
            make("Unsqueeze", ["row_scale", "axis_1"], ["row_scale_2d"]),
            make("Mul", ["user_rows_f32", "row_scale_2d"], [out]),
        ]
        return "int8"
    return "fp16"


def packed_rows_nbytes(table: PackedTable | PrefixTable) -> int:
    """Bytes of the table arrays a packed user tower holds (row pointers, columns if CSR, values, scale)."""
    indices = table.indices.nbytes if isinstance(table, PackedTable) else 0
    scale = 0 if table.scale is None else table.scale.nbytes
    return int(table.indptr.nbytes + indices + table.values.nbytes + scale)


def _packed_rows(table: PackedTable | PrefixTable, nodes: list, inits: list, out: str) -> None:
    """Nodes that expand rows ``user`` of a packed CSR or prefix table into ``out`` ``[B, d]`` float32."""
    dim = table.shape[1]
    indptr = table.indptr
    counts = np.diff(indptr.astype(np.int64))
    max_row_nnz = max(int(counts.max()) if len(counts) else 0, 1)
    prefix = isinstance(table, PrefixTable)
    if not prefix:
        inits.append(_const("csr_indices", table.indices if table.nnz else np.zeros(1, table.indices.dtype)))
    inits += [
        _const("csr_indptr", indptr),
        _const("csr_values", table.values if table.nnz else np.zeros(1, table.values.dtype)),
        _const("one_i64", np.array(1, dtype=np.int64)),
        _const("zero_i64", np.array(0, dtype=np.int64)),
        _const("zero_f32", np.array(0.0, dtype=np.float32)),
        _const("spare_column", np.array(dim, dtype=np.int64)),
        _const("row_offsets", np.arange(max_row_nnz, dtype=np.int64)[None, :]),
        _const("axis_1", np.array([1], dtype=np.int64)),
        _const("width_plus_one", np.array([dim + 1], dtype=np.int64)),
        _const("slice_start", np.array([0], dtype=np.int64)),
        _const("slice_stop", np.array([dim], dtype=np.int64)),
    ]
    make = helper.make_node
    nodes += [
        make("Add", [USER_INPUT, "one_i64"], ["user_next"]),
        make("Gather", ["csr_indptr", USER_INPUT], ["row_start_narrow"], axis=0),
        make("Gather", ["csr_indptr", "user_next"], ["row_stop_narrow"], axis=0),
        make("Cast", ["row_start_narrow"], ["row_start"], to=TensorProto.INT64),
        make("Cast", ["row_stop_narrow"], ["row_stop"], to=TensorProto.INT64),
        make("Sub", ["row_stop", "row_start"], ["row_length"]),
        make("Unsqueeze", ["row_start", "axis_1"], ["row_start_2d"]),
        make("Unsqueeze", ["row_length", "axis_1"], ["row_length_2d"]),
        make("Add", ["row_start_2d", "row_offsets"], ["positions_raw"]),  # [B, R]
        make("Less", ["row_offsets", "row_length_2d"], ["valid"]),  # [B, R]
        make("Where", ["valid", "positions_raw", "zero_i64"], ["positions"]),
    ]
    if prefix:  # the i-th value of a row is column i: [1, R] offsets broadcast to [B, R]
        nodes.append(make("Where", ["valid", "row_offsets", "spare_column"], ["columns"]))
    else:
        nodes += [
            make("Gather", ["csr_indices", "positions"], ["columns_narrow"], axis=0),
            make("Cast", ["columns_narrow"], ["columns_raw"], to=TensorProto.INT64),
            make("Where", ["valid", "columns_raw", "spare_column"], ["columns"]),
        ]
    nodes += [
        make("Gather", ["csr_values", "positions"], ["values_stored"], axis=0),
        make("Cast", ["values_stored"], ["values_raw"], to=TensorProto.FLOAT),
    ]
    if table.value_dtype == "int8":
        inits.append(_const("csr_scale", table.scale))
        nodes += [
            make("Gather", ["csr_scale", USER_INPUT], ["row_scale"], axis=0),
            make("Unsqueeze", ["row_scale", "axis_1"], ["row_scale_2d"]),
            make("Mul", ["values_raw", "row_scale_2d"], ["values_scaled"]),
        ]
        scaled = "values_scaled"
    else:
        scaled = "values_raw"
    nodes += [
        make("Where", ["valid", scaled, "zero_f32"], ["values"]),
        make("Shape", [USER_INPUT], ["batch_shape"]),
        make("Concat", ["batch_shape", "width_plus_one"], ["block_shape"], axis=0),
        make(
            "ConstantOfShape",
            ["block_shape"],
            ["zero_block"],
            value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
        ),
        make("ScatterElements", ["zero_block", "columns", "values"], ["rows_padded"], axis=1),
        make("Slice", ["rows_padded", "slice_start", "slice_stop", "axis_1"], [out]),
    ]


def _user_part(
    user_rows: np.ndarray | DenseRows | PackedTable | PrefixTable, nodes: list, inits: list, out: str
) -> dict[str, Any]:
    if isinstance(user_rows, (PackedTable, PrefixTable)):
        _packed_rows(user_rows, nodes, inits, out)
        return {
            "layout": "packed",
            "table_layout": user_rows.layout,
            "values": user_rows.value_dtype,
            "max_row_nnz": int(np.diff(user_rows.indptr.astype(np.int64)).max(initial=0)),
        }
    stored = _dense_rows(user_rows, nodes, inits, out)
    return {"layout": "dense", "values": stored}


def _model(nodes: list, inits: list, inputs: list, outputs: list, name: str, doc: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sparserec.export", doc_string=doc
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def build_user_tower(
    user_rows: np.ndarray | DenseRows | PackedTable | PrefixTable, dim: int
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """``user`` int64 [B] -> ``user_vector`` float32 [B, dim].

    Args:
        user_rows: the dense ``[n_users, dim]`` float32 served vectors, a :class:`DenseRows` in a
            stored dtype, or a packed CSR or prefix table (users only).
    Returns:
        ``(model, info)``, ``info`` describing the layout.
    """
    nodes: list = []
    inits: list = []
    info = _user_part(user_rows, nodes, inits, TOWER_OUTPUT)
    model = _model(
        nodes,
        inits,
        [helper.make_tensor_value_info(USER_INPUT, TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info(TOWER_OUTPUT, TensorProto.FLOAT, ["batch", dim])],
        "user_tower",
        f"user ids -> user vectors ({info['layout']} rows)",
    )
    return model, info


def build_scorer(
    user_rows: np.ndarray | DenseRows | PackedTable | PrefixTable, item_vectors: np.ndarray
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """``user`` int64 [B], ``k`` int64 [1] -> ``scores`` [B, k] float32, ``items`` [B, k] int64.

    Scores every item with ``MatMul`` against the dense item matrix, then ``TopK`` (largest, sorted).
    """
    item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    nodes: list = []
    inits: list = [_const("item_matrix_t", np.ascontiguousarray(item_vectors.T))]
    info = _user_part(user_rows, nodes, inits, "user_vector")
    nodes += [
        helper.make_node("MatMul", ["user_vector", "item_matrix_t"], ["all_scores"], name="score_items"),
        helper.make_node("TopK", ["all_scores", K_INPUT], [SCORE_OUTPUT, ITEM_OUTPUT], axis=1, largest=1, sorted=1),
    ]
    model = _model(
        nodes,
        inits,
        [
            helper.make_tensor_value_info(USER_INPUT, TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info(K_INPUT, TensorProto.INT64, [1]),
        ],
        [
            helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.FLOAT, ["batch", "k"]),
            helper.make_tensor_value_info(ITEM_OUTPUT, TensorProto.INT64, ["batch", "k"]),
        ],
        "scorer",
        f"user ids, k -> top-k items by inner product ({info['layout']} user rows, dense items)",
    )
    return model, info


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by the graph's initializers."""
    return int(sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer))


def save_model(model: onnx.ModelProto, path: str | Path) -> None:
    onnx.save_model(model, str(path))


def session(model: str | Path | bytes, threads: int = 1, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
    """An onnxruntime session with ``threads`` intra-op threads, one inter-op thread and errors-only logs.

    The one place the project's sessions are set up: ``model`` is a file or a serialized model, and
    ``providers`` e.g. ``("CUDAExecutionProvider", "CPUExecutionProvider")`` for a GPU. (The memory
    probe in ``_RSS_SCRIPT`` below keeps its own copy: it runs in a bare interpreter that imports
    nothing of this project before its baseline.)"""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=list(providers))


def run_tower(sess, users: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """User vectors from a user-tower session, ``[len(users), d]``."""
    users = np.asarray(users, dtype=np.int64)
    parts = [
        sess.run([TOWER_OUTPUT], {USER_INPUT: users[s : s + batch_size]})[0] for s in range(0, len(users), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def run_scorer(sess, users: np.ndarray, k: int, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [U, k], items [U, k])`` from a scorer session."""
    users = np.asarray(users, dtype=np.int64)
    scores, items = [], []
    for start in range(0, len(users), batch_size):
        s, i = sess.run(
            [SCORE_OUTPUT, ITEM_OUTPUT],
            {USER_INPUT: users[start : start + batch_size], K_INPUT: np.array([k], dtype=np.int64)},
        )
        scores.append(s)
        items.append(i)
    return np.concatenate(scores), np.concatenate(items)


def drop_preprocess_advice(record) -> bool:
    """``logging`` filter for the root logger, installed by our CLIs (library code leaves logging alone).

    ``quantize_dynamic`` logs "Please consider to run pre-processing before quantization" on the
    root logger at every call; the scorer is one MatMul + TopK, which pre-processing does not change.
    """
    return "pre-processing before quantization" not in record.getMessage()


def quantize_scorer_int8(source: str | Path, target: str | Path) -> None:
    """Dynamic int8 quantisation (onnxruntime.quantization) of the scorer's item ``MatMul``.

    onnxruntime logs a pre-processing advice on the root logger; CLIs drop it with
    :func:`drop_preprocess_advice`, library callers see it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source), str(target), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8, per_channel=False
    )


_RSS_SCRIPT = r"""
import json, sys
import numpy as np
import onnxruntime as ort
import psutil
from onnx import TensorProto, helper

def make_session(model):  # export.to_onnx.session's settings (see there)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

# warm the runtime (environment, thread pools, kernel registry) on a trivial graph first
graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "warm",
                          [helper.make_tensor_value_info("x", TensorProto.INT64, [None])],
                          [helper.make_tensor_value_info("y", TensorProto.INT64, [None])])
warm = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]); warm.ir_version = 8
make_session(warm.SerializeToString()).run(None, {"x": np.zeros(2, np.int64)})
path, feeds = sys.argv[1], json.loads(sys.argv[2])
process = psutil.Process()
before = process.memory_info().rss
sess = make_session(path)
loaded = process.memory_info().rss
sess.run(None, {name: np.asarray(value, dtype=np.int64) for name, value in feeds.items()})
ran = process.memory_info().rss
print(json.dumps({"session_rss_delta": loaded - before, "after_run_rss_delta": ran - before}))
"""


def session_rss_delta(path: str | Path, feeds: dict[str, list[int]]) -> dict[str, int]:
    """Resident memory an onnxruntime session adds, measured in a fresh Python process.

    The runtime is warmed on a trivial graph first, so the delta is the model's own cost.

    Returns:
        ``{"session_rss_delta": bytes after load, "after_run_rss_delta": bytes after one run}``.
    """
    done = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(path), json.dumps(feeds)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])
