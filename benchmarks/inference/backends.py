"""Top-k inner-product backends for the in-process benchmark (`benchmarks.inference.bench`), one class each.

Every backend is built from a *case folder* (written by `benchmarks.inference.bench`) and answers
`search(user_rows int64 [B], k) -> ids int64 [B, k]` (highest score first): it gathers the users'
query vectors itself (ONNX does it inside its graph), so every backend is timed on the same work.

| name             | what is scanned                                                   | exact |
| ---------------- | ----------------------------------------------------------------- | ----- |
| torch-dense      | torch matmul + topk over the dense item matrix                    | yes   |
| torch-cuda       | the same on a CUDA device                                         | yes   |
| onnx-fp32        | onnxruntime, the scorer graph (MatMul + TopK, export.to_onnx)     | yes   |
| onnx-int8        | onnxruntime, the dynamically quantised scorer (int8 MatMul)      | no    |
| onnx-fp32-cuda   | onnxruntime CUDAExecutionProvider, fp32 scorer                    | yes   |
| scipy-csr        | scipy CSR item table @ query vectors (int32 indices, fp32 values) | yes   |
| packed-scan      | the artifact's packed CSR arrays as stored (uint32 row pointers,  | yes   |
|                  | uint8 columns), scanned in row blocks on `threads` threads        |       |
| faiss-flat/ivf/hnsw/sq8/pq | export.index.ItemIndex of that kind                     | flat  |
| sparse           | export.sparse_index.SparseIndex over the stored item structure:  | yes   |
|                  | prefix shards (faiss IndexShards) or postings (sparse_dot_topn)   |       |

Libraries are imported inside each class, so a worker process loads only its own.
Case folder files: `users.npy` (float32 [n_users, d]), `items.npy` (float32 [n_items, d]),
`items.{indptr,indices,values}.npy` (packed CSR of the items), `case.json` (paths of the ONNX
scorers, faiss parameters).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from export.quality import top_k_rows

CPU_BACKENDS = (
    "torch-dense",
    "onnx-fp32",
    "onnx-int8",
    "scipy-csr",
    "packed-scan",
    "faiss-flat",
    "faiss-ivf",
    "faiss-hnsw",
    "faiss-sq8",
    "faiss-pq",
    "sparse",
)
CUDA_BACKENDS = ("torch-cuda", "onnx-fp32-cuda")
BACKENDS = CPU_BACKENDS + CUDA_BACKENDS
EXACT_BACKENDS = (
    "torch-dense",
    "torch-cuda",
    "onnx-fp32",
    "onnx-fp32-cuda",
    "scipy-csr",
    "packed-scan",
    "faiss-flat",
    "sparse",
)
QUERY_BLOCK = 32  # numpy/scipy scans score this many queries at a time, bounding the score matrix


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (no CUDA device, no CUDA provider): the reason is reported."""


def _case(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "case.json").read_text())


class _VectorBackend:
    """Holds the query-side user vectors (loaded before the memory baseline; not counted)."""

    def __init__(self, users: np.ndarray):
        self.users = users

    def queries(self, rows: np.ndarray) -> np.ndarray:
        return self.users[rows]


class TorchDense(_VectorBackend):
    def __init__(self, folder: Path, users: np.ndarray, threads: int, device: str = "cpu"):
        super().__init__(users)
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch sees no CUDA device")
        torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32 = False
        self.torch, self.device = torch, torch.device(device)
        self.items = torch.from_numpy(np.load(folder / "items.npy")).to(self.device)
        self.payload_bytes = self.items.numel() * self.items.element_size()

    def search(self, rows: np.ndarray, k: int) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            q = torch.from_numpy(self.queries(rows)).to(self.device)
            top = torch.topk(q @ self.items.T, min(k, self.items.shape[0]), dim=1)
            return top.indices.cpu().numpy().astype(np.int64)

    def gpu_peak_bytes(self) -> int | None:
        return int(self.torch.cuda.max_memory_allocated()) if self.device.type == "cuda" else None


class OnnxScorer:
    """The scorer graph: user ids in, top-k items out (user rows gathered inside the graph)."""

    def __init__(self, folder: Path, users: np.ndarray, threads: int, which: str = "fp32", device: str = "cpu"):
        import onnxruntime as ort

        from export.to_onnx import session

        case = _case(folder)
        path = Path(case["onnx"][which])
        providers: tuple[str, ...] = ("CPUExecutionProvider",)
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(
                    f"onnxruntime has no CUDAExecutionProvider (has {ort.get_available_providers()})"
                )
            providers = ("CUDAExecutionProvider", "CPUExecutionProvider")
        self.session = session(path, threads, providers)
        self.payload_bytes = path.stat().st_size

    def search(self, rows: np.ndarray, k: int) -> np.ndarray:
        _, items = self.session.run(
            ["scores", "items"], {"user": rows.astype(np.int64), "k": np.array([k], dtype=np.int64)}
        )
        return items.astype(np.int64)


