"""Read the few header elements that decide whether and where an instance is kept.

The C-STORE handler must stay cheap, so it reads only the UIDs that name
the instance (:data:`spool.identity.IDENTITY_TAGS`): the rest of the header,
the checksum and the ledger row are intake's job, off the network path.
The dataset is a peer's bytes, so it is read by the bounded structure walk
(:mod:`spool.header`): a length past the end, nesting deeper than 64
sequences or a deflate bomb is refused, and the SCP process never allocates
or recurses on a peer's say-so.
"""

from spool.header import read_values
from spool.identity import IDENTITY_TAGS, Identity, identity_of
from spool.incoming import IncomingFile


def read_identity(incoming: IncomingFile) -> Identity:
    """The UIDs ``incoming``'s data set gives; None where an element is absent.

    Raises
    ------
    spool.header.Malformed
        The structure walk refused the file, with a one-line reason.
    OSError
        Writing the received bytes failed (the disk is full, say).
    """
    with incoming.reading() as (handle, size):
        return identity_of(read_values(handle, size, IDENTITY_TAGS, incoming.dataset))
