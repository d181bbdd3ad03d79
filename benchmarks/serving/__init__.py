"""Serving benchmarks: served latency in-process and over HTTP, replicas' memory, shards, the make-demo tour."""
