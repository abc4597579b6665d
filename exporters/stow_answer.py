"""What a STOW-RS answer says of each instance: the Store Instances Response Module.

PS3.18 Annex I (Table I.1-1), in DICOM JSON (PS3.18 F.2): Referenced SOP
Sequence (0008,1199) lists the instances stored, each maybe with a Warning
Reason (0008,1196); Failed SOP Sequence (0008,1198) lists those refused, each
with its Failure Reason (0008,1197).  Both reasons are US values in the same
code space as C-STORE statuses (Tables I.2-1, I.2-2).  The body is read
with the ``json`` module, field by field: a server's odd answer makes an
instance unaccounted for (sent again), never a crash and never "stored".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

STORED = "00081199"  # Referenced SOP Sequence
FAILED = "00081198"  # Failed SOP Sequence
SOP_INSTANCE = "00081155"  # Referenced SOP Instance UID
WARNING_REASON = "00081196"
FAILURE_REASON = "00081197"


@dataclass(frozen=True)
class Answer:
    """SOP Instance UID -> its status: 0 or a WarningReason if stored, its FailureReason if
    refused.  An instance in neither is not accounted for."""

    stored: dict[str, int]
    failed: dict[str, int]


def read_answer(body: bytes) -> Answer | None:
    """The instances a STOW-RS answer names; None when it is not a DICOM JSON data set."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    stored = {uid: _number(item, WARNING_REASON) or 0 for uid, item in _items(document, STORED)}
    failed = {}
    for uid, item in _items(document, FAILED):
        reason = _number(item, FAILURE_REASON)
        failed[uid] = 0x0110 if reason is None else reason  # processing failure, if unsaid
    return Answer(stored, failed)


def _items(document: dict[str, Any], tag: str) -> list[tuple[str, dict[str, Any]]]:
    """(SOP Instance UID, item) of each item of a sequence that names its instance."""
    element = document.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    found = []
    for item in values if isinstance(values, list) else []:
        uid = _first(item, SOP_INSTANCE) if isinstance(item, dict) else None
        if isinstance(uid, str) and uid:
            found.append((uid, item))
    return found


def _first(item: dict[str, Any], tag: str) -> object:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _number(item: dict[str, Any], tag: str) -> int | None:
    """A US value; a number written as a string is read too, anything else is not."""
    value = _first(item, tag)
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 <= value <= 0xFFFF:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) <= 0xFFFF:
        return int(value)
    return None
