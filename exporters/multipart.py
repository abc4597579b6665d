"""A STOW-RS request body streamed from disk: one PS3.10 file per part (PS3.18 10.5.1.4).

Each part is a file exactly as it is on disk (preamble, ``DICM``, our file
meta, the data set as received), so nothing is decoded or re-encoded; the
body is a generator of 256 KiB reads, sent with chunked transfer coding, so
memory does not grow with the files.  Each part has only a ``Content-Type:
application/dicom`` header, as PS3.18 and Orthanc expect.  The boundary is
random and quoted, 46 characters (RFC 2046 allows 70).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

CHUNK = 256 * 1024
PART_TYPE = "application/dicom"


def new_boundary() -> str:
    """A boundary no file will hold: a random UUID (one in 2**122 per part boundary)."""
    return f"dicom-adapter-{uuid.uuid4().hex}"


def content_type(boundary: str) -> str:
    """The request's ``Content-Type`` for a body of ``application/dicom`` parts."""
    return f'multipart/related; type="{PART_TYPE}"; boundary="{boundary}"'


def stream(paths: list[str], boundary: str) -> Iterator[bytes]:
    """The multipart body of ``paths``, read from disk as it is sent.

    A part's delimiter and header go out with the first read of its file
    (and the CRLF ending the part before it), so a small file is one chunk.

    Raises
    ------
    OSError
        A file cannot be opened or read: the request is cut short.
    """
    header = f"--{boundary}\r\nContent-Type: {PART_TYPE}\r\n\r\n".encode("ascii")
    before = b""  # the CRLF that ends the previous part
    for path in paths:
        with open(path, "rb") as handle:
            pending = before + header
            while chunk := handle.read(CHUNK):
                yield pending + chunk if pending else chunk
                pending = b""
            if pending:  # an empty file is still a part
                yield pending
        before = b"\r\n"
    yield before + f"--{boundary}--\r\n".encode("ascii")
