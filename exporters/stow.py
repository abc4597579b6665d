"""Send files to a DICOMweb destination with STOW-RS, as stored; one outcome per file.

``POST {url}/studies`` (PS3.18 10.5) with the files as ``application/dicom``
parts, streamed from disk byte for byte (:mod:`exporters.multipart`); at
most ``max_parts`` files and ``max_request_size`` bytes per request, so one
large export is several requests, and never one SOP Instance UID twice in a
request (the answer names instances by UID).  What the answer says decides
each file (:mod:`exporters.stow_answer`), on 200, 202 and 409 alike,
whatever the answer's Content-Type (Orthanc answers a partial success with
409 and none):

- in Referenced SOP Sequence: delivered (its WarningReason, if any, kept as
  its status);
- in Failed SOP Sequence: that file's refusal, its FailureReason classed
  like a C-STORE status (:mod:`exporters.outcomes`): 0xA9xx, 0xCxxx refused
  for good, 0xA7xx or 0x0110 worth another attempt;
- in neither: worth another attempt.

A request that gets no such answer fails the attempt for its files and
ends it (the later requests' files are not attempted), worth another
attempt in every case: no answer, a timeout, 5xx or 429 (whose
``Retry-After`` delays the next attempt, up to an hour), and 401, 403, 404,
415 or another 4xx, since a sign-in or a URL to fix is no reason to refuse
a file for good.  Nothing here deletes anything.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import urllib3
from urllib3.exceptions import HTTPError

from exporters import multipart
from exporters.base import Attempt, ExportError
from exporters.outcomes import status_outcome
from exporters.stow_answer import read_answer
from exporters.web_client import WebPeer, refusal, retry_after_seconds, transport_problem
from ledger.records import ItemOutcome, ItemRecord

log = logging.getLogger(__name__)
STOW_ANSWERS = (200, 202, 409)  # the statuses whose body is a Store Instances Response
MAX_ANSWER_BYTES = 16 * 2**20  # a 100-file answer is tens of KiB


@dataclass(frozen=True)
class Posted:
    """What one request came to: its files' outcomes; ``stop``: why the attempt ends here."""

    outcomes: list[ItemOutcome]
    stop: str | None = None
    retry_after_seconds: float | None = None


@dataclass(frozen=True)
class StowSender:
    """A ``type = dicomweb`` destination, as an export lane's :class:`exporters.base.Sender`."""

    peer: WebPeer
    name: ClassVar[str] = "stow"

    @property
    def where(self) -> str:
        return self.peer.url

    def send(self, files: list[ItemRecord]) -> Attempt:
        """One outcome per file, in order; never raises for the destination's failure."""
        outcomes: dict[int, ItemOutcome] = {}
        ready = []
        for file in files:
            found = _size_or_outcome(file)
            if isinstance(found, ItemOutcome):
                outcomes[file.id] = found
            else:
                ready.append((file, found))
        stop, retry_after, headers = None, None, {}
        try:
            headers = self.peer.headers()
        except ExportError as exc:
            stop = str(exc)
        with self.peer.connect() as pool:
            for batch in _batches(ready, self.peer.max_parts, self.peer.max_request_size):
                if stop is not None:
                    outcomes.update((f.id, _untried(f, stop)) for f in batch)
                    continue
                posted = self._post(pool, headers, batch)
                outcomes.update((o.item_id, o) for o in posted.outcomes)
                stop, retry_after = posted.stop, posted.retry_after_seconds or retry_after
        return Attempt([outcomes[f.id] for f in files], retry_after)

    def echo(self) -> str:
        """A QIDO-RS query for one study (PS3.18 10.6): the service answers and lets us in."""
        url = f"{self.peer.url}/studies?limit=1"
        with self.peer.connect() as pool:
            try:
                response = pool.request(
                    "GET", url, headers=self.peer.headers(), preload_content=False
                )
                body = response.read(MAX_ANSWER_BYTES)
            except HTTPError as exc:
                raise ExportError(transport_problem(exc, self.peer.timeout)[0]) from None
        if response.status in (200, 204):
            return f"QIDO-RS answered {response.status}"
        raise ExportError(refusal(response, body))

    def _post(
        self, pool: urllib3.PoolManager, headers: dict[str, str], batch: list[ItemRecord]
    ) -> Posted:
        boundary = multipart.new_boundary()
        url = f"{self.peer.url}/studies"
        try:
            response = pool.request(
                "POST",
                url,
                body=multipart.stream([f.path for f in batch], boundary),
                headers={**headers, "Content-Type": multipart.content_type(boundary)},
                chunked=True,
                preload_content=False,
            )
            try:
                body = response.read(MAX_ANSWER_BYTES + 1)
            finally:
                response.release_conn()
        except HTTPError as exc:
            why, reached = transport_problem(exc, self.peer.timeout)
            log.debug("STOW-RS to %s: %d files: %s", url, len(batch), why)
            return Posted([_undelivered(f, why, reached) for f in batch], why)
        log.debug("STOW-RS to %s: %d files: HTTP %d", url, len(batch), response.status)
        if response.status in STOW_ANSWERS:
            return Posted(_outcomes(batch, response.status, body))
        why = refusal(response, body)
        wait = None
        if response.status in (429, 503):
            wait = retry_after_seconds(response.headers.get("Retry-After"))
        return Posted([_undelivered(f, why, True) for f in batch], why, wait)


