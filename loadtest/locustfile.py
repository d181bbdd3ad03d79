"""Realistic traffic against any sparserec server, for locust.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:3000 --headless -u 20 -r 10 -t 30s
    SPARSEREC_USER_IDS=users.txt locust -f loadtest/locustfile.py -H http://10.0.0.5:3000 --headless -u 50 -t 2m \\
        --max-p95-ms 200 --max-fail-ratio 0.01
    locust -f loadtest/locustfile.py -H http://127.0.0.1:3000 --tags saturation   # SingleQueryUser + PingUser

`python -m loadtest run` runs this file for you (with or without a server of its own). Locust's
own options work as usual; everything specific to sparserec is an environment variable
(SPARSEREC_USER_IDS, SPARSEREC_ARTIFACT, SPARSEREC_ZIPF_S, SPARSEREC_K_CHOICES, ...; their table,
defaults and meanings are in docs/loadtest.md; read once, when locust loads this file).

The user ids come, in this order, from SPARSEREC_USER_IDS, from SPARSEREC_ARTIFACT, or from the
server itself (`sample_user_ids` of GET /info: at most 100 known users, most active first). Each
user's popularity is Zipf-distributed over that order. About SPARSEREC_UNKNOWN_SHARE of queries
name a user nobody knows; they must come back with the popularity fallback (`"fallback": true`)
and are reported under their own name. Every other answer must not be a fallback: a known user
answered from popularity (ids that do not match the server's artifact) counts as a failure, as
does a wrong status, more than k items or an answer for another user.

User classes: `RecommendUser` is the default, the only one that runs when none is named: single
queries and batches of 2..16 (/recommend_batch), with think time between calls. The others run
when named on the command line (`locust -f ... PingUser`) or chosen by tag (`--tags`):
`SingleQueryUser` (only /recommend, no think time; tag `saturation`) and `PingUser` (only /ping,
BentoML's cost alone, no think time; tags `ping`, `saturation`), which
`python -m loadtest saturation` starts in equal numbers. RecommendUser's tasks carry the tags
`recommend` and `batch` (`--exclude-tags batch`: single queries only).

Thresholds (`--max-p95-ms`, `--max-fail-ratio`, also env SPARSEREC_MAX_P95_MS and
SPARSEREC_MAX_FAIL_RATIO) set the process exit code in a `quitting` listener: 0 when met, 1 if
not; 2 when no user ids could be found. `--summary-file` (env SPARSEREC_SUMMARY_FILE) receives the
final statistics as JSON.

No torch and no project imports here: locust's gevent monkey-patches the process first, and this
file must run on a bare locust worker (locust and numpy; numpy only to read an artifact). Never
rename it to test_*.py (pytest would collect it).
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
import random
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from gevent.lock import Semaphore
from locust import FastHttpUser, between, constant, events, tag, task
from locust.exception import StopUser
from locust.runners import WorkerRunner

logger = logging.getLogger("sparserec.locust")

DEFAULT_USER_CLASS = "RecommendUser"
BATCH_SIZES = (2, 16)  # inclusive range of queries in one /recommend_batch call
UNKNOWN_NAME = "/recommend [unknown user]"
USER_ORDERS = ("activity", "shuffled")
EXIT_NO_USERS = 2


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw.strip() else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def _env_numbers(name: str, default: tuple, kind=float) -> tuple:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        values = tuple(kind(part) for part in raw.split(","))
    except ValueError:
        raise ValueError(
            f"{name}={raw!r}: expected comma-separated numbers, e.g. {','.join(map(str, default))}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{name}={raw!r}: every value must be > 0")
    return values


K_CHOICES = _env_numbers("SPARSEREC_K_CHOICES", (10, 20, 50), int)
K_WEIGHTS = _env_numbers("SPARSEREC_K_WEIGHTS", (6, 3, 1))
if len(K_WEIGHTS) != len(K_CHOICES):
    raise ValueError(f"SPARSEREC_K_WEIGHTS has {len(K_WEIGHTS)} weights for {len(K_CHOICES)} SPARSEREC_K_CHOICES")
BATCH_SHARE = _env_float("SPARSEREC_BATCH_SHARE", 0.10)
if not 0 <= BATCH_SHARE <= 1:
    raise ValueError(f"SPARSEREC_BATCH_SHARE must be in [0, 1], got {BATCH_SHARE}")
UNKNOWN_SHARE = _env_float("SPARSEREC_UNKNOWN_SHARE", 0.02)


def _user_ids(artifact: Path, name: str) -> list[str]:
    """The artifact's user ids: a ``.npy`` string array (format 2) or a JSON list (format 1)."""
    if name.endswith(".npy"):
        import numpy as np  # fine under gevent; only torch and project code are kept out

        return [str(u) for u in np.load(artifact / name, allow_pickle=False).tolist()]
    return [str(u) for u in json.loads((artifact / name).read_text())]


