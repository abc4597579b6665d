"""A pynetdicom storage SCU that plays a real sending modality in tests.

Files go out exactly as stored: each (SOP class, transfer syntax) pair found
in the file meta is proposed as its own presentation context and the dataset
bytes are streamed from disk, so what the receiver gets can be compared
byte for byte with the file that was sent.

Run as ``python -m tests.peers.send --host H --port P --called AE FILE_OR_DIR...``.
"""

import argparse
import queue
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification

# A-ASSOCIATE-RQ can carry at most 128 presentation contexts (odd IDs 1..255).
MAX_CONTEXTS = 128

# P-DATA PDUs allowed to wait for the socket; see _BoundedSendQueue.
_SEND_BACKLOG = 64


class AssociationRejected(Exception):
    """The peer answered A-ASSOCIATE-RJ.

    Tests assert on the exact reject parameters (e.g. an unknown calling AE
    should give result 1, source 1, reason 3), so they are kept as fields.

    Parameters
    ----------
    result : int
        1 = rejected-permanent, 2 = rejected-transient.
    source : int
        1 = service user, 2 = service provider (ACSE), 3 = service provider
        (presentation).
    reason : int
        The reason/diagnostic, whose meaning depends on `source`.
    """

    def __init__(self, result: int, source: int, reason: int) -> None:
        super().__init__(f"rejected result={result} source={source} reason={reason}")
        self.result = result
        self.source = source
        self.reason = reason


def send_files(
    host: str,
    port: int,
    files: list[Path],
    *,
    called_ae: str,
    calling_ae: str = "PYSCU",
    timeout: float = 30,
) -> list[tuple[Path, int | None]]:
    """Send `files` over one association with C-STORE and report each status.

    Only the file meta is read; the dataset is sent unchanged from disk, which
    requires the peer to accept each file's own transfer syntax.

    Parameters
    ----------
    host, port : str, int
        The peer to connect to.
    files : list of Path
        DICOM Part 10 files, sent in this order.
    called_ae, calling_ae : str
        AE titles for the A-ASSOCIATE-RQ.
    timeout : float
        Seconds allowed for connecting, for ACSE and DIMSE responses and for
        network inactivity.

    Returns
    -------
    list of (Path, int or None)
        Each file with the C-STORE response status, or None if the
        association could not be established (other than by rejection), the
        peer did not accept the file's presentation context, gave no response
        or aborted.

    Raises
    ------
    AssociationRejected
        If the peer rejected the association.
    ValueError
        If the files need more than 128 presentation contexts.
    """
    contexts = sorted({_context_of(path) for path in files})
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} presentation contexts, at most 128 allowed")

    ae = _make_ae(calling_ae, timeout)
    for sop_class, transfer_syntax in contexts:
        ae.add_requested_context(sop_class, transfer_syntax)
    assoc = _associate(ae, host, port, called_ae)

    results: list[tuple[Path, int | None]] = []
    with _stream_from_disk():
        for path in files:
            results.append((path, _store(assoc, path)))
    if assoc.is_established:
        assoc.release()
    return results


def echo(
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str = "PYSCU",
    timeout: float = 10,
) -> int | None:
    """Send one C-ECHO and return its status.

    Parameters
    ----------
    host, port : str, int
        The peer to connect to.
    called_ae, calling_ae : str
        AE titles for the A-ASSOCIATE-RQ.
    timeout : float
        As for :func:`send_files`.

    Returns
    -------
    int or None
        The C-ECHO status, or None if there was no association or response.

    Raises
    ------
    AssociationRejected
        If the peer rejected the association.
    """
    ae = _make_ae(calling_ae, timeout)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, host, port, called_ae)
    if not assoc.is_established:
        return None
    status = assoc.send_c_echo().get("Status")
    if assoc.is_established:
        assoc.release()
    return status


def main(argv: list[str] | None = None) -> int:
    """Send files and directories (recursively); see the module docstring.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns
    -------
    int
        0 if every file got status 0x0000, 2 if the association was rejected,
        1 otherwise.
    """
    parser = argparse.ArgumentParser(prog="python -m tests.peers.send")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--called", required=True, help="called AE title")
    parser.add_argument("--calling", default="PYSCU", help="calling AE title")
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("paths", nargs="+", type=Path, metavar="FILE_OR_DIR")
    args = parser.parse_args(argv)

    files = [file for path in args.paths for file in _expand(path)]
    try:
        results = send_files(
            args.host,
            args.port,
            files,
            called_ae=args.called,
            calling_ae=args.calling,
            timeout=args.timeout,
        )
    except AssociationRejected as exc:
        print(exc)
        return 2
    for path, status in results:
        print(f"{'none' if status is None else f'0x{status:04X}'} {path}")
    return 0 if all(status == 0 for _, status in results) else 1


