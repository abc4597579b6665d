"""Data flows one way: each top-level module imports only what its rule names.

The modules are found in the tree, not listed by hand, so a new package
without a rule fails here instead of going unchecked.  Imports under
``if TYPE_CHECKING:`` are type hints, not data flow, and are ignored; an
import inside a function counts like any other.
"""

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Not product code: the tests, the benchmarks, migration scripts (frozen once
# written), run-time data; hidden folders (.venv, .git) are skipped too.
NOT_PRODUCT = ("tests", "bench", "migrations/versions", "var", "build")

# Composition roots wire the tree together: they may import anything, and
# only another root may import them.
ANYTHING = None

# Top-level module or package -> the project modules it may import (besides
# itself).  A new package adds its line here.
RULES: dict[str, set[str] | None] = {
    "errors": set(),  # exceptions and exit codes, the bottom layer
    "arenas": set(),  # glibc malloc tuning
    "privileges": set(),  # Linux capabilities
    "notify": set(),  # sd_notify
    "scheduler": set(),  # APScheduler wiring; the ticks are handed in
    "private_api": set(),  # checks of the libraries' private parts we rely on
    "dimse": {"private_api"},  # our DIMSE codec and upper layer
    "spool": set(),  # files on disk: layout, names, headers, durable writes
    "ledger": {"errors"},
    "migrations": {"ledger"},  # env.py reads the models' metadata
    "watchers": {"spool", "ledger"},
    # ledger record types, spool.part10 (data set offset), spool.incoming (our UIDs)
    "exporters": {"ledger", "spool", "dimse"},
    "processors": {"ledger", "spool", "exporters"},
    "tasks": {"errors", "ledger", "processors", "exporters"},  # lanes run jobs and exports
    "reclaim": {"ledger", "spool"},  # deletes what the ledger is done with
    # builds every config-derived part (lanes, groupers, admission) for adapter.py
    "derived": {"config", "ledger", "processors", "exporters", "scp", "tasks"},
    "scp": {"spool", "dimse", "arenas"},  # arenas: set in the SCP's own process
    # the HTTP listener: STOW-RS into the spool, as the SCP; the status pages read the
    # ledger and health (actions write it); uvicorn's internals checked
    "web": {"config", "errors", "health", "ledger", "private_api", "spool"},
    "logs": {"spool"},  # spool.text makes every log line one line
    "samples": {"spool"},  # spool.incoming makes the UIDs
    # validates AE titles and UIDs (spool.names) and duplicates policies
    "config": {"errors", "spool", "watchers"},
    "config_changes": {"config"},
    "metrics": {"ledger"},
    "health": {"config", "ledger", "scp"},  # scp.admission: the C-ECHO probe's AE title
    "fsck": {"config", "errors", "health", "ledger", "processors", "spool", "watchers"},
    "adapter": ANYTHING,
    "cli": ANYTHING,
}


def product_files(root: Path) -> list[Path]:
    """Every product ``.py`` file under ``root``."""
    return sorted(
        path
        for path in root.rglob("*.py")
        if not any(part.startswith(".") for part in path.relative_to(root).parts)
        and not any(path.is_relative_to(root / folder) for folder in NOT_PRODUCT)
    )


def top_level(path: Path, root: Path) -> str:
    """The top-level module or package ``path`` belongs to."""
    return path.relative_to(root).parts[0].removesuffix(".py")


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``."""
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


def imported_top_levels(path: Path) -> set[str]:
    """The top-level names ``path`` imports at run time.

    Relative imports are left out: the tree's root is not a package, so one
    cannot reach past its own top-level package.
    """
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def layering_violations(root: Path, rules: dict[str, set[str] | None]) -> list[str]:
    """One line per module without a rule and per import its rule does not allow."""
    files = product_files(root)
    project = {top_level(path, root) for path in files}
    problems = [
        f"{name}: no layering rule (add it to RULES)" for name in sorted(project - set(rules))
    ]
    for path in files:
        own = top_level(path, root)
        allowed = rules.get(own, ANYTHING)
        if allowed is ANYTHING:  # a root, or without a rule (reported above)
            continue
        forbidden = (imported_top_levels(path) & project) - {own} - allowed
        if forbidden:
            problems.append(f"{path.relative_to(root)} imports {sorted(forbidden)}")
    return problems


def test_every_module_imports_only_what_its_rule_allows() -> None:
    assert layering_violations(ROOT, RULES) == []


def test_every_rule_names_modules_that_exist() -> None:
    project = {top_level(path, ROOT) for path in product_files(ROOT)}
    named = set(RULES).union(*(allowed for allowed in RULES.values() if allowed))
    assert named <= project, f"rules for modules not in the tree: {sorted(named - project)}"


def test_only_roots_import_roots_and_the_layers_have_no_cycle() -> None:
    roots = {name for name, allowed in RULES.items() if allowed is ANYTHING}
    layers = {name: allowed for name, allowed in RULES.items() if allowed is not ANYTHING}
    assert not any(allowed & roots for allowed in layers.values())
    graphlib.TopologicalSorter(layers).prepare()  # raises CycleError


def test_the_checker_reports_a_forbidden_import_and_a_module_without_a_rule(
    tmp_path: Path,
) -> None:
    for name, text in {
        "scp/__init__.py": "",
        "scp/server.py": "from spool import layout\n",
        "spool/__init__.py": "",
        "spool/layout.py": "",
        "ledger/__init__.py": "",
        "ledger/store.py": "def store():\n    from scp.server import Server\n",
        "ledger/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import scp\n",
        "unlisted.py": "import ledger\n",
        "tests/test_x.py": "import scp, ledger\n",
        ".venv/lib/site.py": "import scp\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    rules = {"scp": {"spool"}, "spool": set(), "ledger": set()}
    assert layering_violations(tmp_path, rules) == [
        "unlisted: no layering rule (add it to RULES)",
        "ledger/store.py imports ['scp']",
    ]
