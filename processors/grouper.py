"""Group an AE's received instances and claim each group once it is complete.

Complete means quiet: no new instance of the group for ``timeout`` seconds,
or open for ``max_wait`` seconds, however busy (a trickling modality cannot
hold a group forever).  The timers are the instances' ``received_at`` in the
ledger, so a restart resumes them where they stood.  Instances of an
ignored (or not allowed) SOP class are declined: recorded, then straight to
the reclaimer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from ledger.models import utcnow
from ledger.processing import Processing
from ledger.records import InstanceRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupRules:
    called_ae: str
    processor: str
    timeout_seconds: float
    max_wait_seconds: float
    ignored_sop_classes: frozenset[str] = frozenset()
    allowed_sop_classes: frozenset[str] = frozenset()

    def declines(self, sop_class_uid: str | None) -> bool:
        if self.allowed_sop_classes:
            return sop_class_uid not in self.allowed_sop_classes
        return sop_class_uid in self.ignored_sop_classes

    @property
    def decline_reason(self) -> str:
        if self.allowed_sop_classes:
            return "declined: SOP class not in allowed_sop_classes"
        return "declined: SOP class in ignored_sop_classes"


class Grouper:
    """The default processor's grouping half, for one AE."""

    def __init__(self, rules: GroupRules, processing: Processing) -> None:
        self.rules = rules
        self.processing = processing

    def instance_stored(self, instance: InstanceRecord) -> None:
        if self.rules.declines(instance.sop_class_uid):
            self.processing.decline([instance.id], self.rules.decline_reason)
        elif instance.group_key is None:
            self.processing.note(
                instance.id, "no group_by element: cannot join a group, stays received"
            )
        else:
            self.processing.note_late(instance)

    def tick(self, now: datetime | None = None) -> int:
        """Decline what was missed, claim every complete group; return jobs created."""
        now = now or utcnow()
        self._decline_waiting()
        created = 0
        for group in self.processing.open_groups(self.rules.called_ae):
            quiet = (now - group.last_received_at).total_seconds()
            open_for = (now - group.first_received_at).total_seconds()
            if quiet >= self.rules.timeout_seconds:
                why = f"quiet for {quiet:.1f}s (timeout {self.rules.timeout_seconds:g}s)"
            elif open_for >= self.rules.max_wait_seconds:
                why = f"open for {open_for:.1f}s (max_wait {self.rules.max_wait_seconds:g}s)"
            else:
                continue
            # The claim filters the SOP classes itself: an instance of a declined
            # class that committed after the decline pass must not join a job.
            job = self.processing.claim_group(
                self.rules.called_ae,
                group.group_key,
                self.rules.processor,
                why,
                now,
                ignored=self.rules.ignored_sop_classes,
                allowed=self.rules.allowed_sop_classes,
            )
            created += job is not None
        return created

    def _decline_waiting(self) -> None:
        """Instances whose notification was lost (a crash right after intake)."""
        rules = self.rules
        if rules.ignored_sop_classes or rules.allowed_sop_classes:
            waiting = self.processing.unwanted(
                rules.called_ae, rules.ignored_sop_classes, rules.allowed_sop_classes
            )
            if waiting:
                self.processing.decline([i.id for i in waiting], rules.decline_reason)
