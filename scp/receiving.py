"""Where pynetdicom's chunked receive writes: our IncomingFile in ``spool/.tmp/``.

pynetdicom 3.0 writes a chunked C-STORE dataset into
``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")``, in the
process's default temp folder, and lets an ENOSPC there kill the
association without an answer; it writes the file meta with pydicom's
``write_file_meta_info(file, create_file_meta(...))``.  :class:`Receiving`
has the pynetdicom boundary's ``stream_to_files`` hook put its own in their
place while the SCP runs: the file
is :meth:`SpoolWriter.open_incoming`'s, on the spool's filesystem, a full
disk becomes a 0xA700, and the meta is ours (provenance included), encoded
without pydicom.  The calls come from the association's DUL thread, which
knows the association and so the provenance.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path
from typing import Any

from pynetdicom import evt

from dimse.pynetdicom_boundary import stop_streaming, stream_to_files
from spool.incoming import IncomingFile, MetaUids, Provenance
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
    """Creates incoming files for pynetdicom and finds them again for the handler.

    A C-STORE cut short (the peer hangs up, aborts or stalls past the read
    deadline) never reaches the handler, and pynetdicom keeps its message,
    and so our open file, as long as the association object lives: each
    association's files not yet taken by the handler are closed and removed
    when its connection closes.
    """

    def __init__(self, writer: SpoolWriter) -> None:
        self.writer = writer
        self._files: weakref.WeakValueDictionary[str, IncomingFile] = weakref.WeakValueDictionary()
        self._unfinished: weakref.WeakKeyDictionary[Any, dict[str, IncomingFile]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def install(self) -> None:
        """Stream pynetdicom's C-STORE data sets into our incoming files from now on."""
        stream_to_files(self.open_for, _meta_uids, _write_meta)

    def uninstall(self) -> None:
        stop_streaming()

    def take(self, assoc: Any, path: str | Path) -> IncomingFile | None:
        """The incoming file pynetdicom wrote ``path`` through; the handler's from now on."""
        name = os.fspath(path)
        with self._lock:
            self._unfinished.get(assoc, {}).pop(name, None)
        return self._files.get(name)

    def open_for(self, assoc: Any) -> IncomingFile:
        """A new incoming file for ``assoc``, removed if its connection closes first."""
        incoming = self.writer.open_incoming(provenance_of(assoc))
        self._files[incoming.name] = incoming
        with self._lock:
            if assoc not in self._unfinished:
                self._unfinished[assoc] = {}
                assoc.bind(evt.EVT_CONN_CLOSE, self._discard_unfinished)
            self._unfinished[assoc][incoming.name] = incoming
        return incoming

    def _discard_unfinished(self, event: evt.Event) -> None:
        """EVT_CONN_CLOSE: the association's cut-short files go, descriptor and all."""
        with self._lock:
            left = self._unfinished.pop(event.assoc, {})
        for incoming in left.values():
            incoming.discard()


def _meta_uids(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> MetaUids:
    """Stands in for pynetdicom's ``create_file_meta`` (called with these keywords)."""
    return MetaUids(str(sop_class_uid), str(sop_instance_uid), str(transfer_syntax))


def _write_meta(incoming: IncomingFile, uids: MetaUids) -> None:
    """Stands in for pydicom's ``write_file_meta_info`` on our incoming file."""
    incoming.write_meta(uids)
