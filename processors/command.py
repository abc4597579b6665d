"""Submit a job by running a command line in its folder.

The command comes from the AE's ``command`` key and is split like a shell
would (``shlex``) but never run through one: each argument has its
placeholders filled in (``{job_id}``, ``{job_dir}``, ``{manifest}``,
``{study_instance_uid}``, ...), so no value from the network can inject a
command.  Exit 0 means submitted.  The command's output goes to
``command.stdout``/``command.stderr`` in the job folder; on failure the tail
of stderr is the error.  A command still running at ``command_timeout`` is
killed with its whole process group.
"""

import os
import shlex
import signal
import subprocess

from processors.base import Submission, SubmitError

STDERR_TAIL = 2000


class CommandSubmitter:
    name = "command"

    def __init__(self, command: str, timeout_seconds: float) -> None:
        self.arguments = shlex.split(command)
        self.timeout_seconds = timeout_seconds

    def submit(self, submission: Submission) -> None:
        values = {
            "job_id": submission.job.id,
            "job_dir": submission.job_dir,
            "manifest": submission.manifest,
            "study_instance_uid": submission.study_instance_uid or "",
            "group_key": submission.job.group_key,
            "called_ae": submission.job.called_ae,
            "idempotency_key": submission.job.idempotency_key,
        }
        arguments = [argument.format_map(values) for argument in self.arguments]
        stdout = submission.job_dir / "command.stdout"
        stderr = submission.job_dir / "command.stderr"
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            try:
                process = subprocess.Popen(
                    arguments,
                    cwd=submission.job_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            except OSError as exc:
                raise SubmitError(f"cannot run {arguments[0]!r}: {exc.strerror}") from None
            try:
                code = process.wait(timeout=self.timeout_seconds)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise SubmitError(
                    f"command killed after command_timeout = {self.timeout_seconds:g}s"
                ) from None
        if code != 0:
            tail = stderr.read_bytes()[-STDERR_TAIL:].decode("utf-8", "replace").strip()
            raise SubmitError(f"command exited with {code}: {tail}")
