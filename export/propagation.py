"""Moved to :mod:`common.propagation` (shared by train/ and export/); this name stays for old imports."""

from common.propagation import lightgcn_vectors, normalized_adjacency, propagate  # noqa: F401
