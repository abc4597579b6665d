"""A throwaway PostgreSQL cluster from Debian's ``postgresql`` package.

Kept free of pytest so the benchmarks (``bench/ledger_scale.py``,
``bench/run.py``) start the same cluster the tests do; ``tests/postgres.py``
holds the fixtures and the skip-or-fail rule around it.

PostgreSQL refuses to run as root, so when run as root the cluster is made
and run as the ``postgres`` user the package creates (``runuser``), in a
folder of its own under the system's temporary folder (not a private one:
the server must reach it), listening on a Unix socket there and on the
loopback port it is given.  The caller picks the port (``tests/conftest.py``
and ``bench/run.py`` each have a ``free_port``), so this module needs
neither.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN_FOLDERS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
MISSING = "PostgreSQL is not installed (apt-get install postgresql)"


def binary(name: str) -> str | None:
    """The newest installed PostgreSQL's ``name`` (Debian keeps it off PATH), else PATH's."""
    for folder in BIN_FOLDERS:
        if (folder / name).is_file():
            return str(folder / name)
    return shutil.which(name)


def available() -> bool:
    """Whether a cluster can be made and started here."""
    return binary("initdb") is not None and binary("pg_ctl") is not None


class Cluster:
    """One running server; :meth:`database` makes an empty database on it."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.user = "postgres" if os.geteuid() == 0 else None
        self.data = folder / "data"
        self.sockets = folder / "sockets"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        initdb, pg_ctl = binary("initdb"), binary("pg_ctl")
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
        pg_ctl = binary("pg_ctl")
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


@contextmanager
def throwaway_cluster(port: int) -> Iterator[Cluster]:
    """A started cluster on ``port``, stopped and its folder removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="dicom-adapter-postgres-"))
    try:
        folder.chmod(0o755)
        cluster = Cluster(folder, port)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
