"""Realistic traffic against a sparserec server, for locust (run it through `python -m loadtest run`).

    SPARSEREC_ARTIFACT=artifacts/ml100k locust -f loadtest/locustfile.py --headless -u 20 -r 5 -t 30s \\
        -H http://127.0.0.1:3000 --max-p95-ms 200 --max-fail-ratio 0.01

The traffic, drawn from the artifact's own user ids (`user_ids.npy`; `user_ids.json` in format 1):

- user popularity is Zipf-distributed: the users with most training interactions (ranked from
  the artifact's `seen` CSR row lengths) ask most often, weight `1 / rank ** SPARSEREC_ZIPF_S`;
  an artifact without them is an error, unless SPARSEREC_USER_ORDER=shuffled asks for a seeded
  shuffle instead (the choice is logged and stored in the summary);
- `k` is drawn from {10, 20, 50} (weights 6:3:1, capped at the number of items);
- about 10% of calls go to `/recommend_batch` with 2..16 queries, the rest to `/recommend`;
- about 2% of queries name a user the artifact does not know; they must come back with the
  popularity fallback (`"fallback": true`) and are reported under their own name.

Every answer is checked (status 200, k items at most, the fallback flag as expected); a wrong one
counts as a failure. Without SPARSEREC_ARTIFACT the only user is the shared EXAMPLE_QUERY's.

User classes (named on locust's command line): `RecommendUser` is the mix above. The saturation
run (`python -m loadtest saturation`) starts `SingleQueryUser` (only `/recommend`, the same
traffic) and `PingUser` (only `/ping`, BentoML's cost alone) in equal numbers, with no think time,
so the two endpoints' requests/s and latencies are measured side by side under the same load.

Thresholds (`--max-p95-ms`, `--max-fail-ratio`, also env SPARSEREC_MAX_P95_MS and
SPARSEREC_MAX_FAIL_RATIO) set the process exit code in a `quitting` listener: 0 when met, 1 if not.
`--summary-file` (env SPARSEREC_SUMMARY_FILE) receives the final statistics as JSON.

No torch and no project imports here: locust's gevent monkey-patches the process first, and this
file must run on a bare locust worker. Never rename it to test_*.py (pytest would collect it).
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
import random
import time
from pathlib import Path

from locust import FastHttpUser, between, constant, events, task
from locust.runners import WorkerRunner

logger = logging.getLogger("sparserec.locust")

REPO_ROOT = Path(__file__).resolve().parent.parent
# the query the tests and the service docs use; read as JSON, never imported
EXAMPLE_QUERY: dict = json.loads((REPO_ROOT / "serving" / "example_query.json").read_text())

K_CHOICES = (10, 20, 50)
K_WEIGHTS = (6, 3, 1)
BATCH_SIZES = (2, 16)  # inclusive range of queries in one /recommend_batch call
BATCH_SHARE = 0.10
UNKNOWN_SHARE = 0.02
UNKNOWN_NAME = "/recommend [unknown user]"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    return float(raw) if raw.strip() else default


USER_ORDERS = ("activity", "shuffled")


def _user_ids(artifact: Path, name: str) -> list[str]:
    """The artifact's user ids: a ``.npy`` string array (format 2) or a JSON list (format 1)."""
    if name.endswith(".npy"):
        import numpy as np  # fine under gevent; only torch and project code are kept out

        return [str(u) for u in np.load(artifact / name, allow_pickle=False).tolist()]
    return [str(u) for u in json.loads((artifact / name).read_text())]


def _ranked_users(artifact: Path, order: str = "activity") -> tuple[list[str], int | None]:
    """User ids most active first (or shuffled, if asked), and the number of items (None if unknown).

    Raises:
        ValueError: `order` is not one of USER_ORDERS, or the artifact cannot rank its users.
    """
    if order not in USER_ORDERS:
        raise ValueError(f"SPARSEREC_USER_ORDER must be one of {USER_ORDERS}, got {order!r}")
    manifest = json.loads((artifact / "manifest.json").read_text())
    users = _user_ids(artifact, manifest["ids"]["users"])
    n_items = int(manifest.get("n_items") or 0) or None
    if order == "shuffled":
        ranking = list(range(len(users)))
        random.Random(0).shuffle(ranking)
        return [users[i] for i in ranking], n_items
    import numpy as np  # fine under gevent; only torch and project code are kept out

    try:
        indptr = np.load(artifact / manifest["seen"]["files"]["indptr"], allow_pickle=False).astype(np.int64)
    except (KeyError, OSError, ValueError) as exc:
        raise ValueError(f"{artifact}: cannot rank users by activity from the seen CSR ({type(exc).__name__}: "
                         f"{exc}); set SPARSEREC_USER_ORDER=shuffled to draw from a shuffled list") from exc
    counts = np.diff(indptr)
    if len(counts) != len(users):
        raise ValueError(f"{artifact}: seen CSR has {len(counts)} rows for {len(users)} users; "
                         "set SPARSEREC_USER_ORDER=shuffled to draw from a shuffled list")
    ranking = sorted(range(len(users)), key=lambda i: (-int(counts[i]), i))
    return [users[i] for i in ranking], n_items


