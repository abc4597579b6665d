"""Hooks on the listening side: chunked receive into our files, and the servers.

``stream_to_files``: pynetdicom 3.0 streams a C-STORE data set to a file
only when the private ``_config.STORE_RECV_CHUNKED_DATASET`` is set, and
then writes it into ``NamedTemporaryFile(delete=False, ...)`` in the default
temp folder (an ENOSPC there kills the association without an answer), with
pydicom's ``write_file_meta_info(file, create_file_meta(...))``.  All three
are looked up in ``pynetdicom.dimse_messages`` when each message starts, so
:func:`stream_to_files` replaces them there while the SCP runs: the file
comes from the caller's ``open_for(assoc)`` (the association is the DUL
thread that decodes the message), the meta from the caller's functions.

``register_server``: pynetdicom's ``start_server`` can only start its own
server class, and ``AssociationServer.shutdown`` removes the server from the
private ``ae._servers``, so a server we start ourselves is added there.

``share_contexts``: ``RequestHandler._create_association`` deep-copies the
server's presentation contexts for every TCP connection: with every storage
SOP class and transfer syntax that is about 50 ms of CPU per connection.
pynetdicom 3.0 only reads them (``negotiate_as_acceptor``), so one list is
shared by every association.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import _config, dimse_messages

from dimse.pynetdicom_boundary.registry import register
from private_api import Requirement

_MESSAGES = "pynetdicom.dimse_messages"
_DECODE = f"{_MESSAGES}:DIMSEMessage.decode_msg"

_streamed = register(
    "stream_to_files",
    "C-STORE data sets stream into the spool's incoming files, never into memory",
    Requirement("pynetdicom._config:STORE_RECV_CHUNKED_DATASET"),
    Requirement(f"{_MESSAGES}:NamedTemporaryFile"),
    Requirement(f"{_MESSAGES}:create_file_meta"),
    Requirement(f"{_MESSAGES}:write_file_meta_info"),
    Requirement(_DECODE, params=("self", "primitive", "assoc")),
    Requirement(_DECODE, uses="STORE_RECV_CHUNKED_DATASET"),
    Requirement(_DECODE, uses="NamedTemporaryFile"),
    Requirement(_DECODE, uses="create_file_meta"),
    Requirement(_DECODE, uses="write_file_meta_info"),
    # the message is decoded in the DUL thread (the P-DATA action), which knows its association
    Requirement("pynetdicom.fsm:DT_2", uses="receive_primitive"),
    Requirement("pynetdicom.dimse:DIMSEServiceProvider.receive_primitive", uses="decode_msg"),
    Requirement("pynetdicom.dul:DULServiceProvider.assoc"),
)
_registered = register(
    "register_server",
    "a server started with our own class still shuts down the pynetdicom way",
    Requirement("pynetdicom.ae:ApplicationEntity.__init__", uses="_servers"),
    Requirement("pynetdicom.transport:AssociationServer.shutdown", uses="_servers"),
)
_shared = register(
    "share_contexts",
    "no 50 ms deep copy of every presentation context per connection",
    Requirement("pynetdicom.transport:RequestHandler._create_association", uses="deepcopy"),
    Requirement("pynetdicom.transport:RequestHandler._create_association", uses="contexts"),
)

_REPLACED = ("NamedTemporaryFile", "create_file_meta", "write_file_meta_info")
_originals: dict[str, Any] = {}


def stream_to_files(
    open_for: Callable[[Any], Any],
    file_meta: Callable[..., Any],
    write_file_meta: Callable[[Any, Any], None],
) -> None:
    """Stream every C-STORE data set into ``open_for(assoc)``'s file until :func:`stop_streaming`.

    ``file_meta`` stands in for ``create_file_meta`` (called with the keywords
    ``sop_class_uid``, ``sop_instance_uid``, ``transfer_syntax``) and
    ``write_file_meta`` for ``write_file_meta_info(file, meta)``.
    """

    def open_file(*_args: object, **_kwargs: object) -> Any:
        _streamed()
        return open_for(threading.current_thread().assoc)  # type: ignore[attr-defined]

    ours = dict(zip(_REPLACED, (open_file, file_meta, write_file_meta), strict=True))
    for name, replacement in ours.items():
        _originals.setdefault(name, getattr(dimse_messages, name))
        setattr(dimse_messages, name, replacement)
    _config.STORE_RECV_CHUNKED_DATASET = True


def stop_streaming() -> None:
    """Put pynetdicom's own functions and its default (data sets in memory) back."""
    for name, original in _originals.items():
        setattr(dimse_messages, name, original)
    _originals.clear()
    _config.STORE_RECV_CHUNKED_DATASET = False


def register_server(ae: Any, server: Any) -> None:
    """Add a server we started to ``ae._servers``, as ``start_server`` does."""
    ae._servers.append(server)
    _registered()


class _SharedContexts(list):  # type: ignore[type-arg]
    """The supported presentation contexts, one list for every association."""

    def __deepcopy__(self, memo: dict[int, object]) -> _SharedContexts:
        _shared()
        return self


def share_contexts(server: Any) -> None:
    """Have every association of ``server`` read one list of presentation contexts."""
    server.contexts = _SharedContexts(server.contexts)
