"""Submit a job by publishing its folder into an output directory, atomically.

The folder is assembled as ``.<name>.part`` inside the output directory (so
on the same filesystem as its final place), then renamed to
``job-<id>-<idempotency key>``: whoever picks it up never sees half a job.
Every copy and both folders are fsynced before the job counts as submitted,
since the spool's copies may be reclaimed right after.  A folder of that
name already there is this job, published before a crash.
"""

import json
import os
import shutil
from pathlib import Path

from processors.base import Submission, SubmitError
from processors.jobdir import MANIFEST
from spool.durable import fsync_dir, fsync_file, make_dirs_durable


class FolderSubmitter:
    name = "folder"

    def __init__(self, output: Path) -> None:
        self.output = output

    def submit(self, submission: Submission) -> None:
        job = submission.job
        final = self.output / f"job-{job.id}-{job.idempotency_key}"
        if (final / MANIFEST).exists():
            return  # published before a crash or restart
        partial = self.output / f".{final.name}.part"
        try:
            make_dirs_durable(self.output, Path(self.output.anchor))
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir()
            document = json.loads(submission.manifest.read_text(encoding="utf-8"))
            names = [entry["file"] for entry in document["instances"]]
            for name in names:  # copies: a consumer may change its files
                shutil.copy2(submission.job_dir / name, partial / name)
            shutil.copy2(submission.manifest, partial / MANIFEST)
            for name in [*names, MANIFEST]:
                fsync_file(partial / name)
            fsync_dir(partial)
            os.rename(partial, final)
            fsync_dir(self.output)
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise SubmitError(f"cannot publish into {self.output}: {exc}") from None
