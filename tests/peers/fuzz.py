"""Seeded mutations of recorded PDU streams, for the protocol fuzz test.

Why a seeded loop rather than hypothesis alone: the test runs for a fixed
time against one live adapter and many cases at once, and every case must be
replayable on its own.  Case ``n`` of seed ``s`` is built from
``random.Random(f"{s}:{n}")`` only, so a failure report's (seed, case) pair
rebuilds the exact bytes and pacing::

    python -m tests.peers.fuzz --port 11112 --seed 7 --case 1234 [--show]

Mutations know the PDU framing (PS3.8 9.3): PDU type and length, the
A-ASSOCIATE-RQ's items and sub-items with their 2-byte lengths, the
P-DATA-TF's PDV items (length, context ID, message control header), because
a parser's bugs sit behind its length fields; and they also do blind bit
flips, inserts, deletes, truncation, reordering and garbage, for the paths
nobody thought of.  Some know DIMSE message framing too: command sets in
fragments (or past the adapter's 64 KiB cap), messages interleaved across
presentation contexts, and A-RELEASE-RQ or A-ABORT racing a message.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dimse import upper_layer as ul
from scp.message_limits import MAX_COMMAND
from tests.peers.raw import AWAIT_ANSWER, P_DATA_TF, exchange, split_pdus

A_ASSOCIATE_RQ = 0x01
_RQ_ITEMS = 74  # fixed fields of an A-ASSOCIATE-RQ before its variable items (PS3.8 9.3.2)
_PDU_TYPES = (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x10, 0x53, 0xFF)
_BIG = (0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 1 << 20, (1 << 20) + 1, 1 << 28)
_SMALL16 = (0, 1, 2, 3, 4, 0x7FFF, 0x8000, 0xFFFF)

Pdus = list[bytes]
Chunks = list[tuple[bytes, float]]


@dataclass(frozen=True)
class Case:
    """One fuzz case: what is sent, how it is paced, and how it was made."""

    seed: int
    index: int
    chunks: Chunks
    recipe: tuple[str, ...]

    @property
    def data(self) -> bytes:
        return b"".join(chunk for chunk, _ in self.chunks)

    def describe(self) -> str:
        return f"seed={self.seed} case={self.index} {'+'.join(self.recipe)} {len(self.data)} bytes"


def make_case(base_streams: Sequence[Pdus], seed: int, index: int, max_pdu: int) -> Case:
    """Case ``index`` of ``seed``: a base stream, 1-3 mutations, a pacing."""
    rng = random.Random(f"{seed}:{index}")
    pdus = list(rng.choice(base_streams))
    recipe: list[str] = []
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        name, mutate = rng.choice(MUTATIONS)
        pdus = mutate(rng, pdus, max_pdu)
        recipe.append(name)
    pacing, chunks = _pace(rng, b"".join(pdus))
    recipe.append(pacing)
    return Case(seed, index, chunks, tuple(recipe))


def _pace(rng: random.Random, data: bytes) -> tuple[str, Chunks]:
    """Mostly as a peer does (first PDU, wait for the answer, the rest); sometimes all at
    once, dribbled in pieces, or with a stall part way (the read deadlines)."""
    roll = rng.random()
    if roll < 0.1 or not data:
        return "at-once", [(data, 0.0)]
    first = split_pdus(data)[0]
    chunks: Chunks = [(first, AWAIT_ANSWER)]
    rest = data[len(first) :]
    if roll < 0.75 or len(rest) < 2:
        return "turns", [*chunks, (rest, 0.0)]
    cuts = sorted(rng.sample(range(1, len(rest)), min(rng.randint(1, 6), len(rest) - 1)))
    pieces = [rest[a:b] for a, b in zip([0, *cuts], [*cuts, len(rest)], strict=True)]
    if roll < 0.92:
        return "dribbled", [*chunks, *((piece, rng.uniform(0, 0.04)) for piece in pieces)]
    stall = rng.uniform(0.5, 1.6)
    return f"stall{stall:.1f}s", [*chunks, (pieces[0], stall), *((p, 0.0) for p in pieces[1:])]


# -- mutations: (rng, pdus, max_pdu) -> pdus --------------------------------------------------


def _pick(rng: random.Random, pdus: Pdus) -> int:
    return rng.randrange(len(pdus)) if pdus else 0


def _replace(pdus: Pdus, index: int, pdu: bytes) -> Pdus:
    return [*pdus[:index], pdu, *pdus[index + 1 :]] if pdus else [pdu]


def _refit(rng: random.Random, pdu: bytes) -> bytes:
    """Usually make the PDU length agree with the body again, so the change gets parsed."""
    if len(pdu) < 6 or rng.random() < 0.25:
        return pdu
    return pdu[:2] + struct.pack(">L", len(pdu) - 6) + pdu[6:]


def bit_flips(rng: random.Random, pdus: Pdus, _max_pdu: int) -> Pdus:
    index = _pick(rng, pdus)
    pdu = bytearray((pdus[index] if pdus else b"") or b"\x00")
    for _ in range(rng.choice((1, 1, 2, 4, 8, 32))):
        pdu[rng.randrange(len(pdu))] ^= 1 << rng.randrange(8)
    return _replace(pdus, index, bytes(pdu))


def byte_edits(rng: random.Random, pdus: Pdus, _max_pdu: int) -> Pdus:
    index = _pick(rng, pdus)
    pdu = bytearray(pdus[index] if pdus else b"")
    for _ in range(rng.randint(1, 8)):
        at = rng.randint(0, len(pdu))
        value = rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x20, rng.randrange(256)))
        action = rng.choice(("insert", "delete", "set"))
        if action == "insert" or not pdu:
            pdu[at:at] = bytes([value]) * rng.choice((1, 1, 2, 16, 300))
        elif action == "delete":
            del pdu[at : at + rng.choice((1, 1, 2, 16))]
        else:
            pdu[min(at, len(pdu) - 1)] = value
    return _replace(pdus, index, _refit(rng, bytes(pdu)))


def truncate(rng: random.Random, pdus: Pdus, _max_pdu: int) -> Pdus:
    data = b"".join(pdus)
    return [data[: rng.randint(0, len(data))]]


def pdu_length(rng: random.Random, pdus: Pdus, max_pdu: int) -> Pdus:
    index = _pick(rng, pdus)
    pdu = (pdus[index] if pdus else b"\x04\x00\x00\x00\x00\x00").ljust(6, b"\x00")
    real = len(pdu) - 6
    length = rng.choice(
        (0, 1, 5, real - 1, real + 1, real * 2, max_pdu, max_pdu + 1, rng.choice(_BIG))
    )
    return _replace(pdus, index, pdu[:2] + struct.pack(">L", max(0, length)) + pdu[6:])


def pdu_type(rng: random.Random, pdus: Pdus, _max_pdu: int) -> Pdus:
    index = _pick(rng, pdus)
    pdu = pdus[index] if pdus else b"\x00" * 6
    new = rng.choice((*_PDU_TYPES, rng.randrange(256)))
    return _replace(pdus, index, bytes([new]) + pdu[1:])


def reorder(rng: random.Random, pdus: Pdus, _max_pdu: int) -> Pdus:
    pdus = list(pdus)
    if len(pdus) < 2:
        return pdus * 2
    action = rng.choice(("drop", "repeat", "swap", "shuffle", "first-to-end"))
    i, j = rng.sample(range(len(pdus)), 2)
    if action == "drop":
        del pdus[i]
    elif action == "repeat":
        pdus[i:i] = [pdus[i]] * rng.choice((1, 2, 20))
    elif action == "swap":
        pdus[i], pdus[j] = pdus[j], pdus[i]
    elif action == "shuffle":
        rng.shuffle(pdus)
    else:
        pdus.append(pdus.pop(0))
    return pdus


def garbage(rng: random.Random, pdus: Pdus, _max_pdu: int) -> Pdus:
    """Random bytes, or a PDU header of any type in front of random bytes, anywhere."""
    body = rng.randbytes(rng.choice((0, 1, 5, 6, 7, 64, 1000, 20000)))
    if rng.random() < 0.5:
        body = bytes([rng.choice(_PDU_TYPES), 0]) + struct.pack(">L", len(body)) + body
    at = rng.randint(0, len(pdus))
    return [*pdus[:at], body, *pdus[at:]] if rng.random() < 0.7 else [body]


def rq_item(rng: random.Random, pdus: Pdus, _max_pdu: int) -> Pdus:
    """Change an A-ASSOCIATE-RQ item or sub-item length, or a fixed field."""
    index = next((i for i, pdu in enumerate(pdus) if pdu[:1] == b"\x01"), None)
    if index is None:
        return pdus
    pdu = bytearray(pdus[index])
    offsets = _rq_length_fields(bytes(pdu))
    if offsets and rng.random() < 0.7:
        at = rng.choice(offsets)
        real = struct.unpack_from(">H", pdu, at)[0]
        new = rng.choice((*_SMALL16, real - 1, real + 1, real + 100)) & 0xFFFF
        struct.pack_into(">H", pdu, at, new)
    elif len(pdu) >= _RQ_ITEMS:
        at = rng.choice((6, 7, 10, 17, 25, 26, 41, rng.randrange(6, _RQ_ITEMS)))
        pdu[at] = rng.choice((0x00, 0x02, 0xFF, 0x1B, 0x0A, rng.randrange(256)))
    return _replace(pdus, index, bytes(pdu))


def rq_flood(rng: random.Random, pdus: Pdus, _max_pdu: int) -> Pdus:
    """Repeat one A-ASSOCIATE-RQ item many times (e.g. 300 contexts with one ID)."""
    index = next((i for i, pdu in enumerate(pdus) if pdu[:1] == b"\x01"), None)
    if index is None:
        return pdus
    pdu = pdus[index]
    items = _rq_items(pdu)
    if not items:
        return pdus
    start, end = rng.choice(items)
    repeated = pdu[start:end] * rng.choice((2, 128, 300, 2000))
    return _replace(pdus, index, _refit(rng, pdu[:end] + repeated + pdu[end:]))


def pdv(rng: random.Random, pdus: Pdus, _max_pdu: int) -> Pdus:
    """Change a P-DATA-TF PDV item: its length, context ID or message control header."""
    candidates = [i for i, pdu in enumerate(pdus) if pdu[:1] == bytes([P_DATA_TF])]
    if not candidates:
        return pdus
    index = rng.choice(candidates)
    pdu = bytearray(pdus[index])
    if len(pdu) < 12:
        return pdus
    field = rng.choice(("length", "context", "control", "split"))
    if field == "length":
        real = struct.unpack_from(">L", pdu, 6)[0]
        new = rng.choice((0, 1, 2, real - 1, real + 1, rng.choice(_BIG))) & 0xFFFFFFFF
        struct.pack_into(">L", pdu, 6, new)
    elif field == "context":
        pdu[10] = rng.choice((0, 2, 3, 255, rng.randrange(256)))
    elif field == "control":
        pdu[11] = rng.choice((0x00, 0x01, 0x02, 0x03, 0xFC, 0xFF))
    else:  # two PDVs where there was one
        value = bytes(pdu[12:])
        cut = rng.randint(0, len(value))
        head = _pdv(pdu[10], pdu[11] & 0x01, value[:cut])  # same kind, not last
        pdu = bytearray(_refit(rng, bytes(pdu[:6]) + head + _pdv(pdu[10], pdu[11], value[cut:])))
    return _replace(pdus, index, bytes(pdu))


A_RELEASE_RQ = ul.release_rq()
A_ABORT = ul.abort()


def _pdvs(pdu: bytes) -> list[tuple[int, int, bytes]]:
    """(context ID, control header, value) of each PDV of a P-DATA-TF; none if it does not
    parse."""
    try:
        return ul.pdvs(pdu[ul.PDU_HEADER :])
    except ValueError:
        return []


def _p_data(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return bytes([P_DATA_TF, 0]) + struct.pack(">L", len(body)) + body


def _command_at(pdus: Pdus) -> list[int]:
    """Indexes of P-DATA-TF PDUs whose first PDV is (part of) a command set."""
    return [
        i
        for i, pdu in enumerate(pdus)
        if pdu[:1] == bytes([P_DATA_TF]) and (items := _pdvs(pdu)) and items[0][1] & ul.COMMAND
    ]


def _cut(rng: random.Random, value: bytes, pieces: int) -> list[bytes]:
    cuts = sorted(rng.choices(range(len(value) + 1), k=pieces - 1))
    return [value[a:b] for a, b in zip([0, *cuts], [*cuts, len(value)], strict=True)]


def command_fragments(rng: random.Random, pdus: Pdus, max_pdu: int) -> Pdus:
    """Send a command set in fragments: split (empty pieces too), left unfinished, or grown
    past the adapter's 64 KiB cap by repeating its non-last fragments (PS3.8 9.3.5.1)."""
    candidates = _command_at(pdus)
    if not candidates:
        return pdus
    index = rng.choice(candidates)
    context, _control, command = _pdvs(pdus[index])[0]
    action = rng.choice(("split", "split-one-pdu", "unfinished", "oversized"))
    if action == "oversized":
        room = max(16, max_pdu - 12)
        repeats = MAX_COMMAND // room + rng.choice((1, 2, 50))
        head = _p_data(_pdv(context, ul.COMMAND, command.ljust(room, b"\x00")[:room]))
        tail = [] if rng.random() < 0.5 else [_p_data(_pdv(context, ul.COMMAND | ul.LAST, command))]
        return [*pdus[:index], *[head] * repeats, *tail, *pdus[index + 1 :]]
    pieces = _cut(rng, command, rng.randint(2, 8))
    last = len(pieces) - 1
    controls = [
        ul.COMMAND | (ul.LAST if n == last and action != "unfinished" else 0)
        for n in range(len(pieces))
    ]
    items = [_pdv(context, control, piece) for control, piece in zip(controls, pieces, strict=True)]
    if action == "split-one-pdu":
        return _replace(pdus, index, _p_data(*items))
    return [*pdus[:index], *(_p_data(item) for item in items), *pdus[index + 1 :]]


