"""The PostgreSQL fixtures: a throwaway cluster per session, a fresh database per test.

The cluster itself is ``tests/pgcluster.py`` (no pytest there, so the
benchmarks use it too).  Without the Debian ``postgresql`` package the tests
that need it skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.pgcluster import MISSING, Cluster, available, throwaway_cluster

__all__ = ["Cluster", "ledger_url", "postgres_cluster", "require_postgres"]


def require_postgres() -> None:
    """Skip without PostgreSQL, but fail under CI=true (CI must install it)."""
    if available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("PostgreSQL (Debian package postgresql) is needed under CI=true")
    pytest.skip(MISSING)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    require_postgres()
    with throwaway_cluster(free_port()) as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty ledger's URL, once per backend: the ledger-level tests run on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    cluster: Cluster = request.getfixturevalue("postgres_cluster")
    return cluster.database()
