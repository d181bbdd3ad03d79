"""Train a recommender, dense or with Dynamic Sparse Learning.

    python -m train --data ml-100k --model lightgcn --out runs/lgn --epochs 200 --seed 2024
    python -m train --data ml-100k --model mf --out runs/mf-dsl --sparsity.density=0.2 --optim.lr=1e-3
    python -m train --data ml-100k --model lightgcn --out runs/lgn --resume      # continue after a stop
    python -m train --data path/to/ratings.csv --data.threshold=4 --model mf --out runs/mine
    python -m train --data examples/ratings.csv --data.columns user=User-ID,item=ISBN --model mf --out runs/ex
    python -m train --help                                                       # every config key
    torchrun --standalone --nproc-per-node=2 -m train --data ml-100k ...        # data parallel (README: Scaling out)

Writes ``<out>/metrics.json``, ``<out>/best.safetensors``, ``<out>/checkpoint.safetensors`` and ``<out>/data/``.
"""

from __future__ import annotations

import sys

from .cli import train_main as main

if __name__ == "__main__":
    sys.exit(main())
