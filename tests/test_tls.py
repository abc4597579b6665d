"""DICOM TLS (PS3.15 B.1) against real peers: DCMTK echoscu/storescu in, storescp out.

Certificates are made at test time with the ``openssl`` CLI: a throwaway CA,
a server certificate for 127.0.0.1/localhost, a client certificate, and a
client certificate from a second, unrelated CA.  Nothing is committed.

The stalled-handshake test runs its probe against pynetdicom's own
``ssl_context`` server too, to show the probe catches what it claims to:
there one silent TCP connection blocks every TLS client.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from cli import main
from config import check_config, load_config
from derived import peer_for
from exporters import cstore
from tests.conftest import RunningAdapter, free_port, port_open, require_tool, wait_for
from tests.conftest import write_config as base_config
from tests.dicom import dataset_bytes, make_study
from tests.test_dimse_scu import received_datasets, records

ACSE_TIMEOUT = 5  # write_config's
DCMTK_ENV = {"TCP_NODELAY": "1"}
Pki = dict[str, Path]


# -- certificates -----------------------------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run([require_tool("openssl"), *args], check=True, capture_output=True)


def _ca(folder: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "2", "-subj", f"/CN=Test {name}",
        "-keyout", str(folder / f"{name}.key"), "-out", str(folder / f"{name}.crt"),
    )  # fmt: skip


def _leaf(folder: Path, name: str, ca: str, *extensions: str) -> None:
    added = [arg for ext in extensions for arg in ("-addext", ext)]
    _openssl(
        "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-CA", str(folder / f"{ca}.crt"), "-CAkey", str(folder / f"{ca}.key"),
        "-keyout", str(folder / f"{name}.key"), "-out", str(folder / f"{name}.crt"), *added,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """ca, server (127.0.0.1, localhost), client (same CA), stranger (another CA)."""
    if shutil.which("openssl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is not installed (Debian package openssl)")
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "ca")
    _ca(folder, "other-ca")
    _leaf(folder, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    _leaf(folder, "client", "ca", "extendedKeyUsage=clientAuth")
    _leaf(folder, "stranger", "other-ca", "extendedKeyUsage=clientAuth")
    certificates = {path.stem: path for path in folder.glob("*.crt")}
    return certificates | {f"{path.stem}-key": path for path in folder.glob("*.key")}


# -- helpers ----------------------------------------------------------------------


def write_config(folder: Path, port: int, extra: str = "", *, dicom: str = "") -> Path:
    """conftest's, with several ``[dicom]`` lines."""
    return base_config(folder, port, extra, dicom=dicom)


def tls_keys(pki: Pki, require: bool) -> str:
    return (
        f"certificate = {pki['server']}\nprivate_key = {pki['server-key']}\n"
        f"ca_certificates = {pki['ca']}\nrequire_client_certificate = {str(require).lower()}"
    )


@pytest.fixture
def tls_adapter(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path, port: int, pki: Pki
) -> Callable[[bool], tuple[RunningAdapter, int]]:
    def start(require: bool) -> tuple[RunningAdapter, int]:
        tls_port = free_port()
        dicom = f"tls_port = {tls_port}\n{tls_keys(pki, require)}"
        running = start_adapter(write_config(tmp_path, port, dicom=dicom))
        assert running.adapter.server.tls_port == tls_port
        return running, tls_port

    return start


def dcmtk(
    tool: str, port: int, *options: str, files: tuple[Path, ...] = (), timeout: float = 20
) -> subprocess.CompletedProcess:
    """Run a DCMTK SCU against the adapter on 127.0.0.1."""
    command = [require_tool(tool), "-aec", "DICOMADAPTER", *options, "127.0.0.1", str(port)]
    command += [str(path) for path in files]
    return subprocess.run(command, env=DCMTK_ENV, capture_output=True, timeout=timeout)


def client_cert(pki: Pki, name: str) -> tuple[str, ...]:
    """echoscu/storescu options: our certificate (or none), trusting the adapter's CA."""
    own = ("+tla",) if name == "none" else ("+tls", str(pki[f"{name}-key"]), str(pki[name]))
    return (*own, "+cf", str(pki["ca"]))


