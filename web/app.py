"""The adapter's HTTP application: every route the ``[http]`` listener serves.

STOW-RS under ``/dicomweb/{AE}/`` (``web.stow_service``), the status pages,
``/healthz`` and ``/metrics`` (``web.pages``).  Who may use which route is
``web.access``'s to say.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from starlette.applications import Starlette
from starlette.routing import Route

from config import HttpConfig
from spool.writer import SpoolWriter
from web.access import Access
from web.pages import Pages
from web.stow_service import StowService


def build_app(
    http: HttpConfig,
    aes: Callable[[], Collection[str]],
    writer: SpoolWriter,
    access: Access,
    pages: Pages,
) -> Starlette:
    """The ASGI app for ``[http]``: STOW-RS for each ``[ae:NAME]`` ``aes()`` names now
    (a reload may add or remove some), and the pages."""
    stow = StowService(http, aes, writer, access)
    return Starlette(
        routes=[
            Route("/dicomweb/{ae}/studies", stow.store, methods=["POST"]),
            Route("/dicomweb/{ae}/studies/{study}", stow.store, methods=["POST"]),
            *pages.routes(),
        ]
    )
