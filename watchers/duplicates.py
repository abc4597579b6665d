"""A second copy of an instance already kept: the AE's ``duplicates`` policy.

No policy deletes a copy that differs from the one kept: only a
byte-identical resend (same SHA-256 of the data set) is discarded.  A
differing copy that is not to be the live one is moved aside, into
``spool/superseded/<AE>/``, with a ``superseded`` ledger row of its own; it
goes only when ``[storage] superseded_retention`` says so.  Policies:

* ``replace``: a newer copy from the *same source* (calling AE title, or
  HTTP user, and host) takes over while the first is still ``received``: the first moves
  aside.  A differing copy from another source is moved aside instead, so a
  peer can never overwrite what another sent.
* ``replace-any``: as ``replace``, whatever the source.
* ``ignore``: the first copy stays; a differing one is moved aside.
* ``keep``: both are kept as rows of their own.

Once the first copy has moved on (claimed by a job), a newer copy allowed
to replace it becomes a new ``received`` row (its own group).  Every
decision is an event on the rows it touches.

Renames are ordered for crashes.  The first copy's file moves aside before
the transaction commits, under a name fixed by its row id, and moves back
if the transaction fails; after a crash between the two, the next pass
finds it already aside.  A new copy moves aside after its row commits: a
crash in between leaves it where it was, and the next pass decides again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ledger.records import InstanceRecord, NewInstance
from ledger.states import State
from ledger.store import LedgerTransaction
from spool.durable import move_no_replace
from spool.layout import SpoolLayout

log = logging.getLogger(__name__)

POLICIES = ("replace", "replace-any", "ignore", "keep")
DEFAULT_POLICY = "replace"


@dataclass
class FileMoves:
    """What to do with files around one intake transaction."""

    discard: list[Path] = field(default_factory=list)  # after commit: identical copies
    aside: list[tuple[Path, Path]] = field(default_factory=list)  # after commit: new copies
    undo: list[tuple[Path, Path]] = field(default_factory=list)  # if it fails: moved back

    def roll_back(self) -> None:
        """The transaction failed: first copies moved aside go back, if their place is free.

        The SCP may have published a newer copy under the freed name since;
        then the first copy stays aside (no row names it until the next pass
        decides again) rather than replace an acknowledged file.
        """
        for moved, original in reversed(self.undo):
            try:
                if not move_no_replace(moved, original):
                    log.warning("%s is taken again: %s stays where it is", original, moved)
            except OSError:
                log.exception("could not move %s back to %s", moved, original)

    def carry_out(self) -> None:
        """The transaction committed: discard identical copies, move new ones aside."""
        for path in self.discard:
            path.unlink(missing_ok=True)
        for source, target in self.aside:
            try:
                if not move_no_replace(source, target):
                    log.error("not moving %s aside: %s exists", source, target)
            except FileNotFoundError:
                log.warning("superseded copy %s vanished before it was moved aside", source)


def _source(copy: InstanceRecord | NewInstance) -> tuple[str | None, str | None, str | None]:
    """Calling AE title, HTTP user and host (the peer's port changes with every
    association or connection): two HTTP users on one host are two sources."""
    host = copy.peer_address.rsplit(":", 1)[0] if copy.peer_address else None
    return copy.calling_ae, copy.http_user, host


def _describe(copy: InstanceRecord | NewInstance) -> str:
    calling, user, host = _source(copy)
    if host is None and calling is None:
        return "a hand-dropped file"
    if calling is None:  # STOW-RS
        return f"HTTP user {user}@{host}" if user else f"HTTP from {host}"
    return f"{calling}@{host}"


class Duplicates:
    """Applies one AE's policy to a new copy of an instance it already keeps."""

    def __init__(self, layout: SpoolLayout, tx: LedgerTransaction, moves: FileMoves) -> None:
        self.layout = layout
        self.tx = tx
        self.moves = moves

    def settle(self, new: NewInstance, copies: list[InstanceRecord], policy: str) -> int | None:
        """Record ``new`` (or not) beside ``copies``; the id of a row made for it, if any."""
        tx = self.tx
        copies = [c for c in copies if not self._finish_interrupted(c)]
        if not copies:
            return self._add(new, "received", policy)
        gone = [c for c in copies if not os.path.lexists(c.path)]
        moved = next((c for c in gone if c.sha256 == new.sha256), None)
        if moved is not None:  # the same file at a new path (moved by hand)
            tx.relocate(moved.id, new.path, f"file found at a new path, was {moved.path}")
            return None
        present = [c for c in copies if c not in gone]
        ids = ", ".join(str(c.id) for c in copies)
        if policy == "keep":
            return self._add(new, f"duplicate of instance {ids}: kept as a new row", policy)
        same = next((c for c in present if c.sha256 == new.sha256), None)
        if same is not None:
            self.moves.discard.append(Path(new.path))
            tx.note(same.id, f"identical copy {new.path} discarded (duplicates={policy})")
            return None
        if not present:  # every kept copy's file is gone: never set aside the only file
            return self._add(new, f"copy of instance {ids}, whose file is gone", policy)
        waiting = [c for c in present if c.state == State.RECEIVED]
        live = waiting[-1] if waiting else present[-1]  # what the new copy would replace
        allowed = policy == "replace-any" or (policy == "replace" and _source(live) == _source(new))
        if not allowed:
            return self._set_new_aside(new, live, policy)
        if not waiting:
            reason = f"newer copy of instance {ids}, already '{live.state}': stored as a new row"
        elif self._set_old_aside(live, new, policy):
            return self._add(new, f"newer copy: replaces instance {live.id}", policy)
        else:
            reason = f"newer copy of instance {live.id}, claimed meanwhile: stored as a new row"
        return self._add(new, reason, policy)

    def _finish_interrupted(self, copy: InstanceRecord) -> bool:
        """A first copy a crashed pass moved aside before its commit: finish the move.

        Its aside name holds its row id, so a file there is this row's file,
        whatever now sits at its old path (the SCP may have published a newer
        copy under the freed name; intake records that one on its own).
        """
        if copy.state != State.RECEIVED:
            return False
        aside = self.layout.superseded_path(copy.called_ae or "", copy.id, Path(copy.path).name)
        if not os.path.lexists(aside):
            return False
        return self.tx.supersede(copy.id, str(aside), "found set aside by an interrupted replace")

    def _add(self, new: NewInstance, why: str, policy: str) -> int:
        return self.tx.add(new, f"{why} (duplicates={policy})")

    def _set_new_aside(self, new: NewInstance, first: InstanceRecord, policy: str) -> int:
        """A differing copy that is not to be live: a ``superseded`` row, its file aside."""
        source = _describe(new)
        if policy == "ignore":
            why = f"differs from instance {first.id}: kept aside (duplicates=ignore)"
        else:
            why = (
                f"differs from instance {first.id} and comes from {source}, not from its "
                f"source {_describe(first)}: kept aside "
                "(duplicates=replace replaces only from the same source)"
            )
        instance_id = self.tx.add(new, why, state=State.SUPERSEDED)
        aside = self.layout.superseded_path(new.called_ae, instance_id, Path(new.path).name)
        self.tx.relocate(instance_id, str(aside), f"moved aside to {aside}")
        self.moves.aside.append((Path(new.path), aside))
        log.warning(
            "duplicate kept aside id=%d sop=%s from %s (differs from instance %d)",
            instance_id,
            new.sop_instance_uid,
            source,
            first.id,
        )
        return instance_id

    def _set_old_aside(self, old: InstanceRecord, new: NewInstance, policy: str) -> bool:
        """The first copy gives way: ``superseded`` and its file moved aside, before the commit.

        False when it cannot: a job claimed it meanwhile (several nodes on one
        ledger), or its aside name is taken.  The row moves first, guarded by
        its state, then the file, durably; a failed commit moves it back.
        """
        aside = self.layout.superseded_path(old.called_ae or "", old.id, Path(old.path).name)
        reason = (
            f"superseded by a newer copy {new.path} (sha256 {new.sha256}); moved aside to "
            f"{aside} (duplicates={policy})"
        )
        if not self.tx.supersede(old.id, str(aside), reason):
            return False
        if os.path.lexists(old.path):
            if not move_no_replace(Path(old.path), aside):
                raise FileExistsError(f"{aside} exists: instance {old.id} cannot be set aside")
            self.moves.undo.append((aside, Path(old.path)))
        log.info("duplicate replaced id=%d sop=%s", old.id, new.sop_instance_uid)
        return True
