"""The docs stay true to the code: every `neverstop ...` command in a shell
block of README.md and docs/*.md parses with the CLI's own parser (the command
and every flag exist), and every relative link points at a file that exists."""

import contextlib
import glob
import io
import os
import re
import shlex

import pytest

from neverstop import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [os.path.join(ROOT, "README.md")]
SHELL_LANGUAGES = ("", "sh", "bash", "console")
COMMAND = re.compile(r"^(?:\S*/)?neverstop\s+(.*)$")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def shell_blocks(text: str) -> list:
    """The bodies of the page's fenced shell blocks, fence by fence: a
    closing fence never opens the next block (a regex over the page would
    pair a python block's closing fence with the next opening one)."""
    blocks, body, language = [], None, None
    for line in text.splitlines():
        fence = line.strip()
        if not fence.startswith("```"):
            if body is not None:
                body.append(line)
        elif body is None:
            body, language = [], fence[3:].strip()
        else:
            if language in SHELL_LANGUAGES:
                blocks.append("\n".join(body) + "\n")
            body = None
    return blocks


def documented_commands():
    """(page, line, argv) for each neverstop command line in a shell block."""
    found = []
    for page in PAGES:
        for block in shell_blocks(open(page).read()):
            for line in block.replace("\\\n", " ").splitlines():
                match = COMMAND.match(line.strip())
                if match:
                    argv = shlex.split(match.group(1), comments=True)
                    for i, token in enumerate(argv):
                        if token in ("|", ">", ">>", "&&", ";", "&"):
                            argv = argv[:i]
                            break
                    found.append((os.path.relpath(page, ROOT), line.strip(), argv))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands_for_every_stage():
    assert len(COMMANDS) >= 30
    shown = {argv[0] for _, _, argv in COMMANDS}
    for command in ("collect", "ingest", "train", "eval", "experiment", "quickstart"):
        assert command in shown


@pytest.mark.parametrize("page, line, argv", COMMANDS, ids=[c[1][:60] for c in COMMANDS])
def test_each_documented_command_parses(page, line, argv):
    parser = cli.build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args, extra = parser.parse_known_args(argv)
    except SystemExit as e:
        (
            pytest.fail(f"{page}: `{line}` does not parse: {err.getvalue().strip()}")
            if e.code
            else None
        )
        return  # --help
    if extra:
        # Beam's own flags pass through; any other command refuses extras.
        assert args.command in cli.BEAM_COMMANDS, f"{page}: `{line}`: unknown {extra}"


def test_relative_links_point_at_files_that_exist():
    missing = []
    for page in PAGES:
        for target in LINK.findall(open(page).read()):
            if re.match(r"^[a-z]+://|^#|^mailto:", target):
                continue
            path = os.path.join(os.path.dirname(page), target.split("#")[0])
            if not os.path.exists(path):
                missing.append(f"{os.path.relpath(page, ROOT)} -> {target}")
    assert not missing, missing
