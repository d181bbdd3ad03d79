"""One flag for every serving setting: `python -m serving --max-k 100` is SPARSEREC_MAX_K=100.

    parser = argparse.ArgumentParser()
    add_setting_flags(parser)                   # --device, --threads, --workers, --max-k, ...
    args = parser.parse_args(["--max-k", "100"])
    settings_env(args)                          # {"SPARSEREC_MAX_K": "100"}: only the flags given

Each field of `serving.config.ServeConfig` but the artifact (`--artifact`, the command's own)
is one flag, its name the field's with dashes (`max_k` -> `--max-k`), and one environment
variable (`SPARSEREC_MAX_K`). A flag that is not given leaves its variable as the environment
has it, so the environment stays the way a Bento or a container receives its settings and the
flags are the way a person at a shell gives them. `--help` shows each flag's variable and
default (the dataclass's own default, so the two cannot drift apart).
"""

from __future__ import annotations

import argparse
import dataclasses

from serving.config import BATCH_ROUTES, DEVICES, ServeConfig

__all__ = ["HELP", "SETTINGS", "Setting", "add_setting_flags", "env_var", "settings_env"]

# what each setting does (its default is read from ServeConfig); serving/config.py documents each at length
HELP = {
    "device": "cpu: the artifact's index (FAISS or sparse); cuda: exact scoring with torch",
    "threads": "OpenMP/BLAS threads of one worker",
    "workers": "worker processes, each loads the artifact (memory-mapped files are shared)",
    "max_k": "largest k accepted (also capped at the number of items)",
    "max_batch": "most queries in one /recommend_batch call",
    "batch_max_size": "adaptive batching: most queries in one search",
    "batch_max_latency_ms": "adaptive batching: a query queued this long is answered 503",
    "batch_route": "how /recommend uses the batching dispatcher while others are in flight",
    "shed_in_flight": "load shedding: answer 503 + Retry-After above N requests in flight (0: off)",
    "retry_after_s": "the Retry-After (seconds) of every 503",
    "max_body_bytes": "largest request body (413 above)",
    "mmap": "map the index, ids, seen items and popularity files (workers share one copy)",
    "max_filter_items": "most item ids in exclude_items / allow_items",
    "max_history": "most item ids in a fold-in history",
    "fold_in_lambda": "ridge penalty of the MF fold-in, relative to the history's mean Gram eigenvalue",
    "reload_poll_ms": "how often each worker checks the reload file",
    "header_timeout_s": "seconds to receive a complete request head (the connection is closed after)",
    "body_timeout_s": "seconds from a request's head to the end of its body (408 after)",
}
# defaults computed at start rather than fixed
DEFAULT_TEXT = {"threads": "cpu_count / workers"}
# settings given by environment only: a secret (a flag would show in `ps`) and a per-server path
ENV_ONLY = frozenset({"admin_token", "reload_file"})
CHOICES = {"device": DEVICES, "batch_route": BATCH_ROUTES}


def env_var(field: str) -> str:
    """The environment variable of a ServeConfig field: ``max_k`` -> ``SPARSEREC_MAX_K``."""
    return "SPARSEREC_" + field.upper()


@dataclasses.dataclass(frozen=True)
class Setting:
    """One serving setting: its ServeConfig field, flag, variable, type and default."""

    field: str
    flag: str
    env: str
    kind: type
    default: object
    help: str


_KINDS = {"int": int, "float": float, "bool": bool, "str": str}


def _settings() -> tuple[Setting, ...]:
    settings = []
    for field in dataclasses.fields(ServeConfig):
        if field.name == "artifact" or field.name in ENV_ONLY:
            continue
        kind = _KINDS.get(str(field.type).split("|")[0].strip(), str)  # annotations are strings here
        default = None if field.default is dataclasses.MISSING else field.default
        # a new field without a HELP line still gets its flag; tests/sparserec/test_flags.py asks for the line
        settings.append(
            Setting(
                field.name,
                "--" + field.name.replace("_", "-"),
                env_var(field.name),
                kind,
                default,
                HELP.get(field.name, "see serving/config.py"),
            )
        )
    return tuple(settings)


SETTINGS = _settings()


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting to ``parser`` (dest: the field name; default None: not given)."""
    group = parser.add_argument_group("serving settings (each flag sets its environment variable)")
    for s in SETTINGS:
        default = DEFAULT_TEXT.get(s.field, s.default)
        if s.kind is bool:
            group.add_argument(
                s.flag,
                dest=s.field,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{s.help} (env {s.env}=1/0, default {'on' if default else 'off'})",
            )
        else:
            group.add_argument(
                s.flag,
                dest=s.field,
                type=s.kind,
                default=None,
                choices=CHOICES.get(s.field),
                metavar=None if s.field in CHOICES else "N",
                help=f"{s.help} (env {s.env}, default {default})",
            )


def settings_env(args: argparse.Namespace) -> dict[str, str]:
    """The SPARSEREC_* variables of the flags given on the command line."""
    env = {}
    for s in SETTINGS:
        value = getattr(args, s.field, None)
        if value is not None:
            env[s.env] = ("1" if value else "0") if s.kind is bool else str(value)
    return env
