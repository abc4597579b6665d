"""A DICOMweb destination over HTTP: where it is, how we sign in, what its refusals mean.

HTTP is urllib3's, not ours.  urllib3 rather than requests because it takes
the :class:`ssl.SSLContext` that ``config check`` builds and tries
(:mod:`config.tls`), so an https destination is verified exactly as a TLS
DICOM destination is (``ca_certificates``, ``verify_hostname``, the minimum
version and ciphers, a client certificate), and it streams a generator as a
chunked body.  urllib3 neither retries nor follows redirects here: the
task's retries are the ledger's, and a redirect is reported, since a POST
sent on elsewhere would carry the sign-in to a place nobody configured.
Environment proxies (``HTTPS_PROXY``) are not used.

Secrets are read from their files at each request, never kept: a new
password needs no reload, and none is ever in config.ini or a log line.
"""

from __future__ import annotations

import email.utils
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import urllib3
from urllib3.exceptions import (
    HTTPError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from exporters.base import ExportError
from spool.incoming import IMPLEMENTATION_VERSION_NAME
from spool.text import one_line

if TYPE_CHECKING:
    from config import TlsSettings

DICOM_JSON = "application/dicom+json"
USER_AGENT = f"dicom-adapter ({IMPLEMENTATION_VERSION_NAME})"
MAX_RETRY_AFTER_SECONDS = 3600.0  # as the longest backoff: a longer wait is not "within reason"
# Why a service refused a whole request, for the one line an admin reads.
_HINTS = {
    400: "it could not read the request",
    401: "sign-in refused: check username and password_file, or token_file",
    403: "forbidden: this sign-in may not do that",
    404: "nothing there: check url (the service's base URL, without /studies)",
    405: "that method is not allowed there: check url",
    413: "the request is too large for it: lower max_request_size or max_parts",
    415: 'it does not take multipart/related; type="application/dicom"',
    429: "too many requests: it asked us to slow down",
    503: "it is unavailable for now",
}


@dataclass(frozen=True)
class WebPeer:
    """A ``type = dicomweb`` destination's connection settings."""

    url: str  # the service's base URL, no trailing slash
    username: str | None = None  # with password_file: HTTP Basic
    password_file: Path | None = None
    token_file: Path | None = None  # a bearer token
    tls: TlsSettings | None = None  # how an https server is verified (None: system CAs)
    timeout: float = 60.0  # connecting, and each read or write
    max_request_size: int = 512 * 2**20  # bytes of files in one request; 0: no limit
    max_parts: int = 100  # files in one request

    def connect(self) -> urllib3.PoolManager:
        """One keep-alive connection at a time, no retries, no redirects."""
        timeout = urllib3.Timeout(connect=self.timeout, read=self.timeout)
        options: dict[str, object] = {}
        if self.url.startswith("https://"):
            tls = self.tls
            options["ssl_context"] = tls.client_context() if tls else ssl.create_default_context()
            if tls is not None and not tls.verify_hostname:
                options["assert_hostname"] = False  # urllib3 would match the name itself
        return urllib3.PoolManager(
            num_pools=1, maxsize=1, retries=False, timeout=timeout, **options
        )

    def headers(self, accept: str = DICOM_JSON) -> dict[str, str]:
        """Request headers with the sign-in, read from its file now.

        Raises
        ------
        ExportError
            The password or token file cannot be read, or is empty.
        """
        headers = {"Accept": accept, "User-Agent": USER_AGENT}
        if self.token_file is not None:
            headers["Authorization"] = f"Bearer {_secret(self.token_file)}"
        elif self.username is not None and self.password_file is not None:
            basic = f"{self.username}:{_secret(self.password_file)}"
            headers.update(urllib3.make_headers(basic_auth=basic))
        return headers


def _secret(path: Path) -> str:
    """The first line of a secret file, without its line end."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"cannot read the secret in {path}: {exc}") from None
    secret = text.splitlines()[0].strip() if text.strip() else ""
    if not secret:
        raise ExportError(f"the secret file {path} is empty")
    return secret


def transport_problem(exc: HTTPError, timeout: float) -> tuple[str, bool]:
    """Why a request got no answer, in one line, and whether it reached the service at all
    (False: nothing was sent, so the files were not attempted)."""
    if isinstance(exc, NameResolutionError):
        return f"cannot resolve its host name: {exc.__cause__ or exc}", False
    if isinstance(exc, NewConnectionError):
        return f"cannot connect: {exc.__cause__ or exc}", False
    if isinstance(exc, ReadTimeoutError):
        return f"no answer within {timeout:g}s", True
    if isinstance(exc, SSLError):
        return f"TLS failed: {exc}", False
    if isinstance(exc, ProtocolError) and len(exc.args) > 1:
        return f"the connection was lost: {exc.args[1]}", True
    return f"{type(exc).__name__}: {exc}", True


def refusal(response: urllib3.BaseHTTPResponse, body: bytes) -> str:
    """One line on an answer that is not a STOW-RS (or QIDO-RS) result."""
    status = response.status
    if 300 <= status < 400:
        where = one_line(response.headers.get("Location", "elsewhere"))[:200]
        hint = f"it redirects to {where}: set url to the service's own address"
    else:
        hint = _HINTS.get(status, "a server error" if status >= 500 else "a client error")
    said = one_line(body[:200].decode("utf-8", "replace").strip())
    return (
        f"HTTP {status} {response.reason or ''}".rstrip()
        + f": {hint}"
        + (f" ({said})" if said else "")
    )


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """An HTTP ``Retry-After`` (seconds, or a date) as seconds from now, at most an hour;
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)