def _ordered(users: list[str], order: str) -> list[str]:
    """``users`` as given (``activity``) or in a seeded shuffle (``shuffled``)."""
    if order not in USER_ORDERS:
        raise ValueError(f"SPARSEREC_USER_ORDER must be one of {USER_ORDERS}, got {order!r}")
    if order == "activity":
        return users
    ranking = list(range(len(users)))
    random.Random(0).shuffle(ranking)
    return [users[i] for i in ranking]


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
        return _ordered(users, order), n_items
    import numpy as np  # fine under gevent; only torch and project code are kept out

    try:
        indptr = np.load(artifact / manifest["seen"]["files"]["indptr"], allow_pickle=False).astype(np.int64)
    except (KeyError, OSError, ValueError) as exc:
        raise ValueError(
            f"{artifact}: cannot rank users by activity from the seen CSR ({type(exc).__name__}: "
            f"{exc}); set SPARSEREC_USER_ORDER=shuffled to draw from a shuffled list"
        ) from exc
    counts = np.diff(indptr)
    if len(counts) != len(users):
        raise ValueError(
            f"{artifact}: seen CSR has {len(counts)} rows for {len(users)} users; "
            "set SPARSEREC_USER_ORDER=shuffled to draw from a shuffled list"
        )
    ranking = sorted(range(len(users)), key=lambda i: (-int(counts[i]), i))
    return [users[i] for i in ranking], n_items


def _file_users(path: Path) -> list[str]:
    """User ids from a text file: one a line, blank lines and lines starting with # skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"SPARSEREC_USER_IDS={path}: {exc.strerror or exc}") from None
    users = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not users:
        raise ValueError(f"SPARSEREC_USER_IDS={path}: no user ids in the file (one a line)")
    return users


def _server_users(host: str) -> tuple[list[str], int | None]:
    """``sample_user_ids`` and ``n_items`` of the server's GET /info."""
    url = host.rstrip("/") + "/info"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (the host the user gave)
            info = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ValueError(
            f"GET {url} failed ({exc}); give the user ids with SPARSEREC_USER_IDS=FILE or SPARSEREC_ARTIFACT=FOLDER"
        ) from None
    users = info.get("sample_user_ids") if isinstance(info, dict) else None
    if not users or not isinstance(users, list):
        raise ValueError(
            f"GET {url} has no sample_user_ids (not a sparserec server, or an older one); give the "
            "user ids with SPARSEREC_USER_IDS=FILE or SPARSEREC_ARTIFACT=FOLDER"
        )
    return [str(u) for u in users], int(info.get("n_items") or 0) or None


def user_source(host: str | None) -> tuple[str, list[str], int | None]:
    """Where the user ids come from (``file``, ``artifact`` or ``server``), the ids and n_items.

    Raises:
        ValueError: naming the source that failed and what to do.
    """
    order = os.environ.get("SPARSEREC_USER_ORDER", "activity").strip() or "activity"
    if os.environ.get("SPARSEREC_USER_IDS", "").strip():
        return "file", _ordered(_file_users(Path(os.environ["SPARSEREC_USER_IDS"].strip())), order), None
    if os.environ.get("SPARSEREC_ARTIFACT", "").strip():
        users, n_items = _ranked_users(Path(os.environ["SPARSEREC_ARTIFACT"].strip()), order)
        return "artifact", users, n_items
    if not host:
        raise ValueError("no host to ask for user ids: pass --host, or SPARSEREC_USER_IDS / SPARSEREC_ARTIFACT")
    users, n_items = _server_users(host)
    return "server", _ordered(users, order), n_items


