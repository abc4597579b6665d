"""What an export needs to know of a file: its SOP class, instance and transfer syntax."""

from pathlib import Path

from pydicom.filereader import read_file_meta_info

from ledger.records import ExportFileSpec


class NotDicom(ValueError):
    """The file has no usable DICOM file meta."""


def spec_for(path: Path, owned: bool) -> ExportFileSpec:
    """Read ``path``'s file meta (only) into an export file spec.

    A file the export will own (and delete once delivered) keeps the path it
    has in its staging folder, never a resolved one: resolving a symlink
    could point the deletion anywhere.  A file named on ``send`` (never
    deleted) is recorded resolved, as the user meant it.

    Raises
    ------
    NotDicom
        With a one-line reason.
    """
    try:
        meta = read_file_meta_info(path)
        sop_class = str(meta.MediaStorageSOPClassUID)
        syntax = str(meta.TransferSyntaxUID)
        sop_instance = str(meta.MediaStorageSOPInstanceUID)
    except Exception as exc:  # pydicom raises many kinds on bad input
        raise NotDicom(f"{path}: not a DICOM file ({type(exc).__name__}: {exc})") from None
    return ExportFileSpec(
        path=str(path.absolute() if owned else path.resolve()),
        owned=owned,
        sop_instance_uid=sop_instance,
        sop_class_uid=sop_class,
        transfer_syntax_uid=syntax,
        size=path.stat().st_size,
    )
