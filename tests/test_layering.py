"""Data flows one way: each package imports only the layers below it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# package -> the project packages it may import (besides itself).
ALLOWED = {
    "scp": {"spool", "dimse"},
    "spool": set(),
    "dimse": set(),
    "watchers": {"spool", "ledger"},
    "ledger": {"errors"},
    "migrations": {"ledger"},
    "processors": {"ledger", "spool", "exporters"},
    # spool.part10 (dataset offset), spool.incoming (our UIDs)
    "exporters": {"ledger", "spool", "dimse"},
}
PROJECT = {
    "scp",
    "dimse",
    "spool",
    "watchers",
    "ledger",
    "migrations",
    "processors",
    "exporters",
    "adapter",
    "cli",
    "config",
    "errors",
    "fsck",
    "health",
    "logs",
    "scheduler",
}
# Modules that wire everything together; nothing may import them.
ROOTS = {"adapter", "cli", "fsck", "health", "scheduler"}
# Packages with no import rule of their own: checked only for imports of the roots.
SHARED = {"config"}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (type hints are not data flow)."""
    nodes = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            pending.extend(node.orelse)
            continue
        nodes.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return nodes


def project_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & PROJECT
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_lower_layers(package: str) -> None:
    for path in sorted((ROOT / package).rglob("*.py")):
        imported = project_imports(path) - {package}
        assert imported <= ALLOWED[package], f"{path.relative_to(ROOT)} imports {imported}"


def test_nothing_imports_the_composition_roots() -> None:
    sources = [p for p in ROOT.glob("*.py")] + [
        p for package in sorted(set(ALLOWED) | SHARED) for p in (ROOT / package).rglob("*.py")
    ]
    for path in sources:
        if path.relative_to(ROOT).parts[0].removesuffix(".py") in ROOTS:
            continue  # a root may import the others
        assert not project_imports(path) & ROOTS, f"{path.relative_to(ROOT)} imports a root"
