"""Training: data, models, the DSL sparsifier, the loop (``python -m train``)."""

import os
import sys

# OpenMP threads that finish a parallel region sleep instead of spinning (libgomp spins by default).
# On a shared machine a spinning thread takes the core the other one needs: LightGCN steps on
# Gowalla with 2 threads under load ~10 took 2.5 s spinning and 0.7 s passive. Read when torch
# loads, so only effective when this package is imported first (``python -m train...``).
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