class ScipyCSR(_VectorBackend):
    def __init__(self, folder: Path, users: np.ndarray, threads: int):
        super().__init__(users)
        import scipy.sparse as sp

        indptr = np.load(folder / "items.indptr.npy")
        values = np.load(folder / "items.values.npy").astype(np.float32, copy=False)
        if (folder / "items.scale.npy").is_file():  # int8 values: dequantise once, scipy scans fp32
            values = values * np.repeat(np.load(folder / "items.scale.npy"), np.diff(indptr.astype(np.int64)))
        shape = (len(indptr) - 1, users.shape[1])
        index = np.int32 if int(indptr[-1]) < 2**31 else np.int64
        self.table = sp.csr_matrix(
            (values, np.load(folder / "items.indices.npy").astype(index), indptr.astype(index)), shape=shape
        )
        self.payload_bytes = self.table.data.nbytes + self.table.indices.nbytes + self.table.indptr.nbytes

    def search(self, rows: np.ndarray, k: int) -> np.ndarray:
        queries = self.queries(rows)
        out = []
        for start in range(0, len(queries), QUERY_BLOCK):
            scores = self.table @ queries[start : start + QUERY_BLOCK].T  # [n_items, b]
            out.append(top_k_rows(np.ascontiguousarray(scores.T), k))
        return np.concatenate(out)