def _context_of(path: Path) -> tuple[str, str]:
    """Return the (SOP class, transfer syntax) pair from the file meta only."""
    meta = read_file_meta_info(path)
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


def _make_ae(calling_ae: str, timeout: float) -> AE:
    """Return an AE with every pynetdicom timeout set to `timeout`."""
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    return ae


def _associate(ae: AE, host: str, port: int, called_ae: str) -> Association:
    """Associate, raise on rejection, and tune the connection for sending.

    Three changes to pynetdicom's defaults, all on the established
    association (pynetdicom has no hook for them):

    * TCP_NODELAY: pynetdicom writes a C-STORE as several PDUs (command, then
      data); with Nagle on, the small trailing write waits for the peer's
      delayed ACK, about 40 ms per C-STORE on Linux loopback.
      ``Association.dul.socket`` is pynetdicom's ``AssociationSocket`` and its
      ``.socket`` attribute the connected ``socket.socket``.
    * A socket timeout: pynetdicom clears it after connecting, so a peer that
      stops reading would block its sending thread forever; with the AE's
      network timeout a stalled send fails and the association is dropped.
    * A bounded send queue, see :class:`_BoundedSendQueue`.
    """
    assoc = ae.associate(host, port, ae_title=called_ae)
    # The A-ASSOCIATE-RJ primitive is kept as the acceptor's primitive, or
    # (pynetdicom race) left in the DUL's queue: when the RJ arrives and the
    # connection closes before the requesting thread looks at the socket,
    # pynetdicom reports a failed connection instead of the rejection.
    reject = assoc.acceptor.primitive if assoc.is_rejected else _unread_rejection(assoc)
    if reject is not None:
        raise AssociationRejected(
            int(reject.result), int(reject.result_source), int(reject.diagnostic)
        )
    if assoc.is_established:
        sock = assoc.dul.socket.socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(ae.network_timeout)
        # Nothing is queued once established, so swapping the queue is safe.
        assoc.dul.to_provider_queue = _BoundedSendQueue(assoc, _SEND_BACKLOG)
    return assoc


def _unread_rejection(assoc: Association) -> object | None:
    """An A-ASSOCIATE-RJ the DUL received that pynetdicom's requestor never read."""
    if assoc.is_established:
        return None
    for primitive in list(assoc.dul.to_user_queue.queue):
        if isinstance(primitive, A_ASSOCIATE) and primitive.result in (0x01, 0x02):
            return primitive
    return None


class _BoundedSendQueue(queue.Queue):
    """pynetdicom's DUL send queue, bounded so file reads wait for the socket.

    ``send_c_store(path)`` reads the file PDU by PDU into
    ``Association.dul.to_provider_queue``, which is unbounded, so it gets
    ahead of the socket and a large file ends up largely in memory. Bounding
    the queue makes the sender wait instead. Only the sending thread puts
    into the queue after association; if the DUL stops draining it (abort,
    lost connection) items are dropped rather than blocking forever, and the
    C-STORE then ends without a response.
    """

    def __init__(self, assoc: Association, maxsize: int) -> None:
        super().__init__(maxsize)
        self._assoc = assoc

    def put(self, item: object, block: bool = True, timeout: float | None = None) -> None:
        """Wait for room while the DUL is alive, else drop `item` at once.

        pynetdicom never passes `block` or `timeout`, so they are ignored.
        """
        while self._assoc.is_established and self._assoc.dul.is_alive():
            try:
                super().put(item, timeout=0.1)
                return
            except queue.Full:
                continue


@contextmanager
def _stream_from_disk() -> Iterator[None]:
    """Make ``send_c_store(path)`` send the file's dataset bytes unchanged.

    With ``STORE_SEND_CHUNKED_DATASET`` pynetdicom skips decoding and sends
    the bytes after the file meta in PDU-sized reads, and insists on a
    context with exactly the file's transfer syntax. The flag is
    process-wide, so it is restored afterwards.
    """
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def _store(assoc: Association, path: Path) -> int | None:
    """Return the C-STORE status for `path`, None if it could not be sent."""
    if not assoc.is_established:
        return None
    try:
        response = assoc.send_c_store(path)
    except ValueError:  # no accepted presentation context for this file
        return None
    return response.get("Status")


def _expand(path: Path) -> list[Path]:
    """Return `path`, or the files below it in sorted order if a directory."""
    if path.is_dir():
        return sorted(file for file in path.rglob("*") if file.is_file())
    return [path]


if __name__ == "__main__":
    sys.exit(main())
