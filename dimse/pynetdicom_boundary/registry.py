"""The hook registry, the pin and the checks: nothing here touches pynetdicom's private parts.

A hook registers the private attributes, methods and behaviours it relies
on as :class:`Requirement` s; :func:`check_hooks` verifies them all against
the installed pynetdicom before any hook is used.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from private_api import Requirement

log = logging.getLogger(__name__)

PINNED_VERSION = "3.0.4"  # keep equal to pyproject.toml's pynetdicom==


class PynetdicomMismatch(ImportError):
    """The installed pynetdicom is not the one the hooks were written and tested for.

    An ImportError named ``pynetdicom``: the hooks cannot be imported against it.
    """

    def __init__(self, installed: str, broken: str) -> None:
        super().__init__(
            f"pynetdicom {installed} is installed, the adapter requires pynetdicom=="
            f"{PINNED_VERSION}: {broken}",
            name="pynetdicom",
        )


@dataclass(frozen=True)
class Hook:
    """A named use of pynetdicom internals: what it relies on, and why it exists."""

    name: str
    requires: tuple[Requirement, ...]
    why: str


HOOKS: dict[str, Hook] = {}
_used: set[str] = set()
_lock = threading.Lock()


def register(name: str, why: str, *requires: Requirement) -> Callable[[], None]:
    """Add a hook to the registry; returns the function each use of it calls.

    The first use in a process is logged at DEBUG, so a test (or an operator)
    can see from the SCP's log which hooks ran.
    """
    assert name not in HOOKS, f"hook {name} registered twice"
    HOOKS[name] = Hook(name, requires, why)

    def used() -> None:
        if name in _used:
            return
        with _lock:
            first = name not in _used
            _used.add(name)
        if first:
            log.debug("pynetdicom hook used: %s", name)

    return used


def check_version(installed: str) -> None:
    """Raises PynetdicomMismatch unless ``installed`` is exactly the pinned version."""
    if installed != PINNED_VERSION:
        raise PynetdicomMismatch(
            installed,
            "its hooks into pynetdicom internals (dimse/pynetdicom_boundary) are checked "
            f"against that version only; install pynetdicom=={PINNED_VERSION}",
        )


def check_hooks(installed: str) -> None:
    """Raises PynetdicomMismatch naming the first hook whose requirement is gone."""
    for hook in HOOKS.values():
        for requirement in hook.requires:
            problem = requirement.problem()
            if problem is not None:
                raise PynetdicomMismatch(installed, f"hook {hook.name}: {problem}")
