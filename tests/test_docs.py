"""The README's promises are checked: set-up commands, CI, every command, every key.

Each key must be documented in its own section: a key named anywhere else in
a document does not count.
"""

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import click
import pytest

from cli import main
from config import SCHEMA

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def commands(group: click.Group, prefix: str = "dicom-adapter") -> list[str]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += commands(command, f"{prefix} {name}")
        else:
            found.append(f"{prefix} {name}")
    return found


def test_readme_opens_with_the_two_setup_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S).group(1)
    assert [line.split("#")[0].strip() for line in first_block.splitlines()] == [
        "make run",
        "make test",
    ]


def test_ci_runs_the_readme_test_command() -> None:
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "make test" in [line.strip() for line in script]
    assert script.index("apt-get update") < next(
        i for i, line in enumerate(script) if line.startswith("apt-get install")
    )


@pytest.mark.parametrize("command", commands(main))
def test_every_command_is_in_the_readme(command: str) -> None:
    assert f"`{command}" in README


def _backticked(cell: str) -> set[str]:
    return set(re.findall(r"`([a-z_]+)`", cell))


def readme_keys(text: str) -> dict[str, set[str]]:
    """The README's configuration table: a row with an empty section cell
    belongs to the section named above it."""
    keys: dict[str, set[str]] = defaultdict(set)
    section = None
    for line in text.splitlines():
        cells = line.strip().strip("|").split("|") if line.startswith("|") else []
        if len(cells) > 1 and (named := re.match(r"\s*`\[([a-z]+)", cells[0])):
            section = named.group(1)
        elif len(cells) < 2 or cells[0].strip():
            section = None
        if section:
            keys[section] |= _backticked(cells[1])
    return keys


def reference_keys(text: str) -> dict[str, set[str]]:
    """docs/configuration.md: the key column of the tables under each ``## `[section]``` heading."""
    keys: dict[str, set[str]] = defaultdict(set)
    section = None
    for line in text.splitlines():
        if line.startswith("## "):
            named = re.match(r"## `\[([a-z]+)", line)
            section = named.group(1) if named else None
        elif section and line.startswith("|"):
            keys[section] |= _backticked(line.split("|")[1])
    return keys


def ini_keys(text: str) -> dict[str, set[str]]:
    """config.ini: ``key = `` lines, commented out or not, under their ``[section]``."""
    keys: dict[str, set[str]] = defaultdict(set)
    section = None
    for line in text.splitlines():
        if named := re.match(r";?\[([a-z]+)", line):
            section = named.group(1)
        elif section and (key := re.match(r";?([a-z_]+) = ", line)):
            keys[section].add(key.group(1))
    return keys


def misplaced(schema: Mapping[str, Iterable[str]], documented: dict[str, set[str]]) -> list[str]:
    """Keys missing from their own section, and keys under a section that has no such key."""
    known = {section: set(keys) for section, keys in schema.items()}
    return [
        f"[{section}] {key}: not documented in its section"
        for section, keys in known.items()
        for key in sorted(keys - documented.get(section, set()))
    ] + [
        f"[{section}] {key}: documented, but not a key of that section"
        for section, keys in documented.items()
        for key in sorted(keys - known.get(section, set()))
    ]


DOCUMENTS = {
    "README.md": readme_keys,
    "docs/configuration.md": reference_keys,
    "config.ini": ini_keys,
}


@pytest.mark.parametrize("document", sorted(DOCUMENTS))
def test_every_config_key_is_documented_in_its_own_section(document: str) -> None:
    documented = DOCUMENTS[document]((ROOT / document).read_text())
    assert misplaced(SCHEMA, documented) == []


WRONG_SECTION = {
    "README.md": "| `[dicom]` | `port` | |\n| | `url` | |\n| `[ledger]` | see above | |\n",
    "docs/configuration.md": (
        "## `[dicom]`\n\n| key |\n|---|\n| `port` |\n| `url` |\n\n"
        "## `[ledger]`\n\nIts `url` is above.\n"
    ),
    "config.ini": "[dicom]\nport = 104\nurl = sqlite://\n\n[ledger]\n; url: see [dicom]\n",
}


@pytest.mark.parametrize("document", sorted(DOCUMENTS))
def test_a_key_documented_under_the_wrong_section_is_reported(document: str) -> None:
    documented = DOCUMENTS[document](WRONG_SECTION[document])
    assert misplaced({"dicom": ["port"], "ledger": ["url"]}, documented) == [
        "[ledger] url: not documented in its section",
        "[dicom] url: documented, but not a key of that section",
    ]


def test_every_package_is_installed() -> None:
    """A package missing from pyproject works from the checkout but not once installed."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {
        p.parent.relative_to(ROOT).as_posix().replace("/", ".")
        for p in ROOT.glob("*/**/__init__.py")
        if not p.is_relative_to(ROOT / "tests") and ".venv" not in p.parts and "var" not in p.parts
    }
    assert packages == set(project["packages"])
    modules = {p.stem for p in ROOT.glob("*.py")}
    assert modules == set(project["py-modules"])


@pytest.mark.parametrize(
    "page", ["configuration.md", "conformance.md", "operations.md", "ledger.md"]
)
def test_docs_pages_exist_and_are_linked(page: str) -> None:
    assert (ROOT / "docs" / page).stat().st_size > 1000
    assert f"docs/{page}" in README


def test_every_cookbook_query_runs_on_a_real_ledger(tmp_path: Path) -> None:
    import sqlite3

    from ledger.db import make_engine
    from ledger.migrate import upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine)
    engine.dispose()
    text = (ROOT / "docs" / "ledger.md").read_text()
    block = re.search(r"## Example queries\n\n```sql\n(.*?)```", text, re.S).group(1)
    statements = [s for s in block.split(";") if s.strip()]
    assert len(statements) >= 10
    with sqlite3.connect(tmp_path / "ledger.db") as connection:
        for statement in statements:
            connection.execute(statement).fetchall()


def test_the_license_is_an_spdx_string_so_setuptools_does_not_warn() -> None:
    """The ``license = { text = ... }`` table form made every install print a
    SetuptoolsDeprecationWarning three times (setuptools 77 wants an SPDX string)."""
    import tomllib

    document = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert document["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in document["build-system"]["requires"]
