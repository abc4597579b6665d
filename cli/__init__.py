"""The ``dicom-adapter`` command: a thin click layer over the library.

One module per command group (``cli.run``, ``cli.status``, ``cli.send``,
...), their shared helpers in ``cli.common``; this module is the top-level
group, its options, and the list of commands.  Failures print one
``Error: ...`` line; a broken config exits 2 (so systemd's
``RestartPreventExitStatus=2`` stops a restart loop), other failures exit 1.
The service, the DICOM network and ``fsck`` are imported by the commands
that use them: ``status`` is run by monitoring scripts and should answer in
well under a second, not wait for pynetdicom, watchdog and APScheduler.
"""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import config_option
from cli.config_cmd import config_group
from cli.http_cmd import http_group
from cli.ledger_cmd import db, ledger_group
from cli.run import run
from cli.sample import sample
from cli.send import echo_command, send_command
from cli.status import status
from cli.tasks import exports, jobs, tasks


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.version_option(
    package_name="dicom-adapter", prog_name="dicom-adapter", message="%(prog)s %(version)s"
)
def main(config_path: Path | None) -> None:
    """DICOM edge adapter: receive, record, process, export, reclaim.

    \b
    Example:
      dicom-adapter run --config /etc/dicom-adapter/config.ini
    """


for command in (
    run,
    status,
    tasks,
    jobs,
    exports,
    send_command,
    echo_command,
    sample,
    config_group,
    http_group,
    ledger_group,
    db,
):
    main.add_command(command)