class Traffic:
    """Draws queries: Zipf users, k from K_CHOICES, a share of unknown users."""

    def __init__(self, users: list[str], n_items: int | None, zipf_s: float, unknown_share: float, seed: int):
        self.users = users or [str(EXAMPLE_QUERY["user_id"])]
        weights = [1.0 / (rank ** zipf_s) for rank in range(1, len(self.users) + 1)]
        self.cumulative = list(itertools.accumulate(weights))
        cap = n_items or max(K_CHOICES)
        self.k_choices = [min(k, cap) for k in K_CHOICES]
        self.unknown_share = unknown_share
        self.known = set(self.users)
        self.random = random.Random(seed)

    def user(self) -> tuple[str, bool]:
        """A user id and whether it is unknown to the artifact."""
        if self.random.random() < self.unknown_share:
            while True:
                candidate = f"unknown-{self.random.randrange(10 ** 9)}"
                if candidate not in self.known:
                    return candidate, True
        position = bisect.bisect_left(self.cumulative, self.random.random() * self.cumulative[-1])
        return self.users[min(position, len(self.users) - 1)], False

    def query(self) -> tuple[dict, bool]:
        user_id, unknown = self.user()
        k = self.random.choices(self.k_choices, weights=K_WEIGHTS)[0]
        return {"user_id": user_id, "k": k, "exclude_seen": True}, unknown


_TRAFFIC: dict[str, object] = {}
_SEEDS = itertools.count()


def _load_traffic() -> tuple[list[str], int | None]:
    if "users" not in _TRAFFIC:
        artifact = os.environ.get("SPARSEREC_ARTIFACT", "")
        if artifact:
            order = os.environ.get("SPARSEREC_USER_ORDER", "activity").strip() or "activity"
            users, n_items = _ranked_users(Path(artifact), order)
            logger.info("traffic: %d users of %s, ranked by %s", len(users), artifact, order)
        else:
            logger.warning("SPARSEREC_ARTIFACT is not set: every query asks for user %s", EXAMPLE_QUERY["user_id"])
            users, n_items = [str(EXAMPLE_QUERY["user_id"])], None
        _TRAFFIC.update(users=users, n_items=n_items)
    return _TRAFFIC["users"], _TRAFFIC["n_items"]


def _check(body: dict, query: dict, unknown: bool) -> str | None:
    """None if one answer is right, else what is wrong."""
    items = body.get("items")
    if not isinstance(items, list) or len(items) > query["k"]:
        return f"expected at most {query['k']} items, got {items if not isinstance(items, list) else len(items)}"
    if body.get("fallback") is not unknown:
        return f"fallback is {body.get('fallback')!r} for a{'n unknown' if unknown else ' known'} user"
    if body.get("user_id") != query["user_id"]:
        return f"answer for user {body.get('user_id')!r}, asked for {query['user_id']!r}"
    return None


