"""The few header values the adapter needs, as text, from one bounded walk.

Every spool file is untrusted (a peer sent it, or someone dropped it in).
The structure walk of :mod:`spool.structure` checks it (lengths fit, nesting
bounded, deflate capped) and keeps the raw bytes of the top-level elements
asked for on the way; this module turns those bytes into text.  pydicom never
parses the file: a full pydicom header parse cost the SCP and intake most of
their time per small instance, about 40 ``lseek`` calls each.

UIDs, AE titles and URIs are ASCII by definition (PS3.5 6.2) and are decoded
directly; any other value goes through pydicom's own element conversion with
the dataset's Specific Character Set, so a ``group_by`` key or a Patient ID
reads exactly as pydicom would show it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import BinaryIO

from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.tag import Tag

from spool.part10 import element_text
from spool.structure import Malformed, Structure, survey

__all__ = ["HeaderValues", "Malformed", "read_values"]

SPECIFIC_CHARACTER_SET = 0x00080005
# The UIDs that name an instance's place in the spool (SCP) and its ledger row (intake).
SOP_INSTANCE_UID = 0x00080018
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
_PLAIN_VRS = frozenset({"UI", "AE", "UR"})


class HeaderValues:
    """Text of the elements one walk kept, and what the walk learned."""

    def __init__(self, structure: Structure) -> None:
        self.structure = structure
        self._encodings: list[str] | None = None
        charset = self.text(SPECIFIC_CHARACTER_SET)
        if charset is not None:
            self._encodings = convert_encodings([term.strip() for term in charset.split("\\")])

    def has(self, tag: int) -> bool:
        return tag in self.structure.elements

    def text(self, tag: int) -> str | None:
        """The element's value as text without padding; None when absent or empty."""
        element = self.structure.elements.get(tag)
        if element is None:
            return None
        if element.vr in _PLAIN_VRS or tag == SPECIFIC_CHARACTER_SET:
            return element_text(element.value.decode("latin-1"))
        raw = RawDataElement(
            Tag(tag),
            element.vr,
            len(element.value),
            element.value,
            0,
            element.vr is None,
            self.structure.little_endian,
        )
        return element_text(convert_raw_data_element(raw, encoding=self._encodings).value)


def read_values(
    handle: BinaryIO,
    size: int,
    wanted: Collection[int],
    dataset: tuple[int, str] | None = None,
) -> HeaderValues:
    """Walk the ``size`` bytes of ``handle``, keeping the top-level elements in ``wanted``.

    The file meta elements are kept too, unless ``dataset`` gives the data
    set's offset and Transfer Syntax UID (a meta group the caller wrote).

    Raises
    ------
    Malformed
        The structure walk refused the file (a one-line reason).
    """
    wanted = frozenset(wanted) | {SPECIFIC_CHARACTER_SET}
    return HeaderValues(survey(handle, size, wanted, dataset))
