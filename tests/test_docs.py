"""The user's manual matches the code: every ``streamseg`` command line that README.md, docs/
and the commands' own ``--help`` show is one the CLI accepts, and every ``--option`` and every
setting they name exists (pure: no servers)."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from consumer.cli import build_parser
from consumer.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
MANUALS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# A redirection with its file descriptor (``2>&1``, ``>>``): read as one ``>``.
_REDIRECTION = re.compile(r"(?<!\S)\d?>>?&?\d*")
# A word the manual writes for "a value of your choice" (NAME, VERSION, N).
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$")
# Options the README names that belong to other programs it shows: this repository's own
# scripts (their --help lists them) and third-party tools (docker compose, kafka-topics.sh,
# redis-server).
_OTHER_PROGRAMS_OPTIONS = {
    "--alter",  # kafka-topics.sh
    "--create",  # kafka-topics.sh
    "--build",  # docker compose up
    "--partitions",  # kafka-topics.sh; python -m devstack up
    "--port",  # redis-server
    "--profile",  # docker compose; benchmarks/run.py
    "--scale",  # docker compose up
    "--tls-port",  # redis-server
    "--redis-cluster",  # python -m devstack up
    "--configs",  # benchmarks/live_model.py
    "--seeds",  # benchmarks/live_model.py
    "--repeats",  # benchmarks/run.py
    "--skip",  # benchmarks/run.py
    "--scale-events",  # benchmarks/run.py
    "--scale-users",  # benchmarks/run.py
    "--seconds",  # scripts/soak.py
}


# Settings the README misspells on purpose, to show the error a misspelling gets.
_MISSPELT_ON_PURPOSE = {"trainer.n_cluster", "trainr.n_clusters"}


def _code_blocks(text: str) -> Iterator[str]:
    """Lines of the shell code blocks (```bash, ```sh) of a Markdown text, continuations
    joined."""
    language: str | None = None
    pending = ""
    for line in text.splitlines():
        if line.startswith("```"):
            language = None if language is not None else line[3:].strip()
            continue
        if language in ("bash", "sh"):
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            yield pending + line
            pending = ""


def _inline_commands(text: str) -> Iterator[str]:
    """Inline code spans of a Markdown text that are a ``streamseg`` command."""
    yield from re.findall(r"`((?:\S+=\S+ )*streamseg [^`]*)`", text)


def _epilog_lines(parser: argparse.ArgumentParser) -> Iterator[str]:
    """The example lines of the ``--help`` of the CLI and of each of its commands."""
    for line in (parser.epilog or "").splitlines():
        yield line.strip()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _epilog_lines(sub)


def _commands(line: str) -> Iterator[list[str]]:
    """The ``streamseg`` commands of one shell line, as argument lists (after ``streamseg``):
    comments and what follows a shell operator (or the manual's ``a / b`` alternatives)
    dropped, ``[optional]`` parts kept, placeholders filled in."""
    lexer = shlex.shlex(_REDIRECTION.sub(" > ", line), posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    try:
        words = list(lexer)
    except ValueError:  # an unbalanced quote: not a command line
        return
    command: list[str] | None = None
    for word in [*words, "|"]:
        if word == "/" or not word.strip("();<>|&"):  # an operator, or "a / b"
            if command is not None:
                yield command
            command = None
        elif command is None:
            command = [] if word == "streamseg" else None
        else:
            word = word.strip("[]")
            if word == "COMMAND":
                word = "run"
            elif _PLACEHOLDER.match(word):
                word = "1"
            if word:
                command.append(word)


def _documented_commands() -> list[tuple[str, list[str], bool]]:
    """(where, arguments, complete): ``complete`` is False for an inline mention in prose
    (`streamseg replay`), which names a command and need not give its required arguments."""
    found: list[tuple[str, list[str], bool]] = []
    for path in MANUALS:
        text = path.read_text()
        for line in _code_blocks(text):
            found += [(f"{path.name}: {line.strip()}", argv, True) for argv in _commands(line)]
        for line in _inline_commands(text):
            found += [(f"{path.name}: `{line}`", argv, False) for argv in _commands(line)]
    for line in _epilog_lines(build_parser()):
        found += [(f"--help: {line}", argv, True) for argv in _commands(line)]
    return found


def _refusal(argv: list[str]) -> str | None:
    """None when the CLI's parser accepts ``argv``, else what it said."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):  # 0: --help printed
            return stderr.getvalue().strip().splitlines()[-1]
    return None


def test_every_documented_streamseg_command_is_accepted_by_the_cli() -> None:
    commands = _documented_commands()
    # The manual shows the main commands; an extraction that found none would pass vacuously.
    assert len(commands) > 60
    shown = {argv[0] for _, argv, complete in commands if argv and complete}
    assert {"run", "train", "replay", "lookup", "model", "produce", "generate"} <= shown
    refused = [
        f"{where}\n    -> {reason}"
        for where, argv, complete in commands
        if "..." not in argv
        and (reason := _refusal(argv)) is not None
        and (complete or "arguments are required" not in reason)
    ]
    assert not refused, "\n".join(refused)


def _cli_options(parser: argparse.ArgumentParser) -> set[str]:
    options: set[str] = set()
    for action in parser._actions:
        options.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options |= _cli_options(sub)
    return options


def test_every_option_the_readme_names_exists() -> None:
    text = (REPO_ROOT / "README.md").read_text()
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
    unknown = named - _cli_options(build_parser()) - _OTHER_PROGRAMS_OPTIONS
    assert not unknown, f"README.md names options no command has: {sorted(unknown)}"


def _setting_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """``section.field`` of every setting (``kafka.events_topic``), sections too."""
    paths: set[str] = set()
    for name, info in model.model_fields.items():
        paths.add(prefix + name)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            paths |= _setting_paths(info.annotation, f"{prefix}{name}.")
    return paths


def _help_texts(parser: argparse.ArgumentParser) -> Iterator[str]:
    yield parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _help_texts(sub)


def test_every_setting_the_manuals_name_exists() -> None:
    """`section.field` in README.md, docs/ and --help, and STREAMSEG_SECTION__FIELD."""
    settings = _setting_paths(Settings)
    sections = "|".join(sorted({p.split(".")[0] for p in settings if "." in p}))
    manuals = "".join(path.read_text() for path in MANUALS)
    named = set(re.findall(rf"`((?:{sections})\.[a-z_]+)", manuals))
    named |= set(
        re.findall(rf"(?<![\w.])((?:{sections})\.[a-z_]+)", "".join(_help_texts(build_parser())))
    )
    named |= {
        f"{section.lower()}.{field.lower()}"
        for section, field in re.findall(r"STREAMSEG_([A-Z]+)__([A-Z0-9_]+)", manuals)
    }
    assert len(named) > 40  # the manual names most settings: the patterns still match
    unknown = named - settings - _MISSPELT_ON_PURPOSE
    assert not unknown, f"the manuals name settings that do not exist: {sorted(unknown)}"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("streamseg model show [VERSION]  # segments", [["model", "show", "1"]]),
        ("cut -d, -f1 u.csv | streamseg lookup - > s.jsonl", [["lookup", "-"]]),
        ("STREAMSEG_X=1 streamseg run &", [["run"]]),
        ("streamseg COMMAND --help", [["run", "--help"]]),
        ("make demo", []),
        ("streamseg run --processes 1 / 2 / 3", [["run", "--processes", "1"]]),
        (
            "x: streamseg compare r1; streamseg drop r1 (or not)",
            [["compare", "r1"], ["drop", "r1"]],
        ),
        (
            "streamseg produce f.csv --ts-format '%m %d' 2>&1 | tee",
            [["produce", "f.csv", "--ts-format", "%m %d"]],
        ),
    ],
)
def test_command_lines_are_read_as_a_shell_would(line: str, expected: list[list[str]]) -> None:
    assert list(_commands(line)) == expected


def test_the_readme_settings_table_has_every_field_with_its_default() -> None:
    """Each section's row names every field (the features' half-lives: in [Features]), and a
    default written ``field (value`` is the code's."""
    readme = (REPO_ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| (.*) \|$", readme, re.M))
    checked = 0
    for section, info in Settings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        row = rows[section]
        fields = set(re.findall(r"`(\w+)`", row))
        if section == "features":  # "the half-lives above"
            fields |= {f for f in model.model_fields if f"`features.{f}`" in readme}
        assert set(model.model_fields) <= fields, f"{section}: {set(model.model_fields) - fields}"
        for name, written in re.findall(r"`(\w+)` \(([-\d.]+|true|false)[:;)\s]", row):
            value = {"true": True, "false": False}.get(written)
            default = model.model_fields[name].default
            assert default == (float(written) if value is None else value), f"{section}.{name}"
            checked += 1
    assert checked > 25
