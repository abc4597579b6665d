"""config.ini parsing: the shipped default, defaults, and errors that name file, section and key."""

import subprocess
import sys
from pathlib import Path

import pytest

from config import check_config, config_warnings, load_config
from errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.ini"
    path.write_text(text)
    return path


def test_shipped_config_is_the_documented_default() -> None:
    config = load_config(ROOT / "config.ini")
    assert config.dicom.ae_title == "DICOMADAPTER"
    assert config.dicom.port == 11112
    assert config.dicom.max_associations == 16
    assert config.dicom.reject_unknown_sources is False
    assert config.dicom.verification is True
    assert config.storage.spool == ROOT / "var" / "spool"
    assert config.storage.min_free.percent == 5
    assert config.storage.min_free.bytes == 2**30
    assert config.ledger.url == f"sqlite:///{ROOT / 'var' / 'ledger.db'}"
    assert list(config.aes) == ["DICOMADAPTER"]
    assert config.aes["DICOMADAPTER"].duplicates == "replace"


def test_an_example_with_percent_and_sources_parses(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
[dicom]
ae_title = DICOMADAPTER        ; the adapter's own AE title
host = 0.0.0.0
port = 11112
max_associations = 16
reject_unknown_sources = false
verification = true            ; answer C-ECHO
[storage]
spool = var/spool              ; relative to the config file's folder
min_free = 5%                  ; refuse stores below this
[ledger]
url = sqlite:///var/ledger.db
[ae:DICOMADAPTER]
duplicates = replace
[source:CT01]
ae_title = CT01
host = 10.0.0.0/24
""",
        )
    )
    assert config.storage.min_free.percent == 5 and config.storage.min_free.bytes == 0
    assert config.storage.spool == tmp_path / "var" / "spool"
    assert config.sources[0].ae_title == "CT01" and config.sources[0].host == "10.0.0.0/24"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("min_free = 2GiB", (0, 2 * 2**30)),
        ("min_free = 500MB", (0, 500 * 10**6)),
        ("min_free = 0", (0, 0)),
        ("min_free = 10%, 1GiB", (10, 2**30)),
    ],
)
def test_min_free_forms(tmp_path: Path, text: str, expected: tuple[float, int]) -> None:
    config = load_config(write(tmp_path, f"[storage]\n{text}\n[ae:A]\n"))
    assert (config.storage.min_free.percent, config.storage.min_free.bytes) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("[dicom]\nport = 70000\n[ae:A]\n", "[dicom] port: must be 1-65535"),
        ("[dicom]\nport = abc\n[ae:A]\n", "[dicom] port: must be a whole number, not 'abc'"),
        ("[dicom]\nprot = 104\n[ae:A]\n", "[dicom] prot: unknown key"),
        ("[dicom]\n[ae:A]\n[exports]\n", "[exports]: unknown section"),
        (
            "[ae:A]\nduplicates = sometimes\n",
            "[ae:A] duplicates: must be one of replace, replace-any, ignore, keep",
        ),
        ("[ae:A/../x]\n", "[ae:A/../x]: AE title 'A/../x' may only use"),
        ("[ae:quarantine]\n", "[ae:quarantine]: AE title 'quarantine' is reserved"),
        ("[ae:WAYTOOLONGAETITLE1]\n", "longer than 16 characters"),
        ("[storage]\nmin_free = lots\n[ae:A]\n", "[storage] min_free: must be a percentage"),
        ("[source:X]\nhost = 10.0.0.1\n[ae:A]\n", "[source:X] ae_title: is required"),
        ("[source:X]\nae_title = X\nhost = bad host!\n[ae:A]\n", "[source:X] host: must be an IP"),
        ("[dicom]\nverification = maybe\n[ae:A]\n", "[dicom] verification: must be true or false"),
        ("[dicom]\ntransfer_syntaxes = 1.2.3\n[ae:A]\n", "is not a standard transfer syntax UID"),
        ("[dicom]\n", "no [ae:NAME] section"),
        (
            "[dicom]\nport = 1\nport = 2\n[ae:A]\n",
            "option 'port' in section 'dicom' already exists",
        ),
        ("[ae:A]\n[ae:A]\n", "section 'ae:A' already exists"),
        ("[ae:superseded]\n", "[ae:superseded]: AE title 'superseded' is reserved"),
        (
            "[dicom]\nmax_instance_size = huge\n[ae:A]\n",
            "[dicom] max_instance_size: must be a size",
        ),
        (
            "[storage]\nsuperseded_retention = forever\n[ae:A]\n",
            "[storage] superseded_retention: must be 'never' or a number of seconds",
        ),
        (
            "[ae:A]\n[destination:P]\nae_title = P\nhost = h\nport = 1\noutbox = out\n"
            "[destination:Q]\nae_title = Q\nhost = h\nport = 1\noutbox = out\n",
            "[destination:Q] outbox: is [destination:P]'s outbox too",
        ),
    ],
)
def test_errors_name_file_section_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.ini")


def test_cli_broken_config_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[dicom]\nport = 0\n[ae:A]\n")
    for command in (["run"], ["status"], ["db", "upgrade"]):
        result = subprocess.run(
            [sys.executable, str(ROOT / "adapter.py"), *command, "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result
        assert result.stderr == (
            f"Error: {path} [dicom] port: must be 1-65535 (0 turns the plain port off: "
            "set tls_port)\n"
        )
        assert result.stdout == ""


def test_config_defaults_to_environment_then_cwd(tmp_path: Path) -> None:
    env_config = write(tmp_path, "[dicom]\nport = 0\n[ae:A]\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "adapter.py"), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"DICOM_ADAPTER_CONFIG": str(env_config), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert result.returncode == 2 and str(env_config) in result.stderr
    (tmp_path / "cwd").mkdir()
    result = subprocess.run(
        [sys.executable, str(ROOT / "adapter.py"), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path / "cwd",
    )
    assert result.returncode == 2 and result.stderr == "Error: config.ini: no such file\n"


def test_destinations_and_forwarding(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
[ae:A]
processor = forward
destinations = PACS, AI
[destination:PACS]
ae_title = PACS
host = 127.0.0.1
port = 104
[destination:AI]
ae_title = AI_NODE
host = ai.example
port = 11112
calling_ae = EDGE
outbox = /srv/ai-outbox
""",
        )
    )
    assert config.aes["A"].destinations == ("PACS", "AI")
    pacs, ai = config.destinations["PACS"], config.destinations["AI"]
    assert (pacs.port, pacs.calling_ae, pacs.outbox) == (104, None, tmp_path / "var/outbox/PACS")
    assert (ai.calling_ae, ai.outbox, ai.retries, ai.retry_delay) == (
        "EDGE",
        Path("/srv/ai-outbox"),
        3,
        30,
    )


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "[ae:A]\nprocessor = forward\n",
            "[ae:A] destinations: is required with processor = forward",
        ),
        (
            "[ae:A]\nprocessor = forward\ndestinations = X\n",
            "[ae:A] destinations: no [destination:X]",
        ),
        ("[ae:A]\n[destination:P]\nae_title = P\nhost = h\n", "[destination:P] port: is required"),
        ("[ae:A]\n[destination:a/b]\nae_title = P\nhost = h\nport = 1\n", "a destination name may"),
        ("[ae:A]\nprocessor = command\n", "[ae:A] command: is required with processor = command"),
        ("[ae:A]\nprocessor = command\ncommand = run {nope}\n", "unknown placeholder 'nope'"),
        ("[ae:A]\ngroup_by = NotAKeyword\n", "[ae:A] group_by: must be a tag like 0020,000D"),
        ("[ae:A]\nignored_sop_classes = 1.2\nallowed_sop_classes = 1.3\n", "not both"),
    ],
)
def test_processing_and_export_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "text, tag",
    [
        ("0020,000E", 0x0020000E),
        ("(0020,000D)", 0x0020000D),
        ("0020000D", 0x0020000D),
        ("SeriesInstanceUID", 0x0020000E),
        ("AccessionNumber", 0x00080050),
    ],
)
def test_group_by_forms(tmp_path: Path, text: str, tag: int) -> None:
    assert load_config(write(tmp_path, f"[ae:A]\ngroup_by = {text}\n")).aes["A"].group_by == tag


