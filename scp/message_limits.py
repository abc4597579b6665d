"""Bounds on what one DIMSE message may make the SCP buffer, before anyone is known.

A C-STORE's data set streams into its incoming file (never into memory),
but everything else of a message is held whole until it is complete: by
the direct path while a command set arrives, by pynetdicom for any message
handed to it.  A peer that associates (no authentication needed) and then
streams command fragments without the last bit, or data fragments before
any command, or a C-ECHO with an endless data set, would grow the SCP
process without limit.  :class:`MessageMeter` sees every P-DATA-TF an
association reads, in order, and says when one of these bounds is passed:

- a command set is at most :data:`MAX_COMMAND` bytes (a C-STORE-RQ is about
  200);
- the data set of a message that is not a C-STORE-RQ is at most
  :data:`MAX_OTHER_DATA` bytes (a C-ECHO has none);
- a data set fragment must follow a command that announced one.

The association is then aborted, with one log line naming the bound.
"""

from __future__ import annotations

from dimse import commands
from dimse import upper_layer as ul

MAX_COMMAND = 64 * 1024
MAX_OTHER_DATA = 64 * 1024


class MessageOverrun(Exception):
    """A message passed one of the bounds; the text says which."""


class MessageMeter:
    """Follows one association's messages through their PDVs (PS3.8 E.2)."""

    def __init__(self) -> None:
        self._command = bytearray()  # the command set being received
        self._data_expected = False  # the last command announced a data set
        self._storing = False  # ... and it is a C-STORE-RQ's (it goes to disk)
        self._data = 0  # bytes of the current data set so far

    def take(self, body: bytes | bytearray, spans: list[tuple[int, int, int, int]]) -> None:
        """Account for the PDVs of one P-DATA-TF body (:func:`dimse.upper_layer.pdv_spans`).

        Only command fragments are copied; a data fragment counts by length.

        Raises
        ------
        MessageOverrun
            When a bound is passed.
        """
        for _, control, start, end in spans:
            if control & ul.COMMAND:
                self._take_command(control, body[start:end])
            else:
                self._take_data(control, end - start)

    def _take_command(self, control: int, data: bytes) -> None:
        self._command += data
        if len(self._command) > MAX_COMMAND:
            raise MessageOverrun(f"a command set longer than {MAX_COMMAND} bytes")
        if not control & ul.LAST:
            return
        field = commands.command_field(bytes(self._command))
        self._command.clear()
        self._data_expected = True  # whether it said so or not, a data set may follow
        self._storing = field == commands.C_STORE_RQ
        self._data = 0

    def _take_data(self, control: int, length: int) -> None:
        if not self._data_expected:
            raise MessageOverrun("a data set fragment before any command")
        self._data += length
        if not self._storing and self._data > MAX_OTHER_DATA:
            raise MessageOverrun(
                f"a data set longer than {MAX_OTHER_DATA} bytes with a message that is not "
                "a C-STORE"
            )
        if control & ul.LAST:
            self._data_expected = False