def interleave(rng: random.Random, pdus: Pdus, _max_pdu: int) -> Pdus:
    """Messages across presentation contexts out of turn: another message's command in the
    middle of a data set, a data fragment moved to another context, a second C-STORE
    started before the first one's data set ended."""
    commands = _command_at(pdus)
    data = [
        i
        for i, pdu in enumerate(pdus)
        if pdu[:1] == bytes([P_DATA_TF]) and (items := _pdvs(pdu)) and not items[0][1] & ul.COMMAND
    ]
    if not commands or not data:
        return pdus
    contexts = sorted({items[0][0] for i in commands + data if (items := _pdvs(pdus[i]))})
    action = rng.choice(("command-inside-data", "data-to-other-context", "second-store"))
    at = rng.choice(data)
    if action == "data-to-other-context":
        context, control, value = _pdvs(pdus[at])[0]
        others = [c for c in contexts if c != context] or [context + 2]
        return _replace(pdus, at, _p_data(_pdv(rng.choice(others), control, value)))
    command = pdus[rng.choice(commands)]
    if action == "second-store":  # the store command and its first data fragment, again
        store = max(i for i in commands if i < at) if any(i < at for i in commands) else commands[0]
        return [*pdus[:at], pdus[store], *pdus[store + 1 : at + 1], *pdus[at:]]
    return [*pdus[:at], command, *pdus[at:]]


