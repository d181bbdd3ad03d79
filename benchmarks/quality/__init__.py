"""Quality benchmarks: the ML-100K grid, the Gowalla grid, NMF masks, the popularity row."""
