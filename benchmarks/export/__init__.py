"""Export benchmarks: artifact sizes, export fidelity, LightGCN mask_output, the sparse index against flat."""