class Traffic:
    """Draws queries: Zipf users, k from K_CHOICES, a share of unknown users."""

    def __init__(self, users: list[str], n_items: int | None, zipf_s: float, unknown_share: float, seed: int):
        if not users:
            raise ValueError("no user ids to draw from")
        self.users = users
        weights = [1.0 / (rank**zipf_s) for rank in range(1, len(self.users) + 1)]
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
                candidate = f"unknown-{self.random.randrange(10**9)}"
                if candidate not in self.known:
                    return candidate, True
        position = bisect.bisect_left(self.cumulative, self.random.random() * self.cumulative[-1])
        return self.users[min(position, len(self.users) - 1)], False

    def query(self) -> tuple[dict, bool]:
        user_id, unknown = self.user()
        k = self.random.choices(self.k_choices, weights=K_WEIGHTS)[0]
        return {"user_id": user_id, "k": k, "exclude_seen": True}, unknown


_TRAFFIC: dict[str, object] = {}
_TRAFFIC_LOCK = Semaphore()
_SEEDS = itertools.count()


def _load_traffic(host: str | None) -> tuple[list[str], int | None]:
    """The user ids and n_items, found once per process (ValueError: why there are none)."""
    with _TRAFFIC_LOCK:  # the first user of this process asks; the others wait for its answer
        if "users" not in _TRAFFIC and "error" not in _TRAFFIC:
            try:
                source, users, n_items = user_source(host)
            except ValueError as exc:
                _TRAFFIC["error"] = str(exc)
            else:
                logger.info(
                    "traffic: %d users from the %s, %s order",
                    len(users),
                    source,
                    os.environ.get("SPARSEREC_USER_ORDER", "activity").strip() or "activity",
                )
                _TRAFFIC.update(source=source, users=users, n_items=n_items)
    if "error" in _TRAFFIC:
        raise ValueError(_TRAFFIC["error"])
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


def _start_traffic(user) -> None:
    """``on_start`` of the users that send queries: their own seeded Traffic."""
    try:
        users, n_items = _load_traffic(user.host)
    except ValueError as exc:
        logger.error("no user ids: %s", exc)
        raise StopUser() from None
    seed = int(_env_float("SPARSEREC_LOCUST_SEED", 0)) * 100_003 + os.getpid() * 1_009 + next(_SEEDS)
    user.traffic = Traffic(users, n_items, _env_float("SPARSEREC_ZIPF_S", 1.1), UNKNOWN_SHARE, seed)


class RecommendUser(FastHttpUser):
    """The default client: mostly single queries, some batches, think time between calls."""

    wait_time = between(_env_float("SPARSEREC_WAIT_MIN_MS", 10) / 1000, _env_float("SPARSEREC_WAIT_MAX_MS", 100) / 1000)
    network_timeout = 30.0
    connection_timeout = 10.0
    on_start = _start_traffic

    @tag("recommend")
    @task(max(0, round((1 - BATCH_SHARE) * 100)))
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

    @tag("batch")
    @task(max(0, round(BATCH_SHARE * 100)))
    def recommend_batch(self) -> None:
        drawn = [self.traffic.query() for _ in range(self.traffic.random.randint(*BATCH_SIZES))]
        payload = {"queries": [query for query, _ in drawn]}
        with self.client.post(
            "/recommend_batch", json=payload, name="/recommend_batch", catch_response=True
        ) as response:
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
    """Saturation: only single `/recommend` queries (the same traffic), no think time. Named or `--tags saturation`."""

    wait_time = constant(0)
    network_timeout = 30.0
    connection_timeout = 10.0
    on_start = _start_traffic

    @tag("saturation")
    @task
    def recommend(self) -> None:
        RecommendUser.recommend(self)


