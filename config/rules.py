"""Rules between keys: what each key's parser cannot see on its own.

Errors come back as :class:`Problem` values for the reader to report (or
raise), in the order an admin should fix them; warnings are for what loads
but is likely not what the admin meant.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Collection
from typing import Any, NamedTuple

from config.model import Config
from config.schema import DESTINATION_KEYS, DESTINATION_NEEDS, PROCESSOR_NEEDS
from config.tls import TlsSettings, why_context_fails
from config.values import PORT_RANGE

# The keys a TLS context is built from: a problem with one of them is more
# precise than "TLS settings do not load", which is then left unsaid.
TLS_CONTEXT_KEYS = ("certificate", "private_key", "ca_certificates", "tls_minimum_version")


class Problem(NamedTuple):
    """One config error: where (``[section] key``, either may be None) and what."""

    section: str | None
    key: str | None
    text: str


def processor_problems(section: str, values: dict[str, Any]) -> list[Problem]:
    """Keys of an ``[ae:NAME]`` that only make sense together."""
    problems = []
    needed = PROCESSOR_NEEDS.get(values.get("processor") or "")
    if needed and values.get(needed) is None:
        problems.append(
            Problem(section, needed, f"is required with processor = {values['processor']}")
        )
    if values.get("ignored_sop_classes") and values.get("allowed_sop_classes"):
        problems.append(
            Problem(
                section,
                "allowed_sop_classes",
                "give ignored_sop_classes or allowed_sop_classes, not both",
            )
        )
    return problems


def listener_tls_problems(values: dict[str, Any]) -> list[Problem]:
    """``tls_port`` needs a certificate and key, and a port of its own;
    ``port = 0`` (no plain listener) needs ``tls_port``."""
    problems = []
    if values.get("port") == 0 and not values.get("tls_port"):
        problems.append(Problem("dicom", "port", PORT_RANGE))
    if not values.get("tls_port"):
        return problems
    if values["tls_port"] == values.get("port"):
        problems.append(Problem("dicom", "tls_port", "must differ from port"))
    for key in ("certificate", "private_key"):
        if values.get(key) is None:
            problems.append(Problem("dicom", key, "is required with tls_port"))
    if values.get("require_client_certificate") and values.get("ca_certificates") is None:
        problems.append(
            Problem("dicom", "ca_certificates", "is required with require_client_certificate")
        )
    return problems


def http_problems(values: dict[str, Any]) -> list[Problem]:
    """HTTPS needs a certificate and its key together; off loopback the listener needs
    HTTPS and a users or tokens file, so no password or patient data crosses the network
    in clear and nobody stores anonymously."""
    problems = []
    if (values.get("certificate") is None) != (values.get("private_key") is None):
        missing = "private_key" if values.get("private_key") is None else "certificate"
        problems.append(Problem("http", missing, "is required with the other (HTTPS needs both)"))
    if not values.get("port") or _is_loopback(values.get("host") or ""):
        return problems
    if values.get("certificate") is None:
        problems.append(
            Problem(
                "http",
                "certificate",
                f"is required: host = {values['host']} is reachable from the network, "
                "so the listener needs HTTPS (certificate and private_key)",
            )
        )
    if values.get("users") is None and values.get("tokens") is None:
        problems.append(
            Problem(
                "http",
                "users",
                f"is required (or tokens): host = {values['host']} is reachable from the "
                "network, so nobody may use the listener without signing in",
            )
        )
    return problems


def source_tls_problems(
    section: str, values: dict[str, Any], dicom: dict[str, Any]
) -> list[Problem]:
    """``certificate_name`` needs a TLS listener that verifies client certificates."""
    if values.get("certificate_name") is None:
        return []
    if not dicom.get("tls_port"):
        return [Problem(section, "certificate_name", "needs [dicom] tls_port")]
    if dicom.get("ca_certificates") is None:
        return [
            Problem(
                section,
                "certificate_name",
                "needs [dicom] ca_certificates to verify the certificate",
            )
        ]
    return []


def destination_problems(
    section: str, values: dict[str, Any], given: Collection[str]
) -> list[Problem]:
    """A ``[destination:NAME]`` has the keys its ``type`` needs and none of the other
    type's (``given``: the keys written in the file), and one way to sign in."""
    kind = values.get("type")
    if kind is None:  # a bad type is reported with the section's keys
        return []
    problems = [
        Problem(section, key, f"is a key of type = {other}, and this destination is {kind}")
        for other, keys in DESTINATION_KEYS.items()
        if other != kind
        for key in keys
        if key in given
    ]
    problems += [
        Problem(section, key, f"is required with type = {kind}")
        for key in DESTINATION_NEEDS[kind]
        if key not in given
    ]
    if kind == "dicomweb":
        problems += _sign_in_problems(section, given)
    return problems


