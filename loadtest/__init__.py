"""The load-test tool: a real sparserec server under locust traffic.

- `python -m loadtest run ...`: one artifact, or two compared, served and loaded (loadtest.run, loadtest.locustfile).
- `python -m loadtest saturation ...`: /recommend beside /ping at saturation (loadtest.saturation).

The in-process inference benchmark lives in the lab: `python -m benchmarks.inference.bench`.
"""
