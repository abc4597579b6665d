"""The ``forward`` processor: route each complete group to DICOM destinations.

For each destination the group's instances are hard-linked into that
destination's outbox staging folder (``.sending/job-<id>/``) and queued as
one export task; the job is submitted once every task is queued.  The
export owns its links, so the spool's copies can be reclaimed on their own
schedule: the links (or, across filesystems, fsynced copies) and their
folder are durable before the task is queued.  A retry of the job does not
queue a destination twice.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ledger.exports import SENDER, Exports
from ledger.records import ItemSpec
from processors.base import Submission
from spool.durable import fsync_dir, link_or_copy, make_dirs_durable


class ForwardSubmitter:
    name = "forward"

    def __init__(
        self, exports: Exports, outboxes: dict[str, Path], senders: dict[str, str] | None = None
    ) -> None:
        self.exports = exports
        self.outboxes = outboxes  # destination -> its outbox folder
        self.senders = senders or {}  # destination -> its export tasks' submitter (cstore)

    def submit(self, submission: Submission) -> None:
        for destination, outbox in self.outboxes.items():
            if self.exports.for_job(submission.job.id, destination) is not None:
                continue  # queued by an earlier attempt
            staging = outbox / ".sending" / f"job-{submission.job.id}"
            if staging.exists():
                shutil.rmtree(staging)
            outbox.mkdir(parents=True, exist_ok=True)
            make_dirs_durable(staging, outbox)
            specs = []
            for instance in submission.instances:
                target = staging / f"{instance.id}.dcm"
                link_or_copy(Path(instance.path), target)
                specs.append(
                    ItemSpec(
                        path=str(target),
                        owned=True,
                        sop_instance_uid=instance.sop_instance_uid,
                        sop_class_uid=instance.sop_class_uid,
                        transfer_syntax_uid=instance.transfer_syntax_uid,
                        size=instance.size,
                        instance_id=instance.id,
                    )
                )
            fsync_dir(staging)  # the links are the last copies once the spool's are reclaimed
            self.exports.create(
                destination,
                "forward",
                specs,
                parent_id=submission.job.id,
                submitter=self.senders.get(destination, SENDER),
            )
