"""Every document the tree cites is in the tree.

Comments once cited design notes and issue texts that were never in the
repository, so a reader could not follow them.  A cited ``*.md`` path must
exist (from the repository root or the citing file's folder; a bare name,
anywhere in the tree), and "issue N" is not a citation: say the fact itself.
"""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Not the project's text: environments, caches, run-time data, build output.
SKIPPED = {".git", ".venv", "var", "build", "study", "__pycache__", ".pytest_cache", ".ruff_cache"}
# Where the systemd unit expects the project to be installed (systemd/dicom-adapter.service).
INSTALLED = "file:///opt/dicom-adapter/"
MARKDOWN = re.compile(r"[\w./:-]*\w\.md\b")
ISSUE = re.compile(r"\b[Ii]ssues? #?\d+")


def text_files(root: Path) -> list[tuple[Path, str]]:
    """The tree's text files and their text, pruning what is not the project's own."""
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [
            name for name in subfolders if name not in SKIPPED and not name.endswith(".egg-info")
        ]
        for name in names:
            path = Path(folder, name)
            if path == Path(__file__):
                continue  # its examples cite missing documents on purpose
            try:
                found.append((path, path.read_text()))
            except (UnicodeDecodeError, OSError):
                continue  # not text
    return found


def dangling_citations(root: Path) -> list[str]:
    """``file:line: what`` for each cited document that is not in the tree."""
    problems = []
    files = text_files(root)
    names = {path.name for path, _ in files}
    for path, text in files:
        where = path.relative_to(root)
        for number, line in enumerate(text.splitlines(), 1):
            for cited in MARKDOWN.findall(line):
                if cited.startswith("http"):
                    continue
                cited = cited.removeprefix(INSTALLED)
                if "/" not in cited and cited in names:
                    continue
                if not ((root / cited).is_file() or (path.parent / cited).is_file()):
                    problems.append(f"{where}:{number}: {cited} is not in the repository")
            problems += [f"{where}:{number}: cites {found}" for found in ISSUE.findall(line)]
    return problems


def test_every_cited_document_is_in_the_repository() -> None:
    assert dangling_citations(ROOT) == []


def test_a_missing_document_and_an_issue_number_are_reported(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("See security.md and ../README.md.\n")
    (tmp_path / "README.md").write_text("See docs/guide.md (guide.md), not guide/guide.md.\n")
    (tmp_path / "module.py").write_text('"""Why: see RELIABILITY.md.\n\nAs issue 7 says."""\n')
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "lib.py").write_text("# GONE.md, issue 3\n")
    assert sorted(dangling_citations(tmp_path)) == [
        "README.md:1: guide/guide.md is not in the repository",
        "docs/guide.md:1: security.md is not in the repository",
        "module.py:1: RELIABILITY.md is not in the repository",
        "module.py:3: cites issue 7",
    ]