def tls_drops(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "dropping TLS connection" in r.getMessage()]


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys, problem",
    [
        ("tls_port = 2762", "[dicom] certificate: is required with tls_port"),
        ("tls_port = 2762\ncertificate = missing.crt", "[dicom] certificate: no such file"),
        (
            "tls_port = 2762\ncertificate = {server}\nprivate_key = {client-key}",
            "[dicom] certificate: TLS settings do not load: KEY_VALUES_MISMATCH",
        ),
        (
            "tls_port = 2762\ncertificate = {server}\nprivate_key = {server-key}\n"
            "require_client_certificate = true",
            "[dicom] ca_certificates: is required with require_client_certificate",
        ),
        ("tls_ciphers = NOSUCHCIPHER", "[dicom] tls_ciphers: OpenSSL selects no cipher suite"),
        ("tls_minimum_version = 1.1", "[dicom] tls_minimum_version: must be one of 1.2, 1.3"),
    ],
)
def test_tls_config_errors_are_one_line_each(
    tmp_path: Path, port: int, pki: Pki, keys: str, problem: str
) -> None:
    dicom = keys.format(**{name: path for name, path in pki.items()})
    path = write_config(tmp_path, port, dicom=dicom)
    problems = [str(p) for p in check_config(path)]
    assert problem in problems[0], problems
    result = CliRunner().invoke(main, ["config", "check", "--config", str(path)])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert len(lines) == len(problems) and all(line.startswith("Error: ") for line in lines)
    assert problem in lines[0]


# -- the adapter's TLS listener ----------------------------------------------------


def test_dcmtk_echo_and_store_over_mutual_tls(tls_adapter, tmp_path: Path, pki: Pki) -> None:
    running, tls_port = tls_adapter(True)
    result = dcmtk("echoscu", tls_port, *client_cert(pki, "client"))
    assert result.returncode == 0, result.stderr
    files = make_study(tmp_path / "study", 3)
    result = dcmtk("storescu", tls_port, *client_cert(pki, "client"), files=tuple(files))
    assert result.returncode == 0, result.stderr
    rows = running.wait_rows(3)
    sent = {dataset_bytes(path) for path in files}
    assert {dataset_bytes(Path(row.path)) for row in rows} == sent
    assert dcmtk("echoscu", running.port).returncode == 0  # the plain port serves on


@pytest.mark.parametrize("client", ["none", "stranger"])
def test_a_client_without_a_valid_certificate_is_refused_and_logged(
    tls_adapter, pki: Pki, caplog: pytest.LogCaptureFixture, client: str
) -> None:
    running, tls_port = tls_adapter(True)
    result = dcmtk("echoscu", tls_port, *client_cert(pki, client))
    assert result.returncode != 0
    wait_for(lambda: tls_drops(caplog), timeout=5)
    (line,) = tls_drops(caplog)
    expected = "PEER_DID_NOT_RETURN_A_CERTIFICATE" if client == "none" else "CERTIFICATE_VERIFY"
    assert line.startswith("dropping TLS connection from 127.0.0.1:") and expected in line
    assert running.adapter.server.tally.rejected == {}  # dropped before any association


