"""No peer can make the SCP buffer a message without bound, before anyone is known.

A raw socket associates (nothing else is needed to get this far) and then
streams, in PDUs the size we allow, one of the three things that used to
grow the SCP process for as long as the peer kept sending (+201 MB after
200 MB sent):

- command set fragments that never carry the last bit;
- data set fragments before any command;
- a C-ECHO-RQ that announces a data set, and the data set, endlessly.

Each must be cut off after its bound (64 KiB), the association aborted with
one log line, and the SCP process's memory must stay flat.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from dimse import commands
from dimse import upper_layer as ul
from tests.conftest import RunningAdapter, wait_for
from tests.peers.send import echo
from tests.test_direct_path import CONTEXT, associate

FRAGMENT = 16 * 1024 - 64  # fits the adapter's maximum PDU with room to spare
MIB = 1 << 20
LIMIT = 200 * MIB  # what the seed took without complaint


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert match
    return int(match.group(1)) * 1024


def c_echo_with_a_data_set() -> bytes:
    """A C-ECHO-RQ command set whose Command Data Set Type says a data set follows."""
    command = commands.c_echo_rq(1)
    element = b"\x00\x00" + (0x0800).to_bytes(2, "little") + (2).to_bytes(4, "little")
    present = command.replace(
        element + commands.NO_DATA_SET.to_bytes(2, "little"),
        element + commands.DATA_SET_PRESENT.to_bytes(2, "little"),
    )
    assert present != command
    return present


def pushes(kind: str) -> tuple[bytes, bytes]:
    """What goes first (once), and the PDU sent over and over after it."""
    filler = bytes(FRAGMENT)
    if kind == "command-fragments":
        return b"", ul.pdata(CONTEXT, ul.COMMAND, filler)
    if kind == "data-before-command":
        return b"", ul.pdata(CONTEXT, 0, filler)
    echo_rq = ul.pdata(3, ul.COMMAND | ul.LAST, c_echo_with_a_data_set())
    return echo_rq, ul.pdata(3, 0, filler)


@pytest.mark.parametrize("kind", ["command-fragments", "data-before-command", "echo-with-data"])
def test_a_message_past_its_bound_is_aborted_and_memory_stays_flat(
    adapter: RunningAdapter, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    scp_pid = adapter.adapter.server._process.pid
    before = rss(scp_pid)
    first, pdu = pushes(kind)
    sent = 0
    sock = associate(adapter.port)
    sock.settimeout(10)
    try:
        sock.sendall(first)
        while sent < LIMIT:
            sock.sendall(pdu)
            sent += len(pdu)
    except OSError:
        pass  # reset: the adapter aborted
    finally:
        sock.close()
    grown = rss(scp_pid) - before
    assert sent < 32 * MIB, f"{kind}: the adapter took {sent / MIB:.0f} MiB of one message"
    assert grown < 32 * MIB, f"{kind}: the SCP process grew {grown / MIB:.0f} MiB"
    wait_for(lambda: "dropping connection from 127.0.0.1" in caplog.text, timeout=10)
    [line] = [r.getMessage() for r in caplog.records if "dropping connection" in r.getMessage()]
    assert line.endswith(
        {
            "command-fragments": "a command set longer than 65536 bytes",
            "data-before-command": "a data set fragment before any command",
            "echo-with-data": "a data set longer than 65536 bytes with a message that is not "
            "a C-STORE",
        }[kind]
    ), line
    assert echo("127.0.0.1", adapter.port, called_ae="DICOMADAPTER") == 0  # still serving


def test_a_command_set_in_several_fragments_is_still_served(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    """The bound is on size, not on fragments: a C-ECHO in three PDVs is answered."""
    sock = associate(adapter.port)
    command = commands.c_echo_rq(7)
    parts = [command[:10], command[10:30], command[30:]]
    controls = [ul.COMMAND, ul.COMMAND, ul.COMMAND | ul.LAST]
    sock.sendall(b"".join(ul.pdata(3, c, p) for c, p in zip(controls, parts, strict=True)))
    from tests.peers.raw import read_pdu

    pdu_type, body = read_pdu(sock)
    assert pdu_type == ul.P_DATA_TF
    [(_, _, response)] = ul.pdvs(body)
    assert commands.parse_response(response).status == 0
    sock.sendall(ul.release_rq())
    assert read_pdu(sock)[0] == ul.A_RELEASE_RP
    sock.close()
