"""Every ``shield-ps`` / ``shield-agent`` / ``shield-ops`` command that README.md and docs/*.md show goes through the
tool's own argument validation, so a doc command that no longer parses fails here (the README's quick start and
the printed join command are also run for real: tests/test_startup_integration.py).

- A command in a code block (fenced, or indented by four spaces) is parsed whole by the tool's parser; ``serve``
  commands also through the configuration checks ``serve`` makes before it starts anything, and ``sweep`` commands
  through the grid's. Doc notation is read as a reader would: ``[--flag VALUE]`` is an optional part (kept),
  ``<what>`` a value to fill in, ``...`` more of the same (dropped).
- A command quoted inline (```shield-ps serve --agg-threads N```) is often a fragment, so only its subcommand and the
  options it names are checked against the tool's parser.
- Docs name no path outside the project (no sibling folders, no scratch directories of one machine).
"""
from __future__ import annotations

import argparse
import importlib
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.runtime_helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TOOLS = {"shield-ps": "shield_ps.cli", "shield-agent": "shield_agent.cli", "shield-ops": "shield_ops.cli"}
#: what may stand before a command on its line: an install step, environment variables, nice
_PREFIX = re.compile(r"^(?:.*&&\s*)?(?:[A-Z_]+=\S+\s+)*(?:nice\s+-n\s*\d+\s+)?")
_INLINE = re.compile(r"`((?:shield-ps|shield-agent|shield-ops)(?:\s[^`]*)?)`")


class DocCommand(NamedTuple):
    where: str  # "docs/x.md:12"
    argv: list[str]  # the tool's name first


def _code_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, logical line) of the code blocks of a Markdown text, backslash continuations joined."""
    lines = text.splitlines()
    fenced, i = False, 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            number, logical = i + 1, line.strip()
            while logical.endswith("\\") and i + 1 < len(lines):
                i += 1
                logical = logical[:-1] + " " + lines[i].strip()
            yield number, logical
        i += 1


def _argv(command: str) -> list[str] | None:
    """The command's words with doc notation resolved, or None when the line is not a command of ours."""
    command = _PREFIX.sub("", command, count=1)
    if not command.startswith(tuple(TOOLS)):
        return None
    command = re.sub(r"<[^>]+>", "example", command).replace("[", " ").replace("]", " ")
    argv = [word for word in shlex.split(command, comments=True) if word != "..."]
    return argv if argv and argv[0] in TOOLS else None


def block_commands() -> list[DocCommand]:
    found = []
    for path in DOCS:
        for number, line in _code_lines(path.read_text()):
            argv = _argv(line)
            if argv:
                found.append(DocCommand(f"{path.relative_to(REPO)}:{number}", argv))
    return found


def inline_commands() -> list[DocCommand]:
    found = []
    for path in DOCS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for span in _INLINE.findall(line):
                argv = _argv(span.split(" | ")[0])  # `--device cpu | cuda | auto`: the first alternative
                if argv:
                    found.append(DocCommand(f"{path.relative_to(REPO)}:{number}", argv))
    return found


BLOCKS, INLINE = block_commands(), inline_commands()


def _parser(tool: str) -> argparse.ArgumentParser:
    return importlib.import_module(TOOLS[tool]).build_parser()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_docs_show_commands_of_every_tool() -> None:
    shown = {c.argv[0] for c in BLOCKS}
    assert shown == set(TOOLS), shown
    assert len(BLOCKS) >= 20 and len(INLINE) >= 40, (len(BLOCKS), len(INLINE))


@pytest.mark.parametrize("command", BLOCKS, ids=[c.where for c in BLOCKS])
def test_a_documented_command_passes_validation(command: DocCommand, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # serve's --resume and run-directory checks look at ./runs
    monkeypatch.setenv("SHIELD_DATA_DIR", str(tmp_path / "cache"))  # an empty cache: no download, the embedded MNIST
    tool, argv = command.argv[0], command.argv[1:]
    try:
        args = _parser(tool).parse_args(argv)
    except SystemExit:
        pytest.fail(f"{command.where}: `{shlex.join(command.argv)}` does not parse: {capsys.readouterr().err}")
    if tool == "shield-ps" and args.command == "serve":
        from shield_ps.cli.serve import config_from_args
        from shield_ps.data import locate_data
        from shield_ps.job import resolve_job

        config = config_from_args(args)
        resolve_job(config)
        locate_data(config.dataset, config.data_dir)
    elif tool == "shield-ps" and args.command == "sweep":
        from shield_ps.cli.sweep import build_grid

        monkeypatch.chdir(REPO)  # --config examples/... is relative to the checkout
        build_grid(args)[0].runs()


@pytest.mark.parametrize("command", INLINE, ids=[c.where for c in INLINE])
def test_a_quoted_command_names_existing_options(command: DocCommand) -> None:
    parser = _parser(command.argv[0])
    rest = command.argv[1:]
    if not rest or rest[0].startswith("-"):
        return
    subcommands = _subparsers(parser)
    assert rest[0] in subcommands, f"{command.where}: no subcommand {rest[0]!r} in {command.argv[0]}"
    known = set(subcommands[rest[0]]._option_string_actions) | set(parser._option_string_actions)
    named = [word.split("=", 1)[0] for word in rest[1:] if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", word)]
    unknown = [option for option in named if option not in known]
    assert not unknown, f"{command.where}: {' '.join(command.argv)}: no option {', '.join(unknown)}"


_OUTSIDE = re.compile(r"(?<![\w.~])(?:\.\./|/work/|/tmp/|/root/|/home/)")


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_docs_name_no_path_outside_the_project(path: Path) -> None:
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
             for n, line in enumerate(path.read_text().splitlines(), 1) if _OUTSIDE.search(line)]
    assert not found, "\n".join(found)


def test_ci_runs_the_readme_test_command_in_a_fresh_venv() -> None:
    readme = (REPO / "README.md").read_text()
    test_command = next(line for _, line in _code_lines(readme) if line.endswith("python -m pytest -q"))
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert ci[-1] == test_command
    venv = next(i for i, line in enumerate(ci) if " -m venv " in line)
    assert venv < next(i for i, line in enumerate(ci) if "bin/activate" in line) < len(ci) - 1
