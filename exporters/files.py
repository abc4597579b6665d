"""What an export needs to know of a file: its SOP class, instance and transfer syntax."""

from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from ledger.records import ItemSpec

META_NEEDED = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")


class NotDicom(ValueError):
    """The file has no usable DICOM file meta."""


def spec_for(path: Path, owned: bool) -> ItemSpec:
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
    except InvalidDicomError:
        raise NotDicom(
            f"{path}: not a DICOM file: no 'DICM' after a 128-byte preamble (DICOM Part 10)"
        ) from None
    except OSError as exc:
        raise NotDicom(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except Exception:  # pydicom raises many kinds on bad input; its words suggest force=True
        raise NotDicom(f"{path}: not a DICOM file: its file meta information is broken") from None
    missing = [keyword for keyword in META_NEEDED if not meta.get(keyword)]
    if missing:
        raise NotDicom(f"{path}: not a DICOM file: its file meta lacks {', '.join(missing)}")
    sop_class = str(meta.MediaStorageSOPClassUID)
    syntax = str(meta.TransferSyntaxUID)
    sop_instance = str(meta.MediaStorageSOPInstanceUID)
    return ItemSpec(
        path=str(path.absolute() if owned else path.resolve()),
        owned=owned,
        sop_instance_uid=sop_instance,
        sop_class_uid=sop_class,
        transfer_syntax_uid=syntax,
        size=path.stat().st_size,
    )
