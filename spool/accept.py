"""Keep a received instance, or refuse it: one decision for C-STORE and STOW-RS alike.

The data set has streamed into an :class:`spool.incoming.IncomingFile`
behind our file meta.  :func:`accept` reads the UIDs that name it (the
bounded structure walk, :mod:`spool.placement`), judges them with the one
keep/refuse rule (:func:`spool.identity.judge`, which intake applies to the
same bytes later), and has :class:`spool.writer.SpoolWriter` make the file
durable in its place.  It answers with a DICOM status (PS3.4 Annex B), which
the SCP sends as the C-STORE response and the STOW-RS service turns into a
FailureReason (PS3.18 Annex I, the same codes): so a refusal is said on the
wire, before anything is acknowledged, whichever way the instance came.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

from spool.identity import Identity, judge
from spool.incoming import IncomingFile
from spool.layout import UnsafeName
from spool.placement import read_identity
from spool.text import one_line
from spool.writer import SpoolFull, SpoolWriter

SUCCESS = 0x0000
# Refused: Out of Resources (PS3.4 B.2.3): disk full, under min_free, too large.
OUT_OF_RESOURCES = 0xA700
# Error: Cannot Understand: unusable UIDs or an unparsable data set.
CANNOT_UNDERSTAND = 0xC210
# STOW-RS only (implementation specific, docs/conformance.md; Azure's DICOM service uses
# it too): the instance belongs to another study than the one the request's URL names.
OTHER_STUDY = 0xA901


@dataclass(frozen=True)
class Accepted:
    """What became of one instance: ``status`` SUCCESS and its ``path``, or a refusal and
    ``reason`` (one line).  ``identity`` is what its data set said, when it could be read."""

    status: int
    reason: str | None = None
    path: Path | None = None
    identity: Identity | None = None


def accept(
    writer: SpoolWriter,
    incoming: IncomingFile,
    sop_class_uid: str,
    sop_instance_uid: str,
    *,
    study_instance_uid: str | None = None,
) -> Accepted:
    """Judge ``incoming`` against the UIDs its sender named, and publish it if kept.

    ``study_instance_uid``: the study a STOW-RS request's URL names, which the
    instance must belong to.  A refused instance's temporary file is removed.
    Unexpected errors are the caller's (the SCP answers them 0xC211, STOW-RS
    0x0110).
    """
    if incoming.failed is not None:
        incoming.path.unlink(missing_ok=True)
        if incoming.out_of_space:
            return Accepted(OUT_OF_RESOURCES, _no_room(incoming))
        raise incoming.failed
    try:
        identity = read_identity(incoming)
    except Exception as exc:  # the structure walk's Malformed, or anything odder
        incoming.path.unlink(missing_ok=True)
        if incoming.out_of_space:
            return Accepted(OUT_OF_RESOURCES, _no_room(incoming))
        return Accepted(CANNOT_UNDERSTAND, f"unreadable dataset: {one_line(exc)}")
    # The rule intake applies to the same bytes: what is refused is refused
    # here, on the wire; what is merely odd is stored, and intake records why.
    verdict = judge(identity, (sop_class_uid, sop_instance_uid))
    if verdict.refusal is not None:
        incoming.path.unlink(missing_ok=True)
        return Accepted(CANNOT_UNDERSTAND, verdict.refusal, identity=identity)
    if study_instance_uid is not None and identity.study_instance_uid != study_instance_uid:
        incoming.path.unlink(missing_ok=True)
        reason = f"of study {identity.study_instance_uid}, not {study_instance_uid} as the URL says"
        return Accepted(OTHER_STUDY, reason, identity=identity)
    try:
        path = writer.publish(
            incoming,
            identity.study_instance_uid,  # type: ignore[arg-type]  # judged usable
            identity.series_instance_uid,
            identity.sop_instance_uid,  # type: ignore[arg-type]
        )
    except SpoolFull as exc:
        reason = f"spool full: {exc.strerror or exc}"
        return Accepted(OUT_OF_RESOURCES, reason, identity=identity)
    except UnsafeName as exc:
        return Accepted(CANNOT_UNDERSTAND, str(exc), identity=identity)
    return Accepted(SUCCESS, path=path, identity=identity)


def _no_room(incoming: IncomingFile) -> str:
    """Why an incoming file stopped: the disk, ``min_free`` or ``max_instance_size``."""
    failed = incoming.failed
    assert failed is not None
    if failed.errno == errno.EFBIG:
        return f"instance {failed.strerror}"
    return f"spool full: {failed.strerror or failed}"
