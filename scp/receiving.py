"""Where pynetdicom's chunked receive writes: our IncomingFile in ``spool/.tmp/``.

pynetdicom 3.0 writes a chunked C-STORE dataset into
``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")``, looked up in
``pynetdicom.dimse_messages`` when each message starts, in the process's
default temp folder, and lets an ENOSPC there kill the association without
an answer.  :class:`Receiving` puts :meth:`SpoolWriter.open_incoming` in its
place while the SCP runs, so the file is on the spool's filesystem, carries
our file meta, and a full disk becomes a 0xA700.  The call comes from the
association's DUL thread, which knows the association and so the provenance.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import Any

from pynetdicom import dimse_messages

from spool.incoming import IncomingFile, Provenance
from spool.writer import SpoolWriter


def provenance_of(assoc: Any) -> Provenance:
    """Calling AE, called AE and peer address of an acceptor association."""
    request = assoc.requestor.primitive
    return Provenance(
        calling_ae=str(request.calling_ae_title).strip(),
        called_ae=str(request.called_ae_title).strip(),
        peer_address=f"{assoc.requestor.address}:{assoc.requestor.port}",
    )


class Receiving:
    """Creates incoming files for pynetdicom and finds them again for the handler."""

    def __init__(self, writer: SpoolWriter) -> None:
        self.writer = writer
        self._files: weakref.WeakValueDictionary[str, IncomingFile] = weakref.WeakValueDictionary()
        self._original: Any = None

    def install(self) -> None:
        self._original = dimse_messages.NamedTemporaryFile
        dimse_messages.NamedTemporaryFile = self._open

    def uninstall(self) -> None:
        if self._original is not None:
            dimse_messages.NamedTemporaryFile = self._original
            self._original = None

    def take(self, path: Path) -> IncomingFile | None:
        """The incoming file pynetdicom wrote ``path`` through."""
        return self._files.get(str(path))

    def _open(self, *_args: object, **_kwargs: object) -> IncomingFile:
        assoc = threading.current_thread().assoc  # type: ignore[attr-defined]
        incoming = self.writer.open_incoming(provenance_of(assoc))
        self._files[incoming.name] = incoming
        return incoming
