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
answers only 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

BINARY = "Orthanc"
FALLBACK = Path("/usr/sbin/Orthanc")  # the Debian package's place, often off a user's PATH
AE_TITLE = "ORTHANC"


def find_binary() -> str | None:
    """The Orthanc executable, or None when it is not installed."""
    found = shutil.which(BINARY)
    if found is not None:
        return found
    return str(FALLBACK) if FALLBACK.is_file() else None


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


def _get(http_port: int, route: str) -> dict[str, object]:
    url = f"http://127.0.0.1:{http_port}{route}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def wait_http(http_port: int, timeout: float) -> None:
    """Wait until the REST API answers; Orthanc opens its DICOM port first.

    Raises
    ------
    TimeoutError
        The REST API did not answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _get(http_port, "/system")
            return
        except (OSError, urllib.error.URLError, ValueError):
            time.sleep(0.05)
    raise TimeoutError(f"Orthanc's REST API (port {http_port}) did not answer in {timeout:.0f}s")


def count_instances(http_port: int) -> int:
    """Instances Orthanc holds (``GET /statistics``): its files are named by hash, not UID."""
    count = _get(http_port, "/statistics")["CountInstances"]
    if not isinstance(count, int):
        raise ValueError(f"Orthanc's /statistics gave CountInstances {count!r}")
    return count
