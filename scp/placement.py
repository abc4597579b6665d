"""Read the few header elements that decide where an instance goes.

The C-STORE handler must stay cheap, so it reads only the three UIDs that
name the file's place: the rest of the header, the checksum and the ledger
row are intake's job, off the network path.  The dataset is a peer's bytes,
so it is read by the bounded structure walk (:mod:`spool.header`): a length
past the end, nesting deeper than 64 sequences or a deflate bomb is refused,
and the SCP process never allocates or recurses on a peer's say-so.
"""

from dataclasses import dataclass

from spool.header import SERIES_INSTANCE_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID, read_values
from spool.incoming import IncomingFile

_WANTED = (SOP_INSTANCE_UID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID)


@dataclass(frozen=True)
class Placement:
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None


def read_placement(incoming: IncomingFile) -> Placement:
    """The UIDs that place ``incoming`` in the spool; None where an element is absent.

    Raises
    ------
    spool.header.Malformed
        The structure walk refused the file, with a one-line reason.
    OSError
        Writing the received bytes failed (the disk is full, say).
    """
    with incoming.reading() as (handle, size):
        values = read_values(handle, size, _WANTED)
    return Placement(
        sop_instance_uid=values.text(SOP_INSTANCE_UID),
        study_instance_uid=values.text(STUDY_INSTANCE_UID),
        series_instance_uid=values.text(SERIES_INSTANCE_UID),
    )
