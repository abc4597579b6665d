"""TLS that can be enforced: a TLS-only listener, a per-listener rule for
unknown sources, sources pinned to a client certificate, and the warning
for a plain port left open beside the TLS one.

Real DCMTK echoscu against the adapter, with certificates made at test time
(tests/test_tls.py's throwaway CA, plus ``ct1``: CN=ct1, DNS SAN ct1.example).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from config import check_config, config_warnings, load_config
from health import health
from ledger.nodes import Nodes
from tests.conftest import RunningAdapter, free_port
from tests.test_tls import Pki, _leaf, client_cert, dcmtk, pki, tls_keys, write_config

__all__ = ["pki"]  # the module-scoped certificates fixture, shared


@pytest.fixture(scope="module")
def certificates(pki: Pki) -> Pki:
    """tests/test_tls.py's, plus ``ct1``: a client certificate with a DNS subjectAltName."""
    folder = pki["ca"].parent
    _leaf(folder, "ct1", "ca", "subjectAltName=DNS:ct1.example", "extendedKeyUsage=clientAuth")
    return pki | {"ct1": folder / "ct1.crt", "ct1-key": folder / "ct1.key"}


def rejections(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "association rejected" in r.getMessage()]


def echo(port: int, calling: str, certificates: Pki, client: str | None) -> int:
    """echoscu's exit status: ``client`` None is plain DICOM, "none" TLS without a certificate."""
    tls = () if client is None else client_cert(certificates, client)
    return dcmtk("echoscu", port, "-aet", calling, *tls).returncode


# -- port = 0: the TLS listener alone --------------------------------------------------


def test_port_zero_listens_on_tls_alone(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path, certificates: Pki
) -> None:
    tls_port = free_port()
    path = write_config(tmp_path, 0, dicom=f"tls_port = {tls_port}\n{tls_keys(certificates, True)}")
    running = start_adapter(path)
    assert running.adapter.server.port == 0 and running.adapter.server.tls_port == tls_port
    assert echo(tls_port, "ANY", certificates, "client") == 0
    facts = health(running.config, running.ledger)
    assert facts["listening"] is True
    [node] = Nodes(running.ledger).listing()
    assert node.listening == f"127.0.0.1:{tls_port} (TLS)"


def test_port_zero_without_tls_port_is_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, 0)
    (problem,) = check_config(path)
    assert str(problem) == (
        f"{path} [dicom] port: must be 1-65535 (0 turns the plain port off: set tls_port)"
    )


# -- each listener its own rule for unknown calling AEs ------------------------------------


@pytest.mark.parametrize("plain_rejects", [False, True])
def test_each_listener_has_its_own_unknown_source_rule(
    start_adapter: Callable[[Path], RunningAdapter],
    tmp_path: Path,
    port: int,
    certificates: Pki,
    caplog: pytest.LogCaptureFixture,
    plain_rejects: bool,
) -> None:
    tls_port = free_port()
    dicom = (
        f"tls_port = {tls_port}\n{tls_keys(certificates, False)}\n"
        f"reject_unknown_sources = {str(plain_rejects).lower()}\n"
        f"tls_reject_unknown_sources = {str(not plain_rejects).lower()}"
    )
    start_adapter(write_config(tmp_path, port, "[source:KNOWN]\nae_title = KNOWN\n", dicom=dicom))
    assert echo(port, "KNOWN", certificates, None) == 0
    assert echo(tls_port, "KNOWN", certificates, "client") == 0
    plain, tls = (
        echo(port, "STRANGER", certificates, None),
        echo(tls_port, "STRANGER", certificates, "client"),
    )
    assert (plain != 0, tls != 0) == (plain_rejects, not plain_rejects)
    (line,) = rejections(caplog)
    assert "1/1/3" in line and "unknown source 'STRANGER'" in line


def test_the_tls_rule_defaults_to_the_plain_one(tmp_path: Path, port: int) -> None:
    path = write_config(tmp_path, port, dicom="reject_unknown_sources = true")
    assert load_config(path).dicom.reject_unknown_over_tls is True


# -- a source pinned to its client certificate -------------------------------------------


@pytest.mark.parametrize("name", ["ct1.example", "CN=ct1", "ct1"])
def test_a_pinned_source_is_admitted_only_over_tls_with_its_certificate(
    start_adapter: Callable[[Path], RunningAdapter],
    tmp_path: Path,
    port: int,
    certificates: Pki,
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    tls_port = free_port()
    dicom = f"tls_port = {tls_port}\n{tls_keys(certificates, False)}"
    source = f"[source:CT]\nae_title = CT1\ncertificate_name = {name}\n"
    start_adapter(write_config(tmp_path, port, source, dicom=dicom))
    assert echo(tls_port, "CT1", certificates, "ct1") == 0
    # Anyone else taking the title CT1: refused, though unknown sources are welcome.
    assert echo(port, "CT1", certificates, None) != 0
    assert echo(tls_port, "CT1", certificates, "none") != 0
    assert echo(tls_port, "CT1", certificates, "client") != 0
    assert echo(port, "OTHER", certificates, None) == 0
    assert echo(tls_port, "OTHER", certificates, "ct1") == 0
    lines = rejections(caplog)
    assert len(lines) == 3 and all("1/1/3" in line for line in lines)
    needs = f"source 'CT1' must arrive over TLS with a client certificate naming {name!r}"
    assert all(needs in line for line in lines)
    assert "without TLS" in lines[0]
    assert "over TLS without a client certificate" in lines[1]
    assert "with certificate 'CN=client'" in lines[2]


@pytest.mark.parametrize(
    "dicom, problem",
    [
        ("", "[source:CT] certificate_name: needs [dicom] tls_port"),
        (
            "tls_port = 2762\ncertificate = {server}\nprivate_key = {server-key}",
            "[source:CT] certificate_name: needs [dicom] ca_certificates to verify the certificate",
        ),
    ],
)
def test_a_pinned_source_needs_a_verifying_tls_listener(
    tmp_path: Path, port: int, certificates: Pki, dicom: str, problem: str
) -> None:
    dicom = dicom.format(**{key: path for key, path in certificates.items()})
    source = "[source:CT]\nae_title = CT1\ncertificate_name = ct1.example\n"
    problems = [str(p) for p in check_config(write_config(tmp_path, port, source, dicom=dicom))]
    assert [p.split(" ", 1)[1] for p in problems] == [problem]


# -- config check: a plain port beside the TLS one -----------------------------------------


@pytest.mark.parametrize(
    "host, plain, warned",
    [("0.0.0.0", True, True), ("127.0.0.1", True, False), ("0.0.0.0", False, False)],
)
def test_config_check_warns_of_a_reachable_plain_port_beside_tls(
    tmp_path: Path, certificates: Pki, host: str, plain: bool, warned: bool
) -> None:
    dicom = f"tls_port = 2762\n{tls_keys(certificates, True)}"
    path = write_config(tmp_path, 11112 if plain else 0, dicom=dicom)
    path.write_text(path.read_text().replace("host = 127.0.0.1", f"host = {host}", 1))
    warnings = config_warnings(load_config(path))
    result = CliRunner().invoke(main, ["config", "check", "--config", str(path)])
    assert result.exit_code == 0, result.output
    if not warned:
        assert warnings == [] and "Warning" not in result.output
        return
    (warning,) = warnings
    assert warning.startswith("[dicom] port: 11112 is open without TLS on 0.0.0.0")
    assert f"Warning: {path} {warning}\n" in result.output
