"""The smallest honest pynetdicom receiver: the baseline the adapter is compared with.

    python bench/minimal_scp.py --port PORT --out DIR [--no-fsync]

Accepts every storage SOP class with every transfer syntax. Each C-STORE
writes ``event.encoded_dataset()`` to a temporary file, fsyncs it, renames it
into place and fsyncs the folder (so it is as durable as the adapter's copy).
TCP_NODELAY is set on each connection. Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ae-title", default="MINIMAL")
    parser.add_argument("--no-fsync", action="store_true")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    sync = not args.no_fsync
    counter = iter(range(1 << 62))
    lock = threading.Lock()

    def on_open(event: evt.Event) -> None:
        sock = event.assoc.dul.socket.socket
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_store(event: evt.Event) -> int:
        uid = event.request.AffectedSOPInstanceUID
        with lock:
            n = next(counter)
        tmp = out / f".{n}.tmp"
        with tmp.open("wb") as fp:
            fp.write(event.encoded_dataset())
            if sync:
                fp.flush()
                os.fsync(fp.fileno())
        os.replace(tmp, out / f"{uid}.dcm")
        if sync:
            fd = os.open(out, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return 0x0000

    ae = AE(ae_title=args.ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.maximum_pdu_size = 262144
    server = ae.start_server(
        ("127.0.0.1", args.port),
        block=False,
        evt_handlers=[(evt.EVT_CONN_OPEN, on_open), (evt.EVT_C_STORE, on_store)],
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
