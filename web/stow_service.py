"""STOW-RS receive over HTTP: ``POST /dicomweb/{AE}/studies[/{study}]`` into the spool.

Every request proves who it is (``web.auth``) when a users or tokens file
is configured; with neither, the listener is on loopback only (``config
check`` refuses otherwise) and open to the machine's own users.  A request
is bounded before any body is read (its declared length, free space) and
while it is read: its total size, the number of parts, and how long the
body may stall (``[http] timeout``: a slow-loris client is cut off with
408).  The body is never held whole; nothing cut short is kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection

from pydicom import Dataset
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response

from config import HttpConfig
from spool.incoming import Provenance
from spool.text import one_line
from spool.writer import SpoolWriter
from web.access import Access, Refused
from web.stow import PROCESSING_FAILURE, PartOutcome, StowParts, TooManyParts

log = logging.getLogger(__name__)
DICOM_JSON = "application/dicom+json"
RETRY_AFTER_SECONDS = 60  # said with a 503 when the spool is under min_free
LOGGED_REFUSALS = 10  # refused parts of one request logged a line each


class StowService:
    """``POST /dicomweb/{AE}/studies[/{study}]``: a STOW-RS request into the spool."""

    def __init__(
        self,
        http: HttpConfig,
        aes: Callable[[], Collection[str]],
        writer: SpoolWriter,
        access: Access,
    ) -> None:
        self.http = http
        self.aes = aes
        self.writer = writer
        self.access = access

    async def store(self, request: Request) -> Response:
        client = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
        parts: StowParts | None = None
        try:
            user = await self.access.uploader(request)
            ae = request.path_params["ae"]
            boundary = self._admit(request, ae)
            if not await run_in_threadpool(self.writer.has_room):  # statvfs: off the event loop
                raise Refused(
                    503,
                    "the spool's free space is under min_free: try again later",
                    {"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            provenance = Provenance(
                calling_ae="",
                called_ae=ae,
                peer_address=client,
                scheme=request.url.scheme,
                user=user.name if user else None,
            )
            study = request.path_params.get("study")
            parts = StowParts(self.writer, provenance, study, self.http.max_parts, _PartLog(client))
            await self._read(request, boundary, parts)
        except Refused as refused:
            log.warning("STOW-RS from %s refused %d: %s", client, refused.status, refused.text)
            headers = {"Connection": "close", **refused.headers}
            if parts is None or not parts.outcomes:
                return PlainTextResponse(refused.text + "\n", refused.status, headers=headers)
            # Cut off after some parts were decided: say which were kept, so that the
            # client knows what a retry must send again.
            body = await run_in_threadpool(_answer, parts.outcomes, None)
            return Response(body, refused.status, headers=headers, media_type=DICOM_JSON)
        stored = sum(outcome.stored for outcome in parts.outcomes)
        log.info(
            "STOW-RS from %s%s to %s: %d stored, %d refused",
            client,
            f" ({user.name})" if user else "",
            ae,
            stored,
            len(parts.outcomes) - stored,
        )
        status = 200 if stored == len(parts.outcomes) else 202 if stored else 409
        # Thousands of parts make a large answer: built off the event loop.
        body = await run_in_threadpool(_answer, parts.outcomes, self._study_url(ae, study))
        return Response(body, status, media_type=DICOM_JSON)

    def _admit(self, request: Request, ae: str) -> bytes:
        """Whether this request may start; its multipart boundary."""
        if ae not in self.aes():
            raise Refused(404, f"no [ae:{ae}] in the adapter's config: nothing answers {ae}")
        media_type, options = parse_options_header(request.headers.get("content-type", ""))
        part_type = options.get(b"type", b"application/dicom").lower()
        boundary = options.get(b"boundary")
        if media_type != b"multipart/related" or part_type != b"application/dicom" or not boundary:
            raise Refused(
                415,
                'expected Content-Type: multipart/related; type="application/dicom"; boundary=...',
            )
        declared = request.headers.get("content-length")
        limit = self.http.max_request_size
        if declared is not None and declared.isdigit() and limit and int(declared) > limit:
            raise Refused(413, f"{declared} bytes is over [http] max_request_size ({limit})")
        return boundary

    async def _read(self, request: Request, boundary: bytes, parts: StowParts) -> None:
        """Feed the body to the parts, bounded in size and in how long it may stall."""
        parser = MultipartParser(boundary, parts.callbacks())
        received = 0
        chunks = request.stream().__aiter__()
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(anext(chunks), self.http.timeout)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise Refused(408, f"the body stalled for {self.http.timeout:g}s") from None
                received += len(chunk)
                limit = self.http.max_request_size
                if limit and received > limit:
                    raise Refused(413, f"the body is over [http] max_request_size ({limit})")
                await run_in_threadpool(parser.write, chunk)
            await run_in_threadpool(parser.finalize)
        except MultipartParseError as exc:
            raise Refused(400, f"not a multipart body: {exc}") from None
        except TooManyParts as exc:
            raise Refused(413, str(exc)) from None
        except ClientDisconnect:
            raise Refused(400, "the client went away before the body ended") from None
        except Refused:
            raise
        except Exception as exc:  # from storing a part (a disk error, say): refused, not a bare 500
            log.exception("STOW-RS storing failed")
            reason = f"storing failed: {one_line(exc)}"
            await run_in_threadpool(parts.abandon, PROCESSING_FAILURE, reason)
            raise Refused(500, reason) from None
        finally:
            if not parts.complete:
                await run_in_threadpool(parts.abandon)
        if not parts.outcomes:
            raise Refused(400, "no parts: a STOW-RS body holds one instance per part")

    def _study_url(self, ae: str, study: str | None) -> str | None:
        return f"{self.http.base_url}/dicomweb/{ae}/studies/{study}" if study else None


def _answer(outcomes: list[PartOutcome], study_url: str | None) -> str:
    """The response body: the Store Instances Response Module as DICOM JSON."""
    return _response(outcomes, study_url).to_json()


def _response(outcomes: list[PartOutcome], study_url: str | None) -> Dataset:
    """The Store Instances Response Module (PS3.18 Table I.1-1) for ``outcomes``."""
    response = Dataset()
    response.RetrieveURL = study_url  # type 2: present, empty when no single study
    stored, failed, other = [], [], []
    for outcome in outcomes:
        item = Dataset()
        if outcome.sop_class_uid and outcome.sop_instance_uid:
            item.ReferencedSOPClassUID = outcome.sop_class_uid
            item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
        if outcome.stored:
            item.RetrieveURL = None  # type 2: no WADO-RS here
            stored.append(item)
        else:
            item.FailureReason = outcome.status
            (failed if "ReferencedSOPInstanceUID" in item else other).append(item)
    if stored:
        response.ReferencedSOPSequence = stored
    if failed:
        response.FailedSOPSequence = failed
    if other:
        response.OtherFailuresSequence = other
    return response


class _PartLog:
    """Logs a request's refused parts, one line each up to :data:`LOGGED_REFUSALS`; the
    request's own line counts them all, so a body of junk parts cannot flood the log."""

    def __init__(self, client: str) -> None:
        self.client = client
        self.refused = 0

    def __call__(self, outcome: PartOutcome) -> None:
        if outcome.stored:
            return
        self.refused += 1
        if self.refused > LOGGED_REFUSALS:
            return
        log.warning(
            "STOW-RS part from %s refused 0x%04X sop=%r: %s%s",
            self.client,
            outcome.status,
            outcome.sop_instance_uid,
            outcome.reason,
            " (further refused parts of this request are only counted)"
            if self.refused == LOGGED_REFUSALS
            else "",
        )
