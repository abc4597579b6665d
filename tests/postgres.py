"""A throwaway PostgreSQL cluster for the tests, from Debian's ``postgresql`` package.

PostgreSQL refuses to run as root, so when the tests run as root the
cluster is made and run as the ``postgres`` user the package creates
(``runuser``), in a folder of its own under the test session's temporary
folder, listening on a Unix socket there and on a free loopback port.  Each
test gets a fresh database.  Without the package the tests that need it
skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

BIN_FOLDERS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _binary(name: str) -> str | None:
    for folder in BIN_FOLDERS:
        if (folder / name).is_file():
            return str(folder / name)
    return shutil.which(name)


class Cluster:
    """One running server; :meth:`database` makes an empty database on it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.data = folder / "data"
        self.sockets = folder / "sockets"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
        assert initdb and pg_ctl
        self.sockets.mkdir(parents=True)
        if self.user:
            shutil.chown(self.folder, self.user)
            shutil.chown(self.sockets, self.user)
        self._run(initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=on"
        log = str(self.folder / "log")
        self._run(pg_ctl, "-D", str(self.data), "-o", options, "-w", "-l", log, "start")

    def stop(self) -> None:
        pg_ctl = _binary("pg_ctl")
        assert pg_ctl
        self._run(pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new empty database's SQLAlchemy URL."""
        import psycopg

        name = f"ledger_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def available() -> bool:
    return _binary("initdb") is not None and _binary("pg_ctl") is not None


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    if not available():
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL (Debian package postgresql) is needed under CI=true")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    # Not under pytest's temporary folder: that is private to root, and the
    # server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="dicom-adapter-postgres-"))
    folder.chmod(0o755)
    cluster = Cluster(folder)
    try:
        cluster.start()
        yield cluster
        cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty ledger's URL, once per backend: the ledger-level tests run on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    cluster: Cluster = request.getfixturevalue("postgres_cluster")
    return cluster.database()
