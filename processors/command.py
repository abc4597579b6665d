"""Submit a job by running a command line in its folder.

The command comes from the AE's ``command`` key and is split like a shell
would (``shlex``) but never run through one: each argument has its
placeholders filled in (``{job_id}``, ``{job_dir}``, ``{manifest}``,
``{study_instance_uid}``, ...), so no value from the network can inject a
command.  It could still inject an *option*: a ``{group_key}`` taken from
the wire (``--output=/etc/x``, with ``group_by = PatientID``) would be read
as one by most programs.  So a value from the wire that starts with ``-``
or holds a control character is refused (the job fails, saying why),
unless its argument comes after a literal ``--``, where it can only be an
operand.  Exit 0 means submitted.  The command's output goes to
``command.stdout``/``command.stderr`` in the job folder; on failure the tail
of stderr is the error.  A command still running at ``command_timeout`` is
killed with its whole process group.

While it runs, ``<job id>.pid`` beside the job folder names its process
group and start time, so after a crash of the adapter (outside systemd,
which would kill it with the service) :func:`kill_leftovers` can stop it
before the job runs again.
"""

import logging
import os
import shlex
import signal
import subprocess
from pathlib import Path

from processors.base import Submission, SubmitError

log = logging.getLogger(__name__)
STDERR_TAIL = 2000
# Placeholders whose values come from the wire (a data set), not from us.
FROM_THE_WIRE = ("group_key", "study_instance_uid")


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
            "called_ae": submission.job.target,
            "idempotency_key": submission.job.idempotency_key,
        }
        _check_operands(self.arguments, values)
        arguments = [argument.format_map(values) for argument in self.arguments]
        stderr = submission.job_dir / "command.stderr"
        pid_file = submission.job_dir.with_suffix(".pid")
        with open(submission.job_dir / "command.stdout", "wb") as out, open(stderr, "wb") as err:
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
            pid_file.write_text(f"{process.pid} {_start_time(process.pid)}\n")
            try:
                code = process.wait(timeout=self.timeout_seconds)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise SubmitError(
                    f"command killed after command_timeout = {self.timeout_seconds:g}s"
                ) from None
            finally:
                pid_file.unlink(missing_ok=True)
        if code != 0:
            tail = stderr.read_bytes()[-STDERR_TAIL:].decode("utf-8", "replace").strip()
            raise SubmitError(f"command exited with {code}: {tail}")


def _check_operands(arguments: list[str], values: dict[str, object]) -> None:
    """Refuse a wire value that could pass for an option, before ``--`` ends the options.

    Raises
    ------
    SubmitError
        Naming the placeholder and why (the value itself may be PHI: not quoted).
    """
    for argument in arguments:
        if argument == "--":
            return
        for name in FROM_THE_WIRE:
            if "{" + name + "}" not in argument:
                continue
            value = str(values[name])
            if value.startswith("-") and argument.startswith("{" + name + "}"):
                raise SubmitError(
                    f"{{{name}}} starts with '-' and would be read as an option: "
                    "put it after '--' in the command"
                )
            if any(not character.isprintable() for character in value):
                raise SubmitError(f"{{{name}}} holds a control character: not passed on")


def kill_leftovers(jobs_root: Path) -> int:
    """Kill the process groups of commands a crashed adapter left running."""
    killed = 0
    for pid_file in jobs_root.glob("*.pid"):
        try:
            pid, started = (int(part) for part in pid_file.read_text().split())
            if _start_time(pid) == started:  # the same process, not a reused pid
                os.killpg(pid, signal.SIGKILL)
                killed += 1
                log.warning("killed command of job %s left running by a crash", pid_file.stem)
        except (OSError, ValueError):
            pass  # gone already, or an unreadable file
        pid_file.unlink(missing_ok=True)
    return killed


def _start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (proc(5), field 22)."""
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[19])
