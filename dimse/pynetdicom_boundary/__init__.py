"""The one place that touches pynetdicom's private parts, checked against one version.

The SCP tunes pynetdicom in ways its public API has no room for (see
``docs/architecture.md``, "The pynetdicom boundary").  Each such use is a
*hook*: a named function or class in this package, registered in
:data:`HOOKS` with the private attributes, methods and behaviours it relies
on.  Importing this package first compares the installed pynetdicom with
:data:`PINNED_VERSION`, then imports the hooks and checks every requirement
of every hook; on any mismatch the import raises :class:`PynetdicomMismatch`
(an ImportError named ``pynetdicom``) whose message is one line naming the
installed version, the pinned one and what broke.  Nothing is patched by
importing: a hook acts only when called.

The hooks (module: name):

- threads: ``wake_on_events`` (event-driven DUL and DIMSE threads),
  ``no_zero_sleep`` (no ``sleep(0)`` per turn of their DUL loops),
  ``fsm_events`` (the direct path's Evt17/Evt19), ``close_left_open``,
  ``stop_waiting_for_request`` (two pynetdicom acceptor workarounds);
- sockets: ``read_through`` (an association's reads go through our reader);
- server: ``stream_to_files`` (chunked C-STORE receive into our files),
  ``register_server`` (``ae._servers``), ``share_contexts`` (no deep copy
  of the presentation contexts per connection).
"""

from __future__ import annotations

import pynetdicom

from dimse.pynetdicom_boundary.registry import (
    HOOKS,
    PINNED_VERSION,
    PynetdicomMismatch,
    check_hooks,
    check_version,
)

check_version(pynetdicom.__version__)

from dimse.pynetdicom_boundary.server import (  # noqa: E402  (after the version check)
    register_server,
    share_contexts,
    stop_streaming,
    stream_to_files,
)
from dimse.pynetdicom_boundary.sockets import read_through  # noqa: E402
from dimse.pynetdicom_boundary.threads import (  # noqa: E402
    report_closed,
    report_invalid_pdu,
    wake_on_events,
)

check_hooks(pynetdicom.__version__)

__all__ = [
    "HOOKS",
    "PINNED_VERSION",
    "PynetdicomMismatch",
    "read_through",
    "register_server",
    "report_closed",
    "report_invalid_pdu",
    "share_contexts",
    "stop_streaming",
    "stream_to_files",
    "wake_on_events",
]