def test_without_required_client_certificates_anonymous_clients_may_associate(
    tls_adapter, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    _, tls_port = tls_adapter(False)
    assert dcmtk("echoscu", tls_port, *client_cert(pki, "none")).returncode == 0
    assert dcmtk("echoscu", tls_port, *client_cert(pki, "client")).returncode == 0
    # A certificate that is sent is still verified.
    assert dcmtk("echoscu", tls_port, *client_cert(pki, "stranger")).returncode != 0
    wait_for(lambda: tls_drops(caplog), timeout=5)
    assert "CERTIFICATE_VERIFY" in tls_drops(caplog)[0]


# -- a peer that never handshakes --------------------------------------------------


def tls_handshake_seconds(port: int, pki: Pki, timeout: float = 3.0) -> float | None:
    """Seconds a TLS handshake takes, None if it did not finish within ``timeout``."""
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    context.load_cert_chain(pki["client"], pki["client-key"])
    start = time.monotonic()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            pass
    except (TimeoutError, ssl.SSLError, ConnectionError):
        return None
    return time.monotonic() - start


@pytest.fixture
def pynetdicom_tls(pki: Pki) -> Iterator[int]:
    """pynetdicom 3.0 as shipped: AE.start_server with an ssl_context."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["server"], pki["server-key"])
    ae = AE()
    ae.acse_timeout = ae.network_timeout = 1  # its leftover association ends in time
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False, ssl_context=context)
    yield int(server.server_address[1])
    server.shutdown()


def test_the_probe_catches_pynetdicoms_handshake_in_the_accept_loop(
    pynetdicom_tls: int, pki: Pki
) -> None:
    assert tls_handshake_seconds(pynetdicom_tls, pki) is not None
    with socket.create_connection(("127.0.0.1", pynetdicom_tls)):
        time.sleep(0.2)  # accepted: the accept loop now waits for its ClientHello
        assert tls_handshake_seconds(pynetdicom_tls, pki) is None


def test_a_silent_tcp_connection_blocks_nobody_and_is_dropped(
    tls_adapter, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    running, tls_port = tls_adapter(True)
    with socket.create_connection(("127.0.0.1", tls_port)) as silent:
        time.sleep(0.2)
        took = tls_handshake_seconds(tls_port, pki)
        assert took is not None and took < 1.0
        result = dcmtk("echoscu", tls_port, *client_cert(pki, "client"), timeout=10)
        assert result.returncode == 0, result.stderr
        assert dcmtk("echoscu", running.port).returncode == 0
        silent.settimeout(ACSE_TIMEOUT + 5)
        start = time.monotonic()
        assert silent.recv(1) == b""  # closed by the adapter
    assert time.monotonic() - start < ACSE_TIMEOUT + 1
    wait_for(lambda: tls_drops(caplog), timeout=5)
    assert f"no TLS handshake within {ACSE_TIMEOUT}s" in tls_drops(caplog)[0]


# -- exports over TLS ---------------------------------------------------------------


@pytest.fixture
def storescp_tls(tmp_path: Path, pki: Pki) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp +tls, requiring a client certificate from our CA."""
    port, out = free_port(), tmp_path / "received"
    out.mkdir()
    command = [
        require_tool("storescp"), "+B", "-aet", "STORESCP", "-od", str(out),
        "+tls", str(pki["server-key"]), str(pki["server"]), "+cf", str(pki["ca"]), str(port),
    ]  # fmt: skip
    process = subprocess.Popen(command, env=DCMTK_ENV, stdout=subprocess.DEVNULL)
    wait_for(lambda: port_open(port) or process.poll() is not None, timeout=10)
    yield port, out
    process.kill()
    process.wait(timeout=10)


def destination_config(tmp_path: Path, pki: Pki, port: int, ca: str = "ca") -> Path:
    destination = (
        f"[destination:SECURE]\nae_title = STORESCP\nhost = 127.0.0.1\nport = {port}\n"
        f"tls = true\nca_certificates = {pki[ca]}\n"
        f"certificate = {pki['client']}\nprivate_key = {pki['client-key']}\n"
    )
    return write_config(tmp_path, free_port(), destination)


def test_exports_to_storescp_over_tls_arrive_byte_identical(
    storescp_tls: tuple[int, Path], tmp_path: Path, pki: Pki
) -> None:
    port, out = storescp_tls
    files = make_study(tmp_path / "study", 5)
    peer = peer_for(load_config(destination_config(tmp_path, pki, port)), "SECURE")
    outcomes = cstore.send(peer, records(files))
    assert [outcome.error for outcome in outcomes] == [None] * 5
    expected = {str(dcmread(path).SOPInstanceUID): dataset_bytes(path) for path in files}
    assert received_datasets(out) == expected


def test_echo_command_over_tls(storescp_tls: tuple[int, Path], tmp_path: Path, pki: Pki) -> None:
    port, _ = storescp_tls
    good = destination_config(tmp_path, pki, port)
    result = CliRunner().invoke(main, ["echo", "SECURE", "--config", str(good)])
    assert result.exit_code == 0 and "C-ECHO Success" in result.output, result.output
    (tmp_path / "other").mkdir()
    wrong = destination_config(tmp_path / "other", pki, port, ca="other-ca")
    result = CliRunner().invoke(main, ["echo", "SECURE", "--config", str(wrong)])
    assert result.exit_code == 1
    assert "TLS handshake failed: CERTIFICATE_VERIFY_FAILED" in result.output, result.output
