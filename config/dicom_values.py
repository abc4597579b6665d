"""Value parsers for config.ini keys that hold DICOM values: AE titles, tags, UIDs.

Same contract as :mod:`config.values`: raw text and the config folder in,
the typed value out, or ``ValueError`` with the problem.  The checks reuse
the spool's validators, since an AE title here becomes a spool folder name.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydicom.datadict import tag_for_keyword
from pydicom.uid import UID, AllTransferSyntaxes

from spool.names import validate_ae_folder, validate_ae_title, validate_uid


def called_ae_title(text: str, _: Path) -> str:
    """An AE title we answer to, which names a spool folder (PS3.5 6.2 AE, no path tricks)."""
    ok, reason = validate_ae_folder(text)
    if not ok:
        raise ValueError(reason)
    return text


def calling_ae_title(text: str, _: Path) -> str:
    """An AE title of a peer, or ours when calling one (PS3.5 6.2 AE)."""
    ok, reason = validate_ae_title(text)
    if not ok:
        raise ValueError(reason)
    return text.strip()


def tag(text: str, _: Path) -> int:
    """``0020,000D``, ``(0020,000D)``, ``0020000D`` or a keyword (``StudyInstanceUID``)."""
    compact = text.strip("() ").replace(",", "")
    if re.fullmatch(r"[0-9A-Fa-f]{8}", compact):
        return int(compact, 16)
    found = tag_for_keyword(text.strip())
    if found is None:
        raise ValueError(f"must be a tag like 0020,000D or a DICOM keyword, not {text!r}")
    return found


def uid_list(text: str, _: Path) -> frozenset[str]:
    """Comma-separated UIDs (SOP classes), each valid per PS3.5 9.1; empty for none."""
    uids = frozenset(item.strip() for item in text.split(",") if item.strip())
    for uid in uids:
        ok, reason = validate_uid(uid)
        if not ok:
            raise ValueError(reason)
    return uids


def transfer_syntaxes(text: str, _: Path) -> tuple[str, ...]:
    """``all``, or comma-separated transfer syntax UIDs that pydicom knows (PS3.5 10)."""
    if text.strip().lower() == "all":
        return tuple(str(uid) for uid in AllTransferSyntaxes)
    chosen = []
    for item in (i.strip() for i in text.split(",") if i.strip()):
        if item not in AllTransferSyntaxes:
            raise ValueError(f"{item!r} is not a standard transfer syntax UID")
        chosen.append(str(UID(item)))
    if not chosen:
        raise ValueError("must name at least one transfer syntax UID, or 'all'")
    return tuple(chosen)
