"""Who may associate: called AE titles, known sources, and disk room.

Decisions are A-ASSOCIATE-RJ (result, source, reason) triples, PS3.8 7.1.1.9:
1/1/7 called AE not recognised, 1/1/3 calling AE not recognised (permanent),
2/3/2 local limit exceeded (transient, so a modality retries once space is
back rather than giving up as it would on CDA's "no reason given").
"""

import ipaddress
import socket
from dataclasses import dataclass

from spool.names import validate_ae_title

# The calling AE title of ``dicom-adapter status``'s C-ECHO to its own adapter
# (health.py): from loopback, its association lines are DEBUG, not INFO or
# WARNING, so monitoring every few seconds does not fill the log.
HEALTH_CHECK_AE = "HEALTHCHECK"

REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)
# For metrics: what a rejection was about.
REJECTION_NAMES = {
    REJECT_CALLED_AE: "called_ae",
    REJECT_CALLING_AE: "calling_ae",
    REJECT_LOCAL_LIMIT: "local_limit",
}


@dataclass(frozen=True)
class Arrival:
    """How an association request came in: from where, and over which listener.

    ``certificate_names`` are the subject, common names and subjectAltName
    values of the client certificate the TLS handshake verified (empty
    without TLS or without a certificate).
    """

    peer_ip: str
    tls: bool = False
    certificate_subject: str = ""  # RFC 4514, as ``openssl x509 -subject -nameopt rfc2253``
    certificate_names: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Source:
    """A known peer: its AE title, optionally the host it must come from, and
    optionally the client certificate it must present over TLS."""

    ae_title: str
    host: str | None = None
    certificate_name: str | None = None

    def matches(self, calling_ae: str, arrival: Arrival) -> bool:
        if calling_ae != self.ae_title:
            return False
        if self.host is not None and not _host_matches(self.host, arrival.peer_ip):
            return False
        return self.certificate_name is None or (
            arrival.tls and self.certificate_name in arrival.certificate_names
        )


@dataclass(frozen=True)
class AdmissionPolicy:
    """Who may associate; each listener has its own rule for unknown calling AEs.

    A calling AE title that a source pins to a client certificate is
    accepted only through such a source, whatever ``reject_unknown_sources``
    says: otherwise anyone could take that title on the plain port.
    """

    called_aes: frozenset[str]
    sources: tuple[Source, ...]
    reject_unknown_sources: bool
    reject_unknown_over_tls: bool | None = None  # None: as reject_unknown_sources

    def decide(
        self, called_ae: str, calling_ae: str, arrival: Arrival
    ) -> tuple[tuple[int, int, int] | None, str]:
        """None to accept, else the reject triple; with a reason for the log."""
        if called_ae not in self.called_aes:
            return REJECT_CALLED_AE, f"called AE {called_ae!r} is not configured"
        ok, reason = validate_ae_title(calling_ae)
        if not ok:
            return REJECT_CALLING_AE, f"calling {reason}"
        pinned = [s for s in self.sources if s.ae_title == calling_ae and s.certificate_name]
        if pinned:
            if any(source.matches(calling_ae, arrival) for source in pinned):
                return None, "accepted"
            needs = " or ".join(repr(source.certificate_name) for source in pinned)
            return REJECT_CALLING_AE, (
                f"source {calling_ae!r} must arrive over TLS with a client certificate naming "
                f"{needs} ({_described(arrival)})"
            )
        if self._rejects_unknown(arrival) and not any(
            source.matches(calling_ae, arrival) for source in self.sources
        ):
            return REJECT_CALLING_AE, f"unknown source {calling_ae!r} at {arrival.peer_ip}"
        return None, "accepted"

    def _rejects_unknown(self, arrival: Arrival) -> bool:
        if arrival.tls and self.reject_unknown_over_tls is not None:
            return self.reject_unknown_over_tls
        return self.reject_unknown_sources


def _described(arrival: Arrival) -> str:
    """What the peer did present, for the rejection's log line."""
    if not arrival.tls:
        return f"came from {arrival.peer_ip} without TLS"
    if not arrival.certificate_subject:
        return f"came from {arrival.peer_ip} over TLS without a client certificate"
    return f"came from {arrival.peer_ip} with certificate {arrival.certificate_subject!r}"


def _host_matches(host: str, peer_ip: str) -> bool:
    """``host`` is an IP, a CIDR network or a hostname (resolved now)."""
    try:
        peer = ipaddress.ip_address(peer_ip)
    except ValueError:
        return False
    try:
        return peer in ipaddress.ip_network(host, strict=False)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return any(ipaddress.ip_address(info[4][0]) == peer for info in infos)


def is_health_check(calling_ae: str, peer_ip: str) -> bool:
    """An association from ``status`` on this machine (only its log level depends on it)."""
    try:
        return calling_ae == HEALTH_CHECK_AE and ipaddress.ip_address(peer_ip).is_loopback
    except ValueError:
        return False
