"""Load tests and inference benchmarks for sparserec.

- `python -m loadtest run ...`: a real server under locust traffic (loadtest.run, loadtest.locustfile).
- `python -m loadtest.bench ...`: top-k backends in-process, dense against sparse (loadtest.bench).
"""