def _size_or_outcome(file: ItemRecord) -> int | ItemOutcome:
    """The file's size, or why it cannot go (a missing file is refused, as for C-STORE)."""
    if not file.sop_instance_uid:
        return ItemOutcome(file.id, None, "no SOP Instance UID to find in a STOW-RS answer")
    try:
        return os.stat(file.path).st_size
    except FileNotFoundError:
        return ItemOutcome(file.id, None, f"file missing: {file.path}")
    except OSError as exc:  # a permission to fix: worth another attempt
        return ItemOutcome(file.id, None, f"cannot send {file.path}: {exc}", retry=True)


def _batches(
    ready: list[tuple[ItemRecord, int]], max_parts: int, max_bytes: int
) -> Iterator[list[ItemRecord]]:
    """Requests of at most ``max_parts`` files and ``max_bytes`` (a larger file goes alone),
    in order, each SOP Instance UID once per request: a second copy waits for a later one."""
    rounds: list[list[tuple[ItemRecord, int]]] = []
    copies: dict[str, int] = {}
    for file, size in ready:
        copy = copies.get(file.sop_instance_uid or "", 0)
        copies[file.sop_instance_uid or ""] = copy + 1
        if copy == len(rounds):
            rounds.append([])
        rounds[copy].append((file, size))
    for files in rounds:
        batch: list[ItemRecord] = []
        total = 0
        for file, size in files:
            if batch and (len(batch) == max_parts or (max_bytes and total + size > max_bytes)):
                yield batch
                batch, total = [], 0
            batch.append(file)
            total += size
        if batch:
            yield batch


def _outcomes(batch: list[ItemRecord], status: int, body: bytes) -> list[ItemOutcome]:
    answer = read_answer(body) if len(body) <= MAX_ANSWER_BYTES else None
    if answer is None:
        why = f"HTTP {status} without a Store Instances Response in DICOM JSON"
        return [_undelivered(f, why, True) for f in batch]
    outcomes = []
    for file in batch:
        uid = file.sop_instance_uid or ""
        if uid in answer.failed:
            outcomes.append(status_outcome(file.id, answer.failed[uid]))
        elif uid in answer.stored:
            outcomes.append(ItemOutcome(file.id, answer.stored[uid], None))
        else:
            why = f"HTTP {status} and the answer names it neither stored nor failed"
            outcomes.append(_undelivered(file, why, True))
    return outcomes


def _undelivered(file: ItemRecord, why: str, reached: bool) -> ItemOutcome:
    if not reached:
        return _untried(file, why)
    return ItemOutcome(file.id, None, f"not delivered: {why}", retry=True)


def _untried(file: ItemRecord, why: str) -> ItemOutcome:
    return ItemOutcome(file.id, None, f"not attempted: {why}", retry=True, attempted=False)