def release_races(rng: random.Random, pdus: Pdus, _max_pdu: int) -> Pdus:
    """A-RELEASE-RQ or A-ABORT where they do not belong: mid data set, straight after the
    command, twice, one after the other, or with more P-DATA following."""
    if len(pdus) < 2:
        return [*pdus, A_RELEASE_RQ]
    at = rng.randint(1, len(pdus))
    action = rng.choice(("release", "abort", "release-abort", "release-twice", "release-then-data"))
    inserted = {
        "release": [A_RELEASE_RQ],
        "abort": [A_ABORT],
        "release-abort": [A_RELEASE_RQ, A_ABORT],
        "release-twice": [A_RELEASE_RQ, A_RELEASE_RQ],
        "release-then-data": [A_RELEASE_RQ, *pdus[1:at]],
    }[action]
    keep_rest = rng.random() < 0.7
    return [*pdus[:at], *inserted, *(pdus[at:] if keep_rest else [])]


def _pdv(context: int, control: int, value: bytes) -> bytes:
    return struct.pack(">LBB", len(value) + 2, context, control) + value


def _rq_items(pdu: bytes) -> list[tuple[int, int]]:
    """(start, end) of each top-level variable item of an A-ASSOCIATE-RQ."""
    items, offset = [], _RQ_ITEMS
    while offset + 4 <= len(pdu):
        end = offset + 4 + struct.unpack_from(">H", pdu, offset + 2)[0]
        if end > len(pdu):
            break
        items.append((offset, end))
        offset = end
    return items


