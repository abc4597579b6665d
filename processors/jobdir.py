"""A job's folder: hard links to its instances and a JSON manifest.

Hard links cost no space and keep the job's view stable while the spool
moves on; across filesystems they fall back to copies.  The folder is built
afresh for every attempt, so a retry after a crash never sees half of an
older one.  Copies, the manifest and the folder are fsynced before the job
is handed over: once it succeeds, the spool's copies may be reclaimed.
"""

import json
import os
import shutil
from pathlib import Path

from ledger.records import InstanceRecord, TaskRecord
from processors.base import Submission
from spool.durable import fsync_dir, fsync_file, link_or_copy, make_dirs_durable

MANIFEST = "manifest.json"


def prepare(
    jobs_root: Path, job: TaskRecord, instances: list[InstanceRecord], group_by: int
) -> Submission:
    """Build ``jobs_root/<job id>/`` and return the submission for it."""
    job_dir = jobs_root / str(job.id)
    if job_dir.exists():
        shutil.rmtree(job_dir)
    jobs_root.mkdir(parents=True, exist_ok=True)
    make_dirs_durable(job_dir, jobs_root)
    entries = []
    for instance in instances:
        name = f"{instance.sop_instance_uid}.dcm"
        if (job_dir / name).exists():  # two rows of one SOP Instance UID (duplicates = keep)
            name = f"{instance.sop_instance_uid}~{instance.id}.dcm"
        link_or_copy(Path(instance.path), job_dir / name)
        entries.append(_entry(instance, name))
    studies = {instance.study_instance_uid for instance in instances}
    study = studies.pop() if len(studies) == 1 else None
    manifest = job_dir / MANIFEST
    document = {
        "job_id": job.id,
        "idempotency_key": job.idempotency_key,
        "processor": job.submitter,
        "called_ae": job.target,
        "group_by": f"{group_by >> 16:04X},{group_by & 0xFFFF:04X}",
        "group_key": job.group_key,
        "study_instance_uid": study,
        "attempt": job.attempts,
        "instances": entries,
    }
    temporary = manifest.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    fsync_file(temporary)
    os.replace(temporary, manifest)
    fsync_dir(job_dir)
    return Submission(
        job=job,
        instances=tuple(instances),
        job_dir=job_dir,
        manifest=manifest,
        study_instance_uid=study,
    )


def _entry(instance: InstanceRecord, name: str) -> dict[str, object]:
    return {
        "file": name,
        "sop_instance_uid": instance.sop_instance_uid,
        "sop_class_uid": instance.sop_class_uid,
        "study_instance_uid": instance.study_instance_uid,
        "series_instance_uid": instance.series_instance_uid,
        "transfer_syntax_uid": instance.transfer_syntax_uid,
        "calling_ae": instance.calling_ae,
        "called_ae": instance.called_ae,
        "peer_address": instance.peer_address,
        "spool_path": instance.path,
        "size": instance.size,
        "sha256": instance.sha256,
        "received_at": instance.received_at.isoformat().replace("+00:00", "Z"),
    }
