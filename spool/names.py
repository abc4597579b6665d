"""Validation of names that come from the network before they touch a path.

A UID or AE title sent by a peer is attacker text.  The spool builds file
names from UIDs and folder names from configured AE titles only after they
pass these checks, so nothing a peer says can escape the spool (compare
DCMTK CVE-2022-2119 and pynetdicom#823).  Two checks for UIDs: whether one
is *usable* (it can name a file and fit the ledger: only that refuses an
instance) and whether it *conforms* to PS3.5 (a legacy device's UID with a
leading zero does not, and is kept with a warning).  Validators return
``(ok, reason)`` like pynetdicom's ``_validators``.
"""

import re

MAX_UID_LENGTH = 64  # PS3.5 9.1, and the ledger's UID columns
_UID_COMPONENT = re.compile(r"0|[1-9][0-9]*")
# Safe as one path component on every filesystem and as a command argument:
# no separator, no leading dot (a hidden file intake never looks at) or dash.
_NAME_SAFE = re.compile(r"[0-9A-Za-z_][0-9A-Za-z._-]*")
_AE_FORBIDDEN = re.compile(r"[\\\x00-\x1f\x7f]")
# AE titles also name spool folders: keep them to characters that are safe
# and unambiguous as one path component on every filesystem.
_AE_FOLDER_SAFE = re.compile(r"[A-Za-z0-9_.\- ]+")
RESERVED_FOLDERS = frozenset({"quarantine", "superseded", ".tmp"})


def usable_uid(value: object) -> tuple[bool, str]:
    """Whether a UID can name a file and fit the ledger: the only UID rule that refuses."""
    if not isinstance(value, str) or not value:
        return False, "UID is empty"
    if len(value) > MAX_UID_LENGTH:
        return False, f"UID is longer than {MAX_UID_LENGTH} characters"
    if not _NAME_SAFE.fullmatch(value):
        return False, f"UID {value!r} is not safe as a file name"
    return True, ""


def validate_uid(value: object) -> tuple[bool, str]:
    """Check a UID against PS3.5 section 9.1.

    Digits and dots only, at most 64 characters, no empty component and no
    component with a leading zero.
    """
    if not isinstance(value, str) or not value:
        return False, "UID is empty"
    if len(value) > MAX_UID_LENGTH:
        return False, f"UID is longer than {MAX_UID_LENGTH} characters"
    for component in value.split("."):
        if _UID_COMPONENT.fullmatch(component):
            continue
        if not component:
            why = "has an empty component"
        elif component.isdecimal() and component.isascii():
            why = f"has a component with a leading zero ({component!r})"
        else:
            why = "is not digits and dots"
        return False, f"UID {value!r} {why} (PS3.5 9.1)"
    return True, ""


def validate_ae_title(value: object) -> tuple[bool, str]:
    """Check an AE title against the AE value representation (PS3.5 6.2).

    At most 16 characters of the default repertoire, no backslash or
    control characters, not only spaces.
    """
    if not isinstance(value, str):
        return False, "AE title is not text"
    stripped = value.strip(" ")
    if not stripped:
        return False, "AE title is empty"
    if len(value) > 16:
        return False, f"AE title {value!r} is longer than 16 characters"
    if _AE_FORBIDDEN.search(value) or not value.isascii():
        return False, f"AE title {value!r} has characters not allowed in an AE title"
    return True, ""


def validate_ae_folder(value: str) -> tuple[bool, str]:
    """Check that a configured AE title can also name a spool folder.

    Stricter than the AE grammar: letters, digits, space, ``_ . -``; not
    ``.``/``..`` and not a folder the spool reserves for itself.
    """
    ok, reason = validate_ae_title(value)
    if not ok:
        return ok, reason
    if not _AE_FOLDER_SAFE.fullmatch(value) or value.strip(". ") == "":
        return False, f"AE title {value!r} may only use letters, digits, space, '_', '.', '-'"
    if value.lower() in RESERVED_FOLDERS:
        return False, f"AE title {value!r} is reserved for a spool folder"
    return True, ""
