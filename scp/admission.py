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
class Source:
    """A known peer: its AE title and optionally the host it must come from."""

    ae_title: str
    host: str | None = None

    def matches(self, calling_ae: str, peer_ip: str) -> bool:
        return calling_ae == self.ae_title and (
            self.host is None or _host_matches(self.host, peer_ip)
        )


@dataclass(frozen=True)
class AdmissionPolicy:
    called_aes: frozenset[str]
    sources: tuple[Source, ...]
    reject_unknown_sources: bool

    def decide(
        self, called_ae: str, calling_ae: str, peer_ip: str
    ) -> tuple[tuple[int, int, int] | None, str]:
        """None to accept, else the reject triple; with a reason for the log."""
        if called_ae not in self.called_aes:
            return REJECT_CALLED_AE, f"called AE {called_ae!r} is not configured"
        ok, reason = validate_ae_title(calling_ae)
        if not ok:
            return REJECT_CALLING_AE, f"calling {reason}"
        if self.reject_unknown_sources and not any(
            source.matches(calling_ae, peer_ip) for source in self.sources
        ):
            return REJECT_CALLING_AE, f"unknown source {calling_ae!r} at {peer_ip}"
        return None, "accepted"


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
