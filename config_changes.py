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
from config.schema import UNLABELLED

RELOADABLE = {
    "dicom": {"reject_unknown_sources", "tls_reject_unknown_sources"},
    "storage": {"min_free", "superseded_retention", "reclaim_interval"},
    "watcher": {"reconcile_interval"},
}


def needing_restart(running: Config, new: Config) -> list[str]:
    """``[section] key`` of each change between ``running`` and ``new`` a reload cannot apply."""
    changed = []
    for section in UNLABELLED:
        before, after = getattr(running, section), getattr(new, section)
        for field in dataclasses.fields(before):
            if field.name in RELOADABLE.get(section, ()):
                continue
            if getattr(before, field.name) != getattr(after, field.name):
                changed.append(f"[{section}] {field.name}")
    return changed


def section_changes(running: Config, new: Config) -> str:
    """What a reload changes in the labelled sections, for its log line.

    ``added [ae:PROC]; changed [destination:PACS]``, or ``nothing changed``.
    """
    added, removed, changed = [], [], []
    for kind, before, after in (
        ("ae", running.aes, new.aes),
        ("source", {s.name: s for s in running.sources}, {s.name: s for s in new.sources}),
        ("destination", running.destinations, new.destinations),
    ):
        for name in sorted(set(before) | set(after)):
            label = f"[{kind}:{name}]"
            if name not in before:
                added.append(label)
            elif name not in after:
                removed.append(label)
            elif before[name] != after[name]:
                changed.append(label)
    parts = [
        f"{verb} {', '.join(labels)}"
        for verb, labels in (("added", added), ("removed", removed), ("changed", changed))
        if labels
    ]
    return "; ".join(parts) or "nothing changed"
