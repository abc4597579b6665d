"""Orthanc as a reference receiver, with its default storage settings.

Orthanc (1.10, the Debian package) is a full PACS-grade receiver that, by
default, fsyncs every stored file (``SyncStorageArea``), stores an MD5 per
attachment (``StoreMD5ForAttachments``) and indexes each instance in SQLite:
much the same promise as the adapter, so it is the closest like-for-like
reference. The config written here sets only where it keeps its data, its
ports and AE title, and the options that let any peer store to it; every
storage option is left out so Orthanc's own defaults apply.

Orthanc 1.10 has no bind-address option: it listens on all interfaces. The
ports are fresh ones and ``RemoteAccessAllowed`` is false, so its REST API
answers only 127.0.0.1. Finding and waiting for Orthanc is
``tests/peers/orthanc.py``'s, shared with the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.peers.orthanc import find_binary, get_json, wait_http

__all__ = ["AE_TITLE", "command", "count_instances", "find_binary", "wait_http", "write_config"]

AE_TITLE = "ORTHANC"


def write_config(work: Path, dicom_port: int, http_port: int) -> Path:
    """Write Orthanc's JSON config into ``work``; return its path.

    ``DicomCheckCalledAet`` false and ``DicomAlwaysAllowStore`` true (both
    1.10 defaults, set explicitly so the intent is visible) let storescu call
    it with any AE titles; the default ``AcceptedTransferSyntaxes``
    (``1.2.840.10008.1.*``) already covers explicit VR little endian.
    """
    config = {
        "Name": "bench",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "DicomAet": AE_TITLE,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "Plugins": [],
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def command(binary: str, config: Path) -> list[str]:
    """The command line that runs Orthanc in the foreground on ``config``."""
    return [binary, str(config)]


def count_instances(http_port: int) -> int:
    """Instances Orthanc holds (``GET /statistics``): its files are named by hash, not UID."""
    count = get_json(http_port, "/statistics")["CountInstances"]
    if not isinstance(count, int):
        raise ValueError(f"Orthanc's /statistics gave CountInstances {count!r}")
    return count