def _rq_length_fields(pdu: bytes) -> list[int]:
    """Offsets of every item and sub-item length field of an A-ASSOCIATE-RQ."""
    fields = []
    for start, end in _rq_items(pdu):
        fields.append(start + 2)
        sub = start + 8 if pdu[start] == 0x20 else start + 4 if pdu[start] == 0x50 else end
        while sub + 4 <= end:
            fields.append(sub + 2)
            sub += 4 + struct.unpack_from(">H", pdu, sub + 2)[0]
    return fields


MUTATIONS: list[tuple[str, Callable[[random.Random, Pdus, int], Pdus]]] = [
    ("bit-flips", bit_flips),
    ("bit-flips", bit_flips),
    ("byte-edits", byte_edits),
    ("truncate", truncate),
    ("pdu-length", pdu_length),
    ("pdu-type", pdu_type),
    ("reorder", reorder),
    ("garbage", garbage),
    ("rq-item", rq_item),
    ("rq-item", rq_item),
    ("rq-flood", rq_flood),
    ("pdv", pdv),
    ("pdv", pdv),
    ("command-fragments", command_fragments),
    ("command-fragments", command_fragments),
    ("interleave", interleave),
    ("interleave", interleave),
    ("release-races", release_races),
    ("release-races", release_races),
]


