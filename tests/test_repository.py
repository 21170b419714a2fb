"""The repository is the whole project: nothing in it reaches outside it.

A user who clones rigpilot has the repository and nothing beside it, so no file may read or
cite a folder next to the checkout (the design team's reference folder, say) or a path of the
machine it was written on. Fixtures live in ``tests/fixtures`` with their origin and licence.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Spelled in pieces so that this file does not match itself.
SIBLING = re.compile(
    "|".join(
        [
            re.escape("../" + "shared"),
            re.escape("parents[1].parent / " + '"shared"'),
            re.escape("parents[2] / " + '"shared"'),
            re.escape("REPO.parent / " + '"shared"'),
        ]
    )
)


def project_files() -> list[Path]:
    """Every file of the project: git's list when this is a checkout, else the tree."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        skip = {".venv", ".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
        names = [
            str(p.relative_to(REPO))
            for p in REPO.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(REPO).parts)
        ]
    return [REPO / n for n in names if (REPO / n).is_file()]


def text_of(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data:
        return None
    return data.decode("utf-8", errors="replace")


def offending_lines(pattern: re.Pattern[str]) -> list[str]:
    found = []
    for path in project_files():
        text = text_of(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    return found


def test_no_file_reaches_a_folder_beside_the_repository() -> None:
    assert offending_lines(SIBLING) == []


def test_no_file_names_a_path_of_this_machine() -> None:
    parent = str(REPO.parent)
    if parent in ("/", ""):
        pytest.skip("the checkout sits at the root: every absolute path would match")
    assert offending_lines(re.compile(re.escape(parent + "/"))) == []


def test_the_pattern_catches_what_it_is_for() -> None:
    # A check that could never fail would prove nothing: each form it forbids is caught.
    for line in (
        "see ../" + "shared/reference/protocols.md",
        "SHARED = Path(__file__).resolve().parents[1].parent / " + '"shared"',
        "ECONOMICS = Path(__file__).resolve().parents[2] / " + '"shared"',
    ):
        assert SIBLING.search(line), line


def test_every_capture_and_feed_has_its_origin_beside_it() -> None:
    fixtures = REPO / "tests" / "fixtures"
    assert (fixtures / "captures" / "NOTICE").is_file()
    assert (fixtures / "captures" / "LICENSE-asic-rs.txt").is_file()
    readme = (fixtures / "README.md").read_text(encoding="utf-8")
    for feed in sorted((fixtures / "feeds").iterdir()):
        assert feed.name in readme, (
            f"tests/fixtures/README.md does not say where {feed.name} is from"
        )


def test_every_module_the_package_imports_is_declared() -> None:
    """A module imported directly must be a declared dependency, not one that happens to come
    with another (httpx with pyasic, paho with aiomqtt): a dependency may drop it any day."""
    import ast
    import sys
    import tomllib
    from importlib import metadata

    declared = {
        re.split(r"[=<>;!~ \[]", spec, maxsplit=1)[0].lower().replace("_", "-")
        for spec in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    ours = {"backtest", "daemon", "drivers", "market", "policies", "simulator"}
    providers = metadata.packages_distributions()
    undeclared: dict[str, str] = {}
    for package in sorted(ours):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in ours or top in sys.stdlib_module_names:
                        continue
                    dists = {d.lower().replace("_", "-") for d in providers.get(top, [top])}
                    if not dists & declared:
                        undeclared[top] = str(path.relative_to(REPO))
    assert undeclared == {}


def test_no_private_name_is_imported_across_modules() -> None:
    """A leading underscore means "this module's own": another module (a test or a benchmark
    included) that needs it asks for a public name instead (docs/architecture.md)."""
    import ast

    ours = {"backtest", "bench", "daemon", "drivers", "market", "policies", "scripts", "simulator"}
    found: list[str] = []
    for folder in [*sorted(ours), "tests"]:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                    continue
                if node.module.split(".")[0] not in ours:
                    continue
                found += [
                    f"{path.relative_to(REPO)}:{node.lineno}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert not found, "private names imported across modules:\n" + "\n".join(found)