class PingUser(FastHttpUser):
    """Saturation: only `/ping` (a constant answer: BentoML's own cost), no think time. Named or `--tags ping`."""

    wait_time = constant(0)
    network_timeout = 30.0
    connection_timeout = 10.0

    @tag("ping", "saturation")
    @task
    def ping(self) -> None:
        with self.client.post("/ping", json={}, name="/ping", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            elif response.json() != {"ok": True}:
                response.failure(f"unexpected answer {(response.text or '')[:200]}")


# ---------------------------------------------------------------------------- which classes run
def _task_tags(user_class) -> set[str]:
    return {name for task_ in user_class.tasks for name in getattr(task_, "locust_tag_set", ())}


@events.init.add_listener
def _choose_user_classes(environment, runner=None, **_kwargs) -> None:
    """Run only RecommendUser unless classes are named, or those whose tasks carry a --tags tag;
    then, on the master or a single process, find the user ids once (exit 2 if there are none)."""
    options = environment.parsed_options
    if options is None or isinstance(runner, WorkerRunner):
        return  # a worker spawns whatever its master sends
    if not getattr(options, "user_classes", None):
        tags = set(getattr(options, "tags", None) or ())
        chosen = [
            c for c in environment.user_classes if (tags & _task_tags(c) if tags else c.__name__ == DEFAULT_USER_CLASS)
        ]
        if chosen:
            environment.user_classes[:] = chosen
    needs_ids = any(c is not PingUser for c in environment.user_classes)
    if needs_ids and environment.host:
        try:
            _load_traffic(environment.host)
        except ValueError as exc:
            logger.error("no user ids: %s", exc)
            sys.exit(EXIT_NO_USERS)


# ---------------------------------------------------------------------------- thresholds and summary
@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    parser.add_argument(
        "--max-p95-ms",
        type=float,
        env_var="SPARSEREC_MAX_P95_MS",
        default=0.0,
        help="fail (exit 1) if the overall p95 latency exceeds this; 0: no limit",
    )
    parser.add_argument(
        "--max-fail-ratio",
        type=float,
        env_var="SPARSEREC_MAX_FAIL_RATIO",
        default=-1.0,
        help="fail (exit 1) if the failed share of requests exceeds this; negative: no limit",
    )
    parser.add_argument(
        "--summary-file",
        type=str,
        env_var="SPARSEREC_SUMMARY_FILE",
        default="",
        include_in_web_ui=False,
        help="write the final statistics here as JSON",
    )


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
    summary["endpoints"] = {
        f"{e.method} {e.name}": _entry_summary(e, duration_s)
        for e in stats.entries.values()
        if e.num_requests or e.num_failures
    }
    summary["traffic"] = {
        "user_order": os.environ.get("SPARSEREC_USER_ORDER", "activity").strip() or "activity",
        "user_source": _TRAFFIC.get("source"),
        "users": len(_TRAFFIC.get("users") or []),
        "user_error": _TRAFFIC.get("error"),
        "k_choices": list(K_CHOICES),
        "k_weights": list(K_WEIGHTS),
        "batch_share": BATCH_SHARE,
        "unknown_share": UNKNOWN_SHARE,
        "user_classes": [c.__name__ for c in environment.user_classes],
    }
    summary["errors"] = [
        {"endpoint": f"{e.method} {e.name}", "error": str(e.error), "occurrences": e.occurrences}
        for e in stats.errors.values()
    ]
    options = environment.parsed_options
    max_p95 = float(getattr(options, "max_p95_ms", 0.0) or 0.0)
    max_fail = float(getattr(options, "max_fail_ratio", -1.0))
    reasons = []
    if total.num_requests == 0:
        reasons.append(
            "no requests were made" + (f" (no user ids: {_TRAFFIC['error']})" if "error" in _TRAFFIC else "")
        )
    if max_p95 > 0 and summary["p95_ms"] > max_p95:
        reasons.append(f"p95 {summary['p95_ms']:.1f} ms > max {max_p95:g} ms")
    if max_fail >= 0 and summary["fail_ratio"] > max_fail:
        reasons.append(f"fail ratio {summary['fail_ratio']:.4f} > max {max_fail:g}")
    summary["thresholds"] = {
        "max_p95_ms": max_p95 or None,
        "max_fail_ratio": max_fail if max_fail >= 0 else None,
        "passed": not reasons,
        "reasons": reasons,
    }
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
