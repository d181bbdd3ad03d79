"""One locust load test, against a server of its own or any running one, and a comparison of two.

    run_load(LoadOptions(artifact=Path("artifacts/lgn"), users=20))          # serves it, then loads it
    run_load(LoadOptions(host="http://10.0.0.5:3000", users=20))             # loads a running server

`run_load(LoadOptions(...))`:

1. with `host`, checks that server's /readyz and starts none; otherwise starts
   `python -m serving --artifact ARTIFACT` on a free port of 127.0.0.1 and polls /readyz;
2. runs locust headless as a subprocess (or a master plus N worker subprocesses) with
   `loadtest/locustfile.py`, bounded in time (the locust run time, then SIGTERM, then SIGKILL);
   the user ids come from `user_ids` (a file), else from `artifact`, else from the server's
   GET /info `sample_user_ids` (the locustfile decides, in that order);
3. stops locust (and its own server) by PID and writes `results/loadtest-NAME.json` (totals, each
   endpoint, errors, the threshold verdict, server memory when the server is its own, the
   settings) beside locust's HTML report.

The thresholds are judged inside locust (the locustfile's `quitting` listener sets the exit code);
the result's `exit_code` is locust's.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from common.io import atomic_write_json, atomic_write_text
from common.paths import repo_relative
from common.provenance import provenance, provenance_line
from serving.process import stop_process_group

from .report import compare_table, endpoint_table, summary_line
from .server import HOST, REPO_ROOT, ServerError, ServiceProcess, free_port, get_json

log = logging.getLogger("sparserec.loadtest")

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
SUMMARY_KEYS = ("requests", "failures", "rps", "p50_ms", "p95_ms", "p99_ms")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str | float | int) -> float:
    """Seconds in `60`, `60s`, `2m`, `1m30s`, `1h` (locust's run-time syntax)."""
    match = _DURATION.match(str(text).strip())
    if not str(text).strip() or not match or not any(match.groups()):
        raise ValueError(f"duration {text!r}: expected e.g. 60s, 2m, 1m30s")
    hours, minutes, seconds = match.groups()
    total = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)
    if total <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return total


class UsageError(ValueError):
    """A command-line value the user can fix; the load-test commands print it and exit 2."""


def duration_arg(text: str) -> float:
    """``--duration`` in seconds (:func:`parse_duration`), or :class:`UsageError` naming the flag."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--duration: {exc}") from None


def check_url(url: str) -> str:
    """``url`` without a trailing slash, or :class:`UsageError` unless it is http(s)://HOST[:PORT]."""
    parsed = urllib.parse.urlsplit(url.strip())
    if (
        parsed.scheme not in ("http", "https")
        or not parsed.netloc
        or parsed.path not in ("", "/")
        or parsed.query
        or parsed.fragment
    ):
        raise UsageError(f"--host {url!r}: expected http://HOST:PORT (the server's base URL)")
    return f"{parsed.scheme}://{parsed.netloc}"


