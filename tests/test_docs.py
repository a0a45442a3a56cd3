"""Every Python example in README.md and docs/*.md passes mypy (strict, the
project's own configuration) and ruff, so the documentation cannot drift from
the API it shows.

Each ```python block becomes a module of its own and is checked as one. A
block that builds on the block just before it (uses its classes, say) is
marked so in the Markdown, with this HTML comment as the last line before its
fence::

    <!-- fragment: continues the block above -->

Such a block is checked appended to that one (the chain may go on). Nothing
is skipped: any other ``<!-- fragment: ... -->`` text is an error, and so is
a block tagged ``py``, ``python3`` or ``pycon``, which would otherwise pass
unseen. mypy runs once over all the blocks, from a directory outside the
repository, so ``import sockserve`` resolves as it does for a user: through
the installed distribution (with ``pip install -e .``, through its path entry).
ruff runs once too, with the project's rules and the ignores of examples/
(the blocks are example programs: they may print).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # mypy needs tomli on 3.10, so it is there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

CONTINUES = "<!-- fragment: continues the block above -->"
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)\s*(?P<info>[^`\s]*)")
# Tags under which Python might hide from this test.
PYTHON_LIKE = {"py", "py3", "python3", "pycon", "pyi", "ipython"}


@dataclasses.dataclass
class Block:
    document: Path
    line: int  # 1-based line number of the block's first line of code
    code: list[str]
    previous: Block | None  # the block it continues, when it is marked so

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"

    @property
    def module(self) -> str:
        stem = re.sub(r"\W", "_", str(self.document.relative_to(ROOT).with_suffix(""))).lower()
        return f"{stem}_line{self.line}"

    def chain(self) -> list[Block]:
        blocks: list[Block] = []
        block: Block | None = self
        while block is not None:
            blocks.insert(0, block)
            block = block.previous
        return blocks

    def source(self) -> tuple[str, list[str]]:
        """The module's text, and for each of its lines the Markdown line it came from."""
        lines: list[str] = []
        origin: list[str] = []
        for block in self.chain():
            if lines:
                lines.append("")
                origin.append(f"{block.where} (joining the blocks)")
            for offset, text in enumerate(block.code):
                lines.append(text)
                origin.append(f"{block.document.relative_to(ROOT)}:{block.line + offset}")
        return "\n".join(lines) + "\n", origin


def fenced_blocks(document: Path) -> Iterator[tuple[int, str, str, list[str]]]:
    """(line of the fence, info string, the last non-blank line before it, code lines)."""
    lines = document.read_text().splitlines()
    index = 0
    last_text = ""
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            if lines[index].strip():
                last_text = lines[index].strip()
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        closing = re.compile(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        code = [re.sub(rf"^ {{0,{indent}}}", "", line) for line in lines[index + 1 : end]]
        yield index + 1, opening["info"].lower(), last_text, code
        last_text = ""
        index = end + 1


def python_blocks() -> list[Block]:
    blocks: list[Block] = []
    for document in DOCUMENTS:
        previous: Block | None = None
        for fence_line, info, before, code in fenced_blocks(document):
            where = f"{document.relative_to(ROOT)}:{fence_line}"
            assert info not in PYTHON_LIKE, f'{where}: tag Python blocks "python", so that they are checked'
            if info != "python":
                continue
            marker = before if before.startswith("<!-- fragment") else None
            assert marker in (None, CONTINUES), f"{where}: unknown marker {marker!r}; the one known is {CONTINUES!r}"
            if marker == CONTINUES:
                assert previous is not None, f"{where}: marked as continuing a block, but none comes before it"
            block = Block(document, fence_line + 1, code, previous if marker else None)
            blocks.append(block)
            previous = block
    return blocks


BLOCKS = python_blocks()
EXAMPLE_IGNORES: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"][
    "per-file-ignores"
]["examples/**"]
REPORT = re.compile(r"^(?P<file>[\w.]+\.py):(?P<line>\d+):(?:\d+:)? (?P<message>.*)$")


@dataclasses.dataclass
class Checked:
    mypy: dict[str, list[str]]  # module -> what the tool said of it, at Markdown locations
    ruff: dict[str, list[str]]


def _check(tool: list[str], workdir: Path, origins: dict[str, list[str]]) -> dict[str, list[str]]:
    """Run a tool over every block's module at once; sort what it says by block."""
    proc = subprocess.run(
        [sys.executable, "-m", *tool, *(f"{module}.py" for module in origins)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found: dict[str, list[str]] = {module: [] for module in origins}
    for line in proc.stdout.splitlines():
        report = REPORT.match(line)
        if report is not None:
            module = report["file"].removesuffix(".py")
            assert module in origins, f"{tool[0]} reported on a file this test did not write: {line}"
            found[module].append(f"{origins[module][int(report['line']) - 1]}: {report['message']}")
    # Exit status 1 is "found problems"; it must then have named them, at a line of a block.
    assert proc.returncode in (0, 1), f"{tool[0]} did not run:\n{proc.stdout}{proc.stderr}"
    assert (proc.returncode == 1) == any(found.values()), f"{tool[0]}:\n{proc.stdout}{proc.stderr}"
    return found


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> Checked:
    """Write every block to a module of its own, then run mypy once and ruff once over them all."""
    workdir = tmp_path_factory.mktemp("docs")
    origins: dict[str, list[str]] = {}
    for block in BLOCKS:
        text, origins[block.module] = block.source()
        (workdir / f"{block.module}.py").write_text(text)
    # The project's ruff configuration, and the blocks judged as example
    # programs, like examples/. A continuing block may open with imports of its
    # own, which the joined module then has after code: the joining's doing.
    ruff_toml = [f"extend = {json.dumps(str(ROOT / 'pyproject.toml'))}", "[lint.extend-per-file-ignores]"]
    ruff_toml.append(f'"*.py" = {json.dumps(EXAMPLE_IGNORES)}')
    ruff_toml += [f'"{block.module}.py" = ["E402"]' for block in BLOCKS if block.previous]
    (workdir / "ruff.toml").write_text("\n".join(ruff_toml) + "\n")

    mypy_options = ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(workdir / ".mypy_cache")]
    return Checked(
        mypy=_check(["mypy", *mypy_options, "--no-error-summary", "--no-pretty"], workdir, origins),
        ruff=_check(["ruff", "check", "--no-cache", "--output-format", "concise", "--quiet"], workdir, origins),
    )


def test_the_documents_have_python_examples() -> None:
    # A guard for the guard: a change to the extraction that finds nothing would pass everything.
    assert {block.document.name for block in BLOCKS} >= {"README.md", "async.md", "production.md"}


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_example_passes_mypy(block: Block, checked: Checked) -> None:
    messages = checked.mypy[block.module]
    assert not messages, "\n".join(messages)


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_example_passes_ruff(block: Block, checked: Checked) -> None:
    messages = checked.ruff[block.module]
    assert not messages, "\n".join(messages)


def test_no_example_awaits_serve_forever() -> None:
    """An async server's serve_forever() is the blocking call for plain code;
    a coroutine awaits serve()."""
    for block in BLOCKS:
        for offset, line in enumerate(block.code):
            where = f"{block.document.relative_to(ROOT)}:{block.line + offset}"
            assert not re.search(r"\bawait\b.*\.serve_forever\(", line), f"{where}: await serve() instead: {line}"
