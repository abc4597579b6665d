"""What a library's private parts we rely on must still look like: checked, not assumed.

The adapter reaches into two libraries where their public API has no room
for what it needs: pynetdicom (``dimse/pynetdicom_boundary``) and uvicorn
(``web/uvicorn_boundary.py``).  Each boundary pins one version and names
every private method, signature and attribute it relies on as a
:class:`Requirement`, checked when the boundary is imported, so an upgrade
fails at start-up with one line instead of misbehaving on the wire.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Requirement:
    """One private thing a hook relies on, as ``module:Qualified.name``.

    ``params``: for an overridden method, its parameter names as we override
    them.  ``uses``: a name that function's code must read or write (an
    instance attribute set in ``__init__``, a module global looked up at call
    time, a call that must still be made).
    """

    target: str
    params: tuple[str, ...] | None = None
    uses: str | None = None

    def problem(self) -> str | None:
        """None if the installed library still has it; else what is wrong, in a few words."""
        try:
            found = _resolve(self.target)
        except (ImportError, AttributeError):
            return f"{self.target} is missing"
        function = found.fget if isinstance(found, property) else found
        if self.params is not None:
            params = tuple(inspect.signature(function).parameters)
            if params != self.params:
                return f"{self.target} takes ({', '.join(params)}), not ({', '.join(self.params)})"
        if self.uses is not None and self.uses not in _names_used(function):
            return f"{self.target} no longer uses {self.uses}"
        return None


def _resolve(target: str) -> Any:
    module_name, _, qualified = target.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in qualified.split("."):
        found = (
            inspect.getattr_static(found, part) if inspect.isclass(found) else getattr(found, part)
        )
    return found


def _names_used(function: Any) -> set[str]:
    """Attribute and global names a function's code (and its nested code) refers to."""
    pending = [inspect.unwrap(function).__code__]
    names: set[str] = set()
    while pending:
        code = pending.pop()
        names.update(code.co_names)
        pending.extend(c for c in code.co_consts if inspect.iscode(c))
    return names
