"""Orthanc (the Debian packages ``orthanc``, ``orthanc-dicomweb``) as a real peer.

No pytest here, so the benchmarks use it too (``bench/orthanc.py``, Orthanc
as a reference receiver).  :class:`Orthanc` runs one with its DICOMweb
plugin and sign-in on: a STOW-RS destination for the adapter's exports, and
a DICOMweb client (``DicomWeb.Servers``) that pushes studies to the
adapter's own STOW-RS listener.

Orthanc 1.10 has no bind-address option: it listens on all interfaces, so
the ports are fresh ones, ``RemoteAccessAllowed`` is false (its REST API
answers only 127.0.0.1) and sign-in is on.  ``TCP_NODELAY=1`` is in its
environment: DCMTK, under its DICOM side, reads it.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

BINARY = "Orthanc"
FALLBACK = Path("/usr/sbin/Orthanc")  # the Debian package's place, often off a user's PATH
PLUGIN_PACKAGE = "orthanc-dicomweb"
MISSING = (
    "Orthanc with its DICOMweb plugin is not installed "
    "(Debian packages orthanc and orthanc-dicomweb)"
)


def find_binary() -> str | None:
    """The Orthanc executable, or None when it is not installed."""
    found = shutil.which(BINARY)
    if found is not None:
        return found
    return str(FALLBACK) if FALLBACK.is_file() else None


def find_dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin's library, as ``dpkg -L orthanc-dicomweb`` lists it."""
    try:
        listed = subprocess.run(
            ["dpkg", "-L", PLUGIN_PACKAGE], capture_output=True, text=True, timeout=30
        )
    except OSError:
        return None
    for line in listed.stdout.splitlines():
        path = Path(line)
        if path.name.startswith("libOrthancDicomWeb.so") and path.is_file():
            return path.resolve()
    return None


def available() -> bool:
    return find_binary() is not None and find_dicomweb_plugin() is not None


def get_json(http_port: int, route: str, auth: tuple[str, str] | None = None) -> Any:
    """``GET route`` on Orthanc's REST API, as JSON."""
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}{route}")
    if auth is not None:
        request.add_header("Authorization", _basic(*auth))
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait_http(http_port: int, timeout: float, auth: tuple[str, str] | None = None) -> None:
    """Wait until the REST API answers; Orthanc opens its DICOM port first.

    Raises
    ------
    TimeoutError
        The REST API did not answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            get_json(http_port, "/system", auth)
            return
        except (OSError, urllib.error.URLError, ValueError):
            time.sleep(0.05)
    raise TimeoutError(f"Orthanc's REST API (port {http_port}) did not answer in {timeout:.0f}s")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Orthanc:
    """One Orthanc with its DICOMweb plugin at ``/dicom-web/``, signing users in.

    ``servers``: its ``DicomWeb.Servers``, the DICOMweb services it may push to.
    """

    def __init__(
        self,
        work: Path,
        http_port: int,
        dicom_port: int,
        servers: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.work, self.http_port, self.dicom_port = work, http_port, dicom_port
        self.servers = servers or {}
        self.auth = ("orthanc", secrets.token_hex(8))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def start(self, timeout: float = 30) -> None:
        binary, plugin = find_binary(), find_dicomweb_plugin()
        if binary is None or plugin is None:
            raise RuntimeError(MISSING)
        self.work.mkdir(parents=True, exist_ok=True)
        config = self.work / "orthanc.json"
        config.write_text(json.dumps(self._config(plugin), indent=2))
        with open(self.work / "orthanc.log", "ab") as log:
            self.process = subprocess.Popen(
                [binary, str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"TCP_NODELAY": "1"},
            )
        wait_http(self.http_port, timeout, self.auth)

    def stop(self) -> None:
        """Killed: its data is thrown away, and a clean stop takes Orthanc 3.5 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def request(self, method: str, route: str, body: bytes | None = None) -> bytes:
        """One REST call, signed in; its body."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{route}", data=body, method=method
        )
        request.add_header("Authorization", _basic(*self.auth))
        with urllib.request.urlopen(request, timeout=60) as response:
            return bytes(response.read())

    def instances(self) -> dict[str, str]:
        """SOP Instance UID -> Orthanc's ID, for every instance it holds."""
        expanded = json.loads(self.request("GET", "/instances?expand"))
        return {item["MainDicomTags"]["SOPInstanceUID"]: item["ID"] for item in expanded}

    def upload(self, path: Path) -> dict[str, Any]:
        """Store a Part 10 file through the REST API (not DICOMweb): Orthanc's answer."""
        return dict(json.loads(self.request("POST", "/instances", path.read_bytes())))

    def _config(self, plugin: Path) -> dict[str, Any]:
        return {
            "Name": "adapter-tests",
            "StorageDirectory": str(self.work / "storage"),
            "IndexDirectory": str(self.work / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.auth[0]: self.auth[1]},
            "Plugins": [str(plugin)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": self.servers},
        }
