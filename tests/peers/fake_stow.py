"""A scripted STOW-RS origin server, run as its own process: ``python fake_stow.py PORT FOLDER``
(``... CERT KEY CA``: over HTTPS, requiring a client certificate the CA signed).

It answers what ``FOLDER/script.json`` says at the time of each request,
so a test can make it refuse one instance, answer 503 with Retry-After,
drop the Content-Type as Orthanc does on 409, or answer garbage:

- ``refuse``: ``{SOP Instance UID: FailureReason}``, those go in Failed SOP
  Sequence and are not kept;
- ``status``: the HTTP status (default 200, 202 or 409 from what was kept);
- ``body``: a raw body instead of the Store Instances Response;
- ``content_type``: ``null`` for none (default ``application/dicom+json``);
- ``retry_after``: a ``Retry-After`` value.

Every request is appended to ``FOLDER/requests.jsonl`` (headers, and each
part's Content-Type, SOP Instance UID and size), and every part kept is
written to ``FOLDER/<SOP Instance UID>.dcm`` as received, so a test can
compare bytes.  Parts go to disk as they arrive: what is measured of the
sender is the sender.
"""

from __future__ import annotations

import json
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

import pydicom
import uvicorn
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

FOLDER = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(".")


class Parts:
    """python-multipart callbacks writing each part to a temporary file in FOLDER."""

    def __init__(self) -> None:
        self.done: list[tuple[str, Path]] = []  # (Content-Type, file)
        self.field, self.value, self.headers = b"", b"", {}
        self.handle: Any = None

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.begin,
            "on_header_field": lambda d, s, e: setattr(self, "field", self.field + d[s:e]),
            "on_header_value": lambda d, s, e: setattr(self, "value", self.value + d[s:e]),
            "on_header_end": self.header_end,
            "on_part_data": lambda d, s, e: self.handle.write(d[s:e]),
            "on_part_end": self.end,
        }

    def begin(self) -> None:
        self.headers = {}
        self.handle = tempfile.NamedTemporaryFile(dir=FOLDER, delete=False, suffix=".part")  # noqa: SIM115

    def header_end(self) -> None:
        self.headers[self.field.decode().lower()] = self.value.decode()
        self.field, self.value = b"", b""

    def end(self) -> None:
        self.handle.close()
        self.done.append((self.headers.get("content-type", ""), Path(self.handle.name)))


async def studies(request: Request) -> Response:
    script_path = FOLDER / "script.json"
    script = json.loads(script_path.read_text()) if script_path.exists() else {}
    _, options = parse_options_header(request.headers.get("content-type", ""))
    parts = Parts()
    parser = MultipartParser(options[b"boundary"], parts.callbacks())
    async for chunk in request.stream():
        parser.write(chunk)
    parser.finalize()
    logged, stored, failed = [], [], []
    refuse = script.get("refuse", {})
    for content_type, path in parts.done:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        logged.append({"content_type": content_type, "uid": uid, "size": path.stat().st_size})
        if uid in refuse:
            failed.append((uid, refuse[uid]))
            path.unlink()
        else:
            stored.append(uid)
            path.rename(FOLDER / f"{uid}.dcm")
    with open(FOLDER / "requests.jsonl", "a") as log:
        log.write(json.dumps({"headers": dict(request.headers), "parts": logged}) + "\n")
    status = script.get("status") or (200 if not failed else 202 if stored else 409)
    body = script.get("body", json.dumps(_answer(stored, failed)))
    headers = {"Retry-After": script["retry_after"]} if "retry_after" in script else {}
    response = Response(body, status, headers=headers)
    content_type = script.get("content_type", "application/dicom+json")
    if content_type is None:
        del response.headers["content-type"]
    else:
        response.headers["content-type"] = content_type
    return response


def _answer(stored: list[str], failed: list[tuple[str, int]]) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Table I.1-1) in DICOM JSON."""
    answer: dict[str, Any] = {"00081190": {"vr": "UR"}}
    if failed:
        items = [
            {"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [why]}}
            for uid, why in failed
        ]
        answer["00081198"] = {"vr": "SQ", "Value": items}
    if stored:
        items = [{"00081155": {"vr": "UI", "Value": [uid]}} for uid in stored]
        answer["00081199"] = {"vr": "SQ", "Value": items}
    return answer


async def query(request: Request) -> Response:
    return Response("[]", 200, media_type="application/dicom+json")


app = Starlette(
    routes=[
        Route("/dicom-web/studies", studies, methods=["POST"]),
        Route("/dicom-web/studies", query, methods=["GET"]),
    ]
)

if __name__ == "__main__":
    tls: dict[str, Any] = {}
    if len(sys.argv) > 5:
        tls = {
            "ssl_certfile": sys.argv[3],
            "ssl_keyfile": sys.argv[4],
            "ssl_ca_certs": sys.argv[5],
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
        }
    uvicorn.run(
        app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", http="h11", **tls
    )