class RecommendUser(FastHttpUser):
    """One client: mostly single queries, some batches, think time between calls."""

    wait_time = between(_env_float("SPARSEREC_WAIT_MIN_MS", 10) / 1000, _env_float("SPARSEREC_WAIT_MAX_MS", 100) / 1000)
    network_timeout = 30.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        users, n_items = _load_traffic()
        seed = int(_env_float("SPARSEREC_LOCUST_SEED", 0)) * 100_003 + os.getpid() * 1_009 + next(_SEEDS)
        self.traffic = Traffic(users, n_items, _env_float("SPARSEREC_ZIPF_S", 1.1),
                               _env_float("SPARSEREC_UNKNOWN_SHARE", UNKNOWN_SHARE), seed)

    @task(round((1 - BATCH_SHARE) * 100))
    def recommend(self) -> None:
        query, unknown = self.traffic.query()
        name = UNKNOWN_NAME if unknown else "/recommend"
        with self.client.post("/recommend", json=query, name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            problem = _check(response.json(), query, unknown)
            if problem:
                response.failure(problem)

    @task(round(BATCH_SHARE * 100))
    def recommend_batch(self) -> None:
        drawn = [self.traffic.query() for _ in range(self.traffic.random.randint(*BATCH_SIZES))]
        payload = {"queries": [query for query, _ in drawn]}
        with self.client.post("/recommend_batch", json=payload, name="/recommend_batch", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            results = response.json()
            if not isinstance(results, list) or len(results) != len(drawn):
                response.failure(f"expected {len(drawn)} results, got {type(results).__name__}")
                return
            for body, (query, unknown) in zip(results, drawn):
                problem = _check(body, query, unknown)
                if problem:
                    response.failure(f"batch: {problem}")
                    return


class SingleQueryUser(FastHttpUser):
    """Saturation run: only single `/recommend` queries (the same traffic), no think time."""

    wait_time = constant(0)
    network_timeout = 30.0
    connection_timeout = 10.0
    on_start = RecommendUser.on_start

    @task
    def recommend(self) -> None:
        RecommendUser.recommend(self)


class PingUser(FastHttpUser):
    """Saturation run: only `/ping` (a constant answer: BentoML's own cost), no think time."""

    wait_time = constant(0)
    network_timeout = 30.0
    connection_timeout = 10.0

    @task
    def ping(self) -> None:
        with self.client.post("/ping", json={}, name="/ping", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            elif response.json() != {"ok": True}:
                response.failure(f"unexpected answer {(response.text or '')[:200]}")


# ---------------------------------------------------------------------------- thresholds and summary
@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    parser.add_argument("--max-p95-ms", type=float, env_var="SPARSEREC_MAX_P95_MS", default=0.0,
                        help="fail (exit 1) if the overall p95 latency exceeds this; 0: no limit")
    parser.add_argument("--max-fail-ratio", type=float, env_var="SPARSEREC_MAX_FAIL_RATIO", default=-1.0,
                        help="fail (exit 1) if the failed share of requests exceeds this; negative: no limit")
    parser.add_argument("--summary-file", type=str, env_var="SPARSEREC_SUMMARY_FILE", default="",
                        include_in_web_ui=False, help="write the final statistics here as JSON")


def _entry_summary(entry, duration_s: float) -> dict:
    requests = int(entry.num_requests)
    return {
        "requests": requests,
        "failures": int(entry.num_failures),
        "fail_ratio": float(entry.fail_ratio),
        "rps": requests / duration_s if duration_s > 0 else 0.0,
        "avg_ms": float(entry.avg_response_time),
        "min_ms": float(entry.min_response_time or 0.0),
        "max_ms": float(entry.max_response_time),
        "p50_ms": float(entry.get_response_time_percentile(0.50) or 0.0),
        "p90_ms": float(entry.get_response_time_percentile(0.90) or 0.0),
        "p95_ms": float(entry.get_response_time_percentile(0.95) or 0.0),
        "p99_ms": float(entry.get_response_time_percentile(0.99) or 0.0),
        "avg_bytes": float(entry.avg_content_length),
    }


def summarize(environment) -> dict:
    """The run's statistics: totals, each endpoint, errors and the threshold verdict."""
    stats = environment.stats
    total = stats.total
    end = total.last_request_timestamp or time.time()
    duration_s = max(end - total.start_time, 1e-9) if total.num_requests else 0.0
    summary = _entry_summary(total, duration_s)
    summary["duration_s"] = duration_s
    summary["endpoints"] = {f"{e.method} {e.name}": _entry_summary(e, duration_s)
                            for e in stats.entries.values() if e.num_requests or e.num_failures}
    summary["traffic"] = {"user_order": os.environ.get("SPARSEREC_USER_ORDER", "activity").strip() or "activity",
                          "users": len(_TRAFFIC.get("users") or [])}
    summary["errors"] = [{"endpoint": f"{e.method} {e.name}", "error": str(e.error), "occurrences": e.occurrences}
                         for e in stats.errors.values()]
    options = environment.parsed_options
    max_p95 = float(getattr(options, "max_p95_ms", 0.0) or 0.0)
    max_fail = float(getattr(options, "max_fail_ratio", -1.0))
    reasons = []
    if total.num_requests == 0:
        reasons.append("no requests were made")
    if max_p95 > 0 and summary["p95_ms"] > max_p95:
        reasons.append(f"p95 {summary['p95_ms']:.1f} ms > max {max_p95:g} ms")
    if max_fail >= 0 and summary["fail_ratio"] > max_fail:
        reasons.append(f"fail ratio {summary['fail_ratio']:.4f} > max {max_fail:g}")
    summary["thresholds"] = {"max_p95_ms": max_p95 or None, "max_fail_ratio": max_fail if max_fail >= 0 else None,
                             "passed": not reasons, "reasons": reasons}
    return summary


@events.quitting.add_listener
def _verdict(environment, **_kwargs) -> None:
    """Exit code from the thresholds (on the master or a single process, not on workers)."""
    if isinstance(environment.runner, WorkerRunner):
        return
    summary = summarize(environment)
    verdict = summary["thresholds"]
    if verdict["passed"]:
        environment.process_exit_code = 0
    else:
        for reason in verdict["reasons"]:
            logger.error("threshold not met: %s", reason)
        environment.process_exit_code = 1
    summary["exit_code"] = environment.process_exit_code
    target = getattr(environment.parsed_options, "summary_file", "")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(summary, indent=2))
