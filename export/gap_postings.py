"""Posting lists with bit-packed id gaps: the ``gaps`` layout of the sparse item index.

The item table ``[n_items, dim]`` transposed into one posting list per dimension (as the
``postings`` layout), but each list's item ids are stored as the gaps between consecutive ids
(``id - previous id - 1``; a list's first gap counts from -1), packed in blocks of ``BLOCK``
gaps: every gap of a block takes the bit width of the block's largest gap (0 to 31 bits; the
width is one byte per block). Values stay float32, in posting order. Arrays (``encode`` returns
them, the artifact stores them as ``items.sparse.<role>.npy``):

- ``indptr``  int64 ``[dim + 1]``: entry range of each dimension (into ``values``);
- ``bitptr``  int64 ``[dim + 1]``: first bit of each dimension's gaps in ``words``;
- ``widths``  uint8 ``[blocks]``: bit width of each block, the blocks of dimension 0 first;
- ``words``   uint64 ``[ceil(bits / 64) + 1]``: the packed gaps, little-endian bit order, one
  spare word so that a gap crossing a word boundary is read with two loads and no branch;
- ``values``  float32 ``[nnz]``.

Search (``search``) is exact: for each query, the numba kernel walks the posting lists of the
query's non-zero dims into a float32 accumulator of ``n_items`` scores (an item outside every
such list scores exactly 0), then keeps the top ``k`` with a heap over all ``n_items``: highest
score first, ties by the lower item id (``export.quality.top_k_rows``' rule). The kernel reads
without bounds checks, so arrays are checked once by ``validate`` (widths, pointers, every list
decoding to increasing ids below ``n_items``) before they are searched.

    >>> arrays = encode(postings_indptr, postings_indices, postings_values, n_items)
    >>> validate(arrays, dim, n_items)                    # raises ValueError naming the problem
    >>> scores, ids = search(arrays, n_items, queries, k) # [B, dim] -> [B, k] float32, int64
    >>> indptr, indices, values = decode(arrays)          # plain int32 CSR postings again
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numba
import numpy as np


def _can_cache() -> bool:
    """Whether numba may cache the compiled kernels (beside this file, or in ``NUMBA_CACHE_DIR``);
    a read-only install compiles them once per process instead (numba would raise on caching)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return True
    folder = Path(__file__).resolve().parent
    cache = folder / "__pycache__"
    return os.access(cache if cache.exists() else folder, os.W_OK)


_CACHE = _can_cache()
ROLES = ("indptr", "bitptr", "widths", "words", "values")
BLOCK = 32  # gaps per bit width
_MAX_WIDTH = 31  # any int32 gap