class PackedScan(_VectorBackend):
    """Exact scan of the packed arrays as stored: uint32/uint64 row pointers, uint8 columns.

    Item rows are taken in blocks (about ``BLOCK_ELEMENTS`` products each); per block the query
    components of every stored column are gathered (``[B, nnz_block]``), multiplied by the values
    and summed per row (``np.add.reduceat`` along the row); each block keeps its own top-k, merged at
    the end. Blocks run on a thread pool (numpy releases the GIL in these loops). Pure numpy: several
    passes over each block where a compiled CSR kernel (scipy) makes one.
    """

    BLOCK_ELEMENTS = 1 << 20

    def __init__(self, folder: Path, users: np.ndarray, threads: int):
        super().__init__(users)
        self.indptr = np.load(folder / "items.indptr.npy")
        self.indices = np.load(folder / "items.indices.npy")
        self.values = np.load(folder / "items.values.npy")
        scale = folder / "items.scale.npy"  # int8 values: value = int8 * scale[row]
        self.scale = np.load(scale) if scale.is_file() else None
        self.n_items = len(self.indptr) - 1
        self.payload_bytes = (
            self.indptr.nbytes
            + self.indices.nbytes
            + self.values.nbytes
            + (self.scale.nbytes if self.scale is not None else 0)
        )
        self.mean_row_nnz = max(int(self.indptr[-1]) / max(self.n_items, 1), 1.0)
        self.pool = ThreadPoolExecutor(max(1, threads))

    def _block(self, start: int, stop: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        pointers = self.indptr[start : stop + 1].astype(np.int64)
        first, last = int(pointers[0]), int(pointers[-1])
        scores = np.zeros((queries.shape[0], stop - start), dtype=np.float32)
        if last > first:
            products = np.take(queries, self.indices[first:last], axis=1)  # [B, nnz_block]
            values = self.values[first:last].astype(np.float32, copy=False)
            if self.scale is not None:
                values = values * np.repeat(self.scale[start:stop], np.diff(pointers))
            products *= values
            filled = pointers[1:] > pointers[:-1]
            if filled.all():
                scores[:] = np.add.reduceat(products, pointers[:-1] - first, axis=1)
            else:  # reduceat would copy the next row's first product into an empty row
                scores[:, filled] = np.add.reduceat(products, pointers[:-1][filled] - first, axis=1)
        local = top_k_rows(scores, k, ordered=False)  # [B, min(k, block rows)], merged in search()
        return np.take_along_axis(scores, local, axis=1), local + start

    def search(self, rows: np.ndarray, k: int) -> np.ndarray:
        queries = np.ascontiguousarray(self.queries(rows))  # [B, d]
        rows_per_block = int(max(k, min(self.n_items, self.BLOCK_ELEMENTS // (len(queries) * self.mean_row_nnz))))
        starts = range(0, self.n_items, rows_per_block)
        parts = list(self.pool.map(lambda s: self._block(s, min(s + rows_per_block, self.n_items), queries, k), starts))
        scores = np.concatenate([p[0] for p in parts], axis=1)  # [B, candidates]
        ids = np.concatenate([p[1] for p in parts], axis=1)
        return np.take_along_axis(ids, top_k_rows(scores, k, ids=ids), axis=1).astype(np.int64)


class Faiss(_VectorBackend):
    """export.index.ItemIndex of one kind; large tables train on a sample (``train_sample``)."""

    def __init__(self, folder: Path, users: np.ndarray, threads: int, kind: str):
        super().__init__(users)
        import faiss

        from export.index import ItemIndex, default_params

        faiss.omp_set_num_threads(os.cpu_count() or 1)  # building (k-means, graph) on every core; search below
        items = np.load(folder / "items.npy")
        case = _case(folder)
        params = {**default_params(kind, *items.shape), **case.get("faiss", {}).get(kind, {})}
        sample = int(case.get("train_sample") or 0)
        if kind in ("ivf", "pq") and sample and len(items) > sample:
            # ItemIndex.build trains on every item; on a million items that is minutes of k-means on
            # two cores, so train on a fixed random sample, then add everything (same index type)
            self.index = self._build_sampled(faiss, ItemIndex, kind, items, params, sample)
        else:
            self.index = ItemIndex.build(kind, items, **params)
        del items
        faiss.omp_set_num_threads(threads)
        self.params = self.index.params
        self.payload_bytes = self._index_bytes(faiss)

    @staticmethod
    def _build_sampled(faiss, item_index, kind: str, items: np.ndarray, params: dict, sample: int):
        n_items, dim = items.shape
        train = items[np.random.default_rng(0).choice(n_items, sample, replace=False)]
        if kind == "ivf":
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, int(params["nlist"]), faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexPQ(dim, int(params["m"]), int(params["nbits"]), faiss.METRIC_INNER_PRODUCT)
        index.train(train)
        index.add(items)
        return item_index(kind, index, dim, {**params, "train_sample": sample})

    def _index_bytes(self, faiss) -> int:
        return int(faiss.serialize_index(self.index.index).nbytes)

    def search(self, rows: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(self.queries(rows), k)[1]


class Sparse(_VectorBackend):
    """export.sparse_index.SparseIndex (layout auto: prefix where every item row is a prefix and the
    rows come sorted by length, as the bench writes prefix cases; else postings) over the packed
    item arrays of the case (their stored entries are the structure). The bench saves the index
    files into the case (``case.json`` ``sparse``) and this loads them, as the service does."""

    def __init__(self, folder: Path, users: np.ndarray, threads: int):
        super().__init__(users)
        import faiss

        from export.sparse_index import SparseIndex
        from export.to_sparse import PackedTable

        faiss.omp_set_num_threads(threads)
        saved = _case(folder).get("sparse")
        if saved:  # written by the bench like the exporter writes it; loaded as the service loads it
            self.index = SparseIndex.load(
                folder / "sparse", saved["layout"], saved["files"], saved["dim"], saved["params"], saved["n_items"]
            )
        else:
            indptr = np.load(folder / "items.indptr.npy")
            if (folder / "items.scale.npy").is_file():
                raise BackendUnavailable("sparse: int8 item values are not indexed (fp32 only)")
            values = np.load(folder / "items.values.npy").astype(np.float32, copy=False)
            table = PackedTable(
                indptr, np.load(folder / "items.indices.npy"), values, (len(indptr) - 1, users.shape[1]), "fp32"
            )
            self.index = SparseIndex.from_table(table)
            del table, indptr, values
        self.params = self.index.describe()
        self.payload_bytes = int(self.index.nbytes)

    def search(self, rows: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(self.queries(rows), k)[1]


def build(name: str, folder: Path, users: np.ndarray, threads: int):
    """Backend ``name`` over the case in ``folder``."""
    if name == "torch-dense":
        return TorchDense(folder, users, threads)
    if name == "torch-cuda":
        return TorchDense(folder, users, threads, device="cuda")
    if name == "onnx-fp32":
        return OnnxScorer(folder, users, threads, "fp32")
    if name == "onnx-int8":
        return OnnxScorer(folder, users, threads, "int8")
    if name == "onnx-fp32-cuda":
        return OnnxScorer(folder, users, threads, "fp32", device="cuda")
    if name == "scipy-csr":
        return ScipyCSR(folder, users, threads)
    if name == "packed-scan":
        return PackedScan(folder, users, threads)
    if name.startswith("faiss-"):
        return Faiss(folder, users, threads, name.removeprefix("faiss-"))
    if name == "sparse":
        return Sparse(folder, users, threads)
    raise ValueError(f"unknown backend {name!r}; choose one of {list(BACKENDS)}")


def warm_runtime(name: str, threads: int) -> None:
    """Load the backend's library and start its thread pools on a toy problem (before the baseline)."""
    toy = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    if name.startswith("torch"):
        import torch

        torch.set_num_threads(threads)
        torch.topk(torch.from_numpy(toy) @ torch.from_numpy(toy).T, 4, dim=1)
    elif name.startswith("onnx"):
        from onnx import TensorProto, helper

        from export.to_onnx import session

        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "warm",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        session(model.SerializeToString(), threads).run(None, {"x": toy[0]})
    elif name.startswith("faiss"):
        import faiss

        from export.index import ItemIndex  # noqa: F401  (its import cost is not the index's)

        faiss.omp_set_num_threads(threads)
        index = faiss.IndexFlatIP(8)
        index.add(toy)
        index.search(toy, 4)
    elif name == "sparse":
        import faiss
        import scipy.sparse as sp

        from export.sparse_index import SparseIndex

        faiss.omp_set_num_threads(threads)
        SparseIndex.from_prefix(np.full(64, 8), toy.ravel(), 8).search(toy[:2], 4)
        SparseIndex.from_csr(sp.csr_matrix(toy * (toy > 0))).search(toy[:2], 4)
    elif name == "scipy-csr":
        import scipy.sparse as sp

        sp.csr_matrix(toy) @ toy.T
    elif name == "packed-scan":
        with ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(np.sum, [toy] * threads))
