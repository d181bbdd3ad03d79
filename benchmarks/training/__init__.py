"""Training benchmarks: epoch speed (CPU/GPU), data-parallel throughput, 1M-row data load."""