def block_pointers(indptr: np.ndarray) -> np.ndarray:
    """``int64 [dim + 1]``: first block (into ``widths``) of each dimension."""
    counts = np.diff(np.asarray(indptr, dtype=np.int64))
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(-(-counts // BLOCK), out=out[1:])
    return out


def encode(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, n_items: int) -> dict[str, np.ndarray]:
    """Gap-code CSR posting lists ``[dim, n_items]`` (indices sorted, no duplicate within a list).

    Returns:
        ``{"indptr", "bitptr", "widths", "words", "values"}`` (module docstring).
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    ids = np.asarray(indices, dtype=np.int64)
    values = np.ascontiguousarray(values, dtype=np.float32)
    if (
        indptr.ndim != 1
        or len(indptr) < 1
        or indptr[0] != 0
        or indptr[-1] != len(ids)
        or len(values) != len(ids)
        or (np.diff(indptr) < 0).any()
    ):
        raise ValueError(f"postings: indptr {indptr.shape}, indices {ids.shape}, values {values.shape} disagree")
    if len(ids) and (ids.min() < 0 or ids.max() >= n_items):
        raise ValueError(f"postings: item ids outside [0, {n_items})")
    previous = np.empty_like(ids)
    previous[1:] = ids[:-1]
    counts = np.diff(indptr)
    previous[indptr[:-1][counts > 0]] = -1  # a list's first gap counts from -1
    gaps = ids - previous - 1
    if (gaps < 0).any():
        raise ValueError("postings: item ids within a list must be strictly increasing (sort, no duplicates)")
    blockptr = block_pointers(indptr)
    widths = np.zeros(int(blockptr[-1]), dtype=np.uint8)
    bitptr = np.zeros(len(indptr), dtype=np.int64)
    _widths(indptr, blockptr, gaps, widths, bitptr)
    words = np.zeros(int(-(-bitptr[-1] // 64)) + 1, dtype=np.uint64)
    _pack(indptr, blockptr, bitptr, widths, gaps, words)
    return {"indptr": indptr, "bitptr": bitptr, "widths": widths, "words": words, "values": values}


@numba.njit(cache=_CACHE)
def _widths(indptr, blockptr, gaps, widths, bitptr):  # pragma: no cover - compiled
    """Each block's bit width (of its largest gap) and each dimension's first bit."""
    bits = 0
    for d in range(indptr.shape[0] - 1):
        bitptr[d] = bits
        block = blockptr[d]
        for first in range(indptr[d], indptr[d + 1], BLOCK):
            last = min(first + BLOCK, indptr[d + 1])
            largest = 0
            for j in range(first, last):
                largest = max(largest, gaps[j])
            width = 0
            while largest >> width:
                width += 1
            widths[block] = width
            bits += width * (last - first)
            block += 1
    bitptr[indptr.shape[0] - 1] = bits


@numba.njit(cache=_CACHE)
def _pack(indptr, blockptr, bitptr, widths, gaps, words):  # pragma: no cover - compiled
    for d in range(indptr.shape[0] - 1):
        position = bitptr[d]
        block = blockptr[d]
        for first in range(indptr[d], indptr[d + 1], BLOCK):
            width = widths[block]
            block += 1
            for j in range(first, min(first + BLOCK, indptr[d + 1])):
                value = np.uint64(gaps[j])
                offset = np.uint64(position & 63)
                words[position >> 6] |= value << offset
                if offset + np.uint64(width) > np.uint64(64):
                    words[(position >> 6) + 1] |= value >> (np.uint64(64) - offset)
                position += width


def nbytes(arrays: dict[str, np.ndarray]) -> int:
    """Bytes of the four arrays."""
    return int(sum(np.asarray(arrays[role]).nbytes for role in ROLES))


@numba.njit(cache=_CACHE, nogil=True, inline="always")
def _read(words, position, width):  # pragma: no cover - compiled
    """The ``width``-bit gap at bit ``position`` (two loads; the spare last word makes the second safe)."""
    word = position >> 6
    offset = np.uint64(position & 63)
    low = words[word] >> offset
    high = (words[word + 1] << np.uint64(1)) << (np.uint64(63) - offset)  # 0 when offset is 0
    return np.int64((low | high) & ((np.uint64(1) << np.uint64(width)) - np.uint64(1)))


@numba.njit(cache=_CACHE, nogil=True)
def _check(indptr, blockptr, bitptr, widths, words, n_items):  # pragma: no cover - compiled
    """-1 if every list decodes to increasing ids below ``n_items`` ending at the next list's bit, else the dim."""
    for d in range(indptr.shape[0] - 1):
        position = bitptr[d]
        block = blockptr[d]
        item = -1
        for first in range(indptr[d], indptr[d + 1], BLOCK):
            width = widths[block]
            block += 1
            for _ in range(first, min(first + BLOCK, indptr[d + 1])):
                item += _read(words, position, width) + 1
                position += width
                if item >= n_items:
                    return d
        if position != bitptr[d + 1]:
            return d
    return -1


def validate(arrays: dict[str, np.ndarray], dim: int, n_items: int) -> None:
    """Raise ``ValueError`` unless the arrays are ``dim`` well-formed gap-coded lists over ``n_items`` items."""
    missing = set(ROLES) - set(arrays)
    if missing:
        raise ValueError(f"gaps layout: missing array(s) {sorted(missing)}")
    for role, dtype in (
        ("indptr", np.int64),
        ("bitptr", np.int64),
        ("widths", np.uint8),
        ("words", np.uint64),
        ("values", np.float32),
    ):
        array = np.asarray(arrays[role])
        if array.dtype != dtype or array.ndim != 1:
            raise ValueError(
                f"gaps layout: {role} must be a 1-d {np.dtype(dtype)} array, got {array.dtype} {array.shape}"
            )
    indptr, bitptr, widths = (np.asarray(arrays[role]) for role in ("indptr", "bitptr", "widths"))
    words, values = np.asarray(arrays["words"]), np.asarray(arrays["values"])
    if indptr.shape != (dim + 1,) or bitptr.shape != (dim + 1,):
        raise ValueError(f"gaps layout: indptr {indptr.shape} and bitptr {bitptr.shape} must be [{dim + 1}]")
    if indptr[0] != 0 or indptr[-1] != len(values) or (np.diff(indptr) < 0).any():
        raise ValueError(f"gaps layout: indptr is not the pointers of {len(values)} entries")
    blockptr = block_pointers(indptr)
    if len(widths) != blockptr[-1] or (len(widths) and int(widths.max()) > _MAX_WIDTH):
        raise ValueError(f"gaps layout: widths must be {int(blockptr[-1])} block widths of at most {_MAX_WIDTH} bits")
    if bitptr[0] != 0 or (np.diff(bitptr) < 0).any() or len(words) != -(-int(bitptr[-1]) // 64) + 1:
        raise ValueError("gaps layout: bitptr and words disagree (bits per dimension, one spare word)")
    bad = _check(indptr, blockptr, bitptr, widths, words, np.int64(n_items))
    if bad >= 0:
        raise ValueError(
            f"gaps layout: the list of dimension {bad} does not decode to increasing item ids "
            f"below {n_items} ending where the next list starts"
        )


@numba.njit(cache=_CACHE, nogil=True)
def _accumulate(dims, weights, indptr, blockptr, bitptr, widths, words, values, scores):  # pragma: no cover
    """``scores[item] += weight * value`` over the lists of ``dims`` (validated arrays)."""
    for t in range(dims.shape[0]):
        d = dims[t]
        weight = weights[t]
        position = bitptr[d]
        block = blockptr[d]
        item = -1
        for first in range(indptr[d], indptr[d + 1], BLOCK):
            width = widths[block]
            block += 1
            for j in range(first, min(first + BLOCK, indptr[d + 1])):
                item += _read(words, position, width) + 1
                position += width
                scores[item] += weight * values[j]


@numba.njit(cache=_CACHE, nogil=True)
def _sift_down(heap_scores, heap_ids, size, at):  # pragma: no cover - compiled
    """Restore the heap below ``at``: the root is the lowest score, of equal scores the highest id."""
    while True:
        left = 2 * at + 1
        if left >= size:
            return
        child = left
        right = left + 1
        if right < size and (
            heap_scores[right] < heap_scores[left]
            or (heap_scores[right] == heap_scores[left] and heap_ids[right] > heap_ids[left])
        ):
            child = right
        if heap_scores[child] < heap_scores[at] or (
            heap_scores[child] == heap_scores[at] and heap_ids[child] > heap_ids[at]
        ):
            heap_scores[at], heap_scores[child] = heap_scores[child], heap_scores[at]
            heap_ids[at], heap_ids[child] = heap_ids[child], heap_ids[at]
            at = child
        else:
            return


@numba.njit(cache=_CACHE, nogil=True)
def _search(
    query_ptr,
    query_dims,
    query_values,
    indptr,
    blockptr,
    bitptr,
    widths,
    words,
    values,
    top_n,
    scores,
    out_scores,
    out_ids,
):  # pragma: no cover - compiled
    """Top ``top_n`` of every query row into ``out_*[:, :top_n]`` (heap order; sorted by the caller)."""
    n_items = scores.shape[0]
    for row in range(query_ptr.shape[0] - 1):
        lo = query_ptr[row]
        hi = query_ptr[row + 1]
        _accumulate(query_dims[lo:hi], query_values[lo:hi], indptr, blockptr, bitptr, widths, words, values, scores)
        heap_scores = out_scores[row]
        heap_ids = out_ids[row]
        for i in range(top_n):
            heap_scores[i] = scores[i]
            heap_ids[i] = i
        for at in range(top_n // 2 - 1, -1, -1):
            _sift_down(heap_scores, heap_ids, top_n, at)
        for i in range(top_n, n_items):
            if scores[i] > heap_scores[0]:  # an equal score loses: it has the higher id
                heap_scores[0] = scores[i]
                heap_ids[0] = i
                _sift_down(heap_scores, heap_ids, top_n, 0)
        scores[:] = 0.0


_buffers = threading.local()  # one n_items accumulator per thread, reused across calls


def _accumulator(n_items: int) -> np.ndarray:
    scores = getattr(_buffers, "scores", None)
    if scores is None or len(scores) != n_items:
        scores = np.zeros(n_items, dtype=np.float32)
        _buffers.scores = scores
    return scores


def _query_lists(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero dims and values of each query row (CSR pointers, dims, values)."""
    rows, dims = np.nonzero(queries)
    pointers = np.zeros(len(queries) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(queries)), out=pointers[1:])
    return pointers, dims.astype(np.int64), np.ascontiguousarray(queries[rows, dims], dtype=np.float32)


def _coded(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """The kernels' arguments: indptr, block pointers, bitptr, widths, words, values."""
    return (
        arrays["indptr"],
        block_pointers(arrays["indptr"]),
        arrays["bitptr"],
        arrays["widths"],
        arrays["words"],
        arrays["values"],
    )


def scores(arrays: dict[str, np.ndarray], n_items: int, query: np.ndarray) -> np.ndarray:
    """``float32 [n_items]``: every item's exact score for one ``[dim]`` query (a fresh array)."""
    _, dims, weights = _query_lists(np.asarray(query, dtype=np.float32)[None, :])
    out = np.zeros(n_items, dtype=np.float32)
    _accumulate(dims, weights, *_coded(arrays), out)
    return out


def search(arrays: dict[str, np.ndarray], n_items: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of validated arrays (module docstring) for ``[B, dim]`` float32 queries.

    Returns:
        ``(scores [B, k] float32, ids [B, k] int64)``, highest first, ties by the lower id;
        ``-inf`` / ``-1`` past the catalogue.
    """
    n_rows = len(queries)
    top_n = min(int(k), int(n_items))
    out_scores = np.full((n_rows, k), -np.inf, dtype=np.float32)
    out_ids = np.full((n_rows, k), -1, dtype=np.int64)
    if top_n == 0 or n_rows == 0:
        return out_scores, out_ids
    pointers, dims, weights = _query_lists(queries)
    _search(pointers, dims, weights, *_coded(arrays), np.int64(top_n), _accumulator(int(n_items)), out_scores, out_ids)
    order = np.lexsort((out_ids, -out_scores), axis=1)  # -(-inf) sorts the empty slots last
    return np.take_along_axis(out_scores, order, axis=1), np.take_along_axis(out_ids, order, axis=1)


def decode(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The plain CSR posting lists ``(indptr int32, indices int32, values float32)`` of validated arrays."""
    indptr = np.asarray(arrays["indptr"], dtype=np.int64)
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    bitptr, widths, words = (np.asarray(arrays[role]) for role in ("bitptr", "widths", "words"))
    _decode(indptr, block_pointers(indptr), bitptr, widths, words, indices)
    return indptr.astype(np.int32), indices, np.asarray(arrays["values"], dtype=np.float32)


@numba.njit(cache=_CACHE, nogil=True)
def _decode(indptr, blockptr, bitptr, widths, words, indices):  # pragma: no cover - compiled
    for d in range(indptr.shape[0] - 1):
        position = bitptr[d]
        block = blockptr[d]
        item = -1
        for first in range(indptr[d], indptr[d + 1], BLOCK):
            width = widths[block]
            block += 1
            for j in range(first, min(first + BLOCK, indptr[d + 1])):
                item += _read(words, position, width) + 1
                position += width
                indices[j] = item
