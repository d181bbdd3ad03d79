"""Time the NMF behind ``sparsity.mask_init=nmf`` on a dataset's train split (one thread by default).

    OMP_NUM_THREADS=1 python -m benchmarks.quality.nmf --data gowalla      # 29,858 x 40,981, rank 64

Prints one JSON line: the matrix, the rank, the iterations, the seconds and the relative
reconstruction error ``||X - P Q^T||_F / ||X||_F``. Writes no file.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from train.config import load_config
from train.data import load_dataset
from train.sparsity.nmf import ITERATIONS, interaction_matrix, nmf, reconstruction_error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality.nmf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="ml-100k")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (OMP_NUM_THREADS sets numpy's BLAS)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset(load_config(overrides=[f"data.name={args.data}"]).data, progress=False)
    matrix = interaction_matrix(*dataset.train, dataset.n_users, dataset.n_items)
    start = time.perf_counter()
    p, q = nmf(matrix, args.rank, iterations=args.iterations, seed=args.seed)
    seconds = time.perf_counter() - start
    error = math.sqrt(reconstruction_error(matrix, p, q)) / math.sqrt(matrix.nnz)
    print(
        json.dumps(
            {
                "data": args.data,
                "shape": list(matrix.shape),
                "nnz": int(matrix.nnz),
                "rank": args.rank,
                "iterations": args.iterations,
                "seconds": round(seconds, 3),
                "relative_error": round(error, 6),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
