"""The service's own Prometheus metrics, served by BentoML's /metrics beside its defaults.

    from serving.metrics import service_metrics
    m = service_metrics()               # in a worker, after BentoML has set up Prometheus
    m.request_seconds.labels(endpoint="/recommend", artifact="ml100k@1a2b3c4d5e6f").observe(0.002)

Made with `prometheus_client`, the library BentoML's metrics API (`bentoml.metrics`, now a
deprecated alias) hands out. BentoML runs Prometheus in multiprocess mode: each worker writes
its samples to files in PROMETHEUS_MULTIPROC_DIR, set when the worker starts, and /metrics (any
worker) collects all of them with `MultiProcessCollector`, so counters and histograms are totals
over every worker. That is why the objects are made on first use in a worker, never at import
(the service module is imported before PROMETHEUS_MULTIPROC_DIR is set).

| metric                                  | labels                     | what                                     |
| --------------------------------------- | -------------------------- | ---------------------------------------- |
| sparserec_request_seconds               | endpoint, artifact         | time in the API method (parsed request   |
|                                         |                            | to answer object; HTTP is BentoML's own  |
|                                         |                            | bentoml_service_request_duration_seconds)|
| sparserec_search_seconds                | endpoint, artifact         | index search and filtering alone         |
| sparserec_batch_size                    | endpoint                   | queries answered by one search call      |
| sparserec_queries_total                 | endpoint, kind, artifact   | kind: known, fallback, fold_in           |
| sparserec_filtered_queries_total        | filter, artifact           | filter: exclude_items, allow_items       |
| sparserec_reloads_total                 | outcome                    | swapped, refused (failed verification)   |

`artifact` is ``<name>@<first 12 hex digits of the manifest sha256>``.

BentoML keeps those files in ``$BENTOML_HOME/prometheus_multiproc_dir`` and empties that folder
whenever a server starts (bentoml/serving.py, `ensure_prometheus_dir`): two servers on one machine
with the same BENTOML_HOME would wipe each other's counts. `python -m serving` starts each server
(shards and router included) through `serving.bentoml_serve`, which gives it a folder of its own;
a server started by `bentoml serve` directly needs a BENTOML_HOME of its own for that.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

_lock = threading.Lock()
_metrics: ServiceMetrics | None = None


@dataclasses.dataclass(frozen=True)
class ServiceMetrics:
    request_seconds: Any
    search_seconds: Any
    batch_size: Any
    queries: Any
    filtered: Any
    reloads: Any


def service_metrics() -> ServiceMetrics:
    """This process's metric objects, made once (a second registration would be refused)."""
    global _metrics
    with _lock:
        if _metrics is None:
            import prometheus_client as prom  # here: after BentoML set PROMETHEUS_MULTIPROC_DIR

            _metrics = ServiceMetrics(
                request_seconds=prom.Histogram(
                    "sparserec_request_seconds",
                    "Time in the API method, per endpoint",
                    ["endpoint", "artifact"],
                    buckets=LATENCY_BUCKETS,
                ),
                search_seconds=prom.Histogram(
                    "sparserec_search_seconds",
                    "Index search and filtering time",
                    ["endpoint", "artifact"],
                    buckets=LATENCY_BUCKETS,
                ),
                batch_size=prom.Histogram(
                    "sparserec_batch_size", "Queries answered by one search call", ["endpoint"], buckets=BATCH_BUCKETS
                ),
                queries=prom.Counter(
                    "sparserec_queries",
                    "Queries answered, by kind (known, fallback, fold_in)",
                    ["endpoint", "kind", "artifact"],
                ),
                filtered=prom.Counter(
                    "sparserec_filtered_queries", "Queries with an item filter", ["filter", "artifact"]
                ),
                reloads=prom.Counter("sparserec_reloads", "Artifact reloads by outcome", ["outcome"]),
            )
        return _metrics
