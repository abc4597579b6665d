"""TLS settings of one connection end, and the SSLContext built from them.

``config check`` builds the very context the listener or an export would
build (PS3.15 B.1, BCP 195), so a key that does not match its certificate, or
a cipher string OpenSSL cannot use, is found before the service starts rather
than at the first association.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# TLS 1.2 suites (TLS 1.3 ones are all AEAD and not affected): forward secrecy
# and AEAD only, as BCP 195 (RFC 9325 4.2) recommends and DCMTK's default
# "non-downgrading BCP 195" profile offers.
DEFAULT_TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL"


@dataclass(frozen=True)
class TlsSettings:
    """One end of a TLS connection (PS3.15 B.1 / BCP 195): builds the SSLContext.

    The context is built from here both by ``config check`` and by whoever
    connects, so a key that does not match its certificate or a cipher
    string OpenSSL cannot use is found before the service starts.
    """

    certificate: Path | None
    private_key: Path | None
    ca_certificates: Path | None  # None: no client verification (server), system CAs (client)
    minimum_version: str = "1.2"
    ciphers: str = DEFAULT_TLS_CIPHERS
    require_client_certificate: bool = False  # server side only
    verify_hostname: bool = True  # client side only

    def server_context(self) -> ssl.SSLContext:
        """For the listener: a client certificate is verified when sent, required if asked."""
        context = self._context(ssl.PROTOCOL_TLS_SERVER)
        if self.require_client_certificate:
            context.verify_mode = ssl.CERT_REQUIRED
        elif self.ca_certificates is not None:
            context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def client_context(self) -> ssl.SSLContext:
        """For exports: the destination's certificate is always verified."""
        context = self._context(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = self.verify_hostname
        if self.ca_certificates is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return context

    def _context(self, protocol: ssl._SSLMethod) -> ssl.SSLContext:
        context = ssl.SSLContext(protocol)
        context.minimum_version = TLS_VERSIONS[self.minimum_version]
        context.set_ciphers(self.ciphers)
        if self.certificate is not None:
            # An encrypted key would make OpenSSL prompt on the terminal: refuse instead.
            context.load_cert_chain(self.certificate, self.private_key, password=_no_password)
        if self.ca_certificates is not None:
            context.load_verify_locations(cafile=self.ca_certificates)
        return context


def _no_password() -> bytes:
    raise ValueError("encrypted private keys are not supported")


def why_context_fails(settings: TlsSettings, server_side: bool) -> str | None:
    """Build the context the listener (or an export) would build; None if it loads.

    Otherwise OpenSSL's short reason (``KEY_VALUES_MISMATCH (X509)``) rather
    than its whole tuple, for a one-line config error.
    """
    try:
        settings.server_context() if server_side else settings.client_context()
    except ssl.SSLError as exc:
        if exc.reason:
            return f"{exc.reason} ({exc.library or 'SSL'})"
        return str(exc) or type(exc).__name__
    except (ValueError, OSError) as exc:
        return str(exc) or type(exc).__name__
    return None


def selects_a_cipher(ciphers: str) -> bool:
    """Whether OpenSSL selects at least one suite from the cipher string ``ciphers``."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
    except ssl.SSLError:
        return False
    return True
