"""Run DCMTK's storescu/echoscu as real peers (TCP_NODELAY=1, or they wait on Nagle)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import require_tool


def dcmtk(tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool to completion; output captured as text."""
    executable = require_tool(tool)
    return subprocess.run(
        [executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def storescu_args(
    port: int,
    files: list[Path],
    *,
    called: str = "DICOMADAPTER",
    calling: str = "STORESCU",
    extra: tuple[str, ...] = (),
) -> list[str]:
    """``storescu -v`` arguments: verbose, so each file's response is in its log."""
    return ["-v", "-aet", calling, "-aec", called, *extra, "127.0.0.1", str(port), *map(str, files)]


def storescu(port: int, files: list[Path], **options: Any) -> subprocess.CompletedProcess[str]:
    return dcmtk("storescu", *storescu_args(port, files, **options))


def echoscu(
    port: int, *, called: str = "DICOMADAPTER", calling: str = "ECHOSCU"
) -> subprocess.CompletedProcess[str]:
    return dcmtk("echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port))


def storescu_popen(
    port: int,
    files: list[Path],
    *,
    stdout: Any = subprocess.DEVNULL,
    stderr: Any = subprocess.PIPE,
    **options: Any,
) -> subprocess.Popen[bytes]:
    """Start ``storescu -v`` in the background (its log lines go to ``stderr``)."""
    return subprocess.Popen(
        [require_tool("storescu"), *storescu_args(port, files, **options)],
        stdout=stdout,
        stderr=stderr,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def storescp_popen(
    port: int, folder: Path, *, ae_title: str = "STORESCP", output: Any = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """Start ``storescp`` on ``port``, writing each received dataset into ``folder``.

    ``+B`` writes every dataset exactly as it came off the wire and ``+xa``
    accepts every transfer syntax DCMTK knows, so a test can compare what
    arrived byte for byte with what was sent.  The caller waits for the port
    and kills the process.
    """
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [require_tool("storescp"), "+B", "+xa", "-aet", ae_title, "-od", str(folder), str(port)],
        stdout=output,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
