"""The in-process inference benchmark: top-k backends, dense against sparse, each in a fresh process."""