def _sign_in_problems(section: str, given: Collection[str]) -> list[Problem]:
    """HTTP Basic needs a user name and a password file; a bearer token excludes them."""
    if "token_file" in given and ({"username", "password_file"} & set(given)):
        return [Problem(section, "token_file", "give username and password_file, or token_file")]
    for key, other in (("username", "password_file"), ("password_file", "username")):
        if key in given and other not in given:
            return [Problem(section, other, f"is required with {key}")]
    return []


def destination_secured(values: dict[str, Any]) -> bool:
    """Whether the destination is reached over TLS: ``tls = true`` (DICOM), an https URL."""
    if values.get("type") == "dicomweb":
        return str(values.get("url") or "").startswith("https://")
    return bool(values.get("tls"))


def destination_tls_problems(section: str, values: dict[str, Any]) -> list[Problem]:
    """A client certificate comes with its key."""
    if (values.get("certificate") is None) != (values.get("private_key") is None):
        return [Problem(section, "private_key", "give certificate and private_key together")]
    return []


def tls_load_problem(section: str, values: dict[str, Any], server_side: bool) -> Problem | None:
    """Build the SSLContext the service would build; why OpenSSL refuses it, if it does."""
    if values.get("tls_ciphers") is None or (values.get("certificate") is None and server_side):
        return None
    settings = TlsSettings(
        values["certificate"],
        values["private_key"],
        values["ca_certificates"],
        values["tls_minimum_version"],
        values["tls_ciphers"],
    )
    reason = why_context_fails(settings, server_side)
    if reason is None:
        return None
    return Problem(section, "certificate", f"TLS settings do not load: {reason}")


def config_warnings(config: Config) -> list[str]:
    """What loads but is likely not what the admin meant, one line each.

    ``config check`` prints them and the service logs them at start; neither
    refuses to run, since a site may want exactly that.
    """
    warnings = []
    dicom = config.dicom
    if dicom.tls_port and dicom.port and not _is_loopback(dicom.host):
        warnings.append(
            f"[dicom] port: {dicom.port} is open without TLS on {dicom.host} while tls_port "
            "is set, so a peer can bypass the TLS listener's checks there "
            "(port = 0 listens on TLS alone)"
        )
    for destination in config.destinations.values():
        if _sends_secret_in_clear(destination.url, destination.signs_in):
            warnings.append(
                f"[destination:{destination.name}] url: {destination.url} is not https, so "
                "its password or token crosses the network in clear"
            )
    if dicom.ae_title not in config.aes:
        warnings.append(
            f"[dicom] ae_title: {dicom.ae_title} is our calling AE title for exports, and is "
            f"not answered: peers must call {', '.join(sorted(config.aes))} "
            f"(add [ae:{dicom.ae_title}] to answer it too)"
        )
    return warnings


def _sends_secret_in_clear(url: str | None, signs_in: bool) -> bool:
    """A DICOMweb destination signing in over plain HTTP to another machine."""
    if url is None or not signs_in or not url.startswith("http://"):
        return False
    return not _is_loopback(urllib.parse.urlsplit(url).hostname or "")


def _is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (``localhost``, 127/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve anywhere