def test_config_check_lists_every_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[dicom]
port = 99999
prot = 104
[storage]
min_free = lots
[ae:A]
processor = forward
destinations = NOWHERE
[exports]
""",
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "adapter.py"), "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"Error: {path} [dicom] prot: unknown key",
        f"Error: {path} [dicom] port: must be 1-65535 (0 turns the plain port off: set tls_port)",
        f"Error: {path} [storage] min_free: must be a percentage (5%) or a size (2GiB), not 'lots'",
        f"Error: {path} [exports]: unknown section",
        f"Error: {path} [ae:A] destinations: no [destination:NOWHERE] section",
    ]


def test_config_check_on_the_shipped_config() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "adapter.py"),
            "config",
            "check",
            "--config",
            str(ROOT / "config.ini"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"{ROOT / 'config.ini'}: OK, 1 AE title (0 with a processor), 0 sources, 0 destinations\n"
    )


def secret(tmp_path: Path, name: str, mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text("s3cret\n")
    path.chmod(mode)
    return path


def test_a_dicomweb_destination(tmp_path: Path) -> None:
    password = secret(tmp_path, "pacs.password", 0o640)
    config = load_config(
        write(
            tmp_path,
            f"""
[ae:A]
[destination:WEB]
type = dicomweb
url = https://pacs.example/dicom-web/
username = edge01
password_file = {password}
verify_hostname = false
max_parts = 20
[destination:PACS]
ae_title = PACS
host = pacs.example
port = 104
""",
        )
    )
    web, pacs = config.destinations["WEB"], config.destinations["PACS"]
    assert (web.type, web.url, web.username, web.password_file) == (
        "dicomweb",
        "https://pacs.example/dicom-web",
        "edge01",
        password,
    )
    assert (web.timeout, web.max_request_size, web.max_parts, web.ae_title) == (
        60,
        512 * 2**20,
        20,
        None,
    )
    assert web.tls_settings is not None and not web.tls_settings.verify_hostname
    assert (pacs.type, pacs.url, pacs.tls_settings) == ("dicom", None, None)


@pytest.mark.parametrize(
    "keys, problems",
    [
        ("type = dicomweb\n", ["url: is required with type = dicomweb"]),
        (
            "ae_title = P\n",
            ["host: is required with type = dicom", "port: is required with type = dicom"],
        ),
        (
            "type = dicomweb\nurl = http://h/dw\nae_title = P\ntls = true\n",
            [
                "ae_title: is a key of type = dicom, and this destination is dicomweb",
                "tls: is a key of type = dicom, and this destination is dicomweb",
            ],
        ),
        (
            "ae_title = P\nhost = h\nport = 104\nurl = http://h/dw\n",
            ["url: is a key of type = dicomweb, and this destination is dicom"],
        ),
        ("type = dicomweb\nurl = http://h/dw\nusername = u\n", ["password_file: is required"]),
        ("type = dicomweb\nurl = ftp://h/dw\n", ["url: must be an http:// or https:// URL"]),
        (
            "type = dicomweb\nurl = https://u:p@h/dw\n",
            ["url: must not hold a user name or password"],
        ),
        ("type = dicomweb\nurl = https://h/dw?x=1\n", ["url: must be the service's base URL"]),
        ("type = stow\n", ["type: must be one of"]),
    ],
)
def test_each_destination_type_names_what_it_misses_one_line_each(
    tmp_path: Path, keys: str, problems: list[str]
) -> None:
    path = write(tmp_path, f"[ae:A]\n[destination:P]\n{keys}")
    found = [str(problem) for problem in check_config(path)]
    assert len(found) == len(problems), found
    for line, problem in zip(found, problems, strict=True):
        assert line.startswith(f"{path} [destination:P] {problem}"), line


def test_secret_files_are_checked_and_one_way_to_sign_in(tmp_path: Path) -> None:
    open_to_all = secret(tmp_path, "everyone", 0o644)
    token, password = secret(tmp_path, "token"), secret(tmp_path, "password")
    base = "[ae:A]\n[destination:P]\ntype = dicomweb\nurl = https://h/dw\n"
    cases = {
        f"token_file = {open_to_all}\n": f"token_file: {open_to_all} is readable by every user",
        f"token_file = {tmp_path / 'none'}\n": "token_file: no such file",
        f"token_file = {token}\nusername = u\npassword_file = {password}\n": (
            "token_file: give username and password_file, or token_file"
        ),
    }
    for keys, problem in cases.items():
        [found] = check_config(write(tmp_path, base + keys))
        assert f"[destination:P] {problem}" in str(found)
    assert check_config(write(tmp_path, base + f"token_file = {token}\n")) == []


def test_a_password_sent_in_clear_off_this_machine_is_warned_of(tmp_path: Path) -> None:
    password = secret(tmp_path, "password")
    keys = f"type = dicomweb\nusername = u\npassword_file = {password}\n"
    aes = "[ae:DICOMADAPTER]\n"
    remote = load_config(write(tmp_path, f"{aes}[destination:P]\n{keys}url = http://h/dw\n"))
    assert config_warnings(remote) == [
        "[destination:P] url: http://h/dw is not https, so its password or token crosses "
        "the network in clear"
    ]
    local = load_config(
        write(tmp_path, f"{aes}[destination:P]\n{keys}url = http://127.0.0.1:8042/dw\n")
    )
    assert config_warnings(local) == []
