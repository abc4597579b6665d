"""What a reload (SIGHUP) applies, and what only a restart can.

A reload applies everything it reaches or nothing at all: ``[ae:NAME]``
(called AE titles, processors, grouping, retention, duplicates),
``[source:NAME]``, ``[destination:NAME]`` (export rules and outboxes), and
the keys below.  Any other change (a port, the spool, the ledger, timeouts,
TLS files, the log level) needs the listener, the spool or a worker built
anew: the reload is refused, naming those keys, and the running
configuration stays whole rather than half new.
"""

import dataclasses

from config import Config

UNLABELLED_SECTIONS = ("dicom", "storage", "ledger", "watcher", "log", "metrics")
RELOADABLE = {
    "dicom": {"reject_unknown_sources", "tls_reject_unknown_sources"},
    "storage": {"min_free", "superseded_retention", "reclaim_interval"},
    "watcher": {"reconcile_interval"},
}


def needing_restart(running: Config, new: Config) -> list[str]:
    """``[section] key`` of each change between ``running`` and ``new`` a reload cannot apply."""
    changed = []
    for section in UNLABELLED_SECTIONS:
        before, after = getattr(running, section), getattr(new, section)
        for field in dataclasses.fields(before):
            if field.name in RELOADABLE.get(section, ()):
                continue
            if getattr(before, field.name) != getattr(after, field.name):
                changed.append(f"[{section}] {field.name}")
    return changed