def base_streams(pdus: Sequence[bytes]) -> list[Pdus]:
    """Valid streams from one recording (RQ, echo, store command, dataset..., release):
    the whole association, echo only, store only."""
    rq, echo, store, *data, release = pdus
    return [list(pdus), [rq, echo, release], [rq, store, *data, release]]


def main(argv: list[str] | None = None) -> int:
    """Replay one case against a running adapter (recording it first from that adapter)."""
    parser = argparse.ArgumentParser(prog="python -m tests.peers.fuzz")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--case", type=int, required=True)
    parser.add_argument("--max-pdu", type=int, default=4096)
    parser.add_argument("--recording", required=True, help="recorded PDUs, hex, one a line")
    parser.add_argument("--show", action="store_true", help="print the bytes, send nothing")
    args = parser.parse_args(argv)
    with open(args.recording) as handle:
        pdus = [bytes.fromhex(line) for line in handle if line.strip()]
    case = make_case(base_streams(pdus), args.seed, args.case, args.max_pdu)
    print(case.describe())
    if args.show:
        print(case.data.hex())
        return 0
    reply = exchange(args.port, case.chunks, deadline=10)
    print(
        f"answer {len(reply.received)} bytes, first PDU type {reply.first_pdu_type}, "
        f"held={reply.held}, stored={reply.stored}, {reply.seconds:.2f}s"
    )
    print(reply.received.hex())
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["MUTATIONS", "Case", "base_streams", "make_case", "split_pdus"]