def check_user_ids(path: Path) -> None:
    """:class:`UsageError` unless ``path`` is a readable file holding at least one user id."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--user-ids {path}: cannot read it ({exc})") from None
    if not any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
        raise UsageError(f"--user-ids {path}: no user ids in the file (one a line)")


def check_artifact(folder: Path) -> None:
    """:class:`UsageError` unless ``folder`` holds an artifact (a manifest.json)."""
    if not (Path(folder) / "manifest.json").is_file():
        raise UsageError(
            f"{folder}: not an artifact folder (no manifest.json); "
            f"make one with: python -m export runs/NAME --out {folder}"
        )


@dataclass(frozen=True)
class LoadOptions:
    """One load test.

    Attributes:
        artifact: artifact folder to serve (without `host`), or whose users to ask for (with it).
        host: base URL of a running server to load (None: serve `artifact` on a free port).
        user_ids: file of user ids, one a line, most active first (None: the artifact's, or the
            server's `sample_user_ids`).
        users: peak number of locust users; spawn_rate: users started per second.
        duration_s: locust run time in seconds (the spawn ramp included).
        locust_workers: 0 runs locust as one process; N > 0 a master plus N worker processes.
        max_p95_ms, max_fail_ratio: thresholds (None: not checked); a miss makes exit_code 1.
        wait_ms: think time between a user's calls, uniform in [min, max] milliseconds.
        server_threads, server_workers: `python -m serving --threads/--workers` (None: its defaults).
        seed: seed of the traffic draws.
        results: folder of the reports; name: report name (default: the artifact folder's name, or
            the host and port).
        user_classes: the locustfile's user classes to start (equal numbers of each).
    """

    artifact: Path | None = None
    host: str | None = None
    user_ids: Path | None = None
    users: int = 50
    spawn_rate: float = 10.0
    duration_s: float = 60.0
    locust_workers: int = 0
    max_p95_ms: float | None = None
    max_fail_ratio: float | None = None
    wait_ms: tuple[float, float] = (10.0, 100.0)
    server_threads: int | None = None
    server_workers: int | None = None
    seed: int = 0
    results: Path = Path("results")
    name: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    user_classes: tuple[str, ...] = ("RecommendUser",)

    def __post_init__(self) -> None:
        if self.artifact is None and self.host is None:
            raise ValueError("LoadOptions needs an artifact to serve or a host to load")

    @property
    def report_name(self) -> str:
        if self.name:
            return self.name
        if self.host:
            return re.sub(r"[^A-Za-z0-9.-]+", "_", urllib.parse.urlsplit(self.host).netloc)
        return Path(self.artifact).resolve().name

    @property
    def target(self) -> str:
        """What is loaded: the server's URL, or the artifact served for the run."""
        return self.host or str(self.artifact)


def _locust_env(options: LoadOptions, summary_file: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("SPARSEREC_ARTIFACT", "SPARSEREC_USER_IDS"):  # only what this run was given
        env.pop(name, None)
    if options.artifact is not None:
        env["SPARSEREC_ARTIFACT"] = str(Path(options.artifact).resolve())
    if options.user_ids is not None:
        env["SPARSEREC_USER_IDS"] = str(Path(options.user_ids).resolve())
    env.update(
        {
            "SPARSEREC_SUMMARY_FILE": str(summary_file),
            "SPARSEREC_WAIT_MIN_MS": str(options.wait_ms[0]),
            "SPARSEREC_WAIT_MAX_MS": str(options.wait_ms[1]),
            "SPARSEREC_LOCUST_SEED": str(options.seed),
            "SPARSEREC_MAX_P95_MS": str(options.max_p95_ms or 0),
            "SPARSEREC_MAX_FAIL_RATIO": str(-1 if options.max_fail_ratio is None else options.max_fail_ratio),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(options.extra_env)
    return env


def _locust_commands(options: LoadOptions, url: str, html: Path) -> tuple[list[str], list[list[str]]]:
    """The master (or single) locust command line and the worker command lines."""
    locust = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    main = [
        *locust,
        "--headless",
        "--users",
        str(options.users),
        "--spawn-rate",
        str(options.spawn_rate),
        "--run-time",
        f"{options.duration_s:g}s",
        "--host",
        url,
        "--html",
        str(html),
        "--only-summary",
        "--stop-timeout",
        "5",
        "--loglevel",
        "INFO",
        *options.user_classes,
    ]
    if options.locust_workers <= 0:
        return main, []
    master_port = free_port()
    main[len(locust) : len(locust)] = [
        "--master",
        "--master-bind-host",
        HOST,
        "--master-bind-port",
        str(master_port),
        "--expect-workers",
        str(options.locust_workers),
        "--expect-workers-max-wait",
        "60",
    ]
    worker = [*locust, "--worker", "--master-host", HOST, "--master-port", str(master_port), "--loglevel", "WARNING"]
    return main, [list(worker) for _ in range(options.locust_workers)]


def _stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM (locust writes its reports on it), then SIGKILL; by PID, own process group."""
    if process.poll() is None:
        stop_process_group(process, grace)


def _run_locust(options: LoadOptions, url: str, html: Path, log_path: Path, summary_file: Path) -> int:
    """Run locust to completion (bounded in time); its exit status."""
    main, workers = _locust_commands(options, url, html)
    env = _locust_env(options, summary_file)
    spawn_s = options.users / max(options.spawn_rate, 1e-9)
    limit_s = options.duration_s + 60.0 + (60.0 if workers else 0.0)  # run time + shutdown (+ waiting for workers)
    started: list[subprocess.Popen] = []
    with open(log_path, "wb") as log_file:
        try:
            master = subprocess.Popen(
                main,
                cwd=REPO_ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            started.append(master)
            for command in workers:
                started.append(
                    subprocess.Popen(
                        command,
                        cwd=REPO_ROOT,
                        env=env,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
            log.info(
                "locust: %d users (spawn %.0f s), %g s, %s",
                options.users,
                spawn_s,
                options.duration_s,
                f"master + {len(workers)} workers" if workers else "one process",
            )
            try:
                code = master.wait(limit_s)
            except subprocess.TimeoutExpired:
                log.error("locust still running after %.0f s: stopping it", limit_s)
                _stop(master)
                code = master.returncode if master.returncode is not None else -9
            for worker in started[1:]:  # the master tells its workers to quit; give them a moment
                try:
                    worker.wait(15)
                except subprocess.TimeoutExpired:
                    _stop(worker)
        finally:
            for process in started:
                _stop(process)
    return code


def _remote_info(url: str) -> dict:
    """GET /info of a running server ({"error": ...} if it has none)."""
    try:
        return get_json(url + "/info", timeout=30)
    except (OSError, ValueError) as exc:
        return {"error": f"GET {url}/info failed: {exc}"}


def check_ready(url: str, timeout: float = 10.0) -> None:
    """:class:`ServerError` unless the server at ``url`` answers GET /readyz with 200."""
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=timeout) as response:  # noqa: S310 (the user's URL)
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        raise ServerError(f"{url}: no answer to GET /readyz ({exc}); is the server running?") from None
    if status != 200:
        raise ServerError(f"{url}: GET /readyz answered {status}, not 200 (the server is not ready)")


def run_load(options: LoadOptions) -> dict:
    """Load `options.host` (or serve `options.artifact` and load it) with locust, write the report;
    the result as a dict."""
    results = Path(options.results)
    results.mkdir(parents=True, exist_ok=True)
    name = options.report_name
    html = results / f"loadtest-{name}.html"
    server_log = results / f"loadtest-{name}.server.log"
    locust_log = results / f"loadtest-{name}.locust.log"
    summary_file = results / f".loadtest-{name}.summary.json"
    summary_file.unlink(missing_ok=True)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    if options.host:
        url = options.host
        check_ready(url)
        info = _remote_info(url)
        log.info("loading the running server %s (started by someone else: no memory figures)", url)
        code = _run_locust(options, url, html, locust_log, summary_file)
        after = _remote_info(url)
        server = {
            "url": url,
            "started_by": "external",
            "startup_s": None,
            "serving": info.get("serving"),
            "rss_idle_bytes": None,
            "rss_peak_bytes": None,
            "rss_after_bytes": None,
            "serving_after": after.get("serving", after.get("error")),
            "log": None,
        }
    else:
        process = ServiceProcess(
            options.artifact, server_log, threads=options.server_threads, workers=options.server_workers
        )
        log.info("starting the server for %s (log %s)", options.artifact, server_log)
        t0 = time.monotonic()
        with process:
            startup_s = time.monotonic() - t0
            info = process.info()
            rss_idle = process.rss()
            log.info("server ready on %s in %.1f s, %.0f MiB resident", process.url, startup_s, rss_idle / 2**20)
            process.watch_memory()
            code = _run_locust(options, process.url, html, locust_log, summary_file)
            rss_peak = process.peak_rss()
            rss_after = process.rss()
            try:  # the worker's counters after the load (queries answered alone, batches)
                serving_after = process.info().get("serving")
            except OSError as exc:
                serving_after = {"error": f"GET /info after the run failed: {exc}"}
        server = {
            "url": process.url,
            "started_by": "loadtest",
            "startup_s": startup_s,
            "serving": info.get("serving"),
            "rss_idle_bytes": rss_idle,
            "rss_peak_bytes": rss_peak,
            "rss_after_bytes": rss_after,
            "serving_after": serving_after,
            "log": str(server_log),
        }
    if not summary_file.is_file():
        raise RuntimeError(
            f"locust exited with {code} and wrote no summary (log {locust_log}):\n"
            f"{locust_log.read_text(errors='replace')[-4000:]}"
        )
    summary = json.loads(summary_file.read_text())
    summary_file.unlink()
    result = {key: summary[key] for key in SUMMARY_KEYS}
    result.update({key: value for key, value in summary.items() if key not in SUMMARY_KEYS})
    result["exit_code"] = code
    result["target"] = options.target
    result["artifact"] = {
        "path": None if options.artifact is None else repo_relative(options.artifact),
        **{
            k: info.get(k)
            for k in ("model_kind", "n_users", "n_items", "dim", "density", "nnz", "value_dtype", "index", "bytes")
        },
    }
    result["server"] = server
    settings = asdict(options)
    settings.update(
        artifact=None if options.artifact is None else repo_relative(options.artifact),
        user_ids=None if options.user_ids is None else str(options.user_ids),
        results=repo_relative(options.results),
        wait_ms=list(options.wait_ms),
        user_classes=list(options.user_classes),
    )
    settings.pop("extra_env", None)
    result["load"] = settings
    result["html_report"] = str(html)
    result["locust_log"] = str(locust_log)
    result["machine"] = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "note": (
            "locust runs here; the server is elsewhere or beside it"
            if options.host
            else "locust and the server share this machine's cores"
        ),
    }
    result["started_at"] = started_at
    result["provenance"] = provenance()
    out = results / f"loadtest-{name}.json"
    atomic_write_json(out, result)
    result["path"] = str(out)
    return result


def run_compare(first: LoadOptions, second: LoadOptions) -> dict:
    """Two load tests, one after the other, and `results/loadtest-compare.{json,md}`."""
    if first.report_name == second.report_name:
        first = _renamed(first, f"{first.report_name}-A")
        second = _renamed(second, f"{second.report_name}-B")
    source = provenance()  # before the runs: its load average is the one at the start
    runs = [run_load(first), run_load(second)]
    table = compare_table(*runs)
    results = Path(first.results)
    comparison = {"provenance": source, "a": runs[0], "b": runs[1], "table_md": table}
    atomic_write_json(results / "loadtest-compare.json", comparison)
    atomic_write_text(results / "loadtest-compare.md", f"# Load test: A vs B\n\n{provenance_line(source)}\n\n{table}\n")
    comparison["path"] = str(results / "loadtest-compare.json")
    return comparison


def _renamed(options: LoadOptions, name: str) -> LoadOptions:
    return replace(options, name=name)


__all__ = [
    "LoadOptions",
    "ServerError",
    "UsageError",
    "check_artifact",
    "check_ready",
    "check_url",
    "check_user_ids",
    "duration_arg",
    "compare_table",
    "endpoint_table",
    "parse_duration",
    "run_compare",
    "run_load",
    "summary_line",
]
