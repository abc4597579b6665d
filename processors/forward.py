"""The ``forward`` processor: route each complete group to DICOM destinations.

For each destination the group's instances are hard-linked into that
destination's outbox staging folder (``.sending/job-<id>/``) and queued as
one export task; the job is submitted once every task is queued.  The
export owns its links, so the spool's copies can be reclaimed on their own
schedule.  A retry of the job does not queue a destination twice.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ledger.exports import Exports
from ledger.records import ExportFileSpec
from processors.base import Submission


class ForwardSubmitter:
    name = "forward"

    def __init__(self, exports: Exports, outboxes: dict[str, Path]) -> None:
        self.exports = exports
        self.outboxes = outboxes  # destination -> its outbox folder

    def submit(self, submission: Submission) -> None:
        for destination, outbox in self.outboxes.items():
            if self.exports.for_job(submission.job.id, destination) is not None:
                continue  # queued by an earlier attempt
            staging = outbox / ".sending" / f"job-{submission.job.id}"
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir(parents=True)
            specs = []
            for instance in submission.instances:
                target = staging / f"{instance.id}.dcm"
                try:
                    os.link(instance.path, target)
                except OSError:
                    shutil.copy2(instance.path, target)
                specs.append(
                    ExportFileSpec(
                        path=str(target),
                        owned=True,
                        sop_instance_uid=instance.sop_instance_uid,
                        sop_class_uid=instance.sop_class_uid,
                        transfer_syntax_uid=instance.transfer_syntax_uid,
                        size=instance.size,
                    )
                )
            self.exports.create(destination, "forward", specs, job_id=submission.job.id)
