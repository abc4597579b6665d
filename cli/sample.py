"""``dicom-adapter sample``: synthetic studies to try the adapter with.

Writes fake patients with new UIDs, so a first run needs no real images
(and no PHI) to see instances received, grouped and exported.
"""

from __future__ import annotations

from pathlib import Path

import click

from ledger.wording import plural


@click.command("sample")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--studies", default=1, show_default=True, type=click.IntRange(min=1), help="Studies to write."
)
@click.option(
    "--instances",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="CT images per study (each study also gets one Secondary Capture).",
)
def sample(folder: Path, studies: int, instances: int) -> None:
    """Write small synthetic studies to try the adapter with (fake patients, new UIDs).

    Each study is a CT series and one Secondary Capture image, valid DICOM
    files in FOLDER/study-N/ct/ and FOLDER/study-N/sc/.  FOLDER is created
    if missing; nothing in it is overwritten (each study takes a new study-N).

    \b
    Example:
      dicom-adapter sample study
      storescu -aec DICOMADAPTER localhost 11112 study/*/*/*.dcm
    """
    from samples import write_samples

    try:
        written = write_samples(folder, studies, instances)
    except OSError as exc:
        where = exc.filename or folder
        raise click.ClickException(f"cannot write {where}: {exc.strerror or exc}") from None
    click.echo(
        f"wrote {plural(len(written.files), 'instance')} of "
        f"{plural(len(written.studies), 'study', 'studies')} to {folder}"
    )
