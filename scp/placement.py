"""Read the few header elements that decide where an instance goes.

The C-STORE handler must stay cheap, so it parses only up to Series Instance
UID (0020,000E) and stops: the rest of the header, the checksum and the
ledger row are intake's job, off the network path.  The dataset is a peer's
bytes, so it goes through the bounded structure walk first
(:mod:`spool.bounded`): a length past the end, nesting deeper than 64
sequences or a deflate bomb is refused before pydicom reads anything, and
the SCP process never allocates or recurses on a peer's say-so.
"""

from dataclasses import dataclass
from pathlib import Path

from pydicom.tag import BaseTag

from spool.bounded import read_bounded
from spool.part10 import element_text

_SERIES_INSTANCE_UID = 0x0020000E


@dataclass(frozen=True)
class Placement:
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None


def _past_series_uid(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return int(tag) > _SERIES_INSTANCE_UID  # BaseTag's own > converts its operand each call


def read_placement(path: Path) -> Placement:
    """The UIDs that place ``path`` in the spool; None where an element is absent.

    Raises
    ------
    spool.bounded.Malformed
        The structure walk refused the file, with a one-line reason.
    Exception
        Whatever pydicom raises on a dataset it cannot parse.
    """
    with open(path, "rb") as handle:
        ds, _structure = read_bounded(handle, stop_when=_past_series_uid)
    return Placement(
        sop_instance_uid=element_text(ds.get("SOPInstanceUID")),
        study_instance_uid=element_text(ds.get("StudyInstanceUID")),
        series_instance_uid=element_text(ds.get("SeriesInstanceUID")),
    )
