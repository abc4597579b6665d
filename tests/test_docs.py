"""The README's promises are checked: set-up commands, CI, every command and key documented."""

import re
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


@pytest.mark.parametrize("section, key", [(s, k) for s, keys in SCHEMA.items() for k in keys])
def test_every_config_key_is_documented(section: str, key: str) -> None:
    assert re.search(rf"`{key}`", README), f"[{section}] {key} missing from README"
    shipped = (ROOT / "config.ini").read_text()
    assert re.search(rf"^;?{key} = ", shipped, re.M), f"[{section}] {key} missing from config.ini"


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


@pytest.mark.parametrize("section, key", [(s, k) for s, keys in SCHEMA.items() for k in keys])
def test_every_config_key_is_in_the_configuration_reference(section: str, key: str) -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    assert f"`{key}`" in reference, f"[{section}] {key} missing from docs/configuration.md"


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
