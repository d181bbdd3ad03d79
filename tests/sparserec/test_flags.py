"""One flag scheme: every serving setting has a flag, each stage's --help ends with two examples
that parse, and the flags the docs list are the flags the commands take."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from serving.cli import build_parser as serving_parser
from serving.cli import server_env
from serving.config import ConfigError, ServeConfig, bind_host
from serving.flags import SETTINGS, settings_env

ROOT = Path(__file__).resolve().parents[2]
# stage -> (the command its examples start with, argv for --help)
STAGES = {
    "train": ("python -m train", ["-m", "train", "--help"]),
    "export": ("python -m export", ["-m", "export", "--help"]),
    "serving": ("python -m serving", ["-m", "serving", "--help"]),
    "loadtest": ("python -m loadtest run", ["-m", "loadtest", "--help"]),
    "loadtest run": ("python -m loadtest run", ["-m", "loadtest", "run", "--help"]),
    "sparserec": ("sparserec", ["-m", "sparserec", "--help"]),
    "sparserec bento": ("sparserec bento", ["-m", "sparserec", "bento", "--help"]),
}


def _help(argv: list[str]) -> str:
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _examples(text: str) -> list[str]:
    head, _, tail = text.rstrip().rpartition("\nexamples:\n")
    assert head, "no examples: section at the end of --help"
    return [line.strip() for line in tail.splitlines()]


def _parse_example(stage: str, argv: list[str]) -> None:
    """Parse an example's arguments with the stage's own parser (nothing runs)."""
    if stage == "train":
        from train.cli import parse_train_args

        parse_train_args(argv)
    elif stage == "export":
        from export.__main__ import export_parser

        export_parser().parse_args(argv)
    elif stage == "serving":
        serving_parser().parse_args(argv)
    elif stage.startswith("loadtest"):
        from loadtest.__main__ import build_parser

        build_parser().parse_args(["run", *argv])
    elif stage.startswith("sparserec"):
        import sparserec

        module_name, _ = sparserec.STAGES[argv[0]]
        if argv[0] == "bento":
            from sparserec.bento import build_parser

            build_parser().parse_args(argv[1:])
        else:
            assert module_name  # a known stage; its own examples are checked under its name


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_help_ends_with_two_examples_that_parse(stage):
    command, argv = STAGES[stage]
    examples = _examples(_help(argv))
    assert len(examples) == 2, examples
    for example in examples:
        words = shlex.split(re.sub(r"^[A-Z_]+=\S+ ", "", example))  # an environment prefix is not an argument
        prefix = shlex.split(command)
        assert words[: len(prefix)] == prefix, example
        _parse_example(stage, words[len(prefix) :] if not stage.startswith("sparserec") else words[1:])


def test_every_serving_setting_has_a_flag_with_its_default_in_help():
    text = _help(["-m", "serving", "--help"])
    source = (ROOT / "serving" / "config.py").read_text() + (ROOT / "serving" / "service.py").read_text()
    variables = set(re.findall(r"\bSPARSEREC_[A-Z_]+\b", source))
    from serving.flags import ENV_ONLY, env_var

    # ENV_ONLY: the admin token (a flag would show in `ps`) and the per-server reload file
    flagged = {s.env for s in SETTINGS} | {"SPARSEREC_ARTIFACT", "SPARSEREC_HOST"} | {env_var(f) for f in ENV_ONLY}
    assert variables <= flagged, f"settings without a flag: {sorted(variables - flagged)}"
    fields = {f.name for f in __import__("dataclasses").fields(ServeConfig)} - {"artifact"} - ENV_ONLY
    assert {s.field for s in SETTINGS} == fields
    from serving.flags import HELP

    assert set(HELP) == fields, "each setting's flag needs its line in serving.flags.HELP"
    flat = " ".join(text.split())
    for s in SETTINGS:
        assert s.flag in text and f"env {s.env}" in flat, s
        shown = "on" if s.default is True else str(s.default)
        assert re.search(rf"{s.env}(=1/0)?, default ({re.escape(shown)}|cpu_count / workers)\)", flat), s
    for flag, variable in (("--artifact", "SPARSEREC_ARTIFACT"), ("--host", "SPARSEREC_HOST")):
        assert flag in text and variable in flat


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.flag)
def test_each_flag_sets_its_variable_and_the_config_reads_it(setting):
    if setting.kind is bool:
        argv, expected = [f"--no-{setting.flag[2:]}"], False
    elif setting.kind is str:
        choice = {"device": "cuda", "batch_route": "never"}[setting.field]
        argv, expected = [setting.flag, choice], choice
    else:
        argv, expected = [setting.flag, "4096"], 4096  # above every minimum (max_body_bytes: 1024)
    args = serving_parser().parse_args(["--artifact", "artifacts/x", *argv])
    env = settings_env(args)
    assert set(env) == {setting.env}
    assert getattr(ServeConfig.from_env(server_env(args, base={})), setting.field) == expected
    # not given: the environment's value stays (a Bento's settings arrive that way)
    args = serving_parser().parse_args(["--artifact", "artifacts/x"])
    assert settings_env(args) == {}
    assert server_env(args, base={setting.env: env[setting.env]})[setting.env] == env[setting.env]


def test_a_bad_flag_value_is_refused_naming_the_flag(capsys):
    from serving.cli import main

    assert main(["--artifact", "artifacts/x", "--max-k", "0"]) == 2
    assert "--max-k (SPARSEREC_MAX_K) must be >= 1" in capsys.readouterr().err
    assert main(["--artifact", "artifacts/x", "--host", "localhost"]) == 2
    assert "--host (SPARSEREC_HOST) must be an IP address" in capsys.readouterr().err


def test_bind_host_localhost_by_default_every_interface_in_a_container():
    assert bind_host({}) == "127.0.0.1"
    assert bind_host({"BENTOML_CONTAINERIZED": "true"}) == "0.0.0.0"
    assert bind_host({"BENTOML_CONTAINERIZED": "true", "SPARSEREC_HOST": "127.0.0.1"}) == "127.0.0.1"
    assert bind_host({"SPARSEREC_HOST": "::"}) == "::"
    with pytest.raises(ConfigError, match="SPARSEREC_HOST"):
        bind_host({"SPARSEREC_HOST": "my-laptop"})


def _flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))


def _parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {
        flag
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help"
    }


@pytest.mark.parametrize(
    "doc, parser",
    [
        ("deploy.md", lambda: serving_parser()),
        (
            "loadtest.md",
            lambda: (
                __import__("loadtest.__main__", fromlist=["build_parser"])
                .build_parser()
                ._subparsers._group_actions[0]
                .choices["run"]
            ),
        ),
    ],
)
def test_docs_list_every_flag_of_the_command(doc, parser):
    """docs/deploy.md documents every `python -m serving` flag, docs/loadtest.md every `loadtest run` flag."""
    text = (ROOT / "docs" / doc).read_text()
    missing = _parser_flags(parser()) - _flags(text)
    assert not missing, f"docs/{doc} does not document {sorted(missing)}"


def _make_help_targets() -> list[str]:
    done = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    targets = []
    for line in done.stdout.splitlines():
        found = re.match(r"\s*make ((?:[a-z0-9-]+(?: \| )?)+)", line)
        if found:
            targets += [t for t in found.group(1).split(" | ") if t]
    return targets


def test_make_help_lists_the_product_first_and_every_target_has_a_recipe():
    targets = _make_help_targets()
    assert targets[:5] == ["demo", "test", "serve", "loadtest-host", "bento"]
    for target in targets:  # a dry run: prints the recipe, runs nothing
        done = subprocess.run(
            ["make", "-n", "--no-print-directory", target], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and done.stdout.strip(), f"make {target}: {done.stderr[-500:]}"
